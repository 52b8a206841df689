// synth -> layout -> load round trips, checked against an independent reading of the files.
#include "coldstart/loader/host_loader.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>

#include "../common/independent.h"
#include "../common/temp_dir.h"
#include "coldstart/loader/synth.h"

namespace coldstart::loader {
namespace {

using coldstart::testing::IndependentDigests;
using coldstart::testing::Sha256HexOf;
using coldstart::testing::TempDir;

std::map<std::string, std::string> FolderDigests(const std::string& dir) {
  std::map<std::string, std::string> all;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") all.merge(IndependentDigests(e.path().string()));
  return all;
}

std::map<std::string, std::string> LoadedDigests(const HostModel& m) {
  std::map<std::string, std::string> out;
  for (const auto& t : m.tensors()) out[t.entry->name] = Sha256HexOf(t.data, t.entry->nbytes);
  return out;
}

class HostLoad : public ::testing::TestWithParam<fetch::IoEngine> {};

TEST_P(HostLoad, SynthShardedRoundTripMatchesIndependentRead) {
  if (GetParam() == fetch::IoEngine::kUring && !fetch::UringAvailable()) GTEST_SKIP() << "no io_uring";
  TempDir d;
  SynthOptions so;
  so.size_bytes = 6 << 20;
  so.shards = 3;
  so.seed = 7;
  auto rep = SynthesizeModel(d.path(), so);
  ASSERT_TRUE(rep.ok()) << rep.error().message;
  EXPECT_EQ(rep->files.size(), 5u);  // 3 shards + config.json + index
  EXPECT_TRUE(std::filesystem::exists(d / "model.safetensors.index.json"));
  EXPECT_TRUE(std::filesystem::exists(d / "model-00002-of-00003.safetensors"));

  auto layout = OpenLocalModel(d.path());
  ASSERT_TRUE(layout.ok()) << layout.error().message;
  EXPECT_EQ(layout->tensors.size(), rep->tensors);
  EXPECT_EQ(layout->total_bytes, rep->tensor_bytes);

  HostLoadOptions o;
  o.read.engine = GetParam();
  o.read.direct = fetch::DirectIo::kOn;
  o.read.chunk_bytes = 256 << 10;
  std::uint64_t seen_total = 0;
  o.progress = [&](std::uint64_t, std::uint64_t total) { seen_total = total; return true; };
  auto model = LoadToHost(std::move(layout).value(), o);
  ASSERT_TRUE(model.ok()) << model.error().message;
  EXPECT_EQ((*model)->stats().bytes, rep->tensor_bytes);
  EXPECT_EQ(seen_total, rep->tensor_bytes);
  EXPECT_EQ(LoadedDigests(**model), FolderDigests(d.path()));
}

INSTANTIATE_TEST_SUITE_P(Engines, HostLoad, ::testing::Values(fetch::IoEngine::kUring, fetch::IoEngine::kPread),
                         [](const auto& i) { return i.param == fetch::IoEngine::kUring ? "uring" : "pread"; });

TEST(Synth, SameSeedSameTensorsWhateverTheSharding) {
  TempDir a, b, c;
  SynthOptions o;
  o.seed = 3;
  o.shards = 1;
  ASSERT_TRUE(SynthesizeModel(a.path(), o).ok());
  EXPECT_TRUE(std::filesystem::exists(a / "model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(a / "model.safetensors.index.json"));
  o.shards = 2;
  ASSERT_TRUE(SynthesizeModel(b.path(), o).ok());
  o.seed = 4;
  ASSERT_TRUE(SynthesizeModel(c.path(), o).ok());
  auto da = FolderDigests(a.path()), db = FolderDigests(b.path()), dc = FolderDigests(c.path());
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc);
  EXPECT_GT(da.size(), 20u);
}

TEST(Synth, RewritingWithFewerShardsLeavesNoStaleShard) {
  TempDir d;
  SynthOptions o;
  o.shards = 3;
  ASSERT_TRUE(SynthesizeModel(d.path(), o).ok());
  o.shards = 1;
  ASSERT_TRUE(SynthesizeModel(d.path(), o).ok());
  EXPECT_FALSE(std::filesystem::exists(d / "model-00001-of-00003.safetensors"));
  auto layout = OpenLocalModel(d.path());
  ASSERT_TRUE(layout.ok()) << layout.error().message;
  EXPECT_EQ(layout->files.size(), 1u);
}

TEST(Synth, SizeIsApproximatelyHonoured) {
  TempDir d;
  SynthOptions o;
  o.preset = "gemma-3-270m";
  o.size_bytes = 64 << 20;
  auto r = SynthesizeModel(d.path(), o);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_GT(r->tensor_bytes, 48u << 20);
  EXPECT_LT(r->tensor_bytes, 80u << 20);
  auto cfg = coldstart::testing::ReadFile(d / "config.json");
  EXPECT_NE(cfg.find("\"model_type\": \"gemma3_text\""), std::string::npos);
}

TEST(Synth, BadPresetAndTooManyShards) {
  TempDir d;
  SynthOptions o;
  o.preset = "gpt-5";
  auto r = SynthesizeModel(d.path(), o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("tiny"), std::string::npos) << "lists the presets";
  o.preset = "tiny";
  o.shards = 1000;
  EXPECT_FALSE(SynthesizeModel(d.path(), o).ok());
}

TEST(HostLoad, CancelFromProgressLeavesNoModel) {
  TempDir d;
  SynthOptions so;
  so.size_bytes = 32 << 20;
  ASSERT_TRUE(SynthesizeModel(d.path(), so).ok());
  auto layout = OpenLocalModel(d.path());
  ASSERT_TRUE(layout.ok());
  HostLoadOptions o;
  o.read.chunk_bytes = 4096;
  o.read.queue_depth = 1;
  o.read.threads = 1;
  o.read.direct = fetch::DirectIo::kOn;  // uncached reads: slow enough to see a tick
  o.progress = [](std::uint64_t, std::uint64_t) { return false; };
  auto m = LoadToHost(std::move(layout).value(), o);
  if (m.ok()) GTEST_SKIP() << "load finished before the first progress tick";
  EXPECT_EQ(m.error().code, Errc::kCancelled);
}

TEST(HostLoad, FileChangedSinceHeaderWasRead) {
  TempDir d;
  ASSERT_TRUE(SynthesizeModel(d.path(), SynthOptions{}).ok());
  auto layout = OpenLocalModel(d.path());
  ASSERT_TRUE(layout.ok());
  std::filesystem::resize_file(d / "model.safetensors", std::filesystem::file_size(d / "model.safetensors") + 10);
  auto m = LoadToHost(std::move(layout).value(), HostLoadOptions{});
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, Errc::kIntegrity);
  EXPECT_NE(m.error().message.find("changed while loading"), std::string::npos) << m.error().message;
}

TEST(HostLoad, OnlyTheFilteredTensorsAreReadAndSliced) {
  TempDir d;
  SynthOptions so;
  so.shards = 2;
  ASSERT_TRUE(SynthesizeModel(d.path(), so).ok());
  auto layout = OpenLocalModel(d.path());
  ASSERT_TRUE(layout.ok());
  std::uint64_t want_bytes = 0;
  std::size_t want = 0;
  for (const auto& t : layout->tensors)
    if (t.name.find("layers.0.") != std::string::npos) want_bytes += t.nbytes, ++want;
  ASSERT_GT(want, 1u);
  HostLoadOptions o;
  o.filter = [](const std::string& name) { return name.find("layers.0.") != std::string::npos; };
  auto m = LoadToHost(std::move(layout).value(), o);
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ((*m)->tensors().size(), want);
  EXPECT_EQ((*m)->stats().bytes, want_bytes) << "only the selected tensors' bytes are read";
  auto all = FolderDigests(d.path());
  for (const auto& [name, digest] : LoadedDigests(**m)) EXPECT_EQ(digest, all.at(name)) << name;

  o.filter = [](const std::string&) { return false; };
  auto none = LoadToHost(std::move(OpenLocalModel(d.path())).value(), o);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, Errc::kNotFound);
  EXPECT_NE(none.error().message.find("no tensor matches"), std::string::npos) << none.error().message;
}

// Rewrites `path` in place: same inode and size, other bytes, mtime moved forward.
void RewriteSameSize(const std::string& path) {
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  std::string bytes = coldstart::testing::ReadFile(path);
  for (std::size_t i = bytes.size() / 2; i < bytes.size(); ++i) bytes[i] = static_cast<char>(bytes[i] ^ 0x5a);
  std::FILE* f = std::fopen(path.c_str(), "r+b");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
  std::fclose(f);
  timespec times[2] = {st.st_atim, st.st_mtim};
  times[1].tv_sec += 3;
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

TEST(HostLoad, SameSizeRewriteAfterTheHeaderWasReadIsRefused) {
  TempDir d;
  ASSERT_TRUE(SynthesizeModel(d.path(), SynthOptions{}).ok());
  auto layout = OpenLocalModel(d.path());
  ASSERT_TRUE(layout.ok());
  RewriteSameSize(d / "model.safetensors");
  auto m = LoadToHost(std::move(layout).value(), HostLoadOptions{});
  ASSERT_FALSE(m.ok()) << "the size still matches: only the identity shows the change";
  EXPECT_EQ(m.error().code, Errc::kIntegrity);
  EXPECT_NE(m.error().message.find("changed while loading (since its header was read: modified at"), std::string::npos)
      << m.error().message;
}

TEST(HostLoad, SameSizeRewriteDuringTheReadsIsRefused) {
  TempDir d;
  ASSERT_TRUE(SynthesizeModel(d.path(), SynthOptions{}).ok());
  auto layout = OpenLocalModel(d.path());
  ASSERT_TRUE(layout.ok());
  HostLoadOptions o;
  bool rewritten = false;
  // The progress callback runs on the loading thread while the reads are under way (at the
  // latest once they are all done, before the load returns): rewrite the file there.
  o.progress = [&](std::uint64_t, std::uint64_t) {
    if (!rewritten) RewriteSameSize(d / "model.safetensors");
    rewritten = true;
    return true;
  };
  auto m = LoadToHost(std::move(layout).value(), o);
  ASSERT_TRUE(rewritten);
  ASSERT_FALSE(m.ok()) << "a mix of old and new bytes was reported as loaded";
  EXPECT_EQ(m.error().code, Errc::kIntegrity);
  EXPECT_NE(m.error().message.find("model.safetensors: changed while loading (modified at"), std::string::npos)
      << m.error().message;
}

}  // namespace
}  // namespace coldstart::loader
