// `coldstart cache ls|verify|evict|clear`: look at and maintain the disk cache.
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "coldstart/cache/disk_cache.h"
#include "commands.h"
#include "options.h"

namespace coldstart::cli {
namespace {

std::string FormatUnixTime(std::int64_t t) {
  if (t <= 0) return "never";
  const std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  ::gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::string Bytes(std::uint64_t n) { return FormatBytes(static_cast<double>(n)); }

nlohmann::ordered_json EvictJson(const cache::DiskCache& c, const cache::EvictReport& r, std::uint64_t used) {
  return {{"dir", c.dir()},
          {"entries_removed", r.entries_removed},
          {"bytes_freed", r.bytes_freed},
          {"skipped_in_use", r.skipped_in_use},
          {"used_bytes", used},
          {"problems", r.messages}};
}

// A removal that failed is reported after the summary: one line, its code.
int EvictExit(const cache::EvictReport& r) {
  if (r.messages.empty()) return 0;
  std::string more = r.messages.size() > 1 ? " (and " + std::to_string(r.messages.size() - 1) + " more)" : "";
  return ReportError(MakeError(Errc::kIo, r.messages.front() + more));
}

int RunLs(cache::DiskCache& c, bool json) {
  auto list = c.List();
  if (!list.ok()) return ReportError(list.error());
  std::uint64_t total = 0;
  for (const auto& e : *list) total += e.present_bytes;
  if (json) {
    auto entries = nlohmann::ordered_json::array();
    for (const auto& e : *list) {
      nlohmann::ordered_json j{{"origin", e.key.origin},
                               {"name", e.key.name},
                               {"version", e.key.version},
                               {"size", e.key.size},
                               {"present_bytes", e.present_bytes},
                               {"chunks", e.chunks},
                               {"chunks_present", e.chunks_present},
                               {"complete", e.problem.empty() && e.chunks_present == e.chunks},
                               {"last_used_unix", e.last_used_unix},
                               {"in_use", e.in_use},
                               {"path", e.path}};
      if (!e.problem.empty()) j["problem"] = e.problem;
      entries.push_back(std::move(j));
    }
    nlohmann::ordered_json out{{"dir", c.dir()},
                               {"chunk_bytes", c.chunk_bytes()},
                               {"entries", std::move(entries)},
                               {"total_bytes", total}};
    std::printf("%s\n", out.dump().c_str());
    return 0;
  }
  for (const auto& e : *list) {
    if (!e.problem.empty()) {
      std::printf("%s  unusable: %s%s\n", e.path.c_str(), e.problem.c_str(), e.in_use ? "  in use" : "");
      continue;
    }
    const double pct = e.key.size ? 100.0 * static_cast<double>(e.present_bytes) / static_cast<double>(e.key.size) : 100.0;
    std::printf("%s %s  version %s  %s/%s (%.0f%%)  last use %s%s\n", e.key.origin.c_str(), e.key.name.c_str(),
                e.key.version.empty() ? "-" : e.key.version.c_str(), Bytes(e.present_bytes).c_str(),
                Bytes(e.key.size).c_str(), pct, FormatUnixTime(e.last_used_unix).c_str(), e.in_use ? "  in use" : "");
  }
  std::printf("%zu entr%s, %s cached in %s\n", list->size(), list->size() == 1 ? "y" : "ies", Bytes(total).c_str(),
              c.dir().c_str());
  return 0;
}

int RunVerify(cache::DiskCache& c, bool json) {
  auto r = c.Verify();
  if (!r.ok()) return ReportError(r.error());
  if (json) {
    nlohmann::ordered_json out{{"dir", c.dir()},
                               {"entries", r->entries},
                               {"chunks_checked", r->chunks_checked},
                               {"bytes_checked", r->bytes_checked},
                               {"corrupt_chunks", r->corrupt_chunks},
                               {"corrupt_entries", r->corrupt_entries},
                               {"problems", r->messages}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    for (const auto& m : r->messages) std::printf("  %s\n", m.c_str());
    std::printf("verified %llu entr%s, %llu chunks (%s) in %s: %llu corrupt chunks cleared, %llu unusable entries\n",
                static_cast<unsigned long long>(r->entries), r->entries == 1 ? "y" : "ies",
                static_cast<unsigned long long>(r->chunks_checked), Bytes(r->bytes_checked).c_str(), c.dir().c_str(),
                static_cast<unsigned long long>(r->corrupt_chunks), static_cast<unsigned long long>(r->corrupt_entries));
  }
  if (r->corrupt_chunks || r->corrupt_entries) {
    // Integrity (README exit 5): bytes on disk were wrong. They are cleared and will be
    // fetched again, but a disk that flips bits deserves a look.
    return ReportError(MakeError(Errc::kIntegrity, c.dir() + ": " + std::to_string(r->corrupt_chunks) +
                                                       " corrupt chunks and " + std::to_string(r->corrupt_entries) +
                                                       " unusable entries found (cleared)"));
  }
  return 0;
}

}  // namespace

Result<cache::DiskCacheOptions> MakeDiskCacheOptions(const std::string& cache_dir) {
  cache::DiskCacheOptions o;
  const Env env = Env::FromProcess();
  CS_RETURN_IF_ERROR(env.Validate());
  CS_RETURN_IF_ERROR(o.ApplyEnv(env));
  if (!cache_dir.empty()) o.dir = cache_dir;
  if (o.dir.empty()) {
    CS_ASSIGN_OR_RETURN(o.dir, cache::DefaultCacheDir(env));
  }
  return o;
}

int RunCache(const CacheArgs& args) {
  auto o = MakeDiskCacheOptions(args.cache_dir);
  if (!o.ok()) return ReportError(o.error());
  std::uint64_t cap = o->max_bytes;
  if (args.action == "evict") {
    if (!args.max_bytes.empty()) {
      auto b = ParseBytes(args.max_bytes);
      if (!b.ok()) return ReportError(std::move(b).error().WithContext("--max-bytes"));
      cap = *b;
    } else if (cap == 0) {
      return ReportError(MakeError(Errc::kInvalidArgument,
                                   "cache evict: no size to evict down to; give --max-bytes SIZE or set "
                                   "COLDSTART_CACHE_MAX_BYTES"));
    }
  }
  o->create = false;  // looking at a cache never makes one
  auto c = cache::DiskCache::Open(*o);
  if (!c.ok()) return ReportError(c.error());
  if (args.action == "ls") return RunLs(**c, args.json);
  if (args.action == "verify") return RunVerify(**c, args.json);
  const bool clear = args.action == "clear";
  if (!clear && args.action != "evict")
    return ReportError(MakeError(Errc::kInvalidArgument, "cache: unknown action '" + args.action + "'"));
  auto r = clear ? (*c)->Clear() : (*c)->EvictToFit(cap);
  if (!r.ok()) return ReportError(r.error());
  const std::uint64_t used = (*c)->UsedBytes();
  if (args.json) {
    auto j = EvictJson(**c, *r, used);
    if (!clear) j["max_bytes"] = cap;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s %llu entr%s (%s) from %s; %llu in use kept; %s cached now%s\n", clear ? "cleared" : "evicted",
                static_cast<unsigned long long>(r->entries_removed), r->entries_removed == 1 ? "y" : "ies",
                Bytes(r->bytes_freed).c_str(), (*c)->dir().c_str(), static_cast<unsigned long long>(r->skipped_in_use),
                Bytes(used).c_str(), clear ? "" : (" (cap " + Bytes(cap) + ")").c_str());
  }
  return EvictExit(*r);
}

}  // namespace coldstart::cli
