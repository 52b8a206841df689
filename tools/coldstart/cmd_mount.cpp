// `coldstart mount SRC MOUNTPOINT`: the read-only FUSE file system in the foreground until
// SIGTERM/SIGINT (unmounts, exit 0) or `fusermount3 -u` (exit 0).
#include <atomic>
#include <csignal>
#include <cstdio>
#include <thread>

#include "cancel.h"
#include "cli.h"
#include "coldstart/cache/disk_cache.h"
#include "coldstart/cache/mount.h"
#include "coldstart/loader/mount_source.h"
#include "commands.h"
#include "options.h"

namespace coldstart::cli {

int RunMount(const MountArgs& args) {
  InstallCancelSignals();  // before any thread starts
  const auto t0 = std::chrono::steady_clock::now();
  const Env env = Env::FromProcess();
  if (auto st = env.Validate(); !st.ok()) return ReportError(st.error());
  auto mode = ParseProgressMode(args.progress);
  if (!mode.ok()) return ReportError(mode.error());
  auto read_ahead = cache::ParseReadAhead(args.read_ahead);
  if (!read_ahead.ok()) return ReportError(std::move(read_ahead).error().WithContext("--read-ahead"));
  cache::MountOptions mo;
  mo.mountpoint = args.mountpoint;
  mo.read_ahead = *read_ahead;
  mo.allow_other = args.allow_other;
  mo.fs_name = "coldstart:" + args.source;
  if (!args.memory.empty()) {
    auto m = ParseBytes(args.memory);
    if (!m.ok()) return ReportError(std::move(m).error().WithContext("--memory"));
    mo.memory_bytes = *m;
  }
  if (args.read_deadline_s > 0)
    mo.read_deadline = std::chrono::milliseconds(static_cast<std::int64_t>(args.read_deadline_s * 1000));
  mo.log = [](const std::string& line) {
    std::string l = line;
    for (char& c : l)
      if (c == '\n' || c == '\r') c = ' ';
    std::fprintf(stderr, "coldstart: %s\n", l.c_str());
  };
  auto copts = MakeDiskCacheOptions(args.cache_dir);
  if (!copts.ok()) return ReportError(copts.error());
  if (!args.cache_max_bytes.empty()) {
    auto b = ParseBytes(args.cache_max_bytes);
    if (!b.ok()) return ReportError(std::move(b).error().WithContext("--cache-max-bytes"));
    copts->max_bytes = *b;
  }
  auto remote = MakeRemoteOptions(args.remote);
  if (!remote.ok()) return ReportError(remote.error());
  auto disk = cache::DiskCache::Open(*copts);
  if (!disk.ok()) return ReportError(disk.error());
  auto src = loader::OpenMountSource(args.source, *remote, env, disk->get(),
                                     [](const std::string& w) { std::fprintf(stderr, "coldstart: warning: %s\n", w.c_str()); });
  if (!src.ok()) return ReportError(src.error());
  if (!src->offline) {
    if (auto st = (*disk)->SaveListing(args.source, src->listing_json); !st.ok())
      std::fprintf(stderr, "coldstart: warning: cannot record the listing in the cache: %s\n", st.error().ToString().c_str());
  }
  std::uint64_t total = 0;
  for (const auto& f : src->files) total += f.size;
  const std::size_t nfiles = src->files.size();
  if (CancelRequested()) return ReportCancelled("before mounting");
  auto mount = cache::Mount::Start(std::move(src->files), *disk, src->origin, mo);
  if (!mount.ok()) return ReportError(mount.error());
  cache::Mount* m = mount->get();
  OnCancelSignal([m] { m->Stop(); });
  std::printf("mounted %s at %s: %zu file%s, %s (cache %s)\n", args.source.c_str(), args.mountpoint.c_str(), nfiles,
              nfiles == 1 ? "" : "s", FormatBytes(static_cast<double>(total)).c_str(), (*disk)->dir().c_str());
  std::fflush(stdout);

  // Read-ahead progress on stderr until it is done (or the mount ends).
  std::atomic<bool> ended{false};
  std::thread progress([&] {
    ProgressPrinter bar(*mode, "read-ahead");
    bool reported = args.read_ahead != "all";
    while (!ended.load()) {
      const auto p = m->progress();
      if (!reported) {
        bar.Update(p.bytes_cached, p.bytes_total);
        if (p.read_ahead_done) {
          bar.Finish();
          const double secs = SecondsSince(t0);
          std::fprintf(stderr, "coldstart: read-ahead done: %s of %s cached (%s fetched) %.2f s after start%s\n",
                       FormatBytes(static_cast<double>(p.bytes_cached)).c_str(),
                       FormatBytes(static_cast<double>(p.bytes_total)).c_str(),
                       FormatBytes(static_cast<double>(p.bytes_fetched)).c_str(), secs,
                       p.read_ahead_failures ? (", " + std::to_string(p.read_ahead_failures) + " file(s) failed").c_str() : "");
          reported = true;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  Status st = m->Wait();
  OnCancelSignal(nullptr);
  ended = true;
  progress.join();
  const auto p = m->progress();
  mount->reset();  // unmounts (if still mounted) and stops read-ahead
  if (!st.ok()) return ReportError(st.error());
  if (CancelRequested()) {
    std::fprintf(stderr, "coldstart: unmounted %s (%s); %llu reads, %llu failed; %s fetched, %s read back from the cache\n",
                 args.mountpoint.c_str(), CancelSignal() == SIGINT ? "SIGINT" : "SIGTERM",
                 static_cast<unsigned long long>(p.reads), static_cast<unsigned long long>(p.read_errors),
                 FormatBytes(static_cast<double>(p.bytes_fetched)).c_str(),
                 FormatBytes(static_cast<double>(p.bytes_read_back)).c_str());
  } else {
    std::fprintf(stderr, "coldstart: %s was unmounted\n", args.mountpoint.c_str());
  }
  return 0;
}

}  // namespace coldstart::cli
