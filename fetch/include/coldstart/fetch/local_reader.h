// Parallel local-file reads straight into caller memory: io_uring (one ring per I/O thread)
// or a plain pread thread pool, picked by probing (COLDSTART_IO_ENGINE forces one).
//
// The caller lays out its destination so that, for every range, (file offset - dest address)
// is a multiple of kDirectAlign; the aligned middle of each range is then read with O_DIRECT
// (no page-cache copy) and only the unaligned edges go through the page cache. Short reads are
// requeued, -EAGAIN/-EINTR resubmitted, an O_DIRECT refusal (-EINVAL) downgrades that file to
// buffered reads; a read that hits end-of-file early is an error naming the file.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "coldstart/core/env.h"
#include "coldstart/core/file_identity.h"
#include "coldstart/core/result.h"

namespace coldstart::fetch {

// O_DIRECT needs offset, length and address aligned to the device's logical block size
// (512 B or 4 KiB); 4 KiB satisfies both.
inline constexpr std::uint64_t kDirectAlign = 4096;

enum class IoEngine { kAuto, kUring, kPread };
enum class DirectIo { kAuto, kOn, kOff };

Result<IoEngine> ParseIoEngine(std::string_view text);
Result<DirectIo> ParseDirectIo(std::string_view text);
std::string_view IoEngineName(IoEngine e);

struct LocalReadOptions {
  IoEngine engine = IoEngine::kAuto;      // COLDSTART_IO_ENGINE
  DirectIo direct = DirectIo::kAuto;      // COLDSTART_DIRECT_IO
  std::uint64_t chunk_bytes = 8ull << 20; // COLDSTART_READ_CHUNK (4 KiB .. 1 GiB)
  unsigned queue_depth = 8;               // COLDSTART_READ_QUEUE_DEPTH, per thread
  unsigned threads = 0;                   // COLDSTART_READ_THREADS; 0 = cores, at most 8

  // Overrides fields from COLDSTART_* variables; fails on malformed values.
  Status ApplyEnv(const Env& env);
  Status Validate() const;
  unsigned EffectiveThreads() const;
};

// A set of open files: a buffered descriptor for each and, where the file system accepts it,
// an O_DIRECT one. Move-only; closes its descriptors.
class LocalFileSet {
 public:
  struct File {
    std::string path;
    std::uint64_t size = 0;
    FileIdentity identity;  // fstat of fd at open time
    int fd = -1;         // buffered
    int direct_fd = -1;  // O_DIRECT, or -1
  };

  // `expected` (empty, or one per path): the identity each file had when its header was read;
  // a file that differs now (rewritten or replaced since) is Errc::kIntegrity. Unknown (default)
  // identities are not compared.
  static Result<LocalFileSet> Open(std::vector<std::string> paths, DirectIo mode,
                                   const std::vector<FileIdentity>& expected = {});
  LocalFileSet() = default;
  LocalFileSet(LocalFileSet&& o) noexcept;
  LocalFileSet& operator=(LocalFileSet&& o) noexcept;
  LocalFileSet(const LocalFileSet&) = delete;
  LocalFileSet& operator=(const LocalFileSet&) = delete;
  ~LocalFileSet();

  std::span<const File> files() const { return files_; }
  const File& file(std::size_t i) const { return files_[i]; }
  std::size_t size() const { return files_.size(); }

  // Errc::kIntegrity when a file changed while it was being read: its open descriptor (a
  // rewrite in place) or its path (replaced by another file) no longer matches the identity
  // recorded at open time. Call after the reads complete: bytes read from a file that changed
  // may mix old and new contents.
  Status CheckUnchanged() const;

 private:
  void Close();
  std::vector<File> files_;
};

// Fraction (0..1) of the file's pages resident in the page cache, via mmap + mincore.
Result<double> PageCacheResidency(int fd, std::uint64_t size);

struct ReadRange {
  std::uint32_t file = 0;  // index into the LocalFileSet
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::byte* dest = nullptr;
};

struct LocalReadStats {
  std::string engine;              // "io_uring" or "pread"
  unsigned threads = 0;
  std::uint64_t bytes = 0;
  std::uint64_t direct_bytes = 0;  // read with O_DIRECT
  std::uint64_t requests = 0;      // read syscalls / SQEs issued
  std::uint64_t short_reads = 0;   // requeued remainders
  std::uint64_t retries = 0;       // -EAGAIN / -EINTR resubmissions
  std::uint64_t direct_fallbacks = 0;  // O_DIRECT refused at read time
};

// Called on the thread that called Read(), about every 100 ms and once at the end, with the
// bytes landed so far. Returning false cancels: in-flight reads are drained, Read() returns
// Errc::kCancelled.
using ReadProgressFn = std::function<bool(std::uint64_t bytes_done)>;

class LocalReader {
 public:
  virtual ~LocalReader() = default;
  // Picks the engine (probing io_uring under kAuto) and validates options.
  static Result<std::unique_ptr<LocalReader>> Create(const LocalReadOptions& options);

  virtual IoEngine engine() const = 0;
  virtual Status Read(const LocalFileSet& files, std::span<const ReadRange> ranges,
                      const ReadProgressFn& progress = {}, LocalReadStats* stats = nullptr) = 0;
};

// The process's reader for these options: its I/O threads and their rings are set up once and
// serve every later load (one Read() at a time; a second caller waits). Thread-safe.
Result<std::shared_ptr<LocalReader>> SharedLocalReader(const LocalReadOptions& options);

// True when this kernel (and seccomp profile) lets us set up an io_uring.
bool UringAvailable();

}  // namespace coldstart::fetch
