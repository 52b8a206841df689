// The disk cache: keys, chunk fill and read-back, CRC checks, torn slots, kill -9 at random
// moments, single flight across processes, eviction, listings, verify and clear.
#include "coldstart/cache/disk_cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <thread>

#include "../common/temp_dir.h"
#include "coldstart/core/crc32c.h"
#include "coldstart/core/hash.h"

namespace coldstart::cache {
namespace {

using coldstart::testing::TempDir;
using namespace std::chrono_literals;

constexpr std::uint64_t kChunk = 4096;

ObjectKey Key(std::string name, std::uint64_t size, std::string version = "1") {
  return ObjectKey{"gs://bucket@http://127.0.0.1:1", std::move(name), std::move(version), size};
}

// Chunk c's bytes of object `salt`: every byte depends on both.
std::vector<std::byte> Pattern(std::uint64_t salt, std::size_t c, std::size_t len) {
  std::vector<std::byte> b(len);
  std::mt19937_64 rng(salt * 1000003 + c);
  for (auto& x : b) x = static_cast<std::byte>(rng());
  return b;
}

std::shared_ptr<DiskCache> OpenCache(const std::string& dir, std::uint64_t chunk = kChunk, std::uint64_t max_bytes = 0,
                                     bool fsync = false) {
  DiskCacheOptions o;
  o.dir = dir;
  o.chunk_bytes = chunk;
  o.max_bytes = max_bytes;
  o.fsync = fsync;
  auto c = DiskCache::Open(o);
  EXPECT_TRUE(c.ok()) << c.error().ToString();
  return c.ok() ? *c : nullptr;
}

std::shared_ptr<CacheEntry> MustOpen(DiskCache& cache, const ObjectKey& key) {
  auto e = cache.OpenEntry(key);
  EXPECT_TRUE(e.ok()) << e.error().ToString();
  return e.ok() ? *e : nullptr;
}

// Claims and fills every chunk not yet present with Pattern(salt, c).
void FillAll(CacheEntry& e, std::uint64_t salt) {
  for (std::size_t c = 0; c < e.chunk_count(); ++c) {
    ChunkClaim claim;
    auto st = e.Claim(c, &claim);
    ASSERT_TRUE(st.ok()) << st.error().ToString();
    if (*st != ClaimState::kClaimed) continue;
    auto bytes = Pattern(salt, c, e.ChunkLength(c));
    auto f = e.Fill(std::move(claim), bytes.data(), Crc32c(bytes.data(), bytes.size()));
    ASSERT_TRUE(f.ok()) << f.error().ToString();
  }
}

void ExpectReadsBack(CacheEntry& e, std::uint64_t salt) {
  for (std::size_t c = 0; c < e.chunk_count(); ++c) {
    std::vector<std::byte> got(e.ChunkLength(c));
    auto st = e.ReadChunk(c, got.data());
    ASSERT_TRUE(st.ok()) << c << ": " << st.error().ToString();
    EXPECT_EQ(got, Pattern(salt, c, got.size())) << "chunk " << c;
  }
}

std::string EntryDir(const std::string& dir, const ObjectKey& key) {
  const std::string text = key.ToString();
  const std::string h = Sha256Hex(std::span(reinterpret_cast<const std::byte*>(text.data()), text.size()));
  return dir + "/entries/" + h.substr(0, 2) + "/" + h;
}

void SetLastUse(const std::string& entry_dir, std::int64_t unix_seconds) {
  struct timespec ts[2] = {{unix_seconds, 0}, {unix_seconds, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, (entry_dir + "/use").c_str(), ts, 0), 0);
}

void FlipByte(const std::string& path, std::uint64_t offset) {
  int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  unsigned char b = 0;
  ASSERT_EQ(::pread(fd, &b, 1, static_cast<off_t>(offset)), 1);
  b ^= 0x40;
  ASSERT_EQ(::pwrite(fd, &b, 1, static_cast<off_t>(offset)), 1);
  ::close(fd);
}

TEST(DiskCache, KeysRoundTripAndANewVersionIsANewEntry) {
  ObjectKey k{"https://host:8080", "odd\nname%0A.safetensors", "\"etag\"", 12345};
  auto back = ObjectKey::Parse(k.ToString());
  ASSERT_TRUE(back.ok()) << back.error().ToString();
  EXPECT_EQ(*back, k);
  EXPECT_FALSE(ObjectKey::Parse("origin x\nname y\n").ok());
  EXPECT_FALSE(ObjectKey::Parse("origin x\nname y\nversion z\nsize -1\n").ok());

  TempDir d;
  auto cache = OpenCache(d.path());
  auto v1 = MustOpen(*cache, Key("m.safetensors", 3 * kChunk, "1"));
  auto v1_again = MustOpen(*cache, Key("m.safetensors", 3 * kChunk, "1"));
  EXPECT_EQ(v1.get(), v1_again.get()) << "one object per key in a process (claims are shared)";
  FillAll(*v1, 1);
  auto v2 = MustOpen(*cache, Key("m.safetensors", 3 * kChunk, "2"));
  EXPECT_NE(v1->data_path(), v2->data_path());
  EXPECT_EQ(v2->present_bytes(), 0u) << "a new generation never sees the old one's bytes";
  EXPECT_TRUE(v1->Complete());
  // The size is part of the key too (HTTP: ETag and size).
  auto other_size = MustOpen(*cache, Key("m.safetensors", 3 * kChunk + 1, "1"));
  EXPECT_EQ(other_size->present_bytes(), 0u);
}

TEST(DiskCache, AKeyFileOfAnotherObjectIsNeverServed) {
  TempDir d;
  auto cache = OpenCache(d.path());
  const auto key = Key("a.safetensors", 2 * kChunk);
  { FillAll(*MustOpen(*cache, key), 5); }
  // What a hash collision (or a corrupted key file) looks like: the folder of `key` holding the
  // key of another object.
  coldstart::testing::WriteFile(EntryDir(d.path(), key) + "/key", Key("b.safetensors", 2 * kChunk).ToString());
  auto e = cache->OpenEntry(key);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().code, Errc::kFormat);
  EXPECT_NE(e.error().message.find(EntryDir(d.path(), key)), std::string::npos) << e.error().message;
  EXPECT_FALSE(cache->FindEntry(key).ok());
  auto list = cache->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 1u);
  EXPECT_FALSE((*list)[0].problem.empty());
  EXPECT_EQ(cache->UsedBytes(), 0u) << "an unservable entry holds no usable bytes";
  auto v = cache->Verify();
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(v->corrupt_entries, 1u);
  auto again = cache->OpenEntry(key);
  ASSERT_TRUE(again.ok()) << again.error().ToString();
  EXPECT_EQ((*again)->present_bytes(), 0u);  // A damaged entry (its data file gone) is a kFormat error naming it, never "not found".
  again->reset();
  std::filesystem::remove(EntryDir(d.path(), key) + "/data");
  auto damaged = cache->FindEntry(key);
  ASSERT_FALSE(damaged.ok());
  EXPECT_EQ(damaged.error().code, Errc::kFormat) << damaged.error().ToString();
  EXPECT_NE(damaged.error().message.find("no data file"), std::string::npos);
  auto ev = cache->EvictToFit(1ull << 40);
  ASSERT_TRUE(ev.ok());
  EXPECT_EQ(ev->entries_removed, 1u) << "unusable entries are evicted whatever the cap";
}

TEST(DiskCache, FillThenReadBackAcrossOpens) {
  TempDir d;
  const auto key = Key("model.safetensors", 3 * kChunk + 100);  // a short last chunk
  {
    auto cache = OpenCache(d.path());
    auto e = MustOpen(*cache, key);
    ASSERT_EQ(e->chunk_count(), 4u);
    EXPECT_EQ(e->ChunkLength(3), 100u);
    EXPECT_FALSE(e->Present(0));
    std::vector<std::byte> buf(kChunk);
    EXPECT_EQ(e->ReadChunk(0, buf.data()).error().code, Errc::kNotFound);
    FillAll(*e, 7);
    EXPECT_TRUE(e->Complete());
    EXPECT_EQ(e->present_bytes(), key.size);
    ExpectReadsBack(*e, 7);
  }
  // Another open (another process, later) finds the same bytes; the chunk size of an existing
  // cache wins over the options.
  auto cache = OpenCache(d.path(), 8 * kChunk);
  EXPECT_EQ(cache->chunk_bytes(), kChunk);
  auto found = cache->FindEntry(key);
  ASSERT_TRUE(found.ok()) << found.error().ToString();
  ExpectReadsBack(**found, 7);
  EXPECT_EQ((*found)->SlotCrc(3), Crc32c(Pattern(7, 3, 100).data(), 100));
  EXPECT_EQ(cache->FindEntry(Key("missing", 10)).error().code, Errc::kNotFound);
  EXPECT_EQ(cache->UsedBytes(), key.size);
  // Parts laid end to end fill one chunk.
  auto e2 = MustOpen(*cache, Key("parts", 2 * kChunk));
  ChunkClaim claim;
  ASSERT_EQ(*e2->Claim(1, &claim), ClaimState::kClaimed);
  auto bytes = Pattern(9, 1, kChunk);
  ASSERT_TRUE(e2->Fill(std::move(claim), {{bytes.data(), 1000}, {bytes.data() + 1000, kChunk - 1000}},
                       Crc32c(bytes.data(), kChunk)).ok());
  std::vector<std::byte> got(kChunk);
  ASSERT_TRUE(e2->ReadChunk(1, got.data()).ok());
  EXPECT_EQ(got, bytes);
}

TEST(DiskCache, ClaimStates) {
  TempDir d;
  auto cache = OpenCache(d.path());
  auto e = MustOpen(*cache, Key("c", 2 * kChunk));
  ChunkClaim a, b;
  ASSERT_EQ(*e->Claim(0, &a), ClaimState::kClaimed);
  EXPECT_TRUE(a.held());
  EXPECT_EQ(a.chunk(), 0u);
  EXPECT_EQ(*e->Claim(0, &b), ClaimState::kBusy) << "one filler per chunk, also within a process";
  EXPECT_EQ(*e->Claim(1, &b), ClaimState::kClaimed) << "other chunks are free";
  a.Release();
  EXPECT_FALSE(a.held());
  ASSERT_EQ(*e->Claim(0, &a), ClaimState::kClaimed) << "a released claim can be taken again";
  auto bytes = Pattern(1, 0, kChunk);
  // A wrong length or a CRC that is not the bytes' is refused, and the chunk freed.
  ChunkClaim moved = std::move(a);
  auto bad = e->Fill(std::move(moved), bytes.data(), Crc32c(bytes.data(), bytes.size()) ^ 1);
  EXPECT_EQ(bad.error().code, Errc::kIntegrity);
  EXPECT_FALSE(e->Present(0));
  ASSERT_EQ(*e->Claim(0, &a), ClaimState::kClaimed);
  auto short_fill = e->Fill(std::move(a), {{bytes.data(), 10}}, Crc32c(bytes.data(), 10));
  EXPECT_EQ(short_fill.error().code, Errc::kInvalidArgument);
  ASSERT_EQ(*e->Claim(0, &a), ClaimState::kClaimed);
  ASSERT_TRUE(e->Fill(std::move(a), bytes.data(), Crc32c(bytes.data(), bytes.size())).ok());
  EXPECT_EQ(*e->Claim(0, &a), ClaimState::kPresent);
  EXPECT_FALSE(a.held());
  // Fill with no claim, or a claim of another entry.
  EXPECT_EQ(e->Fill(ChunkClaim(), bytes.data(), 0).error().code, Errc::kInvalidArgument);
  auto other = MustOpen(*cache, Key("other", 2 * kChunk));
  ChunkClaim oc;
  ASSERT_EQ(*other->Claim(0, &oc), ClaimState::kClaimed);
  EXPECT_EQ(e->Fill(std::move(oc), bytes.data(), Crc32c(bytes.data(), bytes.size())).error().code,
            Errc::kInvalidArgument);
  EXPECT_EQ(e->Claim(5, &a).error().code, Errc::kInvalidArgument);
  // In-process waiters wake when the filler finishes.
  ChunkClaim c1;
  ASSERT_EQ(*e->Claim(1, &c1), ClaimState::kBusy) << "b still holds chunk 1";
  std::thread filler([&] {
    std::this_thread::sleep_for(30ms);
    auto b1 = Pattern(1, 1, kChunk);
    ASSERT_TRUE(e->Fill(std::move(b), b1.data(), Crc32c(b1.data(), b1.size())).ok());
  });
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(e->WaitChunk(1, {}, 5s).ok());
  filler.join();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  EXPECT_EQ(*e->Claim(1, &c1), ClaimState::kPresent);
}

TEST(DiskCache, AFlippedByteIsDetectedClearedCountedAndRefetchable) {
  TempDir d;
  auto cache = OpenCache(d.path());
  auto e = MustOpen(*cache, Key("flip", 3 * kChunk));
  FillAll(*e, 3);
  FlipByte(e->data_path(), kChunk + 17);
  std::vector<std::byte> buf(kChunk);
  auto st = e->ReadChunk(1, buf.data());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::kNotFound);
  EXPECT_NE(st.error().message.find("flip"), std::string::npos) << st.error().message;
  EXPECT_EQ(e->corrupt_chunks(), 1u);
  EXPECT_FALSE(e->Present(1)) << "the slot was cleared";
  EXPECT_TRUE(e->ReadChunk(0, buf.data()).ok());
  EXPECT_TRUE(e->ReadChunk(2, buf.data()).ok());
  FillAll(*e, 3);  // fetched again
  ExpectReadsBack(*e, 3);
  // CheckChunk: the caller's bytes are wrong but the disk is right: refused, nothing cleared.
  auto good = Pattern(3, 0, kChunk);
  EXPECT_TRUE(e->CheckChunk(0, Crc32c(good.data(), good.size())).ok());
  EXPECT_EQ(e->CheckChunk(0, 12345).error().code, Errc::kNotFound);
  EXPECT_TRUE(e->Present(0));
  EXPECT_EQ(e->corrupt_chunks(), 1u);
  // ... and when the disk is wrong, it is cleared.
  FlipByte(e->data_path(), 5);
  EXPECT_EQ(e->CheckChunk(0, Crc32c(good.data(), good.size()) ^ 7).error().code, Errc::kNotFound);
  EXPECT_FALSE(e->Present(0));
  EXPECT_EQ(e->corrupt_chunks(), 2u);
}

TEST(DiskCache, ATornSlotReadsAbsent) {
  TempDir d;
  auto cache = OpenCache(d.path());
  auto e = MustOpen(*cache, Key("torn", 3 * kChunk));
  FillAll(*e, 4);
  const std::string map = std::filesystem::path(e->data_path()).parent_path().string() + "/map";
  // Slot 1 sits at 64 + 16; its CRC field changed as if half of it had reached the disk.
  FlipByte(map, 64 + 16 + 1);
  EXPECT_FALSE(e->Present(1));
  std::vector<std::byte> buf(kChunk);
  EXPECT_EQ(e->ReadChunk(1, buf.data()).error().code, Errc::kNotFound);
  EXPECT_EQ(e->corrupt_chunks(), 0u) << "an absent slot is not a corrupt chunk";
  EXPECT_TRUE(e->Present(0));
  EXPECT_TRUE(e->Present(2));
  ChunkClaim c;
  EXPECT_EQ(*e->Claim(1, &c), ClaimState::kClaimed);
  // A torn header is a kFormat error naming the entry.
  e.reset();
  c.Release();
  FlipByte(map, 20);
  auto again = cache->OpenEntry(Key("torn", 3 * kChunk));
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, Errc::kFormat);
}

// The slot is written only after the chunk's bytes are: a data write that fails (here EFBIG,
// past RLIMIT_FSIZE, in a child) leaves the chunk absent, and its blocks are given back.
TEST(DiskCache, AFailedDataWriteLeavesTheChunkAbsent) {
  TempDir d;
  const auto key = Key("limited", 8 * kChunk);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    auto cache = DiskCache::Open(DiskCacheOptions{d.path(), 0, kChunk});
    if (!cache.ok()) ::_exit(2);
    auto e = (*cache)->OpenEntry(key);
    if (!e.ok()) ::_exit(3);
    struct rlimit lim = {4 * kChunk + 100, 4 * kChunk + 100};  // the map is far smaller
    if (::setrlimit(RLIMIT_FSIZE, &lim) != 0) ::_exit(4);
    ChunkClaim claim;
    if (!(*e)->Claim(6, &claim).ok() || !claim.held()) ::_exit(5);
    auto bytes = Pattern(1, 6, kChunk);
    auto st = (*e)->Fill(std::move(claim), bytes.data(), Crc32c(bytes.data(), bytes.size()));
    if (st.ok() || st.error().code != Errc::kIo || st.error().message.find("limited") == std::string::npos) ::_exit(6);
    if ((*e)->Present(6)) ::_exit(7);
    ChunkClaim again;
    auto c = (*e)->Claim(6, &again);
    ::_exit(c.ok() && *c == ClaimState::kClaimed ? 0 : 8);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  auto e = MustOpen(*OpenCache(d.path()), key);
  EXPECT_FALSE(e->Present(6));
  struct stat st;
  ASSERT_EQ(::stat(e->data_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_blocks, 0) << "nothing of the failed write stays allocated";
}

// A full disk: the fill that does not fit is kResourceExhausted naming the object, its chunk
// stays absent, and what was filled before still reads back. A 256 KiB tmpfs in a private mount
// namespace (a child process; skipped where mounting is not allowed).
TEST(DiskCache, AFullDiskIsResourceExhaustedAndLeavesTheChunkAbsent) {
  TempDir d;
  const std::string mnt = d / "small";
  std::filesystem::create_directories(mnt);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::unshare(CLONE_NEWNS) != 0 || ::mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=256k") != 0)
      ::_exit(77);
    auto cache = DiskCache::Open(DiskCacheOptions{mnt, 0, kChunk});
    if (!cache.ok()) ::_exit(2);
    auto e = (*cache)->OpenEntry(Key("huge.safetensors", 256 * kChunk));  // 1 MiB > 256 KiB
    if (!e.ok()) ::_exit(3);
    std::size_t c = 0;
    Status st;
    for (; c < (*e)->chunk_count(); ++c) {
      ChunkClaim claim;
      if (!(*e)->Claim(c, &claim).ok() || !claim.held()) ::_exit(4);
      auto bytes = Pattern(2, c, kChunk);
      st = (*e)->Fill(std::move(claim), bytes.data(), Crc32c(bytes.data(), bytes.size()));
      if (!st.ok()) break;
    }
    if (st.ok() || c == 0) ::_exit(5);
    if (st.error().code != Errc::kResourceExhausted || st.error().message.find("huge.safetensors") == std::string::npos)
      ::_exit(6);
    if ((*e)->Present(c)) ::_exit(7);
    for (std::size_t k = 0; k < c; ++k) {
      std::vector<std::byte> got(kChunk);
      if (!(*e)->ReadChunk(k, got.data()).ok() || got != Pattern(2, k, kChunk)) ::_exit(8);
    }
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "cannot mount a tmpfs in a private mount namespace here";
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// Threads of one process, some on one DiskCache and some on another (separate open files, as two
// libraries in one process would have): each chunk is filled exactly once.
TEST(DiskCache, ThreadsFillingOneEntryFillEachChunkOnce) {
  TempDir d;
  constexpr std::size_t kChunks = 64;
  const auto key = Key("threads", kChunks * kChunk);
  auto first = OpenCache(d.path());
  auto second = OpenCache(d.path());
  std::vector<std::atomic<int>> fills(kChunks);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      auto e = (t < 4 ? first : second)->OpenEntry(key);
      if (!e.ok()) return void(++failures);
      std::vector<std::size_t> order(kChunks);
      for (std::size_t i = 0; i < kChunks; ++i) order[i] = i;
      std::shuffle(order.begin(), order.end(), std::mt19937(static_cast<unsigned>(t)));
      for (std::size_t c : order) {
        for (;;) {
          ChunkClaim claim;
          auto st = (*e)->Claim(c, &claim);
          if (!st.ok()) return void(++failures);
          if (*st == ClaimState::kPresent) break;
          if (*st == ClaimState::kBusy) {
            if (!(*e)->WaitChunk(c, {}, 10s).ok()) return void(++failures);
            continue;
          }
          ++fills[c];
          auto bytes = Pattern(8, c, kChunk);
          if (!(*e)->Fill(std::move(claim), bytes.data(), Crc32c(bytes.data(), bytes.size())).ok()) ++failures;
          break;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  for (std::size_t c = 0; c < kChunks; ++c) EXPECT_EQ(fills[c].load(), 1) << "chunk " << c;
  ExpectReadsBack(*MustOpen(*first, key), 8);
}

// kill -9 at seeded random moments while a child fills chunks: every chunk that reads as
// present afterwards has exactly its bytes; the locks the child held are free.
TEST(DiskCache, KillNineAtRandomMomentsNeverServesWrongBytes) {
  TempDir d;
  std::mt19937 rng(20261203);
  constexpr std::size_t kChunks = 128;
  const std::uint64_t chunk = 2 * kChunk;
  int partial = 0;
  for (int iter = 0; iter < 40; ++iter) {
    const auto key = Key("kill-" + std::to_string(iter), kChunks * chunk - 333);
    const bool fsync = iter % 4 == 0;
    const auto delay = std::chrono::microseconds(rng() % 3000);
    int ready[2];
    ASSERT_EQ(::pipe(ready), 0);
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(ready[0]);
      DiskCacheOptions o;
      o.dir = d.path();
      o.chunk_bytes = chunk;
      o.fsync = fsync;
      auto cache = DiskCache::Open(o);
      if (!cache.ok()) ::_exit(2);
      auto e = (*cache)->OpenEntry(key);
      if (!e.ok()) ::_exit(3);
      std::vector<std::size_t> order(kChunks);
      for (std::size_t i = 0; i < kChunks; ++i) order[i] = i;
      std::shuffle(order.begin(), order.end(), std::mt19937(static_cast<unsigned>(iter)));
      // The clock starts when the child is about to fill, not when fork returns (which on a
      // busy machine may be later than any delay).
      if (::write(ready[1], "r", 1) != 1) ::_exit(6);
      for (std::size_t c : order) {
        ChunkClaim claim;
        auto st = (*e)->Claim(c, &claim);
        if (!st.ok()) ::_exit(4);
        if (*st != ClaimState::kClaimed) continue;
        auto bytes = Pattern(iter, c, (*e)->ChunkLength(c));
        if (!(*e)->Fill(std::move(claim), bytes.data(), Crc32c(bytes.data(), bytes.size())).ok()) ::_exit(5);
      }
      ::_exit(0);
    }
    ::close(ready[1]);
    // Every fifth kill counts from the fork, so some land while the cache and entry are made.
    char r;
    if (iter % 5 != 4) {
      ASSERT_EQ(::read(ready[0], &r, 1), 1);
    }
    ::close(ready[0]);
    std::this_thread::sleep_for(delay);
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 0)) << status;
    auto cache = OpenCache(d.path(), chunk);
    auto e = MustOpen(*cache, key);
    std::size_t present = 0;
    for (std::size_t c = 0; c < kChunks; ++c) {
      if (!e->Present(c)) continue;
      ++present;
      std::vector<std::byte> got(e->ChunkLength(c));
      ASSERT_TRUE(e->ReadChunk(c, got.data()).ok()) << "iteration " << iter << " chunk " << c;
      ASSERT_EQ(got, Pattern(iter, c, got.size())) << "iteration " << iter << " chunk " << c;
    }
    partial += present > 0 && present < kChunks;
    // Whatever the child held is free: the rest can be filled now.
    FillAll(*e, iter);
    ASSERT_TRUE(e->Complete());
    ExpectReadsBack(*e, iter);
    e.reset();
    ASSERT_TRUE(cache->Clear().ok());
  }
  // The delays are meant to land mid-fill; if none did, the test proved nothing.
  EXPECT_GE(partial, 10) << "kills that landed mid-fill";
  std::printf("kill -9 landed mid-fill in %d of 40 iterations\n", partial);
}

// N processes filling one entry at once: each chunk is filled exactly once in total, and every
// process ends with every chunk.
// Containers starting at once on a node's empty cache folder: every first Open succeeds (one
// saw the folder half made, with "config" already in it, and called it someone else's).
TEST(DiskCache, ProcessesOpeningAFreshFolderAtOnceAllSucceed) {
  for (int round = 0; round < 5; ++round) {
    TempDir d;
    const std::string dir = d / "cache";
    int start[2];
    ASSERT_EQ(::pipe(start), 0);
    std::vector<pid_t> kids;
    for (int p = 0; p < 8; ++p) {
      pid_t pid = ::fork();
      ASSERT_GE(pid, 0);
      if (pid == 0) {
        ::close(start[1]);
        char go;
        if (::read(start[0], &go, 1) != 0) ::_exit(9);
        auto cache = DiskCache::Open(DiskCacheOptions{dir, 0, kChunk});
        ::_exit(cache.ok() ? 0 : 2);
      }
      kids.push_back(pid);
    }
    ::close(start[0]);
    ::close(start[1]);
    for (pid_t pid : kids) {
      int status = 0;
      ASSERT_EQ(::waitpid(pid, &status, 0), pid);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "round " << round << ": child exit " << status;
    }
  }
}

TEST(DiskCache, ProcessesFillingOneEntryFillEachChunkOnce) {
  TempDir d;
  constexpr int kProcs = 3;
  constexpr std::size_t kChunks = 48;
  const auto key = Key("shared", kChunks * kChunk);
  const std::string log = d / "fills.log";
  int start[2];
  ASSERT_EQ(::pipe(start), 0);
  std::vector<pid_t> kids;
  for (int p = 0; p < kProcs; ++p) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(start[1]);
      char go;
      if (::read(start[0], &go, 1) != 0) ::_exit(9);  // EOF: everyone starts at once
      auto cache = DiskCache::Open(DiskCacheOptions{d.path(), 0, kChunk});
      if (!cache.ok()) ::_exit(2);
      auto e = (*cache)->OpenEntry(key);
      if (!e.ok()) ::_exit(3);
      int logfd = ::open(log.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
      // Process 0 goes forward, the others backward and forward: they meet on every chunk.
      for (std::size_t i = 0; i < kChunks; ++i) {
        const std::size_t c = p == 1 ? kChunks - 1 - i : i;
        for (;;) {
          ChunkClaim claim;
          auto st = (*e)->Claim(c, &claim);
          if (!st.ok()) ::_exit(4);
          if (*st == ClaimState::kPresent) break;
          if (*st == ClaimState::kBusy) {
            if (!(*e)->WaitChunk(c, {}, 10s).ok()) ::_exit(5);
            continue;
          }
          std::this_thread::sleep_for(1ms);  // the "fetch"
          auto bytes = Pattern(77, c, kChunk);
          std::string line = std::to_string(c) + "\n";
          if (::write(logfd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) ::_exit(6);
          if (!(*e)->Fill(std::move(claim), bytes.data(), Crc32c(bytes.data(), bytes.size())).ok()) ::_exit(7);
          break;
        }
        std::vector<std::byte> got(kChunk);
        if (!(*e)->ReadChunk(c, got.data()).ok() || got != Pattern(77, c, kChunk)) ::_exit(8);
      }
      ::_exit(0);
    }
    kids.push_back(pid);
  }
  ::close(start[0]);
  ::close(start[1]);
  for (pid_t pid : kids) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child exit " << status;
  }
  std::map<int, int> fills;
  std::string text = coldstart::testing::ReadFile(log);
  for (std::size_t pos = 0, nl; (nl = text.find('\n', pos)) != std::string::npos; pos = nl + 1)
    ++fills[std::stoi(text.substr(pos, nl - pos))];
  ASSERT_EQ(fills.size(), kChunks);
  for (const auto& [c, n] : fills) EXPECT_EQ(n, 1) << "chunk " << c << " filled " << n << " times";
}

TEST(DiskCache, WaitChunkReturnsWhenTheFillerDiesHoldingTheLock) {
  TempDir d;
  const auto key = Key("dies", 2 * kChunk);
  { MustOpen(*OpenCache(d.path()), key); }
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto cache = DiskCache::Open(DiskCacheOptions{d.path(), 0, kChunk});
    if (!cache.ok()) ::_exit(2);
    auto e = (*cache)->OpenEntry(key);
    ChunkClaim claim;
    if (!e.ok() || !(*e)->Claim(0, &claim).ok() || !claim.held()) ::_exit(3);
    if (::write(ready[1], "x", 1) != 1) ::_exit(4);
    for (;;) ::pause();
  }
  char x;
  ASSERT_EQ(::read(ready[0], &x, 1), 1);
  auto cache = OpenCache(d.path());
  auto e = MustOpen(*cache, key);
  ChunkClaim claim;
  EXPECT_EQ(*e->Claim(0, &claim), ClaimState::kBusy);
  EXPECT_EQ(e->WaitChunk(0, {}, 30ms).error().code, Errc::kTimeout);
  int asked = 0;
  EXPECT_EQ(e->WaitChunk(0, [&] { return ++asked > 2; }).error().code, Errc::kCancelled);
  const auto t0 = std::chrono::steady_clock::now();
  std::thread killer([&] {
    std::this_thread::sleep_for(100ms);
    ::kill(pid, SIGKILL);
  });
  auto st = e->WaitChunk(0, {}, 10s);
  const auto waited = std::chrono::steady_clock::now() - t0;
  killer.join();
  ASSERT_TRUE(st.ok()) << st.error().ToString();
  int status;
  ::waitpid(pid, &status, 0);
  EXPECT_LT(waited, 1s) << "the kernel drops a dead process's locks; polls see it within ~20 ms";
  EXPECT_EQ(*e->Claim(0, &claim), ClaimState::kClaimed);
}

TEST(DiskCache, EvictionIsLeastRecentlyUsedFirstAndSkipsEntriesInUse) {
  TempDir d;
  auto cache = OpenCache(d.path());
  std::vector<ObjectKey> keys;
  for (const char* n : {"a", "b", "c", "d"}) keys.push_back(Key(n, 4 * kChunk));
  std::shared_ptr<CacheEntry> b;
  for (const auto& k : keys) {
    auto e = MustOpen(*cache, k);
    FillAll(*e, 1);
    if (k.name == "b") b = e;
  }
  std::int64_t t = 1'700'000'000;
  for (const auto& k : keys) SetLastUse(EntryDir(d.path(), k), t += 100);  // a oldest ... d newest
  auto list = cache->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 4u);
  for (const auto& e : *list) {
    EXPECT_EQ(e.in_use, e.key.name == "b") << e.key.name;
    EXPECT_EQ(e.present_bytes, 4 * kChunk);
    EXPECT_EQ(e.chunks_present, 4u);
    EXPECT_TRUE(e.problem.empty());
  }
  EXPECT_EQ(cache->UsedBytes(), 16 * kChunk);
  auto r = cache->EvictToFit(8 * kChunk);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->entries_removed, 2u);
  EXPECT_EQ(r->bytes_freed, 8 * kChunk);
  EXPECT_EQ(r->skipped_in_use, 1u);
  EXPECT_EQ(cache->FindEntry(keys[0]).error().code, Errc::kNotFound) << "a: least recently used";
  EXPECT_EQ(cache->FindEntry(keys[2]).error().code, Errc::kNotFound) << "c: next, b being in use";
  EXPECT_TRUE(cache->FindEntry(keys[3]).ok()) << "d: most recent, kept";
  ExpectReadsBack(*b, 1);
  EXPECT_EQ(cache->UsedBytes(), 8 * kChunk);
}

// What a crash leaves (an entry half removed, a temporary being built) is swept by the next
// eviction; a temporary younger than a minute may be someone's entry in the making and stays.
TEST(DiskCache, EvictionSweepsWhatACrashLeft) {
  TempDir d;
  auto cache = OpenCache(d.path());
  const std::string xx = d / "entries/ab";
  coldstart::testing::WriteFile(xx + "/.evicted-abcd-1/data", "x");
  coldstart::testing::WriteFile(xx + "/.tmp-abcd-old/key", "x");
  coldstart::testing::WriteFile(xx + "/.tmp-abcd-new/key", "x");
  struct timespec old[2] = {{1'700'000'000, 0}, {1'700'000'000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, (xx + "/.tmp-abcd-old").c_str(), old, 0), 0);
  auto list = cache->List();
  ASSERT_TRUE(list.ok());
  EXPECT_TRUE(list->empty()) << "temporaries are not entries";
  ASSERT_TRUE(cache->EvictToFit(1ull << 40).ok());
  EXPECT_FALSE(std::filesystem::exists(xx + "/.evicted-abcd-1"));
  EXPECT_FALSE(std::filesystem::exists(xx + "/.tmp-abcd-old"));
  EXPECT_TRUE(std::filesystem::exists(xx + "/.tmp-abcd-new"));
}

TEST(DiskCache, TheCapIsEnforcedAfterFillsButNeverOnAnEntryInUse) {
  TempDir d;
  auto cache = OpenCache(d.path(), kChunk, /*max_bytes=*/6 * kChunk);
  { FillAll(*MustOpen(*cache, Key("x", 4 * kChunk)), 1); }
  auto y = MustOpen(*cache, Key("y", 4 * kChunk));
  FillAll(*y, 2);
  EXPECT_EQ(cache->FindEntry(Key("x", 4 * kChunk)).error().code, Errc::kNotFound) << "x evicted for y";
  EXPECT_TRUE(y->Complete());
  // An entry larger than the cap is kept whole while in use (everything else goes).
  auto big = MustOpen(*cache, Key("big", 10 * kChunk));
  FillAll(*big, 3);
  EXPECT_TRUE(big->Complete());
  ExpectReadsBack(*big, 3);
  EXPECT_TRUE(y->Complete()) << "y is in use too";
  y.reset();
  FillAll(*MustOpen(*cache, Key("z", 1 * kChunk)), 4);
  EXPECT_EQ(cache->FindEntry(Key("y", 4 * kChunk)).error().code, Errc::kNotFound);
  big.reset();
  auto r = cache->EvictToFit(6 * kChunk);
  ASSERT_TRUE(r.ok());
  EXPECT_LE(cache->UsedBytes(), 6 * kChunk);
}

// OpenEntry racing with eviction: an opened entry is never half removed under its user.
TEST(DiskCache, OpenEntryRacingEvictionNeverGetsAHalfRemovedEntry) {
  TempDir d;
  auto cache = OpenCache(d.path());
  auto evicter = OpenCache(d.path());  // another DiskCache, as another process would have
  const auto key = Key("race", 2 * kChunk);
  std::atomic<bool> stop{false};
  std::atomic<int> evictions{0};
  std::thread t([&] {
    while (!stop) {
      auto r = evicter->Clear();
      ASSERT_TRUE(r.ok()) << r.error().ToString();
      evictions += static_cast<int>(r->entries_removed);
    }
  });
  // At least 300 rounds, and on until the evicter has removed the entry at least once: on a
  // loaded machine (CI runs two suites at a time) the evicter thread may get no turn in 300.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (int i = 0; i < 300 || (evictions.load() == 0 && std::chrono::steady_clock::now() < give_up); ++i) {
    auto e = cache->OpenEntry(key);
    ASSERT_TRUE(e.ok()) << e.error().ToString();
    FillAll(**e, 6);
    ExpectReadsBack(**e, 6);
    ASSERT_TRUE(std::filesystem::exists((*e)->data_path()));
    if (i >= 300) std::this_thread::yield();
  }
  stop = true;
  t.join();
  EXPECT_GT(evictions.load(), 0) << "the race never happened";
}

TEST(DiskCache, ListingsAreSavedAndLoadedAtomically) {
  TempDir d;
  auto cache = OpenCache(d.path());
  const std::string src = "gs://bucket/models/gemma";
  EXPECT_EQ(cache->LoadListing(src).error().code, Errc::kNotFound);
  ASSERT_TRUE(cache->SaveListing(src, R"({"files":[1]})").ok());
  ASSERT_TRUE(cache->SaveListing(src, R"({"files":[1,2]})").ok());
  auto l = cache->LoadListing(src);
  ASSERT_TRUE(l.ok()) << l.error().ToString();
  EXPECT_EQ(*l, R"({"files":[1,2]})");
  EXPECT_EQ(cache->LoadListing(src + "/").error().code, Errc::kNotFound);
  ASSERT_TRUE(cache->SaveListing("odd\nsource", "{}").ok());
  EXPECT_EQ(*cache->LoadListing("odd\nsource"), "{}");
  int files = 0;
  for (const auto& f : std::filesystem::directory_iterator(d / "listings")) {
    EXPECT_EQ(f.path().filename().string().rfind(".tmp", 0), std::string::npos) << "no temporaries left";
    ++files;
  }
  EXPECT_EQ(files, 2);
}

TEST(DiskCache, VerifyFindsCorruptChunksAndClearRemovesWhatIsNotInUse) {
  TempDir d;
  auto cache = OpenCache(d.path());
  auto one = MustOpen(*cache, Key("one.safetensors", 3 * kChunk));
  FillAll(*one, 1);
  { FillAll(*MustOpen(*cache, Key("two.safetensors", 2 * kChunk + 5)), 2); }
  ASSERT_TRUE(cache->SaveListing("gs://b/m", "{}").ok());
  FlipByte(one->data_path(), 2 * kChunk + 9);
  struct stat before;
  ASSERT_EQ(::stat((EntryDir(d.path(), Key("two.safetensors", 2 * kChunk + 5)) + "/use").c_str(), &before), 0);
  auto v = cache->Verify();
  ASSERT_TRUE(v.ok()) << v.error().ToString();
  EXPECT_EQ(v->entries, 2u);
  EXPECT_EQ(v->chunks_checked, 6u);
  EXPECT_EQ(v->bytes_checked, 5 * kChunk + 5);
  EXPECT_EQ(v->corrupt_chunks, 1u);
  ASSERT_EQ(v->messages.size(), 1u);
  EXPECT_NE(v->messages[0].find("one.safetensors"), std::string::npos) << v->messages[0];
  EXPECT_FALSE(one->Present(2));
  struct stat after;
  ASSERT_EQ(::stat((EntryDir(d.path(), Key("two.safetensors", 2 * kChunk + 5)) + "/use").c_str(), &after), 0);
  EXPECT_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec) << "verify does not count as a use";
  auto again = cache->Verify();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->corrupt_chunks, 0u);
  EXPECT_EQ(again->chunks_checked, 5u);

  auto c = cache->Clear();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->entries_removed, 1u);
  EXPECT_EQ(c->skipped_in_use, 1u);
  EXPECT_EQ(cache->LoadListing("gs://b/m").error().code, Errc::kNotFound);
  std::vector<std::byte> got(kChunk);
  EXPECT_TRUE(one->ReadChunk(0, got.data()).ok()) << "an entry in use survives clear";
}

TEST(DiskCache, DefaultDirAndEnvironment) {
  auto xdg = DefaultCacheDir(Env::FromMap({{"XDG_CACHE_HOME", "/x/cache"}, {"HOME", "/home/u"}}));
  ASSERT_TRUE(xdg.ok());
  EXPECT_EQ(*xdg, "/x/cache/coldstart");
  auto rel = DefaultCacheDir(Env::FromMap({{"XDG_CACHE_HOME", "relative"}, {"HOME", "/home/u"}}));
  ASSERT_TRUE(rel.ok());
  EXPECT_EQ(*rel, "/home/u/.cache/coldstart") << "a relative XDG_CACHE_HOME is ignored (XDG spec)";
  auto none = DefaultCacheDir(Env::FromMap({}));
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, Errc::kInvalidArgument);

  DiskCacheOptions o;
  ASSERT_TRUE(o.ApplyEnv(Env::FromMap({{"COLDSTART_CACHE_DIR", "/c"}, {"COLDSTART_CACHE_MAX_BYTES", "2GiB"}})).ok());
  EXPECT_EQ(o.dir, "/c");
  EXPECT_EQ(o.max_bytes, 2ull << 30);
  auto bad = o.ApplyEnv(Env::FromMap({{"COLDSTART_CACHE_MAX_BYTES", "lots"}}));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("COLDSTART_CACHE_MAX_BYTES"), std::string::npos);
  EXPECT_TRUE(Env::FromMap({{"COLDSTART_CACHE_DIR", "/c"}}).Validate().ok()) << "registered";
}

TEST(DiskCache, ForeignOrMissingFoldersAreErrorsNamingThem) {
  TempDir d;
  coldstart::testing::WriteFile(d / "foreign/config", "something else\n");
  auto f = DiskCache::Open(DiskCacheOptions{d / "foreign"});
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code, Errc::kFormat);
  EXPECT_NE(f.error().message.find(d / "foreign"), std::string::npos);
  coldstart::testing::WriteFile(d / "home/notes.txt", "mine");
  auto h = DiskCache::Open(DiskCacheOptions{d / "home"});
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().code, Errc::kFormat) << "a folder of other files is never used (or cleared)";
  coldstart::testing::WriteFile(d / "newer/config", "coldstart-cache 9\nchunk_bytes 4096\n");
  EXPECT_EQ(DiskCache::Open(DiskCacheOptions{d / "newer"}).error().code, Errc::kFormat);
  DiskCacheOptions nocreate{d / "absent"};
  nocreate.create = false;
  EXPECT_EQ(DiskCache::Open(nocreate).error().code, Errc::kNotFound);
  EXPECT_FALSE(std::filesystem::exists(d / "absent"));
  DiskCacheOptions odd{d / "odd"};
  odd.chunk_bytes = 1000;
  EXPECT_EQ(DiskCache::Open(odd).error().code, Errc::kInvalidArgument);
  if (::geteuid() != 0) {
    std::filesystem::create_directories(d / "locked");
    ::chmod((d / "locked").c_str(), 0);
    auto p = DiskCache::Open(DiskCacheOptions{d / "locked/cache"});
    ::chmod((d / "locked").c_str(), 0755);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.error().code, Errc::kPermissionDenied);
  }
}

}  // namespace
}  // namespace coldstart::cache
