// gs:// and http(s):// sources end to end against the fake GCS server on loopback: listing,
// auth, prefetch and remote loads, and every fault the server can inject.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "../common/independent.h"
#include "../common/temp_dir.h"
#include "../fetch/loopback_server.h"
#include "coldstart/fake_gcs/server.h"
#include "coldstart/cache/disk_cache.h"
#include "coldstart/core/crc32c.h"
#include "coldstart/core/hash.h"
#include "coldstart/loader/prefetch.h"
#include "coldstart/loader/remote_loader.h"
#include "coldstart/loader/synth.h"

namespace coldstart::loader {
namespace {

namespace fs = std::filesystem;
using coldstart::testing::ReadFile;
using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;
using fakegcs::FaultSpec;

// A bucket "bkt" holding a synthetic 3-shard model under "models/m/".
class RemoteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SynthOptions so;
    so.size_bytes = 6 << 20;
    so.shards = 3;
    so.seed = 9;
    ASSERT_TRUE(SynthesizeModel(root_ / "bkt/models/m", so).ok());
    fakegcs::ServerOptions o;
    o.root = root_.path();
    o.sa_key_out = root_ / "sa.json";
    o.authorized_user_out = root_ / "user.json";
    o.required_token = required_token_;
    auto s = fakegcs::Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.error().message;
    server_ = std::move(s).value();
  }

  virtual std::string required_token() { return ""; }

  fetch::RemoteOptions Options() {
    fetch::RemoteOptions o;
    o.fetch.chunk_bytes = 256 << 10;
    o.fetch.concurrency = 8;
    o.fetch.retry.initial_backoff_s = 0.01;
    o.fetch.retry.max_backoff_s = 0.05;
    o.fetch.retry.stall_timeout_s = 1;
    o.retry = o.fetch.retry;
    return o;
  }
  Env EmulatorEnv() { return Env::FromMap({{"STORAGE_EMULATOR_HOST", server_->endpoint()}, {"COLDSTART_METADATA", "off"}}); }

  std::shared_ptr<fetch::RemoteSession> Session(const std::string& url, fetch::RemoteOptions o, const Env& env) {
    auto src = fetch::ParseSource(url);
    EXPECT_TRUE(src.ok());
    auto s = fetch::RemoteSession::Open(*src, o, env);
    EXPECT_TRUE(s.ok()) << s.error().message;
    return s.ok() ? *s : nullptr;
  }
  std::shared_ptr<fetch::RemoteSession> Emulated(const std::string& url = "gs://bkt/models/m") {
    return Session(url, Options(), EmulatorEnv());
  }

  // Every file of the source folder equals its prefetched copy.
  void ExpectSameFolder(const std::string& dest) {
    for (const auto& e : fs::directory_iterator(root_ / "bkt/models/m")) {
      auto name = e.path().filename().string();
      EXPECT_EQ(ReadFile(dest + "/" + name), ReadFile(e.path().string())) << name;
    }
  }
  std::uint64_t ModelBytes() {
    std::uint64_t n = 0;
    for (const auto& e : fs::directory_iterator(root_ / "bkt/models/m")) n += e.file_size();
    return n;
  }

  TempDir root_;
  std::string required_token_;
  std::unique_ptr<fakegcs::Server> server_;
};

TEST_F(RemoteTest, ListingFollowsPagination) {
  for (int i = 0; i < 23; ++i) WriteFile(root_ / ("bkt/many/f" + std::to_string(100 + i)), "x");
  auto o = Options();
  o.list_page_size = 5;
  auto s = Session("gs://bkt/many", o, EmulatorEnv());
  server_->ResetStats();
  auto files = s->List();
  ASSERT_TRUE(files.ok()) << files.error().message;
  ASSERT_EQ(files->size(), 23u);
  EXPECT_EQ((*files)[0].name, "f100");
  EXPECT_EQ((*files)[22].name, "f122");
  EXPECT_EQ(server_->stats().requests, 5u) << "23 objects in pages of 5";
  EXPECT_TRUE((*files)[0].crc32c.has_value());
}

TEST_F(RemoteTest, MissingPrefixAndBucketAreNotFound) {
  auto s = Emulated("gs://bkt/nothing-here");
  auto files = s->List();
  ASSERT_FALSE(files.ok());
  EXPECT_EQ(files.error().code, Errc::kNotFound);
  EXPECT_NE(files.error().message.find("gs://bkt/nothing-here"), std::string::npos) << files.error().message;
}

TEST_F(RemoteTest, PrefetchCopiesVerifiesAndResumes) {
  TempDir dest;
  auto s = Emulated();
  auto r = Prefetch(*s, dest.path(), PrefetchOptions{});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->files, 5u);
  EXPECT_EQ(r->verified_crc32c, 5u);
  EXPECT_EQ(r->bytes, ModelBytes());
  ExpectSameFolder(dest.path());
  for (const auto& e : fs::directory_iterator(dest.path()))
    EXPECT_EQ(e.path().string().find(".coldstart-partial"), std::string::npos) << "no temp files left";
  // A re-run skips everything; a damaged local file is fetched again.
  auto again = Prefetch(*s, dest.path(), PrefetchOptions{});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->skipped, 5u);
  EXPECT_EQ(again->bytes, 0u);
  std::string shard = dest / "model-00002-of-00003.safetensors";
  std::string bytes = ReadFile(shard);
  bytes[bytes.size() / 2] ^= 1;
  WriteFile(shard, bytes);
  auto third = Prefetch(*s, dest.path(), PrefetchOptions{});
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(third->files, 1u);
  EXPECT_EQ(third->skipped, 4u);
  ExpectSameFolder(dest.path());
}

// A prefetch puts what it fetched (verified) into the disk cache; the next one into another
// folder copies it from there (no media bytes from the origin); a corrupted cached chunk is
// fetched instead of copied; a new generation of an object is a new entry.
TEST_F(RemoteTest, PrefetchFillsAndUsesTheDiskCache) {
  TempDir dest, cdir;
  auto s = Emulated();
  cache::DiskCacheOptions co;
  co.dir = cdir / "c";
  co.chunk_bytes = 1 << 20;
  auto c = cache::DiskCache::Open(co);
  ASSERT_TRUE(c.ok()) << c.error().message;
  PrefetchOptions po;
  po.cache = *c;
  auto r = Prefetch(*s, dest / "a", po);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->cache_hit_bytes, 0u);
  EXPECT_EQ(r->cache_filled_bytes, ModelBytes());
  server_->ResetStats();
  auto r2 = Prefetch(*s, dest / "b", po);
  ASSERT_TRUE(r2.ok()) << r2.error().message;
  EXPECT_EQ(r2->cache_hit_bytes, ModelBytes());
  EXPECT_EQ(r2->bytes, 0u);
  EXPECT_EQ(r2->verified_crc32c, 5u) << "copies from the cache are verified like downloads";
  EXPECT_EQ(server_->stats().media_bytes_sent, 0u);
  ExpectSameFolder(dest / "b");
  // One flipped byte in a cached shard: that chunk comes from the origin, the rest from the cache.
  unsigned flipped = 0;
  std::uint64_t second_chunk = 0;  // the length of the chunk with the flipped byte
  for (const auto& e : fs::recursive_directory_iterator(cdir / "c"))
    if (e.path().filename() == "data" && !flipped && fs::file_size(e.path()) > (3u << 20) / 2) {
      std::string b = ReadFile(e.path());
      b[(1 << 20) + 77] ^= 0x10;
      WriteFile(e.path(), b);
      second_chunk = std::min<std::uint64_t>(1 << 20, b.size() - (1 << 20));
      ++flipped;
    }
  ASSERT_EQ(flipped, 1u);
  auto r3 = Prefetch(*s, dest / "c", po);
  ASSERT_TRUE(r3.ok()) << r3.error().message;
  EXPECT_EQ(r3->bytes, second_chunk);
  EXPECT_EQ(r3->cache_hit_bytes + r3->bytes, ModelBytes());
  ExpectSameFolder(dest / "c");
  // An overwritten object (new generation) is not served from the old entry.
  auto gen = server_->BumpGeneration("bkt", "models/m/model-00001-of-00003.safetensors");
  (void)gen;
  auto r4 = Prefetch(*s, dest / "d", po);
  ASSERT_TRUE(r4.ok()) << r4.error().message;
  EXPECT_EQ(r4->bytes, fs::file_size(root_ / "bkt/models/m/model-00001-of-00003.safetensors"));
  ExpectSameFolder(dest / "d");
}

TEST_F(RemoteTest, PrefetchWithFsync) {
  TempDir dest;
  PrefetchOptions po;
  po.fsync = true;
  auto r = Prefetch(*Emulated(), dest.path(), po);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->files, 5u);
  ExpectSameFolder(dest.path());
}

TEST_F(RemoteTest, IncludeExcludeGlobs) {
  TempDir dest;
  auto s = Emulated();
  PrefetchOptions po;
  po.include = {"*.json"};
  po.exclude = {"config.json"};
  auto r = Prefetch(*s, dest.path(), po);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->files, 1u);
  EXPECT_TRUE(fs::exists(dest / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dest / "config.json"));
}

TEST_F(RemoteTest, RemoteLoadMatchesTheFilesAndVerifiesCrc) {
  auto rm = OpenRemoteModel(Emulated());
  ASSERT_TRUE(rm.ok()) << rm.error().message;
  EXPECT_TRUE(rm->layout.has_index);
  EXPECT_EQ(rm->layout.files.size(), 3u);
  RemoteLoadStats st;
  auto model = LoadRemoteToHost(std::move(rm).value(), HostLoadOptions{}, &st);
  ASSERT_TRUE(model.ok()) << model.error().message;
  EXPECT_TRUE(st.verified_crc32c);
  std::map<std::string, std::string> expected, got;
  for (const auto& e : fs::directory_iterator(root_ / "bkt/models/m"))
    if (e.path().extension() == ".safetensors") expected.merge(coldstart::testing::IndependentDigests(e.path().string()));
  for (const auto& t : (*model)->tensors()) got[t.entry->name] = coldstart::testing::Sha256HexOf(t.data, t.entry->nbytes);
  EXPECT_EQ(got, expected);
}

struct FaultCase {
  std::string name;
  FaultSpec fault;
  friend void PrintTo(const FaultCase& c, std::ostream* os) { *os << c.name; }
};

class RemoteFaults : public RemoteTest, public ::testing::WithParamInterface<FaultCase> {};

TEST_P(RemoteFaults, RetriedResumedAndByteIdentical) {
  FaultSpec f = GetParam().fault;
  f.object_glob = "bkt/models/m/model-00001-of-00003.safetensors";
  server_->AddFault(f);
  server_->ResetStats();
  TempDir dest;
  auto s = Emulated();
  auto r = Prefetch(*s, dest.path(), PrefetchOptions{});
  ASSERT_TRUE(r.ok()) << r.error().message;
  ExpectSameFolder(dest.path());
  EXPECT_GE(r->fetch.retries, 1u);
  // Resumption: what the server sent beyond the model's bytes is less than one chunk per fault.
  auto stats = server_->stats();
  EXPECT_EQ(stats.faults_injected, f.count);
  EXPECT_LT(stats.media_bytes_sent, ModelBytes() + f.count * (256u << 10)) << "bytes were fetched again";
}

FaultSpec Fault(FaultSpec::Kind k, std::uint64_t after = 100000, unsigned count = 1, int status = 503, double secs = 0) {
  FaultSpec f;
  f.kind = k;
  f.after_bytes = after;
  f.count = count;
  f.status = status;
  f.seconds = secs;
  return f;
}

INSTANTIATE_TEST_SUITE_P(
    Faults, RemoteFaults,
    ::testing::Values(FaultCase{"status503_twice", Fault(FaultSpec::Kind::kStatus, 0, 2, 503)},
                      FaultCase{"status429", Fault(FaultSpec::Kind::kStatus, 0, 1, 429)},
                      FaultCase{"status408", Fault(FaultSpec::Kind::kStatus, 0, 1, 408)},
                      FaultCase{"reset", Fault(FaultSpec::Kind::kReset, 100000)},
                      FaultCase{"cut_body", Fault(FaultSpec::Kind::kCutBody, 150001, 2)},
                      FaultCase{"stall", Fault(FaultSpec::Kind::kStall, 50000, 1, 0, 3.0)}),
    [](const auto& i) { return i.param.name; });

// An interrupted prefetch keeps its verified ranges: the next run fetches only the rest. A
// partial of an object that changed generation, or left the source, is removed.
TEST_F(RemoteTest, InterruptedPrefetchResumesAndDropsStalePartials) {
  TempDir dest;
  // Every range in flight at once, no retry of the stalled ones (a 20 s stall window), and the
  // run cancelled once every other byte is in: each shard then has all ranges but one done.
  auto wide = Options();
  wide.fetch.concurrency = 32;
  wide.fetch.retry.stall_timeout_s = 20;
  auto s = Session("gs://bkt/models/m", wide, EmulatorEnv());
  PrefetchOptions stop;
  const std::uint64_t all_but_stalled = ModelBytes() - 3 * ((256u << 10) - 100000);
  stop.progress = [all_but_stalled](std::uint64_t done, std::uint64_t) { return done < all_but_stalled; };
  auto partials = [&] {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(dest.path())) {
      auto n = e.path().filename().string();
      if (auto p = n.find(".coldstart-partial."); p != std::string::npos) names.insert(n.substr(1, p - 1));
    }
    return names;
  };
  // Setting up "every shard unfinished" depends on timing (under ThreadSanitizer one shard in a
  // few runs had no finished range when the cancel came): the set-up is retried, the checks
  // below are not.
  std::set<std::string> kept;
  std::string seen;
  for (int attempt = 0; attempt < 4 && kept.size() != 3; ++attempt) {
    for (const auto& e : fs::directory_iterator(dest.path())) fs::remove_all(e.path());
    server_->ClearFaults();
    // One range of each shard stalls: the rest arrives, then the run is cancelled. The stall
    // outlasts the rest of the transfer by far (12 s; the cancel ends it at once): at 3 s a
    // ThreadSanitizer run under load saw a stalled range finish first, 4 attempts in a row.
    for (const char* shard : {"1", "2", "3"}) {
      FaultSpec f = Fault(FaultSpec::Kind::kStall, 100000, 1, 0, 12.0);
      f.object_glob = std::string("bkt/models/m/model-0000") + shard + "-of-00003.safetensors";
      server_->AddFault(f);
    }
    auto first = Prefetch(*s, dest.path(), stop);
    ASSERT_FALSE(first.ok());
    EXPECT_EQ(first.error().code, Errc::kCancelled);
    kept = partials();
    seen.clear();
    for (const auto& e : fs::directory_iterator(dest.path())) seen += e.path().filename().string() + " ";
  }
  server_->ClearFaults();
  ASSERT_EQ(kept.size(), 3u) << "every shard was unfinished; left: " << seen;
  // One object is overwritten (a new generation), another leaves the source, the third resumes.
  auto it = kept.begin();
  const std::string changed = *it++, gone = *it;
  ASSERT_TRUE(server_->BumpGeneration("bkt", "models/m/" + changed).ok());
  fs::rename(root_ / ("bkt/models/m/" + gone), root_ / "gone.bin");
  server_->ResetStats();
  auto second = Prefetch(*Emulated(), dest.path(), PrefetchOptions{});
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_GT(second->resumed_bytes, 0u);
  EXPECT_GE(second->stale_removed, 2u) << "the gone object's partial and record";
  EXPECT_EQ(second->resumed_files, 1u);
  EXPECT_EQ(second->bytes + second->resumed_bytes + second->skipped_bytes, ModelBytes());
  EXPECT_EQ(server_->stats().media_bytes_sent, second->bytes) << "kept ranges are not fetched again";
  EXPECT_LT(second->bytes, ModelBytes());
  ExpectSameFolder(dest.path());
  EXPECT_FALSE(fs::exists(dest / gone));
  EXPECT_TRUE(partials().empty());
  for (const auto& e : fs::directory_iterator(dest.path())) EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
}

TEST_F(RemoteTest, CorruptionIsDetectedAndNothingIsWritten) {
  server_->AddFault(Fault(FaultSpec::Kind::kCorrupt, 70000, 0));
  TempDir dest;
  auto s = Emulated();
  PrefetchOptions po;
  po.include = {"model-00001-of-00003.safetensors"};
  auto r = Prefetch(*s, dest.path(), po);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kIntegrity);
  EXPECT_NE(r.error().message.find("CRC32C mismatch"), std::string::npos) << r.error().message;
  EXPECT_FALSE(fs::exists(dest / "model-00001-of-00003.safetensors"));
  for (const auto& e : fs::directory_iterator(dest.path()))
    EXPECT_EQ(e.path().string().find(".coldstart-partial"), std::string::npos) << "bad bytes are not kept: " << e.path();
  // The same through a remote load: never loaded.
  auto rm = OpenRemoteModel(Emulated());
  ASSERT_TRUE(rm.ok());
  auto m = LoadRemoteToHost(std::move(rm).value(), HostLoadOptions{});
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, Errc::kIntegrity);
}

TEST_F(RemoteTest, GenerationChangeMidDownloadIsDetected) {
  FaultSpec f = Fault(FaultSpec::Kind::kGenerationChange, 100000);
  f.object_glob = "bkt/models/m/model-00001-of-00003.safetensors";
  server_->AddFault(f);
  TempDir dest;
  auto r = Prefetch(*Emulated(), dest.path(), PrefetchOptions{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kIntegrity);
  EXPECT_NE(r.error().message.find("model-00001-of-00003.safetensors"), std::string::npos) << r.error().message;
  EXPECT_FALSE(fs::exists(dest / "model-00001-of-00003.safetensors"));
}

TEST_F(RemoteTest, NotRetried404And403NameTheObjectAndIdentity) {
  FaultSpec f = Fault(FaultSpec::Kind::kStatus, 0, 0, 403);
  server_->AddFault(f);
  server_->ResetStats();
  TempDir dest;
  auto r = Prefetch(*Emulated(), dest.path(), PrefetchOptions{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kPermissionDenied);
  EXPECT_NE(r.error().message.find("gs://bkt/models/m/"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("anonymous"), std::string::npos) << "names the identity: " << r.error().message;
  EXPECT_EQ(server_->stats().media_requests, 0u);
  EXPECT_LE(server_->stats().faults_injected, 8u) << "403 is not retried (one per connection at most)";
}

TEST_F(RemoteTest, BigObjectThroughManyRanges) {
  // 256 MiB through 1 MiB ranges (256+ GETs over 8 connections), one reset on the way.
  const std::uint64_t size = 256ull << 20;
  {
    fs::create_directories(root_ / "bkt/big");
    std::vector<std::uint64_t> block(1 << 17);
    std::mt19937_64 rng(1);
    std::ofstream out(root_ / "bkt/big/blob.bin", std::ios::binary);
    for (std::uint64_t w = 0; w < size; w += block.size() * 8) {
      for (auto& v : block) v = rng();
      out.write(reinterpret_cast<const char*>(block.data()), static_cast<std::streamsize>(block.size() * 8));
    }
  }
  server_->AddFault(Fault(FaultSpec::Kind::kReset, 300000));
  auto o = Options();
  o.fetch.chunk_bytes = 1 << 20;
  auto s = Session("gs://bkt/big", o, EmulatorEnv());
  TempDir dest;
  auto r = Prefetch(*s, dest.path(), PrefetchOptions{});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->bytes, size);
  EXPECT_GE(r->fetch.requests, 256u);
  EXPECT_EQ(r->verified_crc32c, 1u);
  auto crc = FileCrc32c(dest / "blob.bin");
  ASSERT_TRUE(crc.ok());
  EXPECT_EQ(*crc, *FileCrc32c(root_ / "bkt/big/blob.bin"));
}

TEST_F(RemoteTest, HeaderLargerThanTheFirstReadIsFetchedExactly) {
  // 20,000 tensors: a ~1.5 MB header, more than the first 1 MiB read of each shard.
  std::vector<TensorSpec> specs;
  for (int i = 0; i < 20000; ++i) specs.push_back({"layer." + std::to_string(i) + ".weight", DType::kF16, {3}});
  auto h = SerializeHeader(specs, {{"format", "pt"}});
  ASSERT_TRUE(h.ok());
  ASSERT_GT(h->bytes.size(), 1u << 20);
  std::string data(h->data_bytes, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  WriteFile(root_ / "bkt/wide/model.safetensors", h->bytes + data);
  auto rm = OpenRemoteModel(Emulated("gs://bkt/wide"));
  ASSERT_TRUE(rm.ok()) << rm.error().message;
  EXPECT_EQ(rm->layout.tensors.size(), 20000u);
  auto m = LoadRemoteToHost(std::move(rm).value(), HostLoadOptions{});
  ASSERT_TRUE(m.ok()) << m.error().message;
  const auto* last = (*m)->Find("layer.19999.weight");
  ASSERT_NE(last, nullptr);
  EXPECT_EQ(0, std::memcmp(last->data, data.data() + data.size() - 6, 6));
}

TEST_F(RemoteTest, HttpFolderUrlWithIndex) {
  // The fake server's XML API serves plain GETs: a folder URL whose index names the shards.
  auto s = Session(server_->endpoint() + "/bkt/models/m/", Options(), EmulatorEnv());
  auto files = s->List();
  ASSERT_TRUE(files.ok()) << files.error().message;
  EXPECT_EQ(files->size(), 5u) << "index, 3 shards, config.json";
  auto rm = OpenRemoteModel(s);
  ASSERT_TRUE(rm.ok()) << rm.error().message;
  auto m = LoadRemoteToHost(std::move(rm).value(), HostLoadOptions{});
  ASSERT_TRUE(m.ok()) << m.error().message;
}

TEST_F(RemoteTest, IndexNamingAPathOutsideTheFolderIsRefused) {
  WriteFile(root_ / "bkt/evil/model.safetensors.index.json", R"({"weight_map":{"w":"../models/m/model-00001-of-00003.safetensors"}})");
  auto s = Session(server_->endpoint() + "/bkt/evil/", Options(), EmulatorEnv());
  auto files = s->List();
  ASSERT_FALSE(files.ok());
  EXPECT_NE(files.error().message.find("escape"), std::string::npos) << files.error().message;
  EXPECT_FALSE(fetch::CheckDestinationName("/etc/passwd").ok());
  EXPECT_FALSE(fetch::CheckDestinationName("a/../../b").ok());
  EXPECT_TRUE(fetch::CheckDestinationName("sub/model.safetensors").ok());
}

class RemoteAuthTest : public RemoteTest {
 protected:
  void SetUp() override {
    required_token_ = "secret-token-123";
    RemoteTest::SetUp();
  }
  fetch::RemoteOptions WithEndpoint() {
    auto o = Options();
    o.endpoint = server_->endpoint();  // not an emulator: credentials are resolved
    return o;
  }
  void ExpectLoads(fetch::RemoteOptions o, const Env& env) {
    auto s = Session("gs://bkt/models/m", o, env);
    ASSERT_NE(s, nullptr);
    auto rm = OpenRemoteModel(s);
    ASSERT_TRUE(rm.ok()) << rm.error().message;
    EXPECT_TRUE(LoadRemoteToHost(std::move(rm).value(), HostLoadOptions{}).ok());
  }
};

TEST_F(RemoteAuthTest, ExplicitToken) {
  auto o = WithEndpoint();
  o.auth.access_token = "secret-token-123";
  ExpectLoads(o, Env::FromMap({{"COLDSTART_METADATA", "off"}}));
}

TEST_F(RemoteAuthTest, ServiceAccountJwtVerifiedByTheServer) {
  server_->ResetStats();
  ExpectLoads(WithEndpoint(), Env::FromMap({{"GOOGLE_APPLICATION_CREDENTIALS", root_ / "sa.json"}, {"COLDSTART_METADATA", "off"}}));
  EXPECT_EQ(server_->stats().token_requests, 1u) << "one token, cached";
}

TEST_F(RemoteAuthTest, AuthorizedUser) {
  ExpectLoads(WithEndpoint(), Env::FromMap({{"GOOGLE_APPLICATION_CREDENTIALS", root_ / "user.json"}, {"COLDSTART_METADATA", "off"}}));
}

TEST_F(RemoteAuthTest, GcloudApplicationDefaultCredentials) {
  fs::create_directories(root_ / "gcloud");
  fs::copy_file(root_ / "user.json", root_ / "gcloud/application_default_credentials.json");
  ExpectLoads(WithEndpoint(), Env::FromMap({{"CLOUDSDK_CONFIG", root_ / "gcloud"}, {"COLDSTART_METADATA", "off"}}));
}

TEST_F(RemoteAuthTest, MetadataServer) {
  std::string host = server_->endpoint().substr(7);  // 127.0.0.1:PORT
  ExpectLoads(WithEndpoint(), Env::FromMap({{"GCE_METADATA_HOST", host}, {"CLOUDSDK_CONFIG", root_ / "none"}}));
}

TEST_F(RemoteAuthTest, AnonymousIsRefusedWith401AndNoSecretInTheMessage) {
  auto o = WithEndpoint();
  o.auth.anonymous = true;
  auto s = Session("gs://bkt/models/m", o, Env::FromMap({{"COLDSTART_METADATA", "off"}}));
  auto files = s->List();
  ASSERT_FALSE(files.ok());
  EXPECT_EQ(files.error().code, Errc::kPermissionDenied);
  EXPECT_EQ(files.error().http_status, 401);
  EXPECT_EQ(files.error().message.find("secret-token-123"), std::string::npos);
}

// A server that ignores Range (200 with the whole body) or answers with a Content-Range that
// starts before what was asked: bytes must still land in the right places.
TEST(RangeFetcherOddServers, IgnoredRangeAndShiftedContentRange) {
  std::string body(3 << 20, '\0');
  std::mt19937_64 rng(5);
  for (auto& c : body) c = static_cast<char>(rng());
  coldstart::testing::LoopbackServer loop;
  httplib::Server& svr = loop.server();
  // httplib applies Range itself unless the request's parsed ranges are dropped.
  auto no_ranges = [](const httplib::Request& req) { const_cast<httplib::Request&>(req).ranges.clear(); };
  svr.Get("/full", [&](const httplib::Request& req, httplib::Response& res) {
    no_ranges(req);
    res.set_content(body, "application/octet-stream");
  });
  svr.Get("/shifted", [&](const httplib::Request& req, httplib::Response& res) {
    // Serve from 4 KiB below the requested start (some CDNs align ranges).
    no_ranges(req);
    auto r = req.get_header_value("Range");
    std::uint64_t a = std::stoull(r.substr(6, r.find('-') - 6)), b = std::stoull(r.substr(r.find('-') + 1));
    std::uint64_t start = a >= 4096 ? a - 4096 : 0;
    res.status = 206;
    res.set_header("Content-Range", "bytes " + std::to_string(start) + "-" + std::to_string(b) + "/" + std::to_string(body.size()));
    res.set_content(body.substr(start, b - start + 1), "application/octet-stream");
  });
  loop.Start();
  const int port = loop.port();
  for (const char* path : {"/full", "/shifted"}) {
    fetch::RemoteObject obj{path, "http://127.0.0.1:" + std::to_string(port) + path, body.size(), 0};
    fetch::FetchOptions fo;
    fo.chunk_bytes = 300000;
    fo.concurrency = 4;
    auto ranges = fetch::ChunkObjects(std::span(&obj, 1), fo.chunk_bytes);
    std::string out(body.size(), '\0');
    std::vector<std::uint32_t> crcs(ranges.size());
    fetch::FetchCallbacks cb;
    cb.acquire = [&](std::size_t i) { return reinterpret_cast<std::byte*>(out.data() + ranges[i].offset); };
    cb.done = [&](std::size_t i, std::byte*, std::uint32_t crc) { crcs[i] = crc; return OkStatus(); };
    fetch::FetchStats st;
    auto s = fetch::RangeFetcher(fo).Fetch(std::span(&obj, 1), ranges, cb, &st);
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_TRUE(out == body) << path;
    EXPECT_GT(st.discarded_bytes, 0u) << path;
    for (std::size_t i = 0; i < ranges.size(); ++i)
      EXPECT_EQ(crcs[i], Crc32c(body.data() + ranges[i].offset, ranges[i].length));
  }
}

}  // namespace
}  // namespace coldstart::loader

namespace coldstart::loader {
namespace {

// An HTTP object with no version at all (no ETag, no Last-Modified) is never cached: a rewrite
// of the same size could not be told apart. The load and the prefetch still work, uncached.
TEST(RemoteHttpCache, ObjectsWithoutAVersionAreNeverCached) {
  TempDir d, cdir;
  SynthOptions so;
  so.shards = 1;
  ASSERT_TRUE(SynthesizeModel(d / "m", so).ok());
  const std::string body = coldstart::testing::ReadFile(d / "m/model.safetensors");
  coldstart::testing::LoopbackServer loop;
  loop.server().set_keep_alive_timeout(1);  // the transport keeps its connections: let stop() be quick
  loop.server().Get("/model.safetensors", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(body, "application/octet-stream");  // no ETag, no Last-Modified
  });
  loop.Start();
  const std::string url = "http://127.0.0.1:" + std::to_string(loop.port()) + "/model.safetensors";
  auto src = fetch::ParseSource(url);
  auto s = fetch::RemoteSession::Open(*src, fetch::RemoteOptions{}, Env::FromMap({{"COLDSTART_METADATA", "off"}}));
  ASSERT_TRUE(s.ok());
  cache::DiskCacheOptions co;
  co.dir = cdir / "c";
  auto c = cache::DiskCache::Open(co);
  ASSERT_TRUE(c.ok());
  auto rm = OpenRemoteModel(*s, c->get());
  ASSERT_TRUE(rm.ok()) << rm.error().message;
  EXPECT_TRUE(rm->files[0].version.empty());
  HostLoadOptions ho;
  ho.cache = *c;
  RemoteLoadStats st;
  auto m = LoadRemoteToHost(std::move(rm).value(), ho, &st);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(st.cache_filled_bytes, 0u);
  PrefetchOptions po;
  po.cache = *c;
  auto p = Prefetch(**s, d / "copy", po);
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(p->cache_filled_bytes, 0u);
  EXPECT_EQ((*c)->List()->size(), 0u) << "an unversioned object was cached";
}

// A plain HTTP server whose only checksum is an MD5 in x-goog-hash: loads and prefetches are
// verified by MD5, and a wrong MD5 is an integrity error.
TEST(RemoteMd5, VerifiedByMd5WhenThereIsNoCrc32c) {
  TempDir d;
  SynthOptions so;
  so.shards = 1;
  ASSERT_TRUE(SynthesizeModel(d / "m", so).ok());
  const std::string body = coldstart::testing::ReadFile(d / "m/model.safetensors");
  Md5 md5;
  md5.Update(body.data(), body.size());
  const std::string good = md5.Base64Digest();
  const std::string wrong = Base64Encode(std::string(16, 'x'));
  // Switched while the server runs: atomic, as the server's threads read it (a plain string
  // assigned here raced the handler under ThreadSanitizer).
  std::atomic<bool> serve_wrong{false};
  coldstart::testing::LoopbackServer loop;
  httplib::Server& svr = loop.server();
  svr.set_keep_alive_timeout(1);  // the transport keeps its connections: let stop() be quick (was 5 s)
  svr.Get("/model.safetensors", [&](const httplib::Request&, httplib::Response& res) {
    res.set_header("x-goog-hash", "md5=" + (serve_wrong.load() ? wrong : good));
    res.set_content(body, "application/octet-stream");  // httplib answers Range itself
  });
  loop.Start();
  const int port = loop.port();
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/model.safetensors";
  auto open = [&]() {
    auto src = fetch::ParseSource(url);
    auto s = fetch::RemoteSession::Open(*src, fetch::RemoteOptions{}, Env::FromMap({{"COLDSTART_METADATA", "off"}}));
    EXPECT_TRUE(s.ok());
    return *s;
  };
  auto rm = OpenRemoteModel(open());
  ASSERT_TRUE(rm.ok()) << rm.error().message;
  EXPECT_FALSE(rm->files[0].crc32c.has_value());
  RemoteLoadStats st;
  auto m = LoadRemoteToHost(std::move(rm).value(), HostLoadOptions{}, &st);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(st.verified_md5, 1u);
  TempDir dest;
  auto p = Prefetch(*open(), dest.path(), PrefetchOptions{});
  ASSERT_TRUE(p.ok()) << p.error().message;
  EXPECT_EQ(p->verified_md5, 1u);
  serve_wrong.store(true);
  auto bad = OpenRemoteModel(open());
  ASSERT_TRUE(bad.ok());
  auto m2 = LoadRemoteToHost(std::move(bad).value(), HostLoadOptions{});
  ASSERT_FALSE(m2.ok());
  EXPECT_EQ(m2.error().code, Errc::kIntegrity);
  EXPECT_NE(m2.error().message.find("MD5 mismatch"), std::string::npos);
}

}  // namespace
}  // namespace coldstart::loader
