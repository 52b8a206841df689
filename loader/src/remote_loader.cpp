#include "coldstart/loader/remote_loader.h"

#include "coldstart/loader/mount_source.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>

#include "coldstart/core/crc32c.h"
#include "coldstart/core/hash.h"
#include "coldstart/core/log.h"
#include "coldstart/loader/engine.h"

namespace coldstart::loader {
namespace {

// A first GET of 1 MiB covers the header of every real checkpoint we have seen (a 40k-tensor
// header is ~4 MB, though; those get a second, exact request).
constexpr std::uint64_t kFirstHeaderBytes = 1u << 20;

bool IsTopLevelSafetensors(const std::string& name) {
  return name.find('/') == std::string::npos && name.size() > 12 && name.substr(name.size() - 12) == ".safetensors";
}

// Grows each object's prefix buffer to lens[i] bytes, fetching only what it lacks.
Status ExtendPrefixes(fetch::RemoteSession& s, std::span<const fetch::RemoteObject> objs,
                      const std::vector<std::uint64_t>& lens, std::vector<std::string>* bufs) {
  bufs->resize(objs.size());
  std::vector<fetch::FetchRange> ranges;
  for (std::uint32_t i = 0; i < objs.size(); ++i) {
    const std::uint64_t have = (*bufs)[i].size();
    if (lens[i] <= have) continue;
    (*bufs)[i].resize(lens[i]);
    ranges.push_back({i, have, lens[i] - have});
  }
  if (ranges.empty()) return OkStatus();
  fetch::RangeFetcher f(s.options().fetch);
  fetch::FetchCallbacks cb;
  cb.acquire = [&](std::size_t k) {
    return reinterpret_cast<std::byte*>((*bufs)[ranges[k].object].data() + ranges[k].offset);
  };
  cb.done = [](std::size_t, std::byte*, std::uint32_t) { return OkStatus(); };
  cb.auth_header = [&s] { return s.AuthHeader(); };
  auto st = f.Fetch(objs, ranges, cb);
  if (!st.ok()) return s.Annotate(std::move(st).error());
  return OkStatus();
}

// Grows `buf` (a prefix of the object, whole cache chunks so far) with the cache's checked
// chunks up to `want` bytes; stops at the first chunk the cache does not hold.
void ExtendFromCache(cache::CacheEntry& e, std::uint64_t want, std::string* buf) {
  while (buf->size() < want && buf->size() < e.size() && buf->size() % e.chunk_bytes() == 0) {
    const std::size_t k = buf->size() / e.chunk_bytes();
    if (!e.Present(k)) return;
    const std::size_t have = buf->size();
    buf->resize(have + e.ChunkLength(k));
    if (!e.ReadChunk(k, reinterpret_cast<std::byte*>(buf->data() + have)).ok()) {
      buf->resize(have);
      return;
    }
  }
}

// Grows each prefix to want[i] bytes through the disk cache, whole cache chunks at a time:
// chunks it holds are read (checked), chunks nobody has are fetched (in parallel across files)
// and put in it, chunks another process is fetching are waited for. The load that follows
// then finds its first chunks cached, and N processes opening one model at once fetch each
// header chunk once. Files whose entry cannot be used are left to ExtendPrefixes.
Status ExtendPrefixesViaCache(fetch::RemoteSession& s, std::span<const fetch::RemoteObject> objs,
                              std::vector<std::shared_ptr<cache::CacheEntry>>& entries,
                              const std::vector<std::uint64_t>& want, std::vector<std::string>* bufs) {
  for (;;) {
    std::vector<std::uint64_t> lens(objs.size());
    std::vector<std::pair<std::size_t, cache::ChunkClaim>> claimed;
    std::vector<std::pair<std::size_t, std::size_t>> busy;  // (file, chunk)
    for (std::size_t i = 0; i < objs.size(); ++i) {
      std::string& b = (*bufs)[i];
      lens[i] = b.size();
      cache::CacheEntry* e = entries[i].get();
      while (e && b.size() < want[i] && b.size() < e->size()) {
        if (b.size() % e->chunk_bytes() != 0) {  // not chunk-aligned: no more cache for this file
          entries[i].reset();
          break;
        }
        const std::size_t k = b.size() / e->chunk_bytes();
        cache::ChunkClaim claim;
        auto st = e->Claim(k, &claim);
        if (!st.ok()) {
          entries[i].reset();
          break;
        }
        if (*st == cache::ClaimState::kPresent) {
          const std::size_t have = b.size();
          b.resize(have + e->ChunkLength(k));
          if (e->ReadChunk(k, reinterpret_cast<std::byte*>(b.data() + have)).ok()) continue;
          b.resize(have);  // corrupt: cleared; claim it next time round
          continue;
        }
        if (*st == cache::ClaimState::kBusy) {
          busy.push_back({i, k});
        } else {
          lens[i] = std::min(e->size(), (k + 1) * e->chunk_bytes());
          claimed.push_back({i, std::move(claim)});
        }
        break;
      }
      lens[i] = std::max<std::uint64_t>(lens[i], b.size());
    }
    if (claimed.empty() && busy.empty()) return OkStatus();
    CS_RETURN_IF_ERROR(ExtendPrefixes(s, objs, lens, bufs));
    for (auto& [i, claim] : claimed) {
      cache::CacheEntry& e = *entries[i];
      const std::size_t k = claim.chunk();
      const auto* p = reinterpret_cast<const std::byte*>((*bufs)[i].data()) + e.ChunkOffset(k);
      if (!e.Fill(std::move(claim), p, Crc32c(p, e.ChunkLength(k)), true).ok()) entries[i].reset();
    }
    for (auto [i, k] : busy)
      if (entries[i] && !entries[i]->WaitChunk(k, {}, std::chrono::seconds(600)).ok()) entries[i].reset();
  }
}

// A small whole object (the index) from the cache, or fetched and put in the cache.
Result<std::string> GetSmallCached(fetch::RemoteSession& s, const fetch::RemoteFile& f, cache::DiskCache* cache,
                                   std::uint64_t max_bytes) {
  std::shared_ptr<cache::CacheEntry> e;
  if (cache) {
    if (const auto key = CacheKeyFor(s, f); Cacheable(key))
      if (auto opened = cache->OpenEntry(key); opened.ok()) e = *opened;
  }
  if (e && e->Complete()) {
    std::string text;
    ExtendFromCache(*e, e->size(), &text);
    if (text.size() == e->size()) return text;
  }
  CS_ASSIGN_OR_RETURN(auto text, s.GetSmall(f, max_bytes));
  if (e && text.size() == e->size()) {
    for (std::size_t k = 0; k < e->chunk_count(); ++k) {
      cache::ChunkClaim claim;
      auto st = e->Claim(k, &claim);
      if (!st.ok() || *st != cache::ClaimState::kClaimed) continue;
      const auto* p = reinterpret_cast<const std::byte*>(text.data()) + e->ChunkOffset(k);
      if (!e->Fill(std::move(claim), p, Crc32c(p, e->ChunkLength(k)), true).ok()) break;
    }
  }
  return text;
}

}  // namespace

namespace {
Result<RemoteModel> OpenListed(std::shared_ptr<fetch::RemoteSession> session, cache::DiskCache* cache,
                               std::vector<fetch::RemoteFile> listing, std::chrono::steady_clock::time_point t0);

// The origin cannot be reached: the listing the cache recorded, when it holds all of it.
Result<RemoteModel> OpenOffline(std::shared_ptr<fetch::RemoteSession> session, cache::DiskCache& cache, const Error& why,
                                std::chrono::steady_clock::time_point t0) {
  const fetch::Source& src = session->source();
  // A load needs the shards and their index; config and tokenizer files may be missing.
  CS_ASSIGN_OR_RETURN(auto files, CompleteRecordedListing(cache, src.original, why, [](const std::string& name) {
                        return IsTopLevelSafetensors(name) || name == kIndexFileName;
                      }));
  std::vector<fetch::RemoteFile> listing;
  for (const auto& f : files) {
    fetch::RemoteFile r;
    r.name = f.name;
    r.object.size = f.size;
    r.version = f.key.version;
    r.mtime_unix = f.mtime_unix;
    if (src.kind == fetch::SourceKind::kGcs) {
      r.object.display = "gs://" + src.bucket + "/" + f.key.name;
      std::int64_t g = 0;
      for (char ch : f.key.version) g = ch >= '0' && ch <= '9' ? g * 10 + (ch - '0') : g;
      r.object.generation = g;
    } else {
      r.object.display = r.object.url = f.key.origin + f.key.name;
    }
    listing.push_back(std::move(r));
  }
  LogWarning("cannot reach " + src.original + " (" + why.ToString() + "); loading the complete copy recorded in the cache at " +
             cache.dir());
  return OpenListed(std::move(session), &cache, std::move(listing), t0);
}
}  // namespace

Result<RemoteModel> OpenRemoteModel(std::shared_ptr<fetch::RemoteSession> session, cache::DiskCache* cache) {
  const auto t0 = std::chrono::steady_clock::now();
  auto listed = session->List();
  if (!listed.ok()) {
    const Errc code = listed.error().code;
    if (cache && (code == Errc::kNetwork || code == Errc::kTimeout)) return OpenOffline(session, *cache, listed.error(), t0);
    return std::move(listed).error();
  }
  if (cache) {
    // What the cache is filled from, for a later load or mount without the network.
    if (auto st = cache->SaveListing(session->source().original, RecordedListing(session->source().original, *session, *listed));
        !st.ok())
      LogWarning("disk cache " + cache->dir() + ": cannot record the listing: " + st.error().ToString());
  }
  return OpenListed(std::move(session), cache, std::move(listed).value(), t0);
}

namespace {
Result<RemoteModel> OpenListed(std::shared_ptr<fetch::RemoteSession> session, cache::DiskCache* cache,
                               std::vector<fetch::RemoteFile> listing, std::chrono::steady_clock::time_point t0) {
  RemoteModel m;
  m.session = session;
  m.timeline.Mark("listing");
  std::unique_ptr<ShardIndex> index;
  std::vector<fetch::RemoteFile> shards;
  auto idx_it = std::find_if(listing.begin(), listing.end(), [](const auto& f) { return f.name == kIndexFileName; });
  if (idx_it != listing.end()) {
    CS_ASSIGN_OR_RETURN(auto text, GetSmallCached(*session, *idx_it, cache, 256u << 20));
    auto parsed = ParseShardIndex(text);
    if (!parsed.ok()) return std::move(parsed).error().WithContext(idx_it->object.display);
    index = std::make_unique<ShardIndex>(std::move(parsed).value());
    for (const auto& name : index->shards) {
      auto it = std::find_if(listing.begin(), listing.end(), [&](const auto& f) { return f.name == name; });
      if (it == listing.end())
        return MakeError(Errc::kNotFound, idx_it->object.display + " names shard '" + name + "', which is missing");
      shards.push_back(*it);
    }
  } else {
    for (const auto& f : listing)
      if (IsTopLevelSafetensors(f.name) || listing.size() == 1) shards.push_back(f);
    std::sort(shards.begin(), shards.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    if (shards.empty())
      return MakeError(Errc::kNotFound, session->source().original + ": no *.safetensors files and no " +
                                            std::string(kIndexFileName));
  }
  std::vector<fetch::RemoteObject> objs;
  std::vector<std::uint64_t> lens;
  for (const auto& f : shards) {
    objs.push_back(f.object);
    lens.push_back(std::min<std::uint64_t>(f.object.size, kFirstHeaderBytes));
  }
  std::vector<std::string> prefixes(shards.size());
  // The disk cache's first chunks hold the headers of a model it has seen (its generation was
  // just checked by the listing): no header GET then; else they are fetched into it.
  std::vector<std::shared_ptr<cache::CacheEntry>> entries(shards.size());
  if (cache) {
    for (std::size_t i = 0; i < shards.size(); ++i)
      if (const auto key = CacheKeyFor(*session, shards[i]); Cacheable(key))
        if (auto e = cache->OpenEntry(key); e.ok()) entries[i] = *e;
    CS_RETURN_IF_ERROR(ExtendPrefixesViaCache(*session, objs, entries, lens, &prefixes));
  }
  CS_RETURN_IF_ERROR(ExtendPrefixes(*session, objs, lens, &prefixes));
  // Headers longer than the first read: fetch exactly what is missing.
  std::vector<std::uint64_t> need(shards.size());
  bool again = false;
  for (std::size_t i = 0; i < shards.size(); ++i) {
    auto n = ParseHeaderLength(std::as_bytes(std::span(prefixes[i].data(), prefixes[i].size())), shards[i].object.size);
    if (!n.ok()) return std::move(n).error().WithContext(shards[i].object.display);
    need[i] = 8 + *n;
    again = again || need[i] > prefixes[i].size();
  }
  if (again) {
    if (cache) CS_RETURN_IF_ERROR(ExtendPrefixesViaCache(*session, objs, entries, need, &prefixes));
    CS_RETURN_IF_ERROR(ExtendPrefixes(*session, objs, need, &prefixes));
  }
  std::vector<ShardFile> files;
  for (std::size_t i = 0; i < shards.size(); ++i) {
    ShardFile sf;
    sf.path = shards[i].object.display;
    sf.name = shards[i].name;
    sf.size = shards[i].object.size;
    auto h = ParseHeader(std::string_view(prefixes[i]).substr(8, need[i] - 8), sf.size);
    if (!h.ok()) return std::move(h).error().WithContext(shards[i].object.display);
    sf.header = std::move(h).value();
    prefixes[i].resize(need[i]);  // the cache may have handed over a whole chunk
    files.push_back(std::move(sf));
  }
  CS_ASSIGN_OR_RETURN(m.layout, BuildLayout(session->source().original, std::move(files), index.get()));
  m.files = std::move(shards);
  m.header_bytes = std::move(prefixes);
  m.plan_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  m.timeline.Mark("headers");
  return m;
}
}  // namespace

Result<OpenedModel> OpenModel(std::string_view source, const fetch::RemoteOptions& remote, const Env& env,
                              cache::DiskCache* cache) {
  CS_ASSIGN_OR_RETURN(auto src, fetch::ParseSource(source));
  OpenedModel opened;
  if (src.kind == fetch::SourceKind::kLocal) {
    CS_ASSIGN_OR_RETURN(opened.local, OpenLocalModel(std::string(source)));
    opened.timeline.Mark("headers");
    return opened;
  }
  CS_ASSIGN_OR_RETURN(auto session, fetch::RemoteSession::Open(src, remote, env));
  CS_ASSIGN_OR_RETURN(auto rm, OpenRemoteModel(std::move(session), cache));
  opened.remote = std::move(rm);
  return opened;
}

Result<std::vector<bool>> VerifyCrc32c(std::span<const fetch::RemoteFile> files,
                                       std::span<const std::string> header_bytes, const ModelLayout& m,
                                       std::span<const fetch::FetchRange> ranges,
                                       std::span<const std::uint32_t> range_crc) {
  std::vector<std::uint64_t> covered(m.files.size(), 0);
  for (const auto& r : ranges) covered[r.object] += r.length;
  std::vector<std::size_t> order(ranges.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](auto a, auto b) {
    return ranges[a].object != ranges[b].object ? ranges[a].object < ranges[b].object : ranges[a].offset < ranges[b].offset;
  });
  // The header bytes we already hold, then the data ranges in offset order.
  std::vector<std::uint32_t> crc(m.files.size());
  for (std::size_t i = 0; i < m.files.size(); ++i) crc[i] = Crc32c(header_bytes[i].data(), header_bytes[i].size());
  for (auto k : order) crc[ranges[k].object] = Crc32cCombine(crc[ranges[k].object], range_crc[k], ranges[k].length);
  std::vector<bool> verified(m.files.size(), false);
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    if (!files[i].crc32c || covered[i] != m.files[i].header.data_bytes) continue;
    if (*files[i].crc32c != crc[i])
      return MakeError(Errc::kIntegrity, files[i].object.display + ": CRC32C mismatch (server says " +
                                             Crc32cToBase64(*files[i].crc32c) + ", received bytes give " +
                                             Crc32cToBase64(crc[i]) + "); the data was corrupted in transit");
    verified[i] = true;
  }
  return verified;
}

Result<std::shared_ptr<HostModel>> LoadRemoteToHost(RemoteModel rm, const HostLoadOptions& options,
                                                    RemoteLoadStats* stats) {
  OpenedModel m;
  m.remote = std::move(rm);
  CS_ASSIGN_OR_RETURN(auto handle, StartLoad(std::move(m), ToLoadOptions(options)));
  auto st = handle->WaitAll();
  if (stats) *stats = RemoteStatsOf(*handle);
  CS_RETURN_IF_ERROR(st);
  return handle->host_model();
}

RemoteLoadStats RemoteStatsOf(const LoadHandle& handle) {
  const auto& s = handle.source_stats();
  RemoteLoadStats r;
  r.fetch = s.fetch;
  r.verified_crc32c = s.all_verified;
  r.verified_md5 = s.verified_md5;
  r.cache_hit_bytes = s.cache_hit_bytes;
  r.cache_filled_bytes = s.cache_filled_bytes;
  return r;
}

}  // namespace coldstart::loader
