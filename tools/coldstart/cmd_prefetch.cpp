#include <cstdio>
#include <nlohmann/json.hpp>

#include "cancel.h"
#include "cli.h"
#include "coldstart/loader/prefetch.h"
#include "commands.h"
#include "options.h"

namespace coldstart::cli {

int RunPrefetch(const PrefetchArgs& args) {
  InstallCancelSignals();  // before any thread starts
  const auto t0 = std::chrono::steady_clock::now();
  auto source = fetch::ParseSource(args.source);
  if (!source.ok()) return ReportError(source.error());
  if (source->kind == fetch::SourceKind::kLocal)
    return ReportError(MakeError(Errc::kInvalidArgument, args.source + " is a local path; prefetch copies from gs:// or http(s)://"));
  auto mode = ParseProgressMode(args.progress);
  if (!mode.ok()) return ReportError(mode.error());
  auto session = OpenRemote(*source, args.remote);
  if (!session.ok()) return ReportError(session.error());
  loader::PrefetchOptions o;
  if (auto st = o.ApplyEnv(Env::FromProcess()); !st.ok()) return ReportError(st.error());
  o.include = args.include;
  o.exclude = args.exclude;
  if (args.fsync) o.fsync = true;
  auto disk_cache = OpenCache(args.cache, Env::FromProcess());
  if (!disk_cache.ok()) return ReportError(disk_cache.error());
  o.cache = *disk_cache;
  ProgressPrinter bar(*mode, "prefetch");
  o.progress = [&bar](std::uint64_t done, std::uint64_t total) {
    bar.Update(done, total);
    return !CancelRequested();
  };
  o.cancelled = [] { return CancelRequested(); };
  o.on_lock_wait = [&bar](const std::string& path) {
    bar.Finish();
    std::fprintf(stderr, "coldstart: waiting for another process writing %s\n", path.c_str());
  };
  auto r = loader::Prefetch(**session, args.dest, o);
  bar.Finish();
  if (CancelRequested()) return ReportCancelled(r.ok() ? "prefetch had finished" : r.error().message);
  if (!r.ok()) return ReportError(r.error());
  const double secs = SecondsSince(t0);
  const double rate = secs > 0 ? static_cast<double>(r->bytes) / secs : 0;
  if (args.json) {
    nlohmann::ordered_json j{{"source", args.source},
                             {"dest", args.dest},
                             {"files", r->files},
                             {"skipped", r->skipped},
                             {"bytes", r->bytes},
                             {"skipped_bytes", r->skipped_bytes},
                             {"seconds", secs},
                             {"gb_per_s", rate / 1e9},
                             {"first_byte_seconds", r->fetch.first_byte_seconds},
                             {"requests", r->fetch.requests},
                             {"retries", r->fetch.retries},
                             {"resumed_bytes", r->resumed_bytes},
                             {"resumed_files", r->resumed_files},
                             {"retry_resumed_bytes", r->fetch.resumed_bytes},
                             {"lock_waits", r->lock_waits},
                             {"stale_removed", r->stale_removed},
                             {"verified_crc32c", r->verified_crc32c},
                             {"verified_md5", r->verified_md5},
                             {"unverified", r->unverified},
                             {"concurrency", (*session)->options().fetch.concurrency}};
    if (o.cache)
      j["cache"] = {{"dir", o.cache->dir()}, {"hit_bytes", r->cache_hit_bytes}, {"filled_bytes", r->cache_filled_bytes}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::string resumed =
        r->resumed_bytes ? "; " + FormatBytes(static_cast<double>(r->resumed_bytes)) + " resumed from an earlier run" : "";
    if (o.cache)
      resumed += "; cache " + o.cache->dir() + ": " + FormatBytes(static_cast<double>(r->cache_hit_bytes)) + " copied from it, " +
                 FormatBytes(static_cast<double>(r->cache_filled_bytes)) + " put into it";
    std::printf("prefetched %u file%s (%s) to %s in %.2f s: %s; %u already present%s; %llu retries; %u verified by CRC32C%s\n",
                r->files, r->files == 1 ? "" : "s", FormatBytes(static_cast<double>(r->bytes)).c_str(), args.dest.c_str(),
                secs, FormatRate(rate).c_str(), r->skipped, resumed.c_str(), static_cast<unsigned long long>(r->fetch.retries),
                r->verified_crc32c, r->unverified ? (", " + std::to_string(r->unverified) + " had no checksum").c_str() : "");
  }
  return 0;
}

int RunAuth(const AuthArgs& args) {
  // Credentials do not depend on the bucket; any valid name resolves them the same way.
  auto source = fetch::ParseSource(args.source.empty() || args.source == "gs://" ? "gs://coldstart-auth" : args.source);
  if (!source.ok()) return ReportError(source.error());
  auto session = OpenRemote(*source, args.remote);
  if (!session.ok()) return ReportError(session.error());
  std::printf("credentials: %s\n", (*session)->DescribeCredentials().c_str());
  auto h = (*session)->AuthHeader();
  if (!h.ok()) return ReportError(h.error());
  std::printf("token: %s\n", h->empty() ? "none (anonymous requests)" : "obtained (not shown)");
  return 0;
}

}  // namespace coldstart::cli
