#include "cache_link.h"

#include "coldstart/core/crc32c.h"
#include "coldstart/core/file_io.h"
#include "coldstart/core/log.h"
#include "coldstart/loader/mount_source.h"

namespace coldstart::loader::internal {

Result<std::unique_ptr<CacheLink>> CacheLink::Open(std::shared_ptr<cache::DiskCache> cache, const RemoteModel& rm,
                                                   const ModelLayout& m, const Plan& plan) {
  std::unique_ptr<CacheLink> link(new CacheLink(std::move(cache), rm, plan));
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    const cache::ObjectKey key = CacheKeyFor(*rm.session, rm.files[i]);
    if (!Cacheable(key)) {
      // No generation, ETag or Last-Modified: a rewritten object of the same size could not be
      // told from the cached one, so it is never cached (its chunks are fetched).
      LogWarning(rm.files[i].object.display + " has no version (generation, ETag or Last-Modified); it is not cached");
      link->entries_.push_back(nullptr);
      continue;
    }
    CS_ASSIGN_OR_RETURN(auto e, link->cache_->OpenEntry(key));
    link->entries_.push_back(std::move(e));
  }
  link->info_.resize(plan.chunks.size());
  for (std::size_t c = 0; c < plan.chunks.size(); ++c) {
    const Chunk& ch = plan.chunks[c];
    if (!link->entries_[ch.file]) continue;  // not cacheable: never whole
    const cache::CacheEntry& e = *link->entries_[ch.file];
    const std::uint64_t cb = e.chunk_bytes();
    const std::uint64_t data_start = m.files[ch.file].header.data_start();
    Info& in = link->info_[c];
    in.cache_chunk = static_cast<std::size_t>(ch.offset / cb);
    const std::uint64_t lo = in.cache_chunk * cb, hi = std::min(lo + cb, e.size());
    const std::uint64_t data_lo = std::max(lo, data_start);
    in.whole = ch.length > 0 && ch.offset == data_lo && ch.offset + ch.length == hi &&
               rm.header_bytes[ch.file].size() == data_start;
    if (lo < data_start) {
      in.head_from = lo;
      in.head_len = data_start - lo;
      in.head_crc = Crc32c(rm.header_bytes[ch.file].data() + lo, in.head_len);
    }
  }
  // Cache chunks made only of header bytes (a header longer than a chunk) are filled now.
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    if (!link->entries_[i]) continue;
    cache::CacheEntry& e = *link->entries_[i];
    const std::string& h = rm.header_bytes[i];
    for (std::size_t k = 0; (k + 1) * e.chunk_bytes() <= h.size() && k < e.chunk_count(); ++k) {
      cache::ChunkClaim claim;
      auto st = e.Claim(k, &claim);
      if (!st.ok() || *st != cache::ClaimState::kClaimed) continue;
      const auto* p = reinterpret_cast<const std::byte*>(h.data()) + k * e.chunk_bytes();
      if (auto f = e.Fill(std::move(claim), p, Crc32c(p, e.chunk_bytes()), true); !f.ok()) link->Disable(f.error().ToString());
    }
  }
  return link;
}

void CacheLink::Disable(const std::string& why) {
  if (!disabled_.exchange(true)) LogWarning("disk cache " + cache_->dir() + ": " + why + "; loading without it");
}

std::optional<cache::ClaimState> CacheLink::Claim(std::size_t c, cache::ChunkClaim* claim) {
  if (disabled_ || !info_[c].whole) return std::nullopt;
  auto st = entry(c).Claim(info_[c].cache_chunk, claim);
  if (!st.ok()) {
    Disable(st.error().ToString());
    return std::nullopt;
  }
  return *st;
}

void CacheLink::Fill(std::size_t c, cache::ChunkClaim claim, const std::byte* data, std::uint32_t data_crc) {
  if (disabled_) return;
  const Info& in = info_[c];
  const Chunk& ch = plan_.chunks[c];
  std::vector<std::pair<const std::byte*, std::size_t>> parts;
  if (in.head_len > 0)
    parts.push_back({reinterpret_cast<const std::byte*>(rm_.header_bytes[ch.file].data()) + in.head_from,
                     static_cast<std::size_t>(in.head_len)});
  parts.push_back({data, static_cast<std::size_t>(ch.length)});
  const std::uint32_t crc = in.head_len > 0 ? Crc32cCombine(in.head_crc, data_crc, ch.length) : data_crc;
  // data_crc was computed by the transport over `data` as it arrived; head_crc over the header.
  if (auto st = entry(c).Fill(std::move(claim), parts, crc, /*crc_of_these_bytes=*/true); !st.ok()) {
    Disable(st.error().ToString());
    return;
  }
  filled_bytes_ += ch.length + in.head_len;
}

Result<std::uint32_t> CacheLink::Read(std::size_t c, std::byte* dst) {
  const Info& in = info_[c];
  const Chunk& ch = plan_.chunks[c];
  cache::CacheEntry& e = entry(c);
  auto got = ReadAt(e.data_fd(), dst, ch.length, ch.offset, e.data_path());
  if (!got.ok() || *got != ch.length) return MakeError(Errc::kNotFound, e.data_path() + ": a cached chunk cannot be read back");
  const std::uint32_t data_crc = Crc32c(dst, ch.length);
  const std::uint32_t crc = in.head_len > 0 ? Crc32cCombine(in.head_crc, data_crc, ch.length) : data_crc;
  CS_RETURN_IF_ERROR(e.CheckChunk(in.cache_chunk, crc));
  hit_bytes_ += ch.length;
  return data_crc;
}

void CacheLink::Invalidate(std::uint32_t file) {
  if (!entries_[file]) return;
  cache::CacheEntry& e = *entries_[file];
  for (std::size_t k = 0; k < e.chunk_count(); ++k)
    if (auto crc = e.SlotCrc(k)) (void)e.CheckChunk(k, ~*crc);  // a CRC that is not the slot's clears it
}

}  // namespace coldstart::loader::internal
