// `coldstart prefetch`: copy a remote model folder to local disk as fast as the network
// allows. Each file is written through a cache::PartialFile: under a unique temporary name, with
// a lock per file (a second prefetch into the same folder waits for it, then skips it), read back
// and verified on disk (CRC32C, or MD5 where the server has no CRC32C), a `.safetensors` file's
// header checked, and only then renamed. Files already present with the same size and checksum
// are skipped; an interrupted file resumes from its verified ranges (the partial and its resume
// record stay when the object can be identified), so a re-run fetches only what is missing.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "coldstart/cache/disk_cache.h"
#include "coldstart/core/result.h"
#include "coldstart/fetch/remote.h"

namespace coldstart::loader {

struct PrefetchOptions {
  std::vector<std::string> include;  // globs on the relative name; empty = everything
  std::vector<std::string> exclude;
  // Flush each file before its rename (COLDSTART_PREFETCH_FSYNC, --fsync), so even a power loss
  // never leaves a torn file under a final name; writeback then starts per range
  // (sync_file_range) so the final flush is short. Off by default: a process crash cannot tear
  // a renamed file (the page cache survives it), the destination is usually an ephemeral
  // disk, and a re-run re-verifies every present file's CRC32C; the flush doubled the time of
  // a 1 GiB prefetch here. Bytes go from curl's buffer to the page cache: no staging memory,
  // so peak RSS does not depend on the model's size.
  bool fsync = false;
  // About every 100 ms with bytes fetched so far (this run); false cancels (Errc::kCancelled).
  std::function<bool(std::uint64_t done, std::uint64_t total)> progress;
  // Polled outside the fetch (skip checks, waits for another process's lock); true cancels.
  std::function<bool()> cancelled;
  // Another process holds the lock of this file: we wait for it (then skip the file if it
  // finished it).
  std::function<void(const std::string& path)> on_lock_wait;
  // The disk cache: chunks it holds are copied from it (each checked against its CRC32C; a
  // chunk that fails is fetched instead), and every file fetched is put into it once verified.
  std::shared_ptr<cache::DiskCache> cache;
  Status ApplyEnv(const Env& env);
};

struct PrefetchReport {
  unsigned files = 0;           // downloaded
  unsigned skipped = 0;         // already present and verified
  std::uint64_t bytes = 0;      // downloaded bytes
  std::uint64_t skipped_bytes = 0;
  std::uint64_t resumed_bytes = 0;  // verified bytes kept from an interrupted earlier run
  unsigned resumed_files = 0;
  unsigned lock_waits = 0;          // files another process was writing when we asked
  unsigned stale_removed = 0;       // leftovers of objects no longer in the source
  unsigned verified_crc32c = 0, verified_md5 = 0, unverified = 0;
  std::uint64_t cache_hit_bytes = 0;     // copied from the disk cache instead of fetched
  std::uint64_t cache_filled_bytes = 0;  // put into the disk cache
  double seconds = 0;
  fetch::FetchStats fetch;
};

Result<PrefetchReport> Prefetch(fetch::RemoteSession& session, const std::string& dest, const PrefetchOptions& options);

// CRC32C of a local file (to decide whether it can be skipped).
Result<std::uint32_t> FileCrc32c(const std::string& path);

}  // namespace coldstart::loader
