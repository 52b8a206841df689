// The disk cache: objects kept on this machine, keyed by where they came from and which version
// they are, chunk-granular, CRC-checked, crash-safe, shared by processes, size-capped.
//
// On disk (DIR = --cache-dir, COLDSTART_CACHE_DIR, else $XDG_CACHE_HOME/coldstart, else
// ~/.cache/coldstart):
//   DIR/CACHEDIR.TAG + DIR/config        format version and the chunk size (fixed per cache dir)
//   DIR/entries/XX/<sha256(key)>/        one object (XX = first two hex digits)
//       key    the key, as text (checked on open: a hash collision is never served)
//       data   the object's bytes at their offsets (sparse until filled)
//       map    a header, then one slot per chunk: CRC32C of the chunk's bytes, a "present"
//              marker and a CRC of the slot itself. A slot is written only after the chunk's
//              bytes are in `data` (with --fsync: after they were flushed, and the slot is
//              flushed too), so kill -9 at any instant leaves a chunk either absent or whole; a
//              torn slot reads as absent.
//       use    flock(LOCK_SH) by every process that has the entry open; eviction takes
//              LOCK_EX|LOCK_NB, so an object in use is never evicted. Its mtime is the last use
//              (least-recently-used eviction).
//   DIR/listings/<sha256(source)>.json  the listing a source was last filled from (offline use)
//   DIR/evict.lock                      flock(LOCK_EX) by whoever evicts: one evicter at a time
//   DIR/entries/XX/.tmp-*, .evicted-*   an entry being built (renamed into place whole) or being
//                                       removed (renamed away first); leftovers of a crash are
//                                       swept by the next eviction
//
// Single flight: filling chunk c takes an in-process claim and an OFD byte-range lock on slot c
// of `map` (fcntl F_OFD_SETLK; released by the kernel when a process dies). Everyone else sees
// kBusy and waits (WaitChunk) until the filler is done, then reads the bytes from disk: N
// processes loading one model at once fetch each byte once.
//
// Served bytes are always checked: ReadChunk/CheckChunk compare the bytes read from `data` with
// the slot's CRC32C; a mismatch (a flipped byte on disk) clears the slot, counts it, and reports
// the chunk absent so it is fetched again. Never are unchecked bytes handed out.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "coldstart/core/env.h"
#include "coldstart/core/result.h"

namespace coldstart::cache {

struct DiskCacheOptions {
  std::string dir;                        // required (see DefaultCacheDir)
  std::uint64_t max_bytes = 0;            // --cache-max-bytes, COLDSTART_CACHE_MAX_BYTES; 0 = no cap.
                                          // Checked after fills: least recently used entries not in
                                          // use are evicted until the cache fits.
  std::uint64_t chunk_bytes = 8ull << 20; // for a new cache dir; an existing one keeps its own
  bool fsync = false;                     // flush data before its slot, and the slot (power loss)
  bool create = true;                     // false: a missing folder or config is kNotFound
                                          // (`coldstart cache ls` never creates a cache)
  // COLDSTART_CACHE_DIR, COLDSTART_CACHE_MAX_BYTES.
  Status ApplyEnv(const Env& env);
};

// $XDG_CACHE_HOME/coldstart, else $HOME/.cache/coldstart.
Result<std::string> DefaultCacheDir(const Env& env);

// Which object, which version. A new generation is a new entry, never a mix.
struct ObjectKey {
  std::string origin;      // where: "gs://BUCKET@ENDPOINT", "https://host[:port]", "file://"
  std::string name;        // object name or URL path
  std::string version;     // GCS generation; HTTP ETag (else Last-Modified); local mtime+inode
  std::uint64_t size = 0;
  std::string ToString() const;  // one line per field; what `key` holds and the hash covers
  // The inverse of ToString (kFormat when `text` is not one).
  static Result<ObjectKey> Parse(const std::string& text);
  bool operator==(const ObjectKey&) const = default;
};

struct EntryInfo {
  ObjectKey key;
  std::string path;                 // the entry's folder
  std::uint64_t chunks = 0, chunks_present = 0;
  std::uint64_t present_bytes = 0;  // bytes of present chunks
  std::int64_t last_used_unix = 0;
  bool in_use = false;              // some process has it open
  std::string problem;              // "" for a sound entry; else why it cannot be served
                                    // (unreadable key or map): verify, evict and clear remove it
};

struct VerifyReport {
  std::uint64_t entries = 0, chunks_checked = 0, bytes_checked = 0;
  std::uint64_t corrupt_chunks = 0;   // cleared (they will be fetched again)
  std::uint64_t corrupt_entries = 0;  // unreadable key or map: removed (kept when in use)
  std::vector<std::string> messages;  // one line per problem, naming the object
};

struct EvictReport {
  std::uint64_t entries_removed = 0, bytes_freed = 0;
  std::uint64_t skipped_in_use = 0;
  std::vector<std::string> messages;  // entries that could not be removed, and why
};

class CacheEntry;

// The right to fill one chunk (in-process and cross-process). Move-only; dropping it without
// CacheEntry::Fill releases the chunk for someone else to fill.
class ChunkClaim {
 public:
  struct Impl;  // opaque; defined by the implementation
  ChunkClaim();
  ChunkClaim(ChunkClaim&&) noexcept;
  ChunkClaim& operator=(ChunkClaim&&) noexcept;
  ~ChunkClaim();
  std::size_t chunk() const;
  bool held() const;
  void Release();

 private:
  friend class CacheEntry;
  std::unique_ptr<Impl> impl_;
};

enum class ClaimState {
  kPresent,  // the chunk is in the cache (per its slot; ReadChunk still checks the bytes)
  kClaimed,  // it is yours to fill: fetch it, then Fill()
  kBusy,     // someone (this process or another) is filling it: WaitChunk(), then ask again
};

// One object in the cache. Open while the shared_ptr lives (the entry is "in use"). Thread-safe.
class CacheEntry {
 public:
  virtual ~CacheEntry() = default;
  virtual const ObjectKey& key() const = 0;
  virtual std::uint64_t size() const = 0;
  virtual std::uint64_t chunk_bytes() const = 0;
  virtual std::size_t chunk_count() const = 0;
  std::uint64_t ChunkOffset(std::size_t c) const { return c * chunk_bytes(); }
  std::uint64_t ChunkLength(std::size_t c) const;

  // Per the map on disk now (another process may have filled it since).
  virtual bool Present(std::size_t c) const = 0;
  virtual std::uint64_t present_bytes() const = 0;
  virtual bool Complete() const = 0;

  // Reads chunk c (ChunkLength(c) bytes) into dst and checks its CRC32C against the slot.
  // Errc::kNotFound when absent, or when the bytes on disk did not match (the slot is cleared
  // and counted in corrupt_chunks()): fetch it again.
  virtual Status ReadChunk(std::size_t c, std::byte* dst) = 0;
  // For callers that read `data` themselves (io_uring, O_DIRECT): chunk c's bytes they read
  // have this CRC32C. kNotFound (slot cleared) when it is not the slot's.
  virtual Status CheckChunk(std::size_t c, std::uint32_t crc32c) = 0;
  virtual std::optional<std::uint32_t> SlotCrc(std::size_t c) const = 0;
  virtual const std::string& data_path() const = 0;
  virtual int data_fd() const = 0;  // read-only use

  virtual Result<ClaimState> Claim(std::size_t c, ChunkClaim* claim) = 0;
  // Returns once nobody is filling chunk c any more (it is present, or its filler gave up or
  // died): then Claim again. Polls other processes' locks; `cancelled` is asked between polls.
  virtual Status WaitChunk(std::size_t c, const std::function<bool()>& cancelled = {},
                           std::chrono::milliseconds timeout = std::chrono::milliseconds::max()) = 0;
  // Writes the chunk's bytes (ChunkLength(c), given as parts laid end to end) whose CRC32C is
  // `crc32c`, then its slot; releases the claim. ENOSPC/EDQUOT: kResourceExhausted. Bytes that
  // do not have that CRC: kIntegrity (nothing written). With max_bytes set, it may evict other
  // entries before returning (a scan: ~0.07 ms per entry).
  // `crc_of_these_bytes`: the caller computed crc32c over exactly these bytes in this memory (as
  // they arrived from the socket, or just now), so the check pass is skipped: it was ~24 % of a
  // cold mount's CPU with the arrival CRC (bench/RESULTS.md, issue #8).
  virtual Status Fill(ChunkClaim claim, const std::vector<std::pair<const std::byte*, std::size_t>>& parts,
                      std::uint32_t crc32c, bool crc_of_these_bytes = false) = 0;
  Status Fill(ChunkClaim claim, const std::byte* data, std::uint32_t crc32c, bool crc_of_these_bytes = false) {
    const auto len = static_cast<std::size_t>(ChunkLength(claim.chunk()));
    return Fill(std::move(claim), {{data, len}}, crc32c, crc_of_these_bytes);
  }

  virtual std::uint64_t corrupt_chunks() const = 0;  // found by this process

 protected:
  // Implementations reach a claim's innards through this (friendship is not inherited).
  static std::unique_ptr<ChunkClaim::Impl>& ClaimImpl(ChunkClaim& claim) { return claim.impl_; }
};

class DiskCache {
 public:
  virtual ~DiskCache() = default;
  // Creates the folder (and its config) when missing; an unreadable or foreign config is an
  // error naming the folder.
  static Result<std::shared_ptr<DiskCache>> Open(DiskCacheOptions options);

  virtual const std::string& dir() const = 0;
  virtual std::uint64_t chunk_bytes() const = 0;
  virtual const DiskCacheOptions& options() const = 0;

  // The entry for this object, created when missing (its last use is now).
  virtual Result<std::shared_ptr<CacheEntry>> OpenEntry(const ObjectKey& key) = 0;
  // Only an existing entry: Errc::kNotFound when there is none.
  virtual Result<std::shared_ptr<CacheEntry>> FindEntry(const ObjectKey& key) = 0;

  // The listing a source was filled from (`source` = the URL as given); JSON text of the
  // caller's choosing, written atomically.
  virtual Status SaveListing(const std::string& source, const std::string& listing_json) = 0;
  virtual Result<std::string> LoadListing(const std::string& source) = 0;  // kNotFound if none

  virtual Result<std::vector<EntryInfo>> List() = 0;
  virtual std::uint64_t UsedBytes() = 0;  // present bytes of every entry
  // Least recently used first, never an entry in use, until at most max_bytes remain.
  virtual Result<EvictReport> EvictToFit(std::uint64_t max_bytes) = 0;
  // Reads every present chunk back and checks it; corrupt ones are cleared.
  virtual Result<VerifyReport> Verify() = 0;
  // Removes every entry not in use (and the listings).
  virtual Result<EvictReport> Clear() = 0;
  // Removes the entry of `key` unless some process has it open (then false); true when it is
  // gone (or was never there).
  virtual Result<bool> Remove(const ObjectKey& key) = 0;
};

}  // namespace coldstart::cache
