// The staging pipeline on the stand-in device (and the CUDA engine's refusal without a GPU):
// correctness, ordering, back-pressure, the budget, cancellation and every error path.
#include "coldstart/loader/device_loader.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <mutex>

#include "../common/independent.h"
#include "../common/temp_dir.h"
#include "coldstart/fake_gcs/server.h"
#include "coldstart/loader/synth.h"

namespace coldstart::loader {
namespace {

namespace fs = std::filesystem;
using coldstart::testing::TempDir;

class DeviceLoad : public ::testing::Test {
 protected:
  void SetUp() override {
    SynthOptions so;
    so.size_bytes = 8 << 20;
    so.shards = 3;
    so.seed = 21;
    ASSERT_TRUE(SynthesizeModel(dir_ / "bkt/m", so).ok());
    for (const auto& e : fs::directory_iterator(dir_ / "bkt/m"))
      if (e.path().extension() == ".safetensors") expected_.merge(coldstart::testing::IndependentDigests(e.path().string()));
  }
  ModelLayout Layout() {
    auto l = OpenLocalModel(dir_ / "bkt/m");
    EXPECT_TRUE(l.ok());
    return std::move(l).value();
  }
  DeviceLoadOptions Options() {
    DeviceLoadOptions o;
    o.device = {DeviceKind::kSim, 0};
    o.chunk_bytes = 256 << 10;
    o.staging_bytes = 4 * ((256 << 10) + 4096);
    o.sim.bytes_per_second = 2e9;
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
  std::map<std::string, std::string> expected_;
};

TEST_F(DeviceLoad, LocalThroughTheRingIsByteExactAndEveryTensorBecomesReady) {
  auto o = Options();
  std::mutex mu;
  std::map<std::string, int> ready;
  o.on_ready = [&](const DeviceTensor& t) {
    std::lock_guard lk(mu);
    ++ready[t.entry->name];
  };
  auto m = LoadLocalToDevice(Layout(), o);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(Digests(**m), expected_);
  ASSERT_EQ(ready.size(), expected_.size());
  for (const auto& [n, c] : ready) EXPECT_EQ(c, 1) << n;
  const auto& s = (*m)->stats();
  EXPECT_LE(s.peak_staging_bytes, s.staging_budget);
  EXPECT_EQ(s.staging_budget, 4u * ((256 << 10) + 4096));
  EXPECT_GT(s.copies, 30u);
  EXPECT_EQ(s.h2d_bytes, s.fetch_bytes);
  EXPECT_GT(s.h2d_seconds, 0.0);
}

TEST_F(DeviceLoad, BackPressureKeepsTheBudgetWhenTheCopyEngineIsSlow) {
  auto o = Options();
  o.sim.bytes_per_second = 40e6;  // 8 MiB at 40 MB/s: ~0.2 s, far slower than the disk
  auto m = LoadLocalToDevice(Layout(), o);
  ASSERT_TRUE(m.ok()) << m.error().message;
  const auto& s = (*m)->stats();
  EXPECT_EQ(s.peak_staging_bytes, s.staging_budget) << "the disk filled the whole ring and then waited";
  EXPECT_GT(s.h2d_seconds, 0.15);
  EXPECT_GT(s.fetch_seconds, 0.1) << "fetching waited for copies";
  EXPECT_EQ(Digests(**m), expected_);
}

TEST_F(DeviceLoad, LayerOrderAndLargestFirstDecideWhatIsReadyFirst) {
  for (auto order : {LoadOrder::kLayer, LoadOrder::kLargestFirst}) {
    auto o = Options();
    o.order = order;
    std::mutex mu;
    std::vector<const TensorEntry*> seq;
    o.on_ready = [&](const DeviceTensor& t) {
      std::lock_guard lk(mu);
      seq.push_back(t.entry);
    };
    auto m = LoadLocalToDevice(Layout(), o);
    ASSERT_TRUE(m.ok()) << m.error().message;
    ASSERT_EQ(seq.size(), expected_.size());
    EXPECT_EQ(seq.front()->name, "model.embed_tokens.weight");  // embeddings: first layer-wise and largest
    if (order == LoadOrder::kLayer) {
      int last = -1;
      for (const auto* e : seq) {
        auto p = e->name.find("layers.");
        if (p == std::string::npos) continue;
        int layer = std::atoi(e->name.c_str() + p + 7);
        EXPECT_GE(layer, last) << e->name;
        last = layer;
      }
      EXPECT_EQ(seq.back()->name, "model.norm.weight");
    } else {
      for (std::size_t i = 1; i < seq.size(); ++i) EXPECT_GE(seq[i - 1]->nbytes, seq[i]->nbytes);
    }
    EXPECT_EQ(Digests(**m), expected_);
  }
}

TEST_F(DeviceLoad, FilterLoadsASubset) {
  auto o = Options();
  o.filter = [](const std::string& n) { return n.find("layers.0.") != std::string::npos; };
  auto m = LoadLocalToDevice(Layout(), o);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ((*m)->tensors().size(), 13u);
  std::uint64_t bytes = 0;
  for (const auto& t : (*m)->tensors()) bytes += t.entry->nbytes;
  EXPECT_EQ((*m)->stats().fetch_bytes, bytes);
  for (const auto& [n, d] : Digests(**m)) EXPECT_EQ(d, expected_[n]);
  o.filter = [](const std::string&) { return false; };
  auto none = LoadLocalToDevice(Layout(), o);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, Errc::kNotFound);
}

TEST_F(DeviceLoad, Bf16ConversionOnTheDevice) {
  for (auto conv : {Conversion::kBf16ToF32, Conversion::kBf16ToF16}) {
    auto o = Options();
    o.bf16_conversion = conv;
    o.chunk_bytes = (100 << 10) + 1;  // odd: cuts must still fall between elements
    auto m = LoadLocalToDevice(Layout(), o);
    ASSERT_TRUE(m.ok()) << m.error().message;
    auto host = LoadToHost(Layout(), HostLoadOptions{});
    ASSERT_TRUE(host.ok());
    for (const auto& t : (*m)->tensors()) {
      EXPECT_EQ(t.dtype, conv == Conversion::kBf16ToF32 ? DType::kF32 : DType::kF16);
      const auto* h = (*host)->Find(t.entry->name);
      std::vector<std::byte> want(t.nbytes), got(t.nbytes);
      if (conv == Conversion::kBf16ToF32) ConvertBf16ToF32(h->data, t.entry->nbytes / 2, want.data());
      else ConvertBf16ToF16(h->data, t.entry->nbytes / 2, want.data());
      ASSERT_TRUE((*m)->ReadBack(t, got.data()).ok());
      ASSERT_EQ(want, got) << t.entry->name;
    }
  }
}

TEST_F(DeviceLoad, CancelFromProgress) {
  auto o = Options();
  o.sim.bytes_per_second = 20e6;
  int calls = 0;
  o.progress = [&](std::uint64_t, std::uint64_t) { return ++calls < 2; };
  auto m = LoadLocalToDevice(Layout(), o);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, Errc::kCancelled);
}

TEST_F(DeviceLoad, CopyFailureMidModel) {
  auto o = Options();
  o.sim.fail_after_bytes = 3 << 20;
  auto m = LoadLocalToDevice(Layout(), o);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, Errc::kIo);
  EXPECT_NE(m.error().message.find("injected copy failure"), std::string::npos);
}

TEST_F(DeviceLoad, LocalReadFailureMidModel) {
  auto layout = Layout();
  fs::resize_file(dir_ / "bkt/m/model-00002-of-00003.safetensors", 1000);
  auto m = LoadLocalToDevice(std::move(layout), Options());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, Errc::kIntegrity);
}

TEST_F(DeviceLoad, SameSizeRewriteDuringTheReadsIsRefused) {
  DeviceLoadOptions o = Options();
  const std::string shard = dir_ / "bkt/m/model-00001-of-00003.safetensors";
  bool rewritten = false;
  o.progress = [&](std::uint64_t, std::uint64_t) {
    if (!rewritten) {
      struct stat st {};
      EXPECT_EQ(::stat(shard.c_str(), &st), 0);
      std::FILE* f = std::fopen(shard.c_str(), "r+b");
      EXPECT_NE(f, nullptr);
      std::fseek(f, -16, SEEK_END);
      std::fwrite("0123456789abcdef", 1, 16, f);
      std::fclose(f);
      timespec times[2] = {st.st_atim, st.st_mtim};
      times[1].tv_sec += 3;
      EXPECT_EQ(::utimensat(AT_FDCWD, shard.c_str(), times, 0), 0);
    }
    rewritten = true;
    return true;
  };
  auto m = LoadLocalToDevice(Layout(), o);
  ASSERT_TRUE(rewritten);
  ASSERT_FALSE(m.ok()) << "a mix of old and new bytes was reported as loaded";
  EXPECT_EQ(m.error().code, Errc::kIntegrity);
  EXPECT_NE(m.error().message.find("model-00001-of-00003.safetensors: changed while loading"), std::string::npos)
      << m.error().message;
}

TEST_F(DeviceLoad, DiscardModeChecksumsWithoutKeepingBytes) {
  auto o = Options();
  o.sim.keep_bytes = false;
  auto m = LoadLocalToDevice(Layout(), o);
  ASSERT_TRUE(m.ok()) << m.error().message;
  std::vector<std::byte> b(16);
  auto st = (*m)->ReadBack((*m)->tensors().front(), b.data());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::kUnavailable);
}

TEST_F(DeviceLoad, CudaWithoutAGpuIsOneClearError) {
  auto o = Options();
  o.device = {DeviceKind::kCuda, 0};
  auto engine = MakeCopyEngine(o);
  if (engine.ok()) GTEST_SKIP() << "a CUDA device is present: " << (*engine)->Describe();
  EXPECT_EQ(engine.error().code, Errc::kUnavailable);
  EXPECT_EQ(engine.error().message.find('\n'), std::string::npos);
  auto m = LoadLocalToDevice(Layout(), o);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, Errc::kUnavailable);
}

TEST_F(DeviceLoad, CallerProvidedDeviceMemoryAndTheLoaderFacade) {
  auto o = Options();
  std::vector<std::byte> mine;
  std::uint64_t asked = 0;
  o.allocator = [&](std::uint64_t bytes) -> Result<DeviceBuffer> {
    asked = bytes;
    mine.resize(bytes + 256);
    auto p = reinterpret_cast<std::uintptr_t>(mine.data());
    p = (p + 255) / 256 * 256;
    return DeviceBuffer(p, bytes, nullptr);
  };
  auto m = Loader(dir_ / "bkt/m", o).Load(Env::FromMap({}));
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_GE(asked, (*m)->stats().fetch_bytes);
  EXPECT_GE((*m)->tensors().front().data, reinterpret_cast<std::uintptr_t>(mine.data()));
  EXPECT_EQ(Digests(**m), expected_);
  o.allocator = [](std::uint64_t) -> Result<DeviceBuffer> { return DeviceBuffer(4096, 16, nullptr); };
  auto small = Loader(dir_ / "bkt/m", o).Load(Env::FromMap({}));
  ASSERT_FALSE(small.ok());
  EXPECT_EQ(small.error().code, Errc::kInvalidArgument);
}

TEST(DeviceSpecs, Parse) {
  EXPECT_EQ(ParseDevice("cuda:3")->index, 3);
  EXPECT_EQ(ParseDevice("sim")->kind, DeviceKind::kSim);
  EXPECT_EQ(ParseDevice("cpu")->ToString(), "cpu");
  for (const char* bad : {"gpu", "cuda:", "cuda:x", "cuda:-1", "tpu"}) EXPECT_FALSE(ParseDevice(bad).ok()) << bad;
  EXPECT_FALSE(ParseLoadOrder("random").ok());
}

// Remote source through the ring, with a fault and a failure.
class DeviceLoadRemote : public DeviceLoad {
 protected:
  void SetUp() override {
    DeviceLoad::SetUp();
    fakegcs::ServerOptions so;
    so.root = dir_.path();
    auto s = fakegcs::Server::Start(so);
    ASSERT_TRUE(s.ok());
    server_ = std::move(s).value();
  }
  Result<RemoteModel> Open() {
    fetch::RemoteOptions ro;
    ro.fetch.chunk_bytes = 256 << 10;
    ro.fetch.retry.initial_backoff_s = 0.01;
    ro.retry = ro.fetch.retry;
    auto src = fetch::ParseSource("gs://bkt/m");
    auto s = fetch::RemoteSession::Open(*src, ro, Env::FromMap({{"STORAGE_EMULATOR_HOST", server_->endpoint()}}));
    if (!s.ok()) return std::move(s).error();
    return OpenRemoteModel(*s);
  }
  std::unique_ptr<fakegcs::Server> server_;
};

TEST_F(DeviceLoadRemote, GcsIntoTheRingWithARetryAndCrcVerified) {
  fakegcs::FaultSpec f;
  f.kind = fakegcs::FaultSpec::Kind::kReset;
  f.after_bytes = 100000;
  server_->AddFault(f);
  auto rm = Open();
  ASSERT_TRUE(rm.ok()) << rm.error().message;
  auto o = Options();
  o.staging_bytes = 3 * ((256 << 10) + 4096);  // fewer slots than the fetch concurrency
  auto m = LoadRemoteToDevice(std::move(rm).value(), o);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_TRUE((*m)->stats().crc32c_verified);
  EXPECT_LE((*m)->stats().peak_staging_bytes, (*m)->stats().staging_budget);
  EXPECT_EQ(Digests(**m), expected_);
}

TEST_F(DeviceLoadRemote, FetchFailureMidModel) {
  fakegcs::FaultSpec f;
  f.kind = fakegcs::FaultSpec::Kind::kStatus;
  f.status = 404;
  f.count = 0;
  f.object_glob = "bkt/m/model-00002-of-00003.safetensors";
  auto rm = Open();
  ASSERT_TRUE(rm.ok());
  server_->AddFault(f);
  auto m = LoadRemoteToDevice(std::move(rm).value(), Options());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, Errc::kNotFound);
  EXPECT_NE(m.error().message.find("model-00002-of-00003.safetensors"), std::string::npos) << m.error().message;
}

}  // namespace
}  // namespace coldstart::loader
