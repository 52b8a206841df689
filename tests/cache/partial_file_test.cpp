// cache::PartialFile and cache::FileLock: unique temporary names, one writer per file, bytes
// verified on disk before the rename, resume from verified ranges, stale leftovers removed.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <thread>

#include "../common/temp_dir.h"
#include "coldstart/cache/partial_file.h"
#include "coldstart/core/crc32c.h"

namespace coldstart::cache {
namespace {

namespace fs = std::filesystem;
using coldstart::testing::ReadFile;
using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;

std::string Pattern(std::size_t n, unsigned seed) {
  std::string s(n, '\0');
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : s) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

Status WriteRange(PartialFile& f, const std::string& bytes, std::uint64_t off, std::uint64_t len) {
  CS_RETURN_IF_ERROR(f.Write(off, reinterpret_cast<const std::byte*>(bytes.data() + off), len));
  return f.RangeDone(off, len, Crc32c(bytes.data() + off, len));
}

Result<PartialFile> OpenFile(const std::string& path, std::uint64_t size, std::string identity, PartialFileOptions o = {}) {
  CS_ASSIGN_OR_RETURN(auto lock, FileLock::Acquire(path));
  return PartialFile::Open(std::move(lock), size, std::move(identity), std::move(o));
}

TEST(PartialFile, WritesVerifiesOnDiskAndRenames) {
  TempDir d;
  const std::string bytes = Pattern(1 << 20, 1), path = d / "f.bin";
  auto f = OpenFile(path, bytes.size(), "gen=1");
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_NE(f->partial_path(), path);
  EXPECT_EQ(fs::path(f->partial_path()).parent_path(), fs::path(path).parent_path()) << "same folder: atomic rename";
  EXPECT_EQ(f->missing_ranges(), (std::vector<std::pair<std::uint64_t, std::uint64_t>>{{0, bytes.size()}}));
  // Ranges finish in any order, from several threads.
  std::vector<std::thread> th;
  for (int k = 3; k >= 0; --k)
    th.emplace_back([&, k] { ASSERT_TRUE(WriteRange(*f, bytes, k * (256u << 10), 256u << 10).ok()); });
  for (auto& t : th) t.join();
  ExpectedChecksums want;
  want.crc32c = Crc32c(bytes);
  auto v = f->Commit(want);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(*v, Verified::kCrc32c);
  EXPECT_EQ(ReadFile(path), bytes);
  EXPECT_EQ(Entries(d.path()), std::vector<std::string>{"f.bin"}) << "no lock, partial or record left";
}

// The fault that made two prefetches report success over a file of zero pages: the CRC of
// the bytes received matched, the file did not. Now the file itself is read back.
TEST(PartialFile, BytesChangedOnDiskAfterTheyArrivedAreCaught) {
  TempDir d;
  const std::string bytes = Pattern(300000, 2), path = d / "f.bin";
  auto f = OpenFile(path, bytes.size(), "gen=1");
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(WriteRange(*f, bytes, 0, bytes.size()).ok());
  {
    std::fstream other(f->partial_path(), std::ios::in | std::ios::out | std::ios::binary);
    other.seekp(4096);
    other.write(std::string(4096, '\0').data(), 4096);  // another writer's zero page
  }
  ExpectedChecksums want;
  want.crc32c = Crc32c(bytes);
  auto v = f->Commit(want);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.error().code, Errc::kIntegrity);
  EXPECT_NE(v.error().message.find("bytes on disk differ"), std::string::npos) << v.error().message;
  EXPECT_TRUE(Entries(d.path()).empty()) << "nothing under the final name, no partial left";
}

TEST(PartialFile, ChecksumMismatchAndFailedValidationLeaveNothing) {
  TempDir d;
  const std::string bytes = Pattern(5000, 3), path = d / "f.bin";
  {
    auto f = OpenFile(path, bytes.size(), "gen=1");
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(WriteRange(*f, bytes, 0, bytes.size()).ok());
    ExpectedChecksums want;
    want.crc32c = Crc32c(bytes) ^ 1;
    auto v = f->Commit(want);
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.error().code, Errc::kIntegrity);
    EXPECT_NE(v.error().message.find("CRC32C mismatch"), std::string::npos);
    EXPECT_TRUE(Entries(d.path()).empty());
  }
  auto f = OpenFile(path, bytes.size(), "gen=1");
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(WriteRange(*f, bytes, 0, bytes.size()).ok());
  int seen_fd = -1;
  auto v = f->Commit({}, [&](int fd, std::uint64_t size) -> Status {
    seen_fd = fd;
    EXPECT_EQ(size, bytes.size());
    return MakeError(Errc::kFormat, "not what we want");
  });
  ASSERT_FALSE(v.ok());
  EXPECT_GE(seen_fd, 0);
  EXPECT_EQ(v.error().code, Errc::kFormat);
  EXPECT_TRUE(Entries(d.path()).empty());
}

TEST(PartialFile, MissingBytesAreNeverCommitted) {
  TempDir d;
  const std::string bytes = Pattern(8192, 4);
  auto f = OpenFile(d / "f.bin", bytes.size(), "");
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(WriteRange(*f, bytes, 0, 4096).ok());
  auto v = f->Commit({});
  ASSERT_FALSE(v.ok());
  EXPECT_TRUE(Entries(d.path()).empty());
}

TEST(FileLock, OneWriterAtATimeTheOtherWaits) {
  TempDir d;
  const std::string path = d / "f.bin";
  auto a = FileLock::Acquire(path);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->waited());
  LockOptions nowait;
  nowait.wait = false;
  auto busy = FileLock::Acquire(path, nowait);
  ASSERT_FALSE(busy.ok());
  EXPECT_EQ(busy.error().code, Errc::kUnavailable);
  auto tried = FileLock::TryAcquire(path);
  ASSERT_TRUE(tried.ok());
  EXPECT_FALSE(tried->has_value());
  std::atomic<bool> got{false}, told{false};
  std::thread waiter([&] {
    LockOptions o;
    o.on_wait = [&] { told = true; };
    auto b = FileLock::Acquire(path, o);
    ASSERT_TRUE(b.ok());
    EXPECT_TRUE(b->waited());
    got = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(got.load());
  a->Release();
  waiter.join();
  EXPECT_TRUE(got.load());
  EXPECT_TRUE(told.load());
  EXPECT_TRUE(Entries(d.path()).empty()) << "lock files are removed on release";
  // A wait can be cancelled.
  auto c = FileLock::Acquire(path);
  ASSERT_TRUE(c.ok());
  LockOptions cancel;
  cancel.cancelled = [] { return true; };
  auto e = FileLock::Acquire(path, cancel);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().code, Errc::kCancelled);
}

TEST(PartialFile, PlantedSymlinksAreNeverFollowed) {
  TempDir d;
  const std::string victim = d / "victim", path = d / "f.bin";
  WriteFile(victim, "precious");
  // At the lock's name: refused.
  ASSERT_EQ(::symlink(victim.c_str(), (d / ".f.bin.coldstart-lock").c_str()), 0);
  auto l = FileLock::Acquire(path);
  ASSERT_FALSE(l.ok());
  EXPECT_NE(l.error().message.find("symbolic link"), std::string::npos) << l.error().message;
  ::unlink((d / ".f.bin.coldstart-lock").c_str());
  // At the temporary name, planted between the folder scan and the create (a race): skipped.
  const std::string bytes = Pattern(10000, 5);
  int calls = 0;
  std::string planted;
  PartialFileOptions o;
  o.random = [&]() -> std::uint64_t {
    if (++calls == 1) {
      planted = d / ".f.bin.coldstart-partial.0000000000000001";
      EXPECT_EQ(::symlink(victim.c_str(), planted.c_str()), 0);
      return 1;
    }
    return static_cast<std::uint64_t>(calls);
  };
  auto f = OpenFile(path, bytes.size(), "gen=1", o);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_NE(f->partial_path(), planted);
  ASSERT_TRUE(WriteRange(*f, bytes, 0, bytes.size()).ok());
  ASSERT_TRUE(f->Commit({}).ok());
  EXPECT_EQ(ReadFile(victim), "precious");
  EXPECT_EQ(ReadFile(path), bytes);
  // A resume record naming a symlink: the link is not opened, the bytes are fetched again.
  ::unlink(path.c_str());
  {
    auto g = OpenFile(path, bytes.size(), "gen=2");
    ASSERT_TRUE(g.ok());
    ASSERT_TRUE(WriteRange(*g, bytes, 0, 5000).ok());
    const std::string p = g->partial_path();
    g->Abandon(true);
    ASSERT_TRUE(fs::exists(p));
    fs::remove(p);
    ASSERT_EQ(::symlink(victim.c_str(), p.c_str()), 0);
  }
  auto g = OpenFile(path, bytes.size(), "gen=2");
  ASSERT_TRUE(g.ok()) << g.error().message;
  EXPECT_EQ(g->kept_bytes(), 0u);
  ASSERT_TRUE(WriteRange(*g, bytes, 0, bytes.size()).ok());
  ASSERT_TRUE(g->Commit({}).ok());
  EXPECT_EQ(ReadFile(victim), "precious");
  EXPECT_EQ(ReadFile(path), bytes);
}

TEST(PartialFile, ResumesFromRangesThatStillVerify) {
  TempDir d;
  const std::string bytes = Pattern(1 << 20, 6), path = d / "f.bin";
  const std::uint64_t q = bytes.size() / 4;
  std::string partial;
  {
    auto f = OpenFile(path, bytes.size(), "gen=7");
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(WriteRange(*f, bytes, 0, q).ok());
    ASSERT_TRUE(WriteRange(*f, bytes, 2 * q, q).ok());
    ASSERT_TRUE(f->Write(3 * q, reinterpret_cast<const std::byte*>(bytes.data() + 3 * q), 100).ok());  // unfinished
    EXPECT_TRUE(f->resumable());
    partial = f->partial_path();
  }  // destroyed: kept for resume
  ASSERT_TRUE(fs::exists(partial));
  ASSERT_TRUE(fs::exists(d / ".f.bin.coldstart-resume"));
  EXPECT_FALSE(fs::exists(d / ".f.bin.coldstart-lock"));
  {
    std::fstream other(partial, std::ios::in | std::ios::out | std::ios::binary);
    other.seekp(static_cast<std::streamoff>(2 * q + 10));
    other.put('\x55' ^ bytes[2 * q + 10]);  // the second range no longer verifies
  }
  std::ofstream(d / ".f.bin.coldstart-resume", std::ios::app | std::ios::binary) << "torn";  // half a record
  auto f = OpenFile(path, bytes.size(), "gen=7");
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ(f->partial_path(), partial);
  EXPECT_EQ(f->kept_bytes(), q);
  ASSERT_EQ(f->kept_ranges().size(), 1u);
  EXPECT_EQ(f->kept_ranges()[0].offset, 0u);
  EXPECT_EQ(f->missing_ranges(), (std::vector<std::pair<std::uint64_t, std::uint64_t>>{{q, bytes.size() - q}}));
  ASSERT_TRUE(WriteRange(*f, bytes, q, bytes.size() - q).ok());
  ExpectedChecksums want;
  want.crc32c = Crc32c(bytes);
  ASSERT_TRUE(f->Commit(want).ok());
  EXPECT_EQ(ReadFile(path), bytes);
  EXPECT_EQ(Entries(d.path()), std::vector<std::string>{"f.bin"});
}

TEST(PartialFile, AnotherIdentityOrNoneNeverResumes) {
  TempDir d;
  const std::string bytes = Pattern(20000, 8), path = d / "f.bin";
  {
    auto f = OpenFile(path, bytes.size(), "gen=1");
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(WriteRange(*f, bytes, 0, 10000).ok());
  }
  auto g = OpenFile(path, bytes.size(), "gen=2");  // the object changed
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->kept_bytes(), 0u);
  ASSERT_TRUE(WriteRange(*g, bytes, 0, 10000).ok());
  g->Abandon(true);
  std::size_t partials = 0;
  for (const auto& e : Entries(d.path())) partials += e.find(".coldstart-partial.") != std::string::npos;
  EXPECT_EQ(partials, 1u) << "the other generation's bytes were removed";
  {
    auto h = OpenFile(path, bytes.size(), "");  // nothing identifies the object
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(h->kept_bytes(), 0u);
    ASSERT_TRUE(WriteRange(*h, bytes, 0, 10000).ok());
    EXPECT_FALSE(h->resumable());
  }
  EXPECT_TRUE(Entries(d.path()).empty()) << "unidentifiable bytes are never kept";
  {
    auto k = OpenFile(path, bytes.size(), "gen=3");
    ASSERT_TRUE(k.ok());
    k->Abandon(true);  // nothing verified: nothing worth keeping
  }
  EXPECT_TRUE(Entries(d.path()).empty());
}

TEST(PartialFile, RemoveStaleTakesOnlyUnwantedAndUnlockedLeftovers) {
  TempDir d;
  const std::string bytes = Pattern(4096, 9);
  for (const char* name : {"gone.bin", "kept.bin", "busy.bin"}) {
    auto f = OpenFile(d / name, bytes.size(), "gen=1");
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(WriteRange(*f, bytes, 0, 2048).ok());
  }
  WriteFile(d / "old.bin.coldstart-partial", "old scheme");
  const std::string victim = d / "victim";
  WriteFile(victim, "precious");
  ASSERT_EQ(::symlink(victim.c_str(), (d / ".gone.bin.coldstart-partial.deadbeef").c_str()), 0);
  auto busy = FileLock::Acquire(d / "busy.bin");
  ASSERT_TRUE(busy.ok());
  auto n = PartialFile::RemoveStale(d.path(), [](const std::string& name) { return name == "kept.bin"; });
  ASSERT_TRUE(n.ok()) << n.error().message;
  EXPECT_EQ(*n, 4u);  // gone's partial, record and planted link; the old-scheme file
  EXPECT_EQ(ReadFile(victim), "precious");
  std::size_t kept = 0, busy_left = 0;
  for (const auto& e : Entries(d.path())) {
    EXPECT_EQ(e.find("gone.bin"), std::string::npos) << e;
    EXPECT_EQ(e.find("old.bin"), std::string::npos) << e;
    kept += e.find("kept.bin") != std::string::npos;
    busy_left += e.find("busy.bin") != std::string::npos;
  }
  EXPECT_EQ(kept, 2u);
  EXPECT_EQ(busy_left, 3u) << "partial, record and the held lock";
}

}  // namespace
}  // namespace coldstart::cache
