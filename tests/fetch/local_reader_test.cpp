// Both local read engines, with and without O_DIRECT, on unaligned ranges, tiny chunks and
// depth 1 (forcing many requests), plus every failure a disk can hand us.
#include "coldstart/fetch/local_reader.h"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <tuple>

#include "../common/temp_dir.h"

namespace coldstart::fetch {
namespace {

using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;

std::string RandomBytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// An aligned buffer so tests can choose congruent or incongruent destinations.
struct AlignedBuffer {
  explicit AlignedBuffer(std::size_t n) : size(n + 2 * kDirectAlign) {
    p = static_cast<std::byte*>(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  }
  ~AlignedBuffer() { ::munmap(p, size); }
  std::byte* p;
  std::size_t size;
};

using EngineParam = std::tuple<IoEngine, DirectIo>;

class LocalReaderTest : public ::testing::TestWithParam<EngineParam> {
 protected:
  void SetUp() override {
    if (std::get<0>(GetParam()) == IoEngine::kUring && !UringAvailable())
      GTEST_SKIP() << "io_uring is not available on this kernel";
  }
  LocalReadOptions Options(std::uint64_t chunk = 64 << 10, unsigned depth = 4, unsigned threads = 3) {
    LocalReadOptions o;
    o.engine = std::get<0>(GetParam());
    o.direct = std::get<1>(GetParam());
    o.chunk_bytes = chunk;
    o.queue_depth = depth;
    o.threads = threads;
    return o;
  }
};

TEST_P(LocalReaderTest, UnalignedRangesLandExactly) {
  TempDir d;
  const std::string a = RandomBytes(3 * 1024 * 1024 + 123, 1), b = RandomBytes(777777, 2);
  WriteFile(d / "a", a);
  WriteFile(d / "b", b);
  auto files = LocalFileSet::Open({d / "a", d / "b"}, std::get<1>(GetParam()));
  ASSERT_TRUE(files.ok()) << files.error().message;
  AlignedBuffer buf(a.size() + b.size() + 3 * kDirectAlign);
  // Range 1: congruent to its offset (direct-eligible middle); range 2: deliberately not;
  // range 3: the whole second file; range 4: empty.
  std::byte* d1 = buf.p + (100 % kDirectAlign);
  std::byte* d2 = d1 + 2'000'000 + 1;
  std::vector<ReadRange> ranges = {{0, 100, 2'000'000, d1},
                                   {0, 2'000'100, a.size() - 2'000'100, d2},
                                   {1, 0, b.size(), buf.p + a.size() + 2 * kDirectAlign},
                                   {1, 5, 0, nullptr}};
  auto reader = LocalReader::Create(Options());
  ASSERT_TRUE(reader.ok()) << reader.error().message;
  LocalReadStats stats;
  std::uint64_t last_progress = 0;
  auto st = (*reader)->Read(*files, ranges, [&](std::uint64_t done) { last_progress = done; return true; }, &stats);
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ(0, std::memcmp(d1, a.data() + 100, 2'000'000));
  EXPECT_EQ(0, std::memcmp(d2, a.data() + 2'000'100, a.size() - 2'000'100));
  EXPECT_EQ(0, std::memcmp(buf.p + a.size() + 2 * kDirectAlign, b.data(), b.size()));
  EXPECT_EQ(stats.bytes, a.size() - 100 + b.size());
  EXPECT_EQ(last_progress, stats.bytes);
  EXPECT_GT(stats.requests, 40u) << "64 KiB chunks over ~3.7 MB";
  if (std::get<1>(GetParam()) == DirectIo::kOn && (*files).file(0).direct_fd >= 0) {
    EXPECT_GT(stats.direct_bytes, 1'900'000u) << "the congruent range's middle went direct";
    EXPECT_LT(stats.direct_bytes, stats.bytes) << "edges and the incongruent range went buffered";
  }
  if (std::get<1>(GetParam()) == DirectIo::kOff) {
    EXPECT_EQ(stats.direct_bytes, 0u);
  }
}

TEST_P(LocalReaderTest, DepthOneAndOneThreadStillCorrect) {
  TempDir d;
  const std::string a = RandomBytes(1 << 20, 3);
  WriteFile(d / "a", a);
  auto files = LocalFileSet::Open({d / "a"}, std::get<1>(GetParam()));
  ASSERT_TRUE(files.ok());
  AlignedBuffer buf(a.size());
  std::vector<ReadRange> r = {{0, 0, a.size(), buf.p}};
  auto reader = LocalReader::Create(Options(4096, 1, 1));
  ASSERT_TRUE(reader.ok());
  ASSERT_TRUE((*reader)->Read(*files, r).ok());
  EXPECT_EQ(0, std::memcmp(buf.p, a.data(), a.size()));
}

TEST_P(LocalReaderTest, FileTruncatedAfterOpenIsAnErrorNamingTheFile) {
  TempDir d;
  const std::string a = RandomBytes(1 << 20, 4);
  WriteFile(d / "a", a);
  auto files = LocalFileSet::Open({d / "a"}, std::get<1>(GetParam()));
  ASSERT_TRUE(files.ok());
  ASSERT_EQ(0, ::truncate((d / "a").c_str(), 300000));
  AlignedBuffer buf(a.size());
  std::vector<ReadRange> r = {{0, 0, a.size(), buf.p}};
  auto reader = LocalReader::Create(Options());
  auto st = (*reader)->Read(*files, r);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::kIntegrity);
  EXPECT_NE(st.error().message.find(d / "a"), std::string::npos) << st.error().message;
  EXPECT_NE(st.error().message.find("unexpected end of file"), std::string::npos) << st.error().message;
}

TEST_P(LocalReaderTest, RangePastEndIsRefusedBeforeReading) {
  TempDir d;
  WriteFile(d / "a", RandomBytes(1000, 5));
  auto files = LocalFileSet::Open({d / "a"}, std::get<1>(GetParam()));
  ASSERT_TRUE(files.ok());
  AlignedBuffer buf(4096);
  std::vector<ReadRange> r = {{0, 900, 200, buf.p}};
  auto st = (*LocalReader::Create(Options()))->Read(*files, r);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("past the end"), std::string::npos);
}

TEST_P(LocalReaderTest, ProgressCallbackCancels) {
  TempDir d;
  const std::string a = RandomBytes(8 << 20, 6);
  WriteFile(d / "a", a);
  auto files = LocalFileSet::Open({d / "a"}, std::get<1>(GetParam()));
  ASSERT_TRUE(files.ok());
  AlignedBuffer buf(a.size());
  std::vector<ReadRange> r = {{0, 0, a.size(), buf.p}};
  // 4 KiB chunks, depth 1, one thread: slow enough that the first 100 ms tick comes first.
  auto reader = LocalReader::Create(Options(4096, 1, 1));
  int calls = 0;
  auto st = (*reader)->Read(*files, r, [&](std::uint64_t) { ++calls; return false; });
  if (st.ok()) GTEST_SKIP() << "the read finished before the first progress tick";
  EXPECT_EQ(st.error().code, Errc::kCancelled);
  EXPECT_EQ(calls, 1) << "no more callbacks after cancelling";
}

INSTANTIATE_TEST_SUITE_P(Engines, LocalReaderTest,
                         ::testing::Combine(::testing::Values(IoEngine::kUring, IoEngine::kPread),
                                            ::testing::Values(DirectIo::kOff, DirectIo::kOn)),
                         [](const auto& info) {
                           return std::string(std::get<0>(info.param) == IoEngine::kUring ? "uring" : "pread") +
                                  (std::get<1>(info.param) == DirectIo::kOn ? "_direct" : "_buffered");
                         });

TEST(LocalFileSet, MissingFileAndFolder) {
  TempDir d;
  auto m = LocalFileSet::Open({d / "missing"}, DirectIo::kOff);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, Errc::kNotFound);
  EXPECT_EQ(m.error().sys_errno, ENOENT);
  auto f = LocalFileSet::Open({d.path()}, DirectIo::kOff);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.error().message.find("not a regular file"), std::string::npos);
}

TEST(LocalFileSet, AutoDirectFollowsPageCacheResidency) {
  TempDir d;
  WriteFile(d / "a", RandomBytes(8 << 20, 7));
  auto files = LocalFileSet::Open({d / "a"}, DirectIo::kAuto);
  ASSERT_TRUE(files.ok());
  // Just written, so it is in the page cache: auto must choose buffered reads.
  auto res = PageCacheResidency(files->file(0).fd, files->file(0).size);
  ASSERT_TRUE(res.ok());
  if (*res >= 0.5) {
    EXPECT_EQ(files->file(0).direct_fd, -1);
  }
}

TEST(LocalReadOptions, EnvOverridesAndStrictParsing) {
  LocalReadOptions o;
  ASSERT_TRUE(o.ApplyEnv(Env::FromMap({{"COLDSTART_IO_ENGINE", "pread"},
                                       {"COLDSTART_READ_CHUNK", "1MiB"},
                                       {"COLDSTART_READ_THREADS", "3"},
                                       {"COLDSTART_DIRECT_IO", "off"}}))
                  .ok());
  EXPECT_EQ(o.engine, IoEngine::kPread);
  EXPECT_EQ(o.chunk_bytes, 1u << 20);
  EXPECT_EQ(o.threads, 3u);
  EXPECT_EQ(o.direct, DirectIo::kOff);
  LocalReadOptions bad;
  auto st = bad.ApplyEnv(Env::FromMap({{"COLDSTART_READ_CHUNK", "lots"}}));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("COLDSTART_READ_CHUNK"), std::string::npos);
  EXPECT_FALSE(LocalReadOptions{}.ApplyEnv(Env::FromMap({{"COLDSTART_IO_ENGINE", "aio"}})).ok());
  EXPECT_FALSE(LocalReadOptions{}.ApplyEnv(Env::FromMap({{"COLDSTART_READ_CHUNK", "2GiB"}})).ok());
}

}  // namespace
}  // namespace coldstart::fetch

// ---- a file that changes under a load (issue 7: a same-size rewrite loaded a mix) ----------

namespace coldstart::fetch {
namespace {

// Rewrites `path` in place (same inode, same size) and moves its mtime `seconds` forward, so
// the change is visible even on a file system with coarse timestamps.
void RewriteInPlace(const std::string& path, char fill, int seconds) {
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  std::string bytes(static_cast<std::size_t>(st.st_size), fill);
  std::FILE* f = std::fopen(path.c_str(), "r+b");
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
  std::fclose(f);
  timespec times[2] = {st.st_atim, st.st_mtim};
  times[1].tv_sec += seconds;
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

TEST(LocalFileSetIdentity, UnchangedFilesPass) {
  TempDir d;
  WriteFile(d / "a", RandomBytes(10000, 1));
  auto files = LocalFileSet::Open({d / "a"}, DirectIo::kOff);
  ASSERT_TRUE(files.ok()) << files.error().message;
  EXPECT_TRUE(files->file(0).identity.known());
  EXPECT_EQ(files->file(0).identity.size, 10000u);
  auto st = files->CheckUnchanged();
  EXPECT_TRUE(st.ok()) << st.error().message;
}

TEST(LocalFileSetIdentity, SameSizeRewriteInPlaceIsAnIntegrityError) {
  TempDir d;
  WriteFile(d / "a", RandomBytes(10000, 2));
  auto files = LocalFileSet::Open({d / "a"}, DirectIo::kOff);
  ASSERT_TRUE(files.ok()) << files.error().message;
  RewriteInPlace(d / "a", 'x', 5);
  auto st = files->CheckUnchanged();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::kIntegrity);
  EXPECT_EQ(st.error().message.rfind(d / "a", 0), 0u) << "names the file: " << st.error().message;
  EXPECT_NE(st.error().message.find("changed while loading (modified at "), std::string::npos) << st.error().message;
}

TEST(LocalFileSetIdentity, PathReplacedByAnotherFileIsAnIntegrityError) {
  TempDir d;
  WriteFile(d / "a", RandomBytes(10000, 3));
  WriteFile(d / "b", RandomBytes(10000, 4));
  auto files = LocalFileSet::Open({d / "a"}, DirectIo::kOff);
  ASSERT_TRUE(files.ok());
  ASSERT_EQ(std::rename((d / "b").c_str(), (d / "a").c_str()), 0);
  auto st = files->CheckUnchanged();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::kIntegrity);
  EXPECT_NE(st.error().message.find("replaced by another file"), std::string::npos) << st.error().message;
}

TEST(LocalFileSetIdentity, OpenComparesWithTheIdentitySeenEarlier) {
  TempDir d;
  WriteFile(d / "a", RandomBytes(10000, 5));
  struct stat st {};
  ASSERT_EQ(::stat((d / "a").c_str(), &st), 0);
  const FileIdentity seen = FileIdentity::FromStat(st);
  auto same = LocalFileSet::Open({d / "a"}, DirectIo::kOff, {seen});
  EXPECT_TRUE(same.ok());
  EXPECT_TRUE(LocalFileSet::Open({d / "a"}, DirectIo::kOff, {FileIdentity{}}).ok()) << "unknown: not compared";
  RewriteInPlace(d / "a", 'y', 7);
  auto changed = LocalFileSet::Open({d / "a"}, DirectIo::kOff, {seen});
  ASSERT_FALSE(changed.ok());
  EXPECT_EQ(changed.error().code, Errc::kIntegrity);
  EXPECT_NE(changed.error().message.find("since its header was read"), std::string::npos) << changed.error().message;
}

TEST(LocalFileSetErrors, OpenMapsErrnoToTheDocumentedCodes) {
  EXPECT_EQ(ErrcFromErrno(EACCES), Errc::kPermissionDenied);
  EXPECT_EQ(ErrcFromErrno(EPERM), Errc::kPermissionDenied);
  EXPECT_EQ(ErrcFromErrno(ENOENT), Errc::kNotFound);
  EXPECT_EQ(ErrcFromErrno(ELOOP), Errc::kNotFound);
  EXPECT_EQ(ErrcFromErrno(ENOSPC), Errc::kResourceExhausted);
  EXPECT_EQ(ErrcFromErrno(EIO), Errc::kIo);
  TempDir d;
  ASSERT_EQ(::symlink("loop", (d / "loop").c_str()), 0);
  auto loop = LocalFileSet::Open({d / "loop"}, DirectIo::kOff);
  ASSERT_FALSE(loop.ok());
  EXPECT_EQ(loop.error().code, Errc::kNotFound);
  EXPECT_EQ(loop.error().sys_errno, ELOOP);
}

}  // namespace
}  // namespace coldstart::fetch
