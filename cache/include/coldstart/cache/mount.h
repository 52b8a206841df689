// `coldstart mount SRC MOUNTPOINT`: a read-only FUSE file system (libfuse3 low-level API,
// private to cache/) over a model source, with the disk cache below it.
//
//  - Names, sizes and times come from the listing (MountFile). stat, readdir, open, read and
//    mmap work from many processes at once; anything that writes gets EROFS.
//  - read() waits only until the chunks it covers are in the cache (it fetches them at once,
//    ahead of read-ahead); read-ahead fills whole files behind readers (by default every file
//    as soon as the mount is up, since model loaders read everything).
//  - Bytes come from an Origin (the fetch transport for gs:// and http(s)://, local reads for a
//    folder), implemented above cache/ (loader/), so this module needs no curl.
//  - A failure is EIO with a log line naming the object; no read() waits past the deadline.
//  - Memory stays bounded: the cache is on disk; verified chunks are held in a small LRU of
//    buffers (memory_bytes) so consecutive 128 KiB reads do not re-read and re-check a chunk.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "coldstart/cache/disk_cache.h"
#include "coldstart/core/result.h"

namespace coldstart::cache {

// Where bytes come from. Thread-safe; Read must not block (it starts the read and returns).
class Origin {
 public:
  virtual ~Origin() = default;
  // Reads [offset, offset+len) of file `file` (index into the mount's files) into dst, then
  // calls done exactly once, from any thread, with the status and the CRC32C of the bytes.
  // `urgent`: a reader waits for these bytes now (they go ahead of read-ahead).
  virtual void Read(std::size_t file, std::uint64_t offset, std::uint64_t len, std::byte* dst, bool urgent,
                    std::function<void(Status status, std::uint32_t crc32c)> done) = 0;
  // Reads in flight that a caller should keep at most (the transport's concurrency).
  virtual unsigned MaxInFlight() const = 0;
  // Abandons the reads in flight (unmounting): each one's done still comes, soon, with an
  // error. The default waits for them to finish instead.
  virtual void CancelAll() {}
};

struct MountFile {
  std::string name;        // relative path ("model-00001-of-00002.safetensors", "sub/x.json")
  std::uint64_t size = 0;
  std::int64_t mtime_unix = 0;
  ObjectKey key;           // its cache entry
  // The entry is this mount's alone (an object with no version: a later mount could not tell
  // a rewrite of the same size from it): never reused, removed when the mount ends.
  bool ephemeral = false;
};

enum class ReadAhead {
  kAll,   // every file, as soon as the mount is up (default)
  kOpen,  // a file once someone opens it
  kNone,  // only what read() asks for
};
Result<ReadAhead> ParseReadAhead(const std::string& text);  // "all" | "open" | "none"

struct MountOptions {
  std::string mountpoint;
  ReadAhead read_ahead = ReadAhead::kAll;
  std::chrono::milliseconds read_deadline{120000};  // a read() never waits longer: EIO
  // Verified-chunk buffers and read-ahead buffers in flight (read-ahead takes at most 7/8,
  // so readers always find room). 256 MiB: read-ahead then keeps 28 chunks of 8 MiB in flight,
  // i.e. 28 connections, ~1.4 GB/s where the origin caps a connection at 50 MB/s; with 64 MiB
  // it had 6 (300 MB/s). At least three chunks are used whatever is asked.
  std::uint64_t memory_bytes = 256ull << 20;
  bool allow_other = false;                         // -o allow_other (needs user_allow_other)
  std::string fs_name = "coldstart";                // shown by mount(8)
  // One line per event worth logging (failures naming the object, stale mount replaced).
  std::function<void(const std::string& line)> log;
};

struct MountProgress {
  std::uint64_t bytes_total = 0;    // all files
  std::uint64_t bytes_cached = 0;   // present in the cache
  std::uint64_t bytes_fetched = 0;  // fetched by this mount
  std::uint64_t reads = 0, read_errors = 0;
  // Bytes readers got by reading a chunk back from the disk cache (not from memory): what this
  // mount read before, or another process filled.
  std::uint64_t bytes_read_back = 0;
  bool read_ahead_done = false;     // every file wanted by read-ahead is cached (or failed)
  unsigned read_ahead_failures = 0;
};

// A mounted file system. Unmounts on destruction.
class Mount {
 public:
  virtual ~Mount() = default;
  // Mounts (replacing a stale mount left by kill -9 at the same mountpoint) and starts the
  // FUSE session threads and read-ahead; returns once the mountpoint answers.
  static Result<std::unique_ptr<Mount>> Start(std::vector<MountFile> files, std::shared_ptr<DiskCache> cache,
                                              std::shared_ptr<Origin> origin, MountOptions options);
  // Until unmounted (Stop(), `fusermount3 -u`, or the session failed).
  virtual Status Wait() = 0;
  // Unmounts and stops read-ahead; Wait() returns OK. Safe from any thread (signal thread).
  virtual void Stop() = 0;
  virtual MountProgress progress() const = 0;
};

}  // namespace coldstart::cache
