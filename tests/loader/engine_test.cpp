// The streaming engine: load handles (wait for a tensor, a layer, everything; callbacks;
// cancel; the Timeline), a Tee writing files while loading the device from one fetch, a slow
// sink that never trips the stall timer, and the staging pool across loads.
#include "coldstart/loader/engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>

#include "../common/independent.h"
#include "../common/temp_dir.h"
#include "coldstart/cache/disk_cache.h"
#include "coldstart/cache/partial_file.h"
#include "coldstart/fake_gcs/server.h"
#include "coldstart/loader/synth.h"

namespace coldstart::loader {
namespace {

namespace fs = std::filesystem;
using coldstart::testing::TempDir;

class Engine : public ::testing::Test {
 protected:
  void SetUp() override {
    SynthOptions so;
    so.size_bytes = 6 << 20;
    so.shards = 2;
    so.seed = 5;
    auto r = SynthesizeModel(dir_ / "bkt/m", so);
    ASSERT_TRUE(r.ok());
    layers_ = r->layers;
    for (const auto& e : fs::directory_iterator(dir_ / "bkt/m"))
      if (e.path().extension() == ".safetensors") expected_.merge(coldstart::testing::IndependentDigests(e.path().string()));
    fakegcs::ServerOptions fo;
    fo.root = dir_.path();
    auto s = fakegcs::Server::Start(fo);
    ASSERT_TRUE(s.ok());
    server_ = std::move(s).value();
  }
  OpenedModel Local() {
    OpenedModel m;
    auto l = OpenLocalModel(dir_ / "bkt/m");
    EXPECT_TRUE(l.ok());
    m.local = std::move(l).value();
    return m;
  }
  OpenedModel Remote(double stall_s = 20, cache::DiskCache* cache = nullptr) {
    fetch::RemoteOptions ro;
    ro.fetch.chunk_bytes = 256 << 10;
    ro.fetch.retry.initial_backoff_s = 0.01;
    ro.fetch.retry.stall_timeout_s = stall_s;
    ro.retry = ro.fetch.retry;
    auto o = OpenModel("gs://bkt/m", ro, Env::FromMap({{"STORAGE_EMULATOR_HOST", server_->endpoint()}}), cache);
    EXPECT_TRUE(o.ok()) << o.error().message;
    return std::move(o).value();
  }
  LoadOptions Sim(double bandwidth = 2e9) {
    LoadOptions o;
    o.device = {DeviceKind::kSim, 0};
    o.chunk_bytes = 256 << 10;
    o.staging_bytes = 4 * ((256 << 10) + 4096);
    o.sim.bytes_per_second = bandwidth;
    return o;
  }
  std::map<std::string, std::string> Digests(const DeviceModel& m) {
    std::map<std::string, std::string> out;
    for (const auto& t : m.tensors()) {
      std::vector<std::byte> b(t.nbytes);
      EXPECT_TRUE(m.ReadBack(t, b.data()).ok());
      out[t.entry->name] = coldstart::testing::Sha256HexOf(b.data(), b.size());
    }
    return out;
  }
  TempDir dir_;
  unsigned layers_ = 0;
  std::map<std::string, std::string> expected_;
  std::unique_ptr<fakegcs::Server> server_;
};

TEST(EnginePlan, LayersAndFilters) {
  EXPECT_EQ(TensorLayer("model.layers.12.mlp.up_proj.weight"), 12);
  EXPECT_EQ(TensorLayer("model.language_model.layers.3.x"), 3);
  EXPECT_EQ(TensorLayer("model.embed_tokens.weight"), -1);
  EXPECT_EQ(TensorLayer("model.layers.x"), -1);
}

// The handle comes back before the bytes; waits for one tensor and one layer return as soon
// as those are in place, before the whole model, and every callback fires once.
TEST_F(Engine, HandleWaitsForTensorsAndLayersBeforeEverything) {
  for (bool remote : {false, true}) {
    auto o = Sim(1.2e7);  // ~0.5 s for 6 MiB: the load is still running when layer 0 is in
    o.order = LoadOrder::kLayer;
    std::mutex mu;
    std::set<int> layers_seen;
    std::atomic<int> tensors_seen{0};
    o.on_layer = [&](int l) {
      std::lock_guard lk(mu);
      EXPECT_TRUE(layers_seen.insert(l).second) << "layer " << l << " reported twice";
    };
    o.on_ready = [&](const DeviceTensor&) { ++tensors_seen; };
    Timeline tl;
    tl.Mark("listing");
    auto h = StartLoad(remote ? Remote() : Local(), o, tl);
    ASSERT_TRUE(h.ok()) << h.error().message;
    auto& handle = **h;
    const std::string last_layer = "model.layers." + std::to_string(layers_ - 1) + ".mlp.down_proj.weight";
    ASSERT_TRUE(handle.WaitTensor("model.embed_tokens.weight").ok());
    EXPECT_TRUE(handle.Ready("model.embed_tokens.weight"));
    ASSERT_TRUE(handle.WaitLayer(0).ok());
    EXPECT_FALSE(handle.progress().finished) << "layer 0 came only with the whole model (remote=" << remote << ")";
    ASSERT_TRUE(handle.WaitTensor(last_layer).ok());
    ASSERT_TRUE(handle.WaitAll().ok());
    auto p = handle.progress();
    EXPECT_TRUE(p.finished);
    EXPECT_EQ(p.tensors_ready, p.tensors_total);
    EXPECT_EQ(p.bytes_done, p.bytes_total);
    EXPECT_EQ(tensors_seen.load(), static_cast<int>(expected_.size()));
    EXPECT_EQ(layers_seen.size(), layers_);
    EXPECT_EQ(Digests(*handle.device_model()), expected_);
    // The Timeline: what the caller marked, then the load's phases in order.
    const auto& t = handle.timeline();
    for (const char* ph : {"listing", "plan", "first_byte", "fetch", "h2d", "ready"}) EXPECT_TRUE(t.Has(ph)) << ph;
    EXPECT_LE(t.Seconds("listing"), t.Seconds("plan"));
    EXPECT_LE(t.Seconds("plan"), t.Seconds("first_byte"));
    EXPECT_LE(t.Seconds("first_byte"), t.Seconds("fetch"));
    EXPECT_LE(t.Seconds("fetch"), t.Seconds("ready"));
    EXPECT_FALSE(handle.WaitTensor("no.such.tensor").ok());
    EXPECT_EQ(handle.WaitLayer(9999).error().code, Errc::kNotFound);
  }
}

// A tensor waited for jumps the read-ahead queue: with one connection and a slow server, the
// last tensor of the plan arrives long before the plan's middle.
TEST_F(Engine, LayerEventCompletesOnceTheLayersCopiesAreInDeviceMemory) {
  // 20 MB/s: the 6 MiB model takes ~300 ms on the device, so early layers' events are handed
  // out while later layers are still copying.
  auto h = StartLoad(Local(), Sim(20e6));
  ASSERT_TRUE(h.ok()) << h.error().message;
  LoadHandle& handle = **h;
  std::map<int, std::vector<std::string>> names;
  for (const auto& t : Local().local.tensors)
    if (TensorLayer(t.name) >= 0) names[TensorLayer(t.name)].push_back(t.name);
  ASSERT_EQ(names.size(), layers_);
  bool before_the_end = false;
  for (const auto& [layer, tensors] : names) {
    auto ev = handle.LayerEvent(layer);
    ASSERT_TRUE(ev.ok()) << ev.error().message;
    ASSERT_NE(*ev, 0u);
    if (layer == 0) before_the_end = !handle.progress().finished;
    ASSERT_TRUE(handle.WaitEvent(*ev).ok());
    for (const auto& n : tensors) EXPECT_TRUE(handle.Ready(n)) << n << " not in device memory after layer " << layer << "'s event";
  }
  EXPECT_TRUE(before_the_end);
  EXPECT_EQ(handle.LayerEvent(9999).error().code, Errc::kNotFound);
  ASSERT_TRUE(handle.WaitAll().ok());
  EXPECT_EQ(Digests(*handle.device_model()), expected_);

  // The cpu device has no device events.
  auto host = StartLoad(Local(), ToLoadOptions(HostLoadOptions{}));
  ASSERT_TRUE(host.ok());
  EXPECT_EQ((*host)->LayerEvent(0).error().code, Errc::kUnavailable);
  EXPECT_TRUE((*host)->WaitAll().ok());
}

TEST_F(Engine, WaitedTensorIsFetchedAhead) {
  // One connection at 4 MB/s: the 6 MiB model takes ~1.6 s in file order.
  fakegcs::ServerOptions so;
  so.root = dir_.path();
  so.rate_limit_bytes_per_s = 4e6;
  auto slow = fakegcs::Server::Start(so);
  ASSERT_TRUE(slow.ok());
  fetch::RemoteOptions ro;
  ro.fetch.chunk_bytes = 64 << 10;
  ro.fetch.concurrency = 1;
  ro.fetch.threads = 1;
  auto om = OpenModel("gs://bkt/m", ro, Env::FromMap({{"STORAGE_EMULATOR_HOST", (*slow)->endpoint()}}));
  ASSERT_TRUE(om.ok());
  LoadOptions o;
  o.device = {DeviceKind::kCpu, 0};
  o.order = LoadOrder::kFile;
  const std::string last = om->layout().tensors.back().name;
  const auto t0 = std::chrono::steady_clock::now();
  auto h = StartLoad(std::move(om).value(), o);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->WaitTensor(last).ok());
  const double t_last = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE((*h)->WaitAll().ok());
  const double t_all = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(t_last, 0.5 * t_all) << "the waited-for tensor (last in file order) came at " << t_last << " s of " << t_all;
}

// Cancel from another thread: WaitAll says cancelled, no model.
TEST_F(Engine, CancelStopsTheLoad) {
  auto o = Sim(2e7);  // ~0.3 s for the model
  auto h = StartLoad(Local(), o);
  ASSERT_TRUE(h.ok());
  (*h)->Cancel();
  auto st = (*h)->WaitAll();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::kCancelled);
  EXPECT_FALSE((*h)->progress().bytes_done == (*h)->progress().bytes_total && (*h)->progress().tensors_ready == (*h)->progress().tensors_total);
}

// One fetch feeds two sinks: the device and files on disk (what the disk cache needs).
TEST_F(Engine, TeeWritesTheFilesAndLoadsTheDeviceFromOneFetch) {
  TempDir out;
  server_->ResetStats();
  auto o = Sim();
  o.also_write_to = out / "copy";
  auto h = StartLoad(Remote(), o);
  ASSERT_TRUE(h.ok()) << h.error().message;
  ASSERT_TRUE((*h)->WaitAll().ok());
  EXPECT_EQ(Digests(*(*h)->device_model()), expected_);
  EXPECT_TRUE((*h)->device_model()->stats().crc32c_verified);
  for (const auto& e : fs::directory_iterator(dir_ / "bkt/m")) {
    if (e.path().extension() != ".safetensors") continue;
    const auto copy = out / ("copy/" + e.path().filename().string());
    ASSERT_TRUE(fs::exists(copy)) << copy;
    EXPECT_EQ(coldstart::testing::ReadFile(copy), coldstart::testing::ReadFile(e.path().string())) << copy;
  }
  // Every data byte was fetched once: media bytes sent = the headers' first reads + data.
  std::uint64_t data = 0;
  for (const auto& f : (*h)->device_model()->layout().files) data += f.header.data_bytes;
  EXPECT_EQ((*h)->source_stats().fetch.bytes, data);
  for (const auto& e : fs::directory_iterator(out / "copy"))
    EXPECT_EQ(e.path().filename().string().front(), 'm') << "temporary left: " << e.path();
}

// A host arena keeps its bytes: the tee's file writes are queued on the io_uring write service
// and only waited for before the files are verified and renamed.
TEST_F(Engine, HostLoadTeesFilesThroughQueuedWrites) {
  TempDir out;
  auto o = ToLoadOptions(HostLoadOptions{});
  o.also_write_to = out / "copy";
  auto h = StartLoad(Remote(), o);
  ASSERT_TRUE(h.ok()) << h.error().message;
  ASSERT_TRUE((*h)->WaitAll().ok());
  for (const auto& e : fs::directory_iterator(dir_ / "bkt/m")) {
    if (e.path().extension() != ".safetensors") continue;
    const auto copy = out / ("copy/" + e.path().filename().string());
    EXPECT_EQ(coldstart::testing::ReadFile(copy), coldstart::testing::ReadFile(e.path().string())) << copy;
  }
}

TEST_F(Engine, TeeLeavesAFileAnotherWriterHoldsToIt) {
  TempDir out;
  fs::create_directories(out / "copy");
  std::string first;
  for (const auto& e : fs::directory_iterator(dir_ / "bkt/m"))
    if (e.path().extension() == ".safetensors" && (first.empty() || e.path().filename().string() < first))
      first = e.path().filename().string();
  // Another writer (a prefetch, say) holds the first shard's lock.
  auto held = cache::FileLock::Acquire(out / ("copy/" + first));
  ASSERT_TRUE(held.ok()) << held.error().message;
  auto o = Sim();
  o.also_write_to = out / "copy";
  auto h = StartLoad(Remote(), o);
  ASSERT_TRUE(h.ok()) << h.error().message;
  ASSERT_TRUE((*h)->WaitAll().ok());
  EXPECT_EQ(Digests(*(*h)->device_model()), expected_);
  EXPECT_FALSE(fs::exists(out / ("copy/" + first))) << "the tee wrote a file another writer holds";
  unsigned copies = 0;
  for (const auto& e : fs::directory_iterator(dir_ / "bkt/m")) {
    if (e.path().extension() != ".safetensors" || e.path().filename() == first) continue;
    const auto copy = out / ("copy/" + e.path().filename().string());
    EXPECT_EQ(coldstart::testing::ReadFile(copy), coldstart::testing::ReadFile(e.path().string())) << copy;
    ++copies;
  }
  EXPECT_GE(copies, 1u);
}

// A filtered load writes no partial file under a final name.
// ---- the disk cache under a load ------------------------------------------------------------

std::shared_ptr<cache::DiskCache> OpenCacheAt(const std::string& dir) {
  cache::DiskCacheOptions o;
  o.dir = dir;
  o.chunk_bytes = 1 << 20;
  auto c = cache::DiskCache::Open(o);
  EXPECT_TRUE(c.ok()) << c.error().message;
  return c.ok() ? *c : nullptr;
}

TEST_F(Engine, CacheIsFilledByOneLoadAndServesTheNext) {
  TempDir cdir;
  std::uint64_t data = 0;
  for (const auto& f : Local().local.files) data += f.header.data_bytes;
  for (int round = 0; round < 2; ++round) {
    server_->ResetStats();
    auto o = Sim();
    o.staging_bytes = 4 * ((1 << 20) + 4096);  // slots of the cache's 1 MiB chunks
    o.cache = OpenCacheAt(cdir / "c");
    auto h = StartLoad(Remote(20, o.cache.get()), o);
    ASSERT_TRUE(h.ok()) << h.error().message;
    ASSERT_TRUE((*h)->WaitAll().ok());
    EXPECT_EQ(Digests(*(*h)->device_model()), expected_);
    EXPECT_TRUE((*h)->device_model()->stats().crc32c_verified) << "the whole-object CRC32C covers cached bytes too";
    const auto& s = (*h)->source_stats();
    if (round == 0) {
      // The header reads fetched each file's first cache chunk into the cache; the load read
      // those from it and fetched the rest: every byte of the model came from the origin once.
      EXPECT_EQ(s.fetch.bytes + s.cache_hit_bytes, data);
      EXPECT_GT(s.cache_hit_bytes, 0u);
      std::uint64_t files = 0;
      for (const auto& e : fs::directory_iterator(dir_ / "bkt/m"))
        if (e.path().extension() == ".safetensors" || e.path().filename() == "model.safetensors.index.json")
          files += fs::file_size(e.path());
      EXPECT_EQ(server_->stats().media_bytes_sent, files);
    } else {
      EXPECT_EQ(s.fetch.bytes, 0u) << "the second load fetched data";
      EXPECT_EQ(s.cache_hit_bytes, data);
      EXPECT_EQ(s.cache_filled_bytes, 0u);
      EXPECT_EQ(server_->stats().media_bytes_sent, 0u) << "the headers or data came from the origin, not the cache";
    }
  }
}

// The origin gone, a complete cached copy is loaded from the cache with a warning; an
// incomplete one is the network error, saying what the cache lacks.
TEST_F(Engine, OfflineLoadServesACompleteCachedCopy) {
  TempDir cdir;
  auto cache_at = OpenCacheAt(cdir / "c");
  {
    auto o = Sim();
    o.staging_bytes = 4 * ((1 << 20) + 4096);
    o.cache = cache_at;
    auto h = StartLoad(Remote(20, cache_at.get()), o);
    ASSERT_TRUE(h.ok() && (*h)->WaitAll().ok());
  }
  const std::string endpoint = server_->endpoint();
  server_->Stop();
  fetch::RemoteOptions ro;
  ro.fetch.retry.initial_backoff_s = 0.01;
  ro.fetch.retry.max_attempts = 2;
  ro.retry = ro.fetch.retry;
  const Env env = Env::FromMap({{"STORAGE_EMULATOR_HOST", endpoint}});
  {
    auto opened = OpenModel("gs://bkt/m", ro, env, cache_at.get());
    ASSERT_TRUE(opened.ok()) << opened.error().message;
    auto o = Sim();
    o.staging_bytes = 4 * ((1 << 20) + 4096);
    o.cache = cache_at;
    auto h = StartLoad(std::move(opened).value(), o);
    ASSERT_TRUE(h.ok()) << h.error().message;
    ASSERT_TRUE((*h)->WaitAll().ok());
    EXPECT_EQ(Digests(*(*h)->device_model()), expected_);
    EXPECT_EQ((*h)->source_stats().fetch.bytes, 0u);
  }
  // One shard's entry gone: the copy is incomplete, and the error says so.
  unsigned removed = 0;
  auto listed = cache_at->List();
  ASSERT_TRUE(listed.ok()) << listed.error().message;
  for (const auto& e : *listed)
    if (e.key.name.find("model-00001") != std::string::npos) removed += fs::remove_all(e.path) > 0;
  ASSERT_EQ(removed, 1u);
  auto broken = OpenModel("gs://bkt/m", ro, env, OpenCacheAt(cdir / "c").get());
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.error().code, Errc::kNetwork) << broken.error().message;
  EXPECT_NE(broken.error().message.find("model-00001-of-00002.safetensors is not complete"), std::string::npos)
      << broken.error().message;
}

TEST_F(Engine, CorruptedCacheChunkIsFetchedAgainNeverServed) {
  TempDir cdir;
  {
    auto o = Sim();
    o.staging_bytes = 4 * ((1 << 20) + 4096);  // slots of the cache's 1 MiB chunks
    o.cache = OpenCacheAt(cdir / "c");
    auto h = StartLoad(Remote(), o);
    ASSERT_TRUE(h.ok() && (*h)->WaitAll().ok());
  }
  // Flip one byte in the middle of some object's cached data.
  unsigned flipped = 0;
  for (const auto& e : fs::recursive_directory_iterator(cdir / "c"))
    if (e.path().filename() == "data" && flipped == 0 && fs::file_size(e.path()) > (3u << 20)) {
      std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(2500000);
      char b = 0;
      f.read(&b, 1);
      b = static_cast<char>(b ^ 0x5a);
      f.seekp(2500000);
      f.write(&b, 1);
      ++flipped;
    }
  ASSERT_EQ(flipped, 1u);
  server_->ResetStats();
  auto o = Sim();
  o.staging_bytes = 4 * ((1 << 20) + 4096);
  o.cache = OpenCacheAt(cdir / "c");
  auto h = StartLoad(Remote(), o);
  ASSERT_TRUE(h.ok()) << h.error().message;
  ASSERT_TRUE((*h)->WaitAll().ok());
  EXPECT_EQ(Digests(*(*h)->device_model()), expected_);
  EXPECT_EQ((*h)->source_stats().fetch.bytes, 1u << 20) << "exactly the corrupted chunk comes from the origin";
}

TEST_F(Engine, TwoLoadsSharingACacheFetchEachChunkOnce) {
  TempDir cdir;
  std::uint64_t data = 0;
  for (const auto& f : Local().local.files) data += f.header.data_bytes;
  server_->ResetStats();
  // Two caches opened separately (as two processes would): single flight goes through the
  // cross-process locks, not through shared memory.
  auto o1 = Sim(200e6), o2 = Sim(200e6);
  o1.staging_bytes = o2.staging_bytes = 4 * ((1 << 20) + 4096);
  o1.cache = OpenCacheAt(cdir / "c");
  o2.cache = OpenCacheAt(cdir / "c");
  auto h1 = StartLoad(Remote(), o1);
  auto h2 = StartLoad(Remote(), o2);
  ASSERT_TRUE(h1.ok() && h2.ok());
  ASSERT_TRUE((*h1)->WaitAll().ok());
  ASSERT_TRUE((*h2)->WaitAll().ok());
  EXPECT_EQ(Digests(*(*h1)->device_model()), expected_);
  EXPECT_EQ(Digests(*(*h2)->device_model()), expected_);
  EXPECT_EQ((*h1)->source_stats().fetch.bytes + (*h2)->source_stats().fetch.bytes, data) << "a chunk was fetched twice";
  EXPECT_EQ((*h1)->source_stats().cache_hit_bytes + (*h2)->source_stats().cache_hit_bytes, data);
}

TEST_F(Engine, TeeOfAFilteredLoadKeepsNoIncompleteFile) {
  TempDir out;
  auto o = Sim();
  o.filter = [](const std::string& n) { return n.find("layers.0.") != std::string::npos; };
  o.also_write_to = out / "copy";
  auto h = StartLoad(Local(), o);
  ASSERT_TRUE(h.ok()) << h.error().message;
  ASSERT_TRUE((*h)->WaitAll().ok());
  std::size_t n = 0;
  if (fs::exists(out / "copy"))
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(out / "copy")) ++n;
  EXPECT_EQ(n, 0u);
}

// A device far slower than the network: ranges wait for staging space instead of stalling on
// their connection, so a 1 s stall window never fires, and the budget holds.
TEST_F(Engine, SlowSinkNeverTripsTheStallTimerAndKeepsTheBudget) {
  auto o = Sim(3e6);  // 6 MiB at 3 MB/s: ~2 s, with a 1 s stall window
  auto h = StartLoad(Remote(1.0), o);
  ASSERT_TRUE(h.ok()) << h.error().message;
  auto st = (*h)->WaitAll();
  ASSERT_TRUE(st.ok()) << st.error().message;
  const auto& s = (*h)->device_model()->stats();
  EXPECT_LE(s.peak_staging_bytes, s.staging_budget);
  EXPECT_EQ((*h)->source_stats().fetch.retries, 0u);
  EXPECT_EQ(Digests(*(*h)->device_model()), expected_);
}

// The staging memory outlives one load and is reused by the next.
TEST_F(Engine, StagingMemoryIsReusedAcrossLoads) {
  const std::uint64_t before = StagingPoolReuses();
  for (int k = 0; k < 2; ++k) {
    auto h = StartLoad(Local(), Sim());
    ASSERT_TRUE(h.ok());
    ASSERT_TRUE((*h)->WaitAll().ok());
    EXPECT_EQ(Digests(*(*h)->device_model()), expected_);
  }
  EXPECT_GE(StagingPoolReuses(), before + 1);
}

}  // namespace
}  // namespace coldstart::loader
