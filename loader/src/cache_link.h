// The disk cache's view of one remote load (internal to the engine): one cache entry per file,
// and for each plan chunk the cache chunk it is served from or fills. The plan is cut at cache
// chunk boundaries (PlanOptions::align_bytes), so a plan chunk that covers the data bytes of
// its cache chunk exactly is "whole"; the header bytes sharing a cache chunk with the first
// tensors come from the headers the load already holds. Chunks that are not whole (a filtered
// load's ragged ends) are fetched and never cached.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "coldstart/cache/disk_cache.h"
#include "coldstart/loader/engine.h"

namespace coldstart::loader::internal {

class CacheLink {
 public:
  // Opens (creates) the entries and fills cache chunks that hold only header bytes.
  // `m` is the load's layout (the RemoteModel's own was moved into the result model).
  static Result<std::unique_ptr<CacheLink>> Open(std::shared_ptr<cache::DiskCache> cache, const RemoteModel& rm,
                                                 const ModelLayout& m, const Plan& plan);

  bool Whole(std::size_t c) const { return info_[c].whole; }
  cache::CacheEntry& entry(std::size_t c) const { return *entries_[plan_.chunks[c].file]; }
  std::size_t CacheChunk(std::size_t c) const { return info_[c].cache_chunk; }

  // Claim of plan chunk c's cache chunk (kPresent / kClaimed / kBusy); errors disable the
  // cache for this load (one warning) and answer nullopt: fetch it.
  std::optional<cache::ClaimState> Claim(std::size_t c, cache::ChunkClaim* claim);
  // Fills c's cache chunk from the bytes fetched for it. Failures (a full disk) warn once and
  // stop further fills; the load goes on.
  void Fill(std::size_t c, cache::ChunkClaim claim, const std::byte* data, std::uint32_t data_crc);
  // Plan chunk c's bytes from the cache into dst, checked against the chunk's CRC32C: the CRC
  // of the bytes, or kNotFound when absent or corrupt (the slot is then cleared).
  Result<std::uint32_t> Read(std::size_t c, std::byte* dst);
  // The object of `file` failed its whole-object check: drop every chunk of it we hold, so no
  // later load serves them.
  void Invalidate(std::uint32_t file);

  std::uint64_t hit_bytes() const { return hit_bytes_.load(); }
  std::uint64_t filled_bytes() const { return filled_bytes_.load(); }
  bool disabled() const { return disabled_.load(); }

 private:
  struct Info {
    bool whole = false;
    std::size_t cache_chunk = 0;
    std::uint64_t head_from = 0, head_len = 0;  // header bytes of the cache chunk before c's data
    std::uint32_t head_crc = 0;
  };
  CacheLink(std::shared_ptr<cache::DiskCache> cache, const RemoteModel& rm, const Plan& plan)
      : cache_(std::move(cache)), rm_(rm), plan_(plan) {}
  void Disable(const std::string& why);

  std::shared_ptr<cache::DiskCache> cache_;
  const RemoteModel& rm_;
  const Plan& plan_;
  std::vector<std::shared_ptr<cache::CacheEntry>> entries_;  // per file
  std::vector<Info> info_;                                    // per plan chunk
  std::atomic<std::uint64_t> hit_bytes_{0}, filled_bytes_{0};
  std::atomic<bool> disabled_{false};
};

}  // namespace coldstart::loader::internal
