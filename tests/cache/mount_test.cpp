// `coldstart mount` end to end: a synthetic model in the fake GCS server, mounted through FUSE
// (in this process, and as `coldstart mount` children), read back byte for byte. Skipped, saying
// why, where /dev/fuse or fusermount3 is missing or mounting is not permitted.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dirent.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "../common/temp_dir.h"
#include "../fetch/loopback_server.h"
#include "coldstart/cache/disk_cache.h"
#include "coldstart/cache/mount.h"
#include "coldstart/fake_gcs/server.h"
#include "coldstart/loader/mount_source.h"
#include "coldstart/loader/synth.h"

extern char** environ;

namespace coldstart::cache {
namespace {

namespace fs = std::filesystem;
using coldstart::testing::ReadFile;
using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;
using fakegcs::FaultSpec;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kChunk = 256 << 10;  // cache chunks: a 3 MiB model has a dozen per shard
const char* const kSource = "gs://bkt/models/m";

// Why FUSE cannot be used here, or "".
std::string FuseMissing() {
  if (::access("/dev/fuse", R_OK | W_OK) != 0) return "/dev/fuse is missing or not usable";
  for (const char* dir : {"/usr/bin", "/bin", "/usr/local/bin", "/usr/sbin", "/sbin"})
    if (::access((std::string(dir) + "/fusermount3").c_str(), X_OK) == 0) return "";
  return "fusermount3 is not installed";
}

bool Mounted(const std::string& path) {
  const std::string real = fs::weakly_canonical(path).string();
  const std::string info = ReadFile("/proc/self/mountinfo");
  return info.find(" " + real + " ") != std::string::npos;
}

// Runs argv and returns its exit status (-1: not started or killed).
int Spawn(const std::vector<std::string>& argv, pid_t* pid_out = nullptr) {
  std::vector<char*> a;
  for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
  a.push_back(nullptr);
  pid_t pid = 0;
  if (::posix_spawnp(&pid, a[0], nullptr, nullptr, a.data(), environ) != 0) return -1;
  if (pid_out != nullptr) {
    *pid_out = pid;
    return 0;
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
int Reap(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// pread of [off, off+len) through a file descriptor; errno kept in *err on failure.
std::string PRead(const std::string& path, std::uint64_t off, std::size_t len, int* err = nullptr) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    if (err) *err = errno;
    return {};
  }
  std::string out(len, '\0');
  std::size_t got = 0;
  while (got < len) {
    const ssize_t n = ::pread(fd, out.data() + got, len - got, static_cast<off_t>(off + got));
    if (n < 0) {
      if (err) *err = errno;
      ::close(fd);
      return {};
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  out.resize(got);
  if (err) *err = 0;
  return out;
}

// A bucket "bkt" holding a synthetic 2-shard model (and a file in a subfolder) under models/m,
// a disk cache with 256 KiB chunks and an empty mount point.
class MountTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = FuseMissing(); !why.empty()) GTEST_SKIP() << "FUSE unavailable: " << why;
    loader::SynthOptions so;
    so.size_bytes = 3 << 20;
    so.shards = 2;
    so.seed = 11;
    ASSERT_TRUE(loader::SynthesizeModel(root_ / "bkt/models/m", so).ok());
    WriteFile(root_ / "bkt/models/m/extra/notes.txt", "weights are synthetic\n");
    fakegcs::ServerOptions o;
    o.root = root_.path();
    o.rate_limit_bytes_per_s = RateLimit();
    auto s = fakegcs::Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.error().message;
    server_ = std::move(s).value();
    fs::create_directories(mnt_ / "m");
    mountpoint_ = mnt_ / "m";
  }

  void TearDown() override {
    mount_.reset();
    if (!mountpoint_.empty() && Mounted(mountpoint_)) Spawn({"fusermount3", "-u", "-z", mountpoint_});
  }

  virtual double RateLimit() { return 0; }

  fetch::RemoteOptions Options(unsigned concurrency = 8) {
    fetch::RemoteOptions o;
    o.fetch.concurrency = concurrency;
    o.fetch.retry.initial_backoff_s = 0.01;
    o.fetch.retry.max_backoff_s = 0.05;
    o.fetch.retry.max_attempts = 2;
    o.fetch.retry.stall_timeout_s = 1;
    o.retry = o.fetch.retry;
    return o;
  }
  Env EmulatorEnv() { return Env::FromMap({{"STORAGE_EMULATOR_HOST", server_->endpoint()}, {"COLDSTART_METADATA", "off"}}); }

  std::shared_ptr<DiskCache> OpenCache() {
    DiskCacheOptions co;
    co.dir = cache_dir_.path();
    co.chunk_bytes = kChunk;
    auto c = DiskCache::Open(co);
    EXPECT_TRUE(c.ok()) << c.error().message;
    return c.ok() ? *c : nullptr;
  }

  // Lists the source and mounts it; false (with skipped_ saying why) where mounting is refused.
  bool StartMount(ReadAhead ra, unsigned concurrency = 8, MountOptions mo = {}) {
    cache_ = OpenCache();
    if (!cache_) return false;
    auto src = loader::OpenMountSource(kSource, Options(concurrency), EmulatorEnv(), cache_.get(), {});
    EXPECT_TRUE(src.ok()) << src.error().message;
    if (!src.ok()) return false;
    files_ = src->files;
    EXPECT_TRUE(cache_->SaveListing(kSource, src->listing_json).ok());
    return MountIt(*src, ra, mo);
  }

  // Mounts `src` over cache_ at mountpoint_, logging into log_.
  bool MountIt(const loader::MountSource& src, ReadAhead ra, MountOptions mo = {}) {
    mo.mountpoint = mountpoint_;
    mo.read_ahead = ra;
    mo.log = [this](const std::string& line) {
      std::lock_guard lk(log_mu_);
      log_.push_back(line);
    };
    auto m = Mount::Start(src.files, cache_, src.origin, mo);
    if (!m.ok() && m.error().code == Errc::kUnavailable) {
      skipped_ = "mounting is not permitted here: " + m.error().message;
      return false;
    }
    EXPECT_TRUE(m.ok()) << m.error().message;
    if (!m.ok()) return false;
    mount_ = std::move(m).value();
    return true;
  }

  std::string Log() {
    std::lock_guard lk(log_mu_);
    std::string all;
    for (const auto& l : log_) all += l + "\n";
    return all;
  }

  bool WaitReadAhead(double seconds = 20) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < end) {
      if (mount_->progress().read_ahead_done) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  // Fills the cache through a first mount (read-ahead of every file), then mounts it again with
  // no read-ahead, so that reads are served from the cache.
  bool FillCacheThenRemount() {
    if (!StartMount(ReadAhead::kAll)) return false;
    const bool filled = WaitReadAhead();
    EXPECT_TRUE(filled) << "read-ahead did not finish";
    mount_.reset();
    return filled && StartMount(ReadAhead::kNone);
  }

  std::string OriginBytes(const std::string& name) { return ReadFile(root_ / ("bkt/models/m/" + name)); }
  std::string Mnt(const std::string& name) { return mountpoint_ + "/" + name; }
  std::uint64_t ModelBytes() {
    std::uint64_t n = 0;
    for (const auto& f : files_) n += f.size;
    return n;
  }
  const MountFile& Largest() {
    return *std::max_element(files_.begin(), files_.end(), [](const auto& a, const auto& b) { return a.size < b.size; });
  }

  TempDir root_, cache_dir_, mnt_;
  std::string mountpoint_;
  std::unique_ptr<fakegcs::Server> server_;
  std::shared_ptr<DiskCache> cache_;
  std::vector<MountFile> files_;
  std::unique_ptr<Mount> mount_;
  std::string skipped_;
  std::mutex log_mu_;
  std::vector<std::string> log_;
};

#define MOUNT_OR_SKIP(call)                              \
  do {                                                   \
    if (!(call)) {                                       \
      if (!skipped_.empty()) GTEST_SKIP() << skipped_;   \
      FAIL() << "mount did not start";                   \
    }                                                    \
  } while (0)
#define START_MOUNT(...) MOUNT_OR_SKIP(StartMount(__VA_ARGS__))

TEST_F(MountTest, StatReaddirReadAndMmapMatchTheOrigin) {
  START_MOUNT(ReadAhead::kNone);
  // readdir of the root: the listing's top-level names, and the synthesised folder.
  std::set<std::string> want, got;
  for (const auto& f : files_) want.insert(f.name.substr(0, f.name.find('/')));
  for (const auto& e : fs::directory_iterator(mountpoint_)) got.insert(e.path().filename().string());
  EXPECT_EQ(got, want);
  EXPECT_TRUE(fs::is_directory(Mnt("extra")));
  EXPECT_EQ(ReadFile(Mnt("extra/notes.txt")), "weights are synthetic\n");
  for (const auto& f : files_) {
    struct stat st {};
    ASSERT_EQ(::stat(Mnt(f.name).c_str(), &st), 0) << f.name << ": " << std::strerror(errno);
    EXPECT_TRUE(S_ISREG(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0444u);
    EXPECT_EQ(static_cast<std::uint64_t>(st.st_size), f.size);
    EXPECT_EQ(st.st_mtime, f.mtime_unix);
  }
  // Reads of odd sizes at odd offsets, across chunk boundaries, then the whole file.
  const MountFile& big = Largest();
  const std::string origin = OriginBytes(big.name);
  for (std::uint64_t off : {std::uint64_t{0}, kChunk - 7, 3 * kChunk + 12345, big.size - 1000}) {
    int err = 0;
    const std::string got_bytes = PRead(Mnt(big.name), off, 70001, &err);
    ASSERT_EQ(err, 0) << std::strerror(err);
    EXPECT_EQ(got_bytes, origin.substr(off, 70001)) << "at " << off;
  }
  for (const auto& f : files_) EXPECT_EQ(ReadFile(Mnt(f.name)), OriginBytes(f.name)) << f.name;
  // mmap, as safetensors.safe_open does.
  const int fd = ::open(Mnt(big.name).c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  void* p = ::mmap(nullptr, big.size, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(p, MAP_FAILED) << std::strerror(errno);
  EXPECT_EQ(std::memcmp(p, origin.data(), big.size), 0);
  ::munmap(p, big.size);
  ::close(fd);
  const auto prog = mount_->progress();
  EXPECT_EQ(prog.read_errors, 0u);
  EXPECT_EQ(prog.bytes_cached, prog.bytes_total);
  // Each byte came from the origin once, though it was read several times.
  EXPECT_LE(server_->stats().media_bytes_sent, ModelBytes() + ModelBytes() / 10);
}

TEST_F(MountTest, WritesGetErofs) {
  START_MOUNT(ReadAhead::kNone);
  const std::string f = Mnt(files_.front().name);
  errno = 0;
  EXPECT_LT(::open(f.c_str(), O_WRONLY), 0);
  EXPECT_EQ(errno, EROFS);
  EXPECT_LT(::open(f.c_str(), O_RDWR), 0);
  EXPECT_EQ(errno, EROFS);
  EXPECT_LT(::open(Mnt("new-file").c_str(), O_WRONLY | O_CREAT, 0644), 0);
  EXPECT_EQ(errno, EROFS);
  EXPECT_NE(::mkdir(Mnt("newdir").c_str(), 0755), 0);
  EXPECT_EQ(errno, EROFS);
  EXPECT_NE(::unlink(f.c_str()), 0);
  EXPECT_EQ(errno, EROFS);
  EXPECT_NE(::rename(f.c_str(), Mnt("renamed").c_str()), 0);
  EXPECT_EQ(errno, EROFS);
  EXPECT_NE(::truncate(f.c_str(), 0), 0);
  EXPECT_EQ(errno, EROFS);
  EXPECT_NE(::chmod(f.c_str(), 0777), 0);
  EXPECT_EQ(errno, EROFS);
  EXPECT_EQ(ReadFile(f), OriginBytes(files_.front().name)) << "the file is untouched";
}

TEST_F(MountTest, OriginFailureIsEioWithALogLineNamingTheObject) {
  FaultSpec fault;
  fault.kind = FaultSpec::Kind::kStatus;
  fault.status = 403;
  fault.object_glob = "*model-00001-of-00002.safetensors";
  fault.count = 0;
  server_->AddFault(fault);
  START_MOUNT(ReadAhead::kNone);
  int err = 0;
  EXPECT_TRUE(PRead(Mnt("model-00001-of-00002.safetensors"), 0, 4096, &err).empty());
  EXPECT_EQ(err, EIO);
  EXPECT_NE(Log().find("model-00001-of-00002.safetensors"), std::string::npos) << Log();
  EXPECT_GE(mount_->progress().read_errors, 1u);
  // Other files are unaffected, and the failed one reads once the origin answers again.
  EXPECT_EQ(ReadFile(Mnt("model-00002-of-00002.safetensors")), OriginBytes("model-00002-of-00002.safetensors"));
  server_->ClearFaults();
  EXPECT_EQ(ReadFile(Mnt("model-00001-of-00002.safetensors")), OriginBytes("model-00001-of-00002.safetensors"));
}

TEST_F(MountTest, NoReadWaitsPastTheDeadline) {
  FaultSpec fault;
  fault.kind = FaultSpec::Kind::kFirstByteDelay;
  fault.seconds = 8;
  fault.count = 0;
  server_->AddFault(fault);
  MountOptions mo;
  mo.read_deadline = std::chrono::milliseconds(400);
  START_MOUNT(ReadAhead::kNone, 8, mo);
  const auto t0 = Clock::now();
  int err = 0;
  EXPECT_TRUE(PRead(Mnt(Largest().name), 0, 4096, &err).empty());
  EXPECT_EQ(err, EIO);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(4)) << "the server answers after 8 s";
  EXPECT_NE(Log().find("deadline"), std::string::npos) << Log();
  EXPECT_NE(Log().find(Largest().name), std::string::npos) << Log();
}

TEST_F(MountTest, ACorruptCacheChunkIsFetchedAgain) {
  START_MOUNT(ReadAhead::kAll);
  ASSERT_TRUE(WaitReadAhead());
  const MountFile big = Largest();
  mount_.reset();
  // Flip one byte of chunk 2 on disk.
  auto entry = cache_->FindEntry(big.key);
  ASSERT_TRUE(entry.ok()) << entry.error().message;
  const std::string data = (*entry)->data_path();
  entry->reset();
  {
    const int fd = ::open(data.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char b = 0;
    ASSERT_EQ(::pread(fd, &b, 1, 2 * kChunk + 77), 1);
    b = static_cast<char>(b ^ 0x20);
    ASSERT_EQ(::pwrite(fd, &b, 1, 2 * kChunk + 77), 1);
    ::close(fd);
  }
  server_->ResetStats();
  START_MOUNT(ReadAhead::kNone);
  EXPECT_EQ(ReadFile(Mnt(big.name)), OriginBytes(big.name));
  const auto stats = server_->stats();
  EXPECT_EQ(stats.media_bytes_sent, kChunk) << "only the corrupt chunk is fetched again";
  EXPECT_NE(Log().find("did not match its checksum"), std::string::npos) << Log();
  auto again = cache_->FindEntry(big.key);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE((*again)->Complete());
}

// Many readers of the same chunks of a warm cache: each chunk is read from disk, checked and
// put in the buffer LRU by several of them at once (a replaced buffer was once freed under the
// LRU's own lock: a deadlock).
TEST_F(MountTest, ConcurrentReadersOfCachedChunks) {
  MOUNT_OR_SKIP(FillCacheThenRemount());
  const MountFile& big = Largest();
  const std::string origin = OriginBytes(big.name);
  std::atomic<int> mismatches{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 8; ++t)
    readers.emplace_back([&, t] {
      for (std::uint64_t off = static_cast<std::uint64_t>(t) * 4096; off < big.size; off += 96 << 10) {
        const std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(40000, big.size - off));
        if (PRead(Mnt(big.name), off, len) != origin.substr(off, len)) ++mismatches;
      }
    });
  for (auto& r : readers) r.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(server_->stats().media_bytes_sent, ModelBytes()) << "the second mount read the cache only";
}

// Readers of one cached chunk at the same moment (the kernel sends several reads of a chunk at
// once) share one read-back of it from the cache; each used to read and check the whole chunk.
TEST_F(MountTest, ReadersOfOneChunkAtOnceShareOneReadBack) {
  MOUNT_OR_SKIP(FillCacheThenRemount());
  const MountFile& big = Largest();
  const std::string origin = OriginBytes(big.name);
  constexpr int kReaders = 8;
  std::atomic<int> mismatches{0};
  for (std::uint64_t chunk = 0; chunk * kChunk < big.size; ++chunk) {
    std::barrier start(kReaders);
    std::vector<std::thread> readers;
    for (int t = 0; t < kReaders; ++t)
      readers.emplace_back([&, t] {
        const int fd = ::open(Mnt(big.name).c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
          ++mismatches;
          start.arrive_and_drop();
          return;
        }
        ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);  // one page, one FUSE read: no kernel read-ahead
        const std::uint64_t off = chunk * kChunk + static_cast<std::uint64_t>(t) * 8192;
        std::string got(4096, '\0');
        start.arrive_and_wait();
        const ssize_t n = off < big.size ? ::pread(fd, got.data(), got.size(), static_cast<off_t>(off)) : 0;
        ::close(fd);
        if (n < 0 || got.substr(0, static_cast<std::size_t>(n)) != origin.substr(std::min<std::uint64_t>(off, origin.size()), static_cast<std::size_t>(n)))
          ++mismatches;
      });
    for (auto& r : readers) r.join();
  }
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_EQ(mount_->progress().bytes_read_back, big.size) << "each chunk read back once";
}

// A reader entering a chunk of a warm cache: the next chunks are read back from the cache on
// their own threads meanwhile, so the next disk read overlaps this chunk's copies.
TEST_F(MountTest, AReaderEnteringAChunkHasTheNextOnesReadBack) {
  MOUNT_OR_SKIP(FillCacheThenRemount());
  const MountFile& big = Largest();
  ASSERT_GE(big.size, 5 * kChunk);
  const int fd = ::open(Mnt(big.name).c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);  // this one page, nothing more from the kernel
  std::string page(4096, '\0');
  ASSERT_EQ(::pread(fd, page.data(), page.size(), 0), 4096);
  ::close(fd);
  EXPECT_EQ(page, OriginBytes(big.name).substr(0, 4096));
  const std::uint64_t want = 5 * kChunk;  // chunk 0 for the reader, chunks 1-4 ahead of it
  const auto end = Clock::now() + std::chrono::seconds(10);
  while (mount_->progress().bytes_read_back < want && Clock::now() < end)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(mount_->progress().bytes_read_back, want);
  EXPECT_EQ(mount_->progress().reads, 1u);
}

// Read-ahead ran ahead of a loader by more than the memory budget (here it finished before the
// loader started). The loader then reads each file once, in order. The chunks read-ahead kept in
// memory are the first ones it will read, and its own read-backs push out chunks it has
// finished. Plain LRU kept the last chunks fetched, and each read-back pushed out a chunk the
// loader was about to read, so the whole model was read back from the cache.
TEST_F(MountTest, ALoaderBehindReadAheadReadsBackOnlyWhatMemoryCouldNotHold) {
  MountOptions mo;
  mo.memory_bytes = 10 * kChunk;  // read-ahead keeps 8: the small files and the first shard
  START_MOUNT(ReadAhead::kAll, 8, mo);
  ASSERT_TRUE(WaitReadAhead());
  for (const auto& f : files_) EXPECT_EQ(ReadFile(Mnt(f.name)), OriginBytes(f.name)) << f.name;
  const auto p = mount_->progress();
  EXPECT_EQ(p.bytes_fetched, ModelBytes());
  // About the second shard (6 chunks of the 3 MiB model: 1.6-2.1 MB); plain LRU read back all of it.
  EXPECT_LE(p.bytes_read_back, ModelBytes() * 3 / 4) << "read back " << p.bytes_read_back << " of " << ModelBytes();
}

// Unmounting does not wait for files left open under the mount: they read an error after.
TEST_F(MountTest, StopReturnsWithAFileStillOpen) {
  START_MOUNT(ReadAhead::kNone);
  const int fd = ::open(Mnt(Largest().name).c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  char b[16];
  ASSERT_EQ(::pread(fd, b, sizeof b, 0), static_cast<ssize_t>(sizeof b));
  const auto t0 = Clock::now();
  mount_.reset();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
  EXPECT_FALSE(Mounted(mountpoint_));
  EXPECT_LT(::pread(fd, b, sizeof b, 2 * kChunk), 0) << "the connection is gone";
  ::close(fd);
}

// A local folder mounts the same way, read through a few pread threads.
TEST_F(MountTest, ALocalFolderMounts) {
  cache_ = OpenCache();
  ASSERT_TRUE(cache_);
  const std::string folder = root_ / "bkt/models/m";
  auto src = loader::OpenMountSource(folder, Options(), Env::FromMap({}), cache_.get(), {});
  ASSERT_TRUE(src.ok()) << src.error().message;
  std::size_t on_disk = 0;
  for (const auto& e : fs::recursive_directory_iterator(folder)) on_disk += e.is_regular_file() ? 1 : 0;
  EXPECT_EQ(src->files.size(), on_disk);
  MOUNT_OR_SKIP(MountIt(*src, ReadAhead::kAll));
  for (const auto& f : src->files) {
    EXPECT_EQ(ReadFile(Mnt(f.name)), ReadFile(folder + "/" + f.name)) << f.name;
    EXPECT_EQ(f.key.origin, "file://");
  }
  EXPECT_EQ(server_->stats().media_requests, 0u);
}

// Cache keys: bucket and endpoint, object name and generation; a new generation is a new entry.
TEST_F(MountTest, GcsKeysCarryEndpointAndGeneration) {
  cache_ = OpenCache();
  ASSERT_TRUE(cache_);
  auto src = loader::OpenMountSource(kSource, Options(), EmulatorEnv(), cache_.get(), {});
  ASSERT_TRUE(src.ok()) << src.error().message;
  const std::string shard = "model-00001-of-00002.safetensors";
  auto find = [&](const loader::MountSource& s) {
    return *std::find_if(s.files.begin(), s.files.end(), [&](const auto& f) { return f.name == shard; });
  };
  const MountFile before = find(*src);
  EXPECT_EQ(before.key.origin, "gs://bkt@" + server_->endpoint());
  EXPECT_EQ(before.key.name, "models/m/" + shard);
  auto gen = server_->Generation("bkt", "models/m/" + shard);
  ASSERT_TRUE(gen.ok());
  EXPECT_EQ(before.key.version, std::to_string(*gen));
  ASSERT_TRUE(server_->BumpGeneration("bkt", "models/m/" + shard).ok());
  auto again = loader::OpenMountSource(kSource, Options(), EmulatorEnv(), cache_.get(), {});
  ASSERT_TRUE(again.ok());
  EXPECT_NE(find(*again).key.version, before.key.version);
  EXPECT_NE(find(*again).key.ToString(), before.key.ToString());
}

// An http(s) folder (here the fake's XML API): keys by ETag, times from Last-Modified.
TEST_F(MountTest, HttpFolderKeysByEtagAndMounts) {
  cache_ = OpenCache();
  ASSERT_TRUE(cache_);
  const std::string url = server_->endpoint() + "/bkt/models/m/";
  auto src = loader::OpenMountSource(url, Options(), Env::FromMap({{"COLDSTART_METADATA", "off"}}), cache_.get(), {});
  ASSERT_TRUE(src.ok()) << src.error().message;
  ASSERT_GE(src->files.size(), 3u);
  for (const auto& f : src->files) {
    EXPECT_EQ(f.key.origin, server_->endpoint());
    EXPECT_EQ(f.key.name, "/bkt/models/m/" + f.name);
    EXPECT_FALSE(f.key.version.empty()) << f.name << ": the ETag";
    EXPECT_GT(f.mtime_unix, 1500000000) << f.name << ": Last-Modified";
  }
  MOUNT_OR_SKIP(MountIt(*src, ReadAhead::kAll));
  for (const auto& f : src->files) EXPECT_EQ(ReadFile(Mnt(f.name)), OriginBytes(f.name)) << f.name;
}

// An HTTP object with neither an ETag nor a Last-Modified: a later mount could not tell a
// rewrite of the same size from the cached copy, so each mount caches it for itself only, and
// its entry goes when the mount ends. (Keyed by size alone, the second mount below served the
// first body.)
TEST_F(MountTest, AnObjectWithNoVersionIsCachedForOneMountOnly) {
  const std::string first = OriginBytes("model-00001-of-00002.safetensors");
  std::string second = first;
  for (std::size_t i = 4096; i < second.size(); i += 4096) second[i] = static_cast<char>(second[i] ^ 0x5a);
  std::mutex mu;
  const std::string* body = &first;
  coldstart::testing::LoopbackServer loop;
  loop.server().set_keep_alive_timeout(1);
  loop.server().Get("/model.safetensors", [&](const httplib::Request&, httplib::Response& res) {
    std::lock_guard lk(mu);
    res.set_content(*body, "application/octet-stream");  // no ETag, no Last-Modified
  });
  loop.Start();
  const std::string url = "http://127.0.0.1:" + std::to_string(loop.port()) + "/model.safetensors";
  cache_ = OpenCache();
  ASSERT_TRUE(cache_);
  for (const std::string* want : std::vector<const std::string*>{&first, &second}) {
    {
      std::lock_guard lk(mu);
      body = want;
    }
    std::vector<std::string> warnings;
    auto src = loader::OpenMountSource(url, Options(), Env::FromMap({{"COLDSTART_METADATA", "off"}}), cache_.get(),
                                       [&](const std::string& w) { warnings.push_back(w); });
    ASSERT_TRUE(src.ok()) << src.error().message;
    ASSERT_EQ(src->files.size(), 1u);
    EXPECT_TRUE(src->files[0].ephemeral);
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find("has no version"), std::string::npos) << warnings[0];
    MOUNT_OR_SKIP(MountIt(*src, ReadAhead::kAll));
    EXPECT_TRUE(ReadFile(Mnt(src->files[0].name)) == *want) << (want == &first ? "first" : "second") << " mount";
    mount_.reset();
    auto entries = cache_->List();
    ASSERT_TRUE(entries.ok());
    EXPECT_TRUE(entries->empty()) << "the mount's own entry was left in the cache";
  }
}

// A budget of four chunks for the whole model (3 MiB): read-ahead and readers share it, buffers
// are evicted and reused, and every byte still arrives.
TEST_F(MountTest, ATinyMemoryBudgetStillServesEverything) {
  MountOptions mo;
  mo.memory_bytes = 4 * kChunk;
  START_MOUNT(ReadAhead::kAll, 8, mo);
  std::atomic<int> mismatches{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t)
    readers.emplace_back([&, t] {
      for (std::size_t i = 0; i < files_.size(); ++i) {
        const auto& f = files_[(i + static_cast<std::size_t>(t)) % files_.size()];
        if (ReadFile(Mnt(f.name)) != OriginBytes(f.name)) ++mismatches;
      }
    });
  for (auto& r : readers) r.join();
  EXPECT_EQ(mismatches.load(), 0);
  ASSERT_TRUE(WaitReadAhead());
  EXPECT_EQ(mount_->progress().bytes_cached, ModelBytes());
}

TEST_F(MountTest, TwoProcessesReadAtOnce) {
  START_MOUNT(ReadAhead::kNone, 4);
  std::vector<pid_t> pids;
  for (int i = 0; i < 2; ++i)
    for (const auto& f : files_) {
      pid_t pid = 0;
      ASSERT_EQ(Spawn({"cmp", Mnt(f.name), root_ / ("bkt/models/m/" + f.name)}, &pid), 0);
      pids.push_back(pid);
    }
  for (pid_t pid : pids) EXPECT_EQ(Reap(pid), 0) << "cmp found a difference";
  EXPECT_LE(server_->stats().media_bytes_sent, ModelBytes() + ModelBytes() * 15 / 100)
      << "each byte fetched once for both readers";
}

TEST_F(MountTest, OfflineServesTheCompleteCachedCopy) {
  START_MOUNT(ReadAhead::kAll);
  ASSERT_TRUE(WaitReadAhead());
  mount_.reset();
  server_->Stop();
  std::string warning;
  auto src = loader::OpenMountSource(kSource, Options(), EmulatorEnv(), cache_.get(),
                                     [&](const std::string& w) { warning = w; });
  ASSERT_TRUE(src.ok()) << src.error().message;
  EXPECT_TRUE(src->offline);
  EXPECT_NE(warning.find("cannot reach"), std::string::npos) << warning;
  MOUNT_OR_SKIP(MountIt(*src, ReadAhead::kAll));
  for (const auto& f : files_) EXPECT_EQ(ReadFile(Mnt(f.name)), OriginBytes(f.name)) << f.name;
  mount_.reset();
  // Without a complete copy the network error stands.
  auto entry = cache_->FindEntry(Largest().key);
  ASSERT_TRUE(entry.ok());
  {
    // A flipped byte on disk, found by a read, clears chunk 0.
    const int fd = ::open((*entry)->data_path().c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char b = 0;
    ASSERT_EQ(::pread(fd, &b, 1, 5), 1);
    b = static_cast<char>(b ^ 1);
    ASSERT_EQ(::pwrite(fd, &b, 1, 5), 1);
    ::close(fd);
    std::vector<std::byte> buf(kChunk);
    EXPECT_EQ((*entry)->ReadChunk(0, buf.data()).error().code, Errc::kNotFound);
  }
  entry->reset();
  auto none = loader::OpenMountSource(kSource, Options(), EmulatorEnv(), cache_.get(), {});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, Errc::kNetwork) << none.error().message;
  EXPECT_NE(none.error().message.find("not complete"), std::string::npos) << none.error().message;
}

// Read-ahead fetches at 1 MiB/s per connection on 2 connections: the whole model takes ~1.5 s.
class MountSlowTest : public MountTest {
 protected:
  double RateLimit() override { return 1 << 20; }
};

TEST_F(MountSlowTest, AReadAheadOfReadAheadIsServedFirst) {
  START_MOUNT(ReadAhead::kAll, 2);
  // Read-ahead goes in listing order; the last chunk of the last large file comes last.
  std::size_t last = 0;
  for (std::size_t i = 0; i < files_.size(); ++i)
    if (files_[i].size > 2 * kChunk) last = i;
  const MountFile& f = files_[last];
  const std::uint64_t off = (f.size - 1) / kChunk * kChunk;
  int err = 0;
  const std::string got = PRead(Mnt(f.name), off, static_cast<std::size_t>(f.size - off), &err);
  const auto at_read = mount_->progress();
  ASSERT_EQ(err, 0);
  EXPECT_EQ(got, OriginBytes(f.name).substr(off));
  EXPECT_FALSE(at_read.read_ahead_done) << "the read waited for read-ahead";
  EXPECT_LT(at_read.bytes_cached, at_read.bytes_total / 2) << "the read waited for most of read-ahead";
  ASSERT_TRUE(WaitReadAhead(30));
  for (const auto& file : files_) EXPECT_EQ(ReadFile(Mnt(file.name)), OriginBytes(file.name)) << file.name;
}

// ---- the CLI: `coldstart mount` as a child process ----

class MountCliTest : public MountTest {
 protected:
  void SetUp() override {
    MountTest::SetUp();
    if (IsSkipped()) return;
    // Mounting is tried once in this process first, so a refusal skips instead of failing.
    START_MOUNT(ReadAhead::kNone);
    mount_.reset();
  }

  struct Child {
    pid_t pid = -1;
    std::string out, err;
  };
  Child StartChild(const std::string& mountpoint, const std::string& extra = "") {
    static int n = 0;
    Child c;
    c.out = logs_ / ("out" + std::to_string(n));
    c.err = logs_ / ("err" + std::to_string(n++));
    const std::string cmd = "exec env STORAGE_EMULATOR_HOST=" + server_->endpoint() + " COLDSTART_METADATA=off " +
                            COLDSTART_BIN + " mount " + kSource + " " + mountpoint + " --cache-dir " + cache_dir_.path() +
                            " --concurrency 4 " + extra + " >" + c.out + " 2>" + c.err;
    c.pid = ::fork();
    if (c.pid == 0) {
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    return c;
  }
  // Until the child printed its "mounted" line.
  bool WaitMounted(const Child& c, double seconds = 20) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < end) {
      if (ReadFile(c.out).find("mounted ") != std::string::npos) return true;
      int status = 0;
      if (::waitpid(c.pid, &status, WNOHANG) == c.pid) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return false;
  }
  bool WaitFor(const std::string& path, const std::string& text, double seconds = 30) {
    const auto end = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < end) {
      if (ReadFile(path).find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }
  bool SameAsOrigin(const std::string& mountpoint) {
    for (const auto& f : files_)
      if (ReadFile(mountpoint + "/" + f.name) != OriginBytes(f.name)) return false;
    return true;
  }

  TempDir logs_;
};

TEST_F(MountCliTest, SigtermUnmountsAndExitsZero) {
  Child c = StartChild(mountpoint_);
  ASSERT_TRUE(WaitMounted(c)) << ReadFile(c.err);
  EXPECT_TRUE(Mounted(mountpoint_));
  EXPECT_TRUE(SameAsOrigin(mountpoint_));
  ::kill(c.pid, SIGTERM);
  EXPECT_EQ(Reap(c.pid), 0) << ReadFile(c.err);
  EXPECT_FALSE(Mounted(mountpoint_));
  struct stat st {};
  EXPECT_EQ(::stat(mountpoint_.c_str(), &st), 0) << std::strerror(errno);
  EXPECT_NE(ReadFile(c.err).find("unmounted"), std::string::npos) << ReadFile(c.err);
}

TEST_F(MountCliTest, FusermountUnmountEndsIt) {
  Child c = StartChild(mountpoint_);
  ASSERT_TRUE(WaitMounted(c)) << ReadFile(c.err);
  ASSERT_EQ(Spawn({"fusermount3", "-u", mountpoint_}), 0);
  EXPECT_EQ(Reap(c.pid), 0) << ReadFile(c.err);
  EXPECT_FALSE(Mounted(mountpoint_));
}

TEST_F(MountCliTest, AStaleMountLeftByKill9IsReplaced) {
  Child c = StartChild(mountpoint_);
  ASSERT_TRUE(WaitMounted(c)) << ReadFile(c.err);
  ::kill(c.pid, SIGKILL);
  Reap(c.pid);
  struct statvfs sv {};
  EXPECT_NE(::statvfs(mountpoint_.c_str(), &sv), 0);
  EXPECT_EQ(errno, ENOTCONN) << "a dead FUSE server leaves its mount answering ENOTCONN";
  Child again = StartChild(mountpoint_);
  ASSERT_TRUE(WaitMounted(again)) << ReadFile(again.err);
  EXPECT_NE(ReadFile(again.err).find("stale mount"), std::string::npos) << ReadFile(again.err);
  EXPECT_TRUE(SameAsOrigin(mountpoint_));
  ::kill(again.pid, SIGTERM);
  EXPECT_EQ(Reap(again.pid), 0) << ReadFile(again.err);
}

TEST_F(MountCliTest, TwoMountProcessesOnOneCacheFetchEachByteOnce) {
  fs::create_directories(mnt_ / "second");
  const std::string second = mnt_ / "second";
  server_->ResetStats();
  Child a = StartChild(mountpoint_);
  Child b = StartChild(second);
  ASSERT_TRUE(WaitMounted(a)) << ReadFile(a.err);
  ASSERT_TRUE(WaitMounted(b)) << ReadFile(b.err);
  // Both read everything while read-ahead runs in both.
  std::atomic<bool> same_a{false}, same_b{false};
  std::thread ta([&] { same_a = SameAsOrigin(mountpoint_); });
  std::thread tb([&] { same_b = SameAsOrigin(second); });
  ta.join();
  tb.join();
  EXPECT_TRUE(same_a);
  EXPECT_TRUE(same_b);
  EXPECT_TRUE(WaitFor(a.err, "read-ahead done")) << ReadFile(a.err);
  EXPECT_TRUE(WaitFor(b.err, "read-ahead done")) << ReadFile(b.err);
  EXPECT_LE(server_->stats().media_bytes_sent, ModelBytes() + ModelBytes() * 15 / 100);
  ::kill(a.pid, SIGTERM);
  ::kill(b.pid, SIGTERM);
  EXPECT_EQ(Reap(a.pid), 0) << ReadFile(a.err);
  EXPECT_EQ(Reap(b.pid), 0) << ReadFile(b.err);
  if (Mounted(second)) Spawn({"fusermount3", "-u", "-z", second});
}

// Read-ahead at 2 MiB/s per connection (4 connections: ~0.4 s for the model).
class MountCliSlowTest : public MountCliTest {
 protected:
  double RateLimit() override { return 2 << 20; }
};

TEST_F(MountCliSlowTest, Kill9AtRandomMomentsThenRemountAndVerify) {
  std::mt19937 rng(20261203);
  std::uniform_int_distribution<int> delay_ms(0, 350);
  for (int round = 0; round < 6; ++round) {
    Child c = StartChild(mountpoint_);
    ASSERT_TRUE(WaitMounted(c)) << "round " << round << ": " << ReadFile(c.err);
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    ::kill(c.pid, SIGKILL);
    Reap(c.pid);
  }
  // A fresh mount over the stale one: every byte right, whatever the kills left in the cache.
  START_MOUNT(ReadAhead::kAll);
  EXPECT_NE(Log().find("stale mount"), std::string::npos) << Log();
  for (const auto& f : files_) EXPECT_EQ(ReadFile(Mnt(f.name)), OriginBytes(f.name)) << f.name;
  ASSERT_TRUE(WaitReadAhead());
  mount_.reset();
  EXPECT_FALSE(Mounted(mountpoint_)) << "no stale mount is left stacked below";
  auto v = cache_->Verify();
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->corrupt_chunks, 0u);
  EXPECT_EQ(v->corrupt_entries, 0u);
}

TEST_F(MountCliTest, PythonSafetensorsReadsThroughTheMount) {
  const std::string py = COLDSTART_TEST_PYTHON;
  if (py.empty() || Spawn({py, "-c", "import safetensors"}) != 0)
    GTEST_SKIP() << "no Python with the reference safetensors package (COLDSTART_TEST_PYTHON)";
  Child c = StartChild(mountpoint_);
  ASSERT_TRUE(WaitMounted(c)) << ReadFile(c.err);
  std::vector<std::string> argv = {py, COLDSTART_SOURCE_DIR "/tests/python/mount_read.py"};
  for (const auto& f : files_)
    if (f.name.size() > 12 && f.name.compare(f.name.size() - 12, 12, ".safetensors") == 0) {
      argv.push_back(Mnt(f.name));
      argv.push_back(root_ / ("bkt/models/m/" + f.name));
    }
  EXPECT_EQ(Spawn(argv), 0);
  ::kill(c.pid, SIGTERM);
  EXPECT_EQ(Reap(c.pid), 0) << ReadFile(c.err);
}

}  // namespace
}  // namespace coldstart::cache
