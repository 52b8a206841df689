// `coldstart preload SRC (--to DIR | --mount MNT) [--probe-port P] [--ready-url URL] -- CMD ARGS...`:
// the entrypoint of a serving container. It fetches the model (or mounts it) while a startup
// probe answers 503 with progress, starts CMD with COLDSTART_MODEL_DIR set, answers 200 once
// the model is ready (and CMD's --ready-url answers 200), forwards SIGINT/SIGTERM to CMD and
// exits with CMD's status.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cancel.h"
#include "cli.h"
#include "coldstart/cache/disk_cache.h"
#include "coldstart/cache/mount.h"
#include "coldstart/fetch/http.h"
#include "coldstart/loader/mount_source.h"
#include "coldstart/loader/preload.h"
#include "commands.h"
#include "options.h"
#include "probe_server.h"

extern char** environ;

namespace coldstart::cli {
namespace {

Error Usage(std::string message) { return MakeError(Errc::kInvalidArgument, std::move(message)); }

// The file descriptors open when preload started: inherited ones (a socket passed by the
// supervisor, say) are passed on to CMD; everything preload opened itself (the probe's sockets,
// curl's connections, cache files) is closed in CMD before it runs, so CMD never holds the
// probe's port or a lock of ours. Closed in the child, after fork: marking them close-on-exec
// before would miss a connection another thread accepts in between.
std::set<int> OpenFds() {
  std::set<int> fds;
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) return fds;
  const int own = ::dirfd(d);
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const int fd = std::atoi(e->d_name);
    if (fd != own) fds.insert(fd);
  }
  ::closedir(d);
  return fds;
}

// Async-signal-safe (a child of a threaded process): close_range, else close() one by one.
void CloseRange(int first, int last, int max_fd) {
  if (first > last) return;
  if (::syscall(SYS_close_range, first, last, 0) == 0) return;
  for (int fd = first; fd <= last && fd < max_fd; ++fd) ::close(fd);
}

// Starts CMD in a process group of its own (a terminal's Ctrl-C reaches it once, through us),
// with no signal blocked (our threads block SIGINT/SIGTERM for sigwait), SIGPIPE at its
// default (curl ignores it process-wide for moments while it sends), and SIGTERM should
// preload itself die (kill -9 outside a container, where CMD would otherwise live on
// orphaned). fork/exec rather than posix_spawn for that last one (PR_SET_PDEATHSIG); the child
// makes only async-signal-safe calls, and an exec failure comes back through a close-on-exec
// pipe, as posix_spawn does it.
Result<pid_t> Spawn(const std::vector<std::string>& cmd, const std::string& model_dir, const std::set<int>& inherited) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e)
    if (std::string_view(*e).rfind("COLDSTART_MODEL_DIR=", 0) != 0) env.emplace_back(*e);
  env.push_back("COLDSTART_MODEL_DIR=" + model_dir);
  std::vector<char*> argv, envp;
  for (const auto& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (auto& v : env) envp.push_back(v.data());
  envp.push_back(nullptr);

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return MakeSysError(Errc::kIo, "cannot run '" + cmd[0] + "': pipe", errno);
  // Kept open in CMD: 0-2, what preload inherited, and the exec-error pipe (close-on-exec).
  std::vector<int> keep{0, 1, 2, pipe_fds[1]};
  keep.insert(keep.end(), inherited.begin(), inherited.end());
  std::sort(keep.begin(), keep.end());
  const int max_fd = static_cast<int>(std::min<long>(::sysconf(_SC_OPEN_MAX), 1 << 20));
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    return MakeSysError(Errc::kResourceExhausted, "cannot run '" + cmd[0] + "': fork", err);
  }
  if (pid == 0) {
    int next = 0;
    for (int fd : keep) {
      CloseRange(next, fd - 1, max_fd);
      next = std::max(next, fd + 1);
    }
    CloseRange(next, std::numeric_limits<int>::max(), max_fd);
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(128 + SIGTERM);  // preload died before prctl
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigaction(SIGPIPE, &dfl, nullptr);
    sigset_t none;
    sigemptyset(&none);
    ::pthread_sigmask(SIG_SETMASK, &none, nullptr);
    ::execvpe(argv[0], argv.data(), envp.data());
    const int err = errno;
    (void)!::write(pipe_fds[1], &err, sizeof err);
    ::_exit(127);
  }
  ::close(pipe_fds[1]);
  int err = 0;
  ssize_t n;
  while ((n = ::read(pipe_fds[0], &err, sizeof err)) < 0 && errno == EINTR) {
  }
  ::close(pipe_fds[0]);
  if (n == static_cast<ssize_t>(sizeof err)) {
    ::waitpid(pid, nullptr, 0);
    return MakeSysError(err == ENOENT || err == ENOTDIR ? Errc::kNotFound : Errc::kPermissionDenied,
                        "cannot run '" + cmd[0] + "'", err);
  }
  return pid;
}

// 128 + N for a CMD killed by signal N, as shells report it.
int ExitCodeOf(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 1;
}

// A named thread calling `tick` every `period` until it returns false or Stop() is called;
// Stop() wakes it at once, runs one last tick when `last_tick` is set, and joins.
class Ticker {
 public:
  Ticker(const char* name, std::chrono::milliseconds period, std::function<bool()> tick, bool last_tick = false)
      : period_(period), tick_(std::move(tick)), last_tick_(last_tick) {
    thread_ = std::thread([this, name] {
      pthread_setname_np(pthread_self(), name);
      std::unique_lock lk(mu_);
      for (;;) {
        const bool stopping = stop_;
        if (stopping && !last_tick_) return;
        lk.unlock();
        const bool more = tick_();
        lk.lock();
        if (!more || stopping) return;
        cv_.wait_for(lk, period_, [this] { return stop_; });
      }
    });
  }
  ~Ticker() { Stop(); }
  void Stop() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

 private:
  const std::chrono::milliseconds period_;
  const std::function<bool()> tick_;
  const bool last_tick_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // GUARDED_BY(mu_)
  std::thread thread_;
};

// Polls CMD's health URL every half second until it answers 200, then marks the server healthy.
std::unique_ptr<Ticker> PollReadyUrl(const std::string& url, loader::PreloadStatus& status) {
  fetch::HttpOptions o;
  o.connect_timeout_s = 1;
  o.timeout_s = 2;
  auto client = std::make_shared<fetch::HttpClient>(o);
  fetch::HttpRequest req;
  req.url = url;
  req.follow_redirects = false;
  return std::make_unique<Ticker>("cs-ready", std::chrono::milliseconds(500), [client, req, &status] {
    auto r = client->Send(req);
    if (!r.ok() || r->status != 200) return true;
    status.ServerHealthy();
    return false;
  });
}

// Progress on stderr from its own thread: JSON lines (one per --progress-interval while the
// model arrives, one per change of state) or a bar and a line per change of state.
class StatusPrinter {
 public:
  StatusPrinter(loader::PreloadStatus& status, ProgressMode mode, double interval_s)
      : status_(status), mode_(mode), interval_(interval_s), bar_(mode == ProgressMode::kBar ? ProgressMode::kBar : ProgressMode::kOff, "preload") {
    if (mode_ != ProgressMode::kOff)
      ticker_.emplace("cs-progress", std::chrono::milliseconds(100), [this] {
        Tick();
        return true;
      }, true);
  }
  ~StatusPrinter() { Stop(); }
  // Prints what changed now (the model's arrival before CMD's first line of output).
  void Flush() {
    if (mode_ != ProgressMode::kOff) Tick();
  }
  // Prints what changed since the last tick (not a failure: the caller prints that line).
  void Stop() {
    ticker_.reset();
    bar_.Finish();
  }

 private:
  void Tick() {
    std::lock_guard lk(tick_mu_);
    const auto s = status_.Snapshot();
    if (s.state == "failed") return;
    const bool changed = s.state != last_state_;
    last_state_ = s.state;
    const bool loading = s.model != loader::ModelPhase::kReady;
    const auto now = std::chrono::steady_clock::now();
    if (mode_ == ProgressMode::kJson) {
      if (!changed && !(loading && now - last_line_ >= interval_)) return;
      last_line_ = now;
      const std::string body = status_.ToJson();
      std::fprintf(stderr, "{\"event\":\"%s\",%s\n", changed ? "state" : "progress", body.c_str() + 1);
      return;
    }
    if (loading) {
      if (s.bytes_total > 0) bar_.Update(s.bytes_done, s.bytes_total);
      return;
    }
    if (!ready_said_) {
      ready_said_ = true;
      if (s.bytes_total > 0) bar_.Update(s.bytes_total, s.bytes_total);
      bar_.Finish();
      std::fprintf(stderr, "coldstart: model ready in %.2f s (%s in %s)\n", s.model_ready_seconds.value_or(0),
                   FormatBytes(static_cast<double>(s.bytes_total)).c_str(), status_.info().dest.c_str());
    }
    if (!changed) return;
    if (s.state == "server-starting") {
      std::fprintf(stderr, "coldstart: started CMD (pid %ld); waiting for its ready URL\n", s.server_pid);
    } else if (s.state == "serving") {
      std::fprintf(stderr, "coldstart: serving (CMD pid %ld)\n", s.server_pid);
    } else if (s.state == "exited") {
      std::fprintf(stderr, "coldstart: CMD exited with status %d\n", s.exit_status.value_or(-1));
    }
  }

  loader::PreloadStatus& status_;
  const ProgressMode mode_;
  const std::chrono::duration<double> interval_;
  ProgressPrinter bar_;
  std::string last_state_;
  std::chrono::steady_clock::time_point last_line_{};
  bool ready_said_ = false;
  std::mutex tick_mu_;            // Flush() and the ticker
  std::optional<Ticker> ticker_;  // last: stopped before the members its ticks use
};

Status CheckUsage(const PreloadArgs& a) {
  if (a.to.empty() && a.mount.empty())
    return Usage("preload needs --to DIR (fetch, then start CMD) or --mount MNT (mount, start CMD at once)");
  if (a.cmd.empty()) return Usage("preload needs the command to run: coldstart preload SRC --to DIR -- CMD ARGS...");
  if (!a.ready_url.empty()) {
    if (a.ready_url.rfind("http://", 0) != 0 && a.ready_url.rfind("https://", 0) != 0)
      return Usage("--ready-url '" + a.ready_url + "' is not an http:// or https:// URL");
    if (a.probe_port < 0) return Usage("--ready-url gates the probe's 200: give --probe-port too");
  }
  if (!a.to.empty() && !a.cache_dir.empty()) return Usage("--cache-dir is for --mount (--to keeps the files themselves)");
  if (!a.mount.empty() && a.fsync) return Usage("--fsync is for --to (a mount's cache has COLDSTART_CACHE_* settings)");
  if (!a.mount.empty() && (!a.include.empty() || !a.exclude.empty()))
    return Usage("--include/--exclude are for --to (a mount shows every object of SRC)");
  return OkStatus();
}

Result<ProgressMode> ResolveMode(const std::string& flag) {
  CS_ASSIGN_OR_RETURN(auto mode, ParseProgressMode(flag));
  if (mode == ProgressMode::kAuto) {
    if (auto v = Env::FromProcess().Get("COLDSTART_PROGRESS")) {
      CS_ASSIGN_OR_RETURN(mode, ParseProgressMode(*v));
    }
  }
  // A container's stderr is a log, not a terminal: JSON lines there, unlike prefetch's silence.
  if (mode == ProgressMode::kAuto) mode = ::isatty(STDERR_FILENO) ? ProgressMode::kBar : ProgressMode::kJson;
  return mode;
}

// --mount: follows the mount's read-ahead into the status until the model is ready (or
// failed: then says so in one error line; CMD keeps running, the probe stays 503).
std::unique_ptr<Ticker> WatchMount(const cache::Mount& mount, loader::PreloadStatus& status) {
  return std::make_unique<Ticker>("cs-mountwatch", std::chrono::milliseconds(100), [&mount, &status] {
    loader::UpdateFromMount(mount.progress(), status);
    const auto snap = status.Snapshot();
    if (snap.model == loader::ModelPhase::kFailed) ReportError(MakeError(Errc::kIo, snap.error));
    return snap.model != loader::ModelPhase::kFailed && snap.model != loader::ModelPhase::kReady;
  });
}

}  // namespace

int RunPreload(const PreloadArgs& args) {
  const std::set<int> inherited = OpenFds();
  InstallCancelSignals();  // before any thread starts
  if (auto st = CheckUsage(args); !st.ok()) return ReportError(st.error());
  auto mode = ResolveMode(args.progress);
  if (!mode.ok()) return ReportError(mode.error());
  const bool to = !args.to.empty();
  auto source = fetch::ParseSource(args.source);
  if (!source.ok()) return ReportError(source.error());
  if (to && source->kind == fetch::SourceKind::kLocal)
    return ReportError(Usage(args.source + " is a local path; preload --to copies from gs:// or http(s)://"));
  std::error_code ec;
  const std::string dest = std::filesystem::absolute(to ? args.to : args.mount, ec).lexically_normal().string();
  if (ec) return ReportError(MakeSysError(Errc::kInvalidArgument, to ? args.to : args.mount, ec.value()));
  const Env env = Env::FromProcess();
  if (auto st = env.Validate(); !st.ok()) return ReportError(st.error());
  auto remote = MakeRemoteOptions(args.remote);
  if (!remote.ok()) return ReportError(remote.error());
  if (auto st = fetch::CurlGlobalInit(); !st.ok()) return ReportError(st.error());

  loader::PreloadStatus status({args.source, to ? "to" : "mount", dest, !args.ready_url.empty()});
  std::unique_ptr<ProbeServer> probe;
  if (args.probe_port >= 0) {
    auto p = ProbeServer::Start(args.probe_host, args.probe_port, [&status] {
      return std::make_pair(status.Ready() ? 200 : 503, status.ToJson());
    });
    if (!p.ok()) return ReportError(p.error());
    probe = std::move(p).value();
    // One line a test or a supervisor can find the port in (--probe-port 0).
    std::fprintf(stderr, "coldstart: probe listening on http://%s:%d/\n", args.probe_host.c_str(), probe->port());
  }
  StatusPrinter printer(status, *mode, args.progress_interval);
  auto fail = [&](const Error& e) {
    status.ModelFailed(e);
    printer.Stop();
    return ReportError(e);
  };
  auto cancelled = [&](std::string_view detail) {
    status.ModelFailed(MakeError(Errc::kCancelled, "cancelled"));
    printer.Stop();
    return ReportCancelled(detail);
  };

  // --to: the whole model, verified, before CMD. --mount: the mount, then CMD at once while
  // read-ahead fills the cache.
  std::unique_ptr<cache::Mount> mount;
  if (to) {
    auto session = fetch::RemoteSession::Open(*source, *remote, env);
    if (!session.ok()) return fail(session.error());
    loader::PrefetchOptions o;
    if (auto st = o.ApplyEnv(env); !st.ok()) return fail(st.error());
    o.include = args.include;
    o.exclude = args.exclude;
    if (args.fsync) o.fsync = true;
    o.progress = [](std::uint64_t, std::uint64_t) { return !CancelRequested(); };
    o.cancelled = [] { return CancelRequested(); };
    o.on_lock_wait = [](const std::string& path) {
      std::fprintf(stderr, "coldstart: waiting for another process writing %s\n", path.c_str());
    };
    auto r = loader::PreloadTo(**session, dest, o, status);
    if (CancelRequested()) return cancelled(r.ok() ? "the model had arrived; CMD was not started" : r.error().message);
    if (!r.ok()) return fail(r.error());
  } else {
    auto copts = MakeDiskCacheOptions(args.cache_dir);
    if (!copts.ok()) return fail(copts.error());
    auto disk = cache::DiskCache::Open(*copts);
    if (!disk.ok()) return fail(disk.error());
    auto src = loader::OpenMountSource(args.source, *remote, env, disk->get(), [](const std::string& w) {
      std::fprintf(stderr, "coldstart: warning: %s\n", w.c_str());
    });
    if (!src.ok()) return fail(src.error());
    if (!src->offline) {
      if (auto st = (*disk)->SaveListing(args.source, src->listing_json); !st.ok())
        std::fprintf(stderr, "coldstart: warning: cannot record the listing in the cache: %s\n", st.error().ToString().c_str());
    }
    std::filesystem::create_directories(dest, ec);  // an image need not ship the mount point
    if (CancelRequested()) return cancelled("before mounting; CMD was not started");
    cache::MountOptions mo;
    mo.mountpoint = dest;
    mo.read_ahead = cache::ReadAhead::kAll;
    mo.fs_name = "coldstart:" + args.source;
    mo.log = [](const std::string& line) {
      std::string l = line;
      for (char& c : l)
        if (c == '\n' || c == '\r') c = ' ';
      std::fprintf(stderr, "coldstart: %s\n", l.c_str());
    };
    auto m = cache::Mount::Start(std::move(src->files), *disk, src->origin, mo);
    if (!m.ok()) return fail(m.error());
    mount = std::move(m).value();
    if (CancelRequested()) return cancelled("after mounting; CMD was not started");
  }
  std::unique_ptr<Ticker> watcher;
  if (mount) watcher = WatchMount(*mount, status);

  printer.Flush();
  auto pid = Spawn(args.cmd, dest, inherited);
  if (!pid.ok()) {
    watcher.reset();
    printer.Stop();
    ReportError(pid.error());
    // As shells say it: 127 command not found, 126 found but not runnable.
    return pid.error().code == Errc::kNotFound ? 127 : 126;
  }
  // A signal that came while CMD was being started is passed on now; later ones as they come.
  if (const int pending = ForwardSignalsTo(*pid)) ::kill(*pid, pending);
  status.ServerStarted(*pid);
  std::unique_ptr<Ticker> poller;
  if (!args.ready_url.empty()) poller = PollReadyUrl(args.ready_url, status);

  int wait_status = 0;
  while (::waitpid(*pid, &wait_status, 0) < 0 && errno == EINTR) {
  }
  const int code = ExitCodeOf(wait_status);
  poller.reset();
  watcher.reset();
  status.ServerExited(code);
  printer.Stop();
  mount.reset();  // unmounts, stops read-ahead
  return code;
}

}  // namespace coldstart::cli
