// `coldstart preload` as a container runs it: the built binary against the fake GCS server,
// its startup probe read over loopback, CMD a shell script that records what it saw.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <optional>
#include <regex>
#include <sstream>
#include <thread>
#include <nlohmann/json.hpp>

#include "../common/temp_dir.h"
#include "../fetch/loopback_server.h"
#include "coldstart/fake_gcs/server.h"

namespace {

using coldstart::testing::ReadFile;
using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;
using namespace std::chrono_literals;

std::vector<std::string> LinesOf(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

bool Exists(const std::string& p) { return std::filesystem::exists(p); }

// The CMD of these tests. It records COLDSTART_MODEL_DIR and copies of the files it finds there
// (before it says it started), counts the signals it gets, and exits with the code written to
// $1/stop ("kill": kills itself with SIGKILL), or when $1 is removed (a test that failed).
// EXIT_ON_SIGNAL=1: TERM exits 42, INT exits 43.
constexpr const char* kServeScript = R"(#!/bin/sh
d="$1"
if [ "$EXIT_ON_SIGNAL" = 1 ]; then
  trap 'echo TERM >> "$d/signals"; exit 42' TERM
  trap 'echo INT >> "$d/signals"; exit 43' INT
else
  trap 'echo TERM >> "$d/signals"' TERM
  trap 'echo INT >> "$d/signals"' INT
fi
: > "$d/launched"
mkdir -p "$d/seen"
cp "$COLDSTART_MODEL_DIR"/* "$d/seen/" 2>/dev/null
ls -l /proc/$$/fd/ > "$d/fds"
echo "$COLDSTART_MODEL_DIR" > "$d/started.tmp" && mv "$d/started.tmp" "$d/started"
while [ ! -e "$d/stop" ] && [ -d "$d" ]; do sleep 0.02; done
code=$(cat "$d/stop")
[ "$code" = kill ] && kill -KILL $$
exit "$code"
)";

struct Outcome {
  int code = -1;
  std::string out, err;
};

// `coldstart preload ARGS` as a child process (the shell execs it, so its pid is ours to signal).
class Preload {
 public:
  Preload(const std::string& args, const std::string& env) {
    const std::string cmd =
        "exec env " + env + " " + COLDSTART_BIN + " preload " + args + " >" + (t_ / "out") + " 2>" + (t_ / "err");
    pid_ = ::fork();
    if (pid_ == 0) {
      // Only 0-2: the fake server's sockets of this process are not preload's to pass on.
      ::syscall(SYS_close_range, 3, ~0u, 0);
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  ~Preload() {
    if (!done_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  std::string err() const { return ReadFile(t_ / "err"); }
  // The port from the one "probe listening" line; 0 after `timeout`.
  int ProbePort(std::chrono::milliseconds timeout = 10s) {
    static const std::regex re("coldstart: probe listening on http://127\\.0\\.0\\.1:([0-9]+)/");
    for (auto end = std::chrono::steady_clock::now() + timeout; std::chrono::steady_clock::now() < end;) {
      std::smatch m;
      const std::string e = err();
      if (std::regex_search(e, m, re)) return std::stoi(m[1]);
      std::this_thread::sleep_for(10ms);
    }
    return 0;
  }
  void Signal(int sig) { ::kill(pid_, sig); }
  bool Running() {
    if (done_) return false;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) != pid_) return true;
    Finish(status);
    return false;
  }
  Outcome Wait() {
    if (!done_) {
      int status = 0;
      ::waitpid(pid_, &status, 0);
      Finish(status);
    }
    return {code_, ReadFile(t_ / "out"), ReadFile(t_ / "err")};
  }

 private:
  void Finish(int status) {
    done_ = true;
    code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  TempDir t_;
  pid_t pid_ = -1;
  bool done_ = false;
  int code_ = -1;
};

struct Probe {
  int status = 0;  // 0: no answer
  nlohmann::json body;
};

Probe Get(int port, const std::string& path = "/startup") {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(1);
  c.set_read_timeout(2);
  auto r = c.Get(path.c_str());
  if (!r) return {};
  return {r->status, nlohmann::json::parse(r->body, nullptr, false)};
}

// Polls until `pred` holds or `timeout` passes.
template <typename F>
bool WaitFor(F pred, std::chrono::milliseconds timeout = 20s) {
  for (auto end = std::chrono::steady_clock::now() + timeout; std::chrono::steady_clock::now() < end;) {
    if (pred()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return pred();
}

class PreloadCli : public ::testing::Test {
 protected:
  // A 4 MiB model; `rate` bytes/s per connection (0: as fast as loopback goes).
  void Start(double rate) {
    WriteFile(tmp_ / "serve.sh", kServeScript);
    std::filesystem::permissions(tmp_ / "serve.sh", std::filesystem::perms::owner_all);
    const std::string synth = std::string(COLDSTART_BIN) + " synth " + (root_ / "bkt/m") +
                              " --size 4MiB --shards 2 --seed 9 >/dev/null";
    ASSERT_EQ(std::system(synth.c_str()), 0);
    coldstart::fakegcs::ServerOptions o;
    o.root = root_.path();
    o.rate_limit_bytes_per_s = rate;
    auto s = coldstart::fakegcs::Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.error().message;
    server_ = std::move(s).value();
    env_ = "STORAGE_EMULATOR_HOST=" + server_->endpoint() + " COLDSTART_METADATA=off COLDSTART_RETRY_INITIAL=0.01";
  }
  std::string Cmd() const { return "-- " + (tmp_ / "serve.sh") + " " + tmp_.path(); }
  std::string Marker(const char* name) const { return tmp_ / name; }
  void Stop(const std::string& code) {
    WriteFile(tmp_ / "stop.tmp", code);
    std::filesystem::rename(tmp_ / "stop.tmp", tmp_ / "stop");
  }
  // Every source file, as CMD copied it when it started.
  void ExpectCmdSawTheModel() {
    unsigned n = 0;
    for (const auto& e : std::filesystem::directory_iterator(root_ / "bkt/m")) {
      const std::string name = e.path().filename().string();
      EXPECT_EQ(ReadFile(tmp_ / ("seen/" + name)), ReadFile(e.path().string())) << name;
      ++n;
    }
    EXPECT_EQ(n, 4u);
  }

  TempDir root_, out_, tmp_;
  std::unique_ptr<coldstart::fakegcs::Server> server_;
  std::string env_;
};

TEST_F(PreloadCli, ProbeIs503WithProgressThen200AndCmdStartsOnTheVerifiedModel) {
  Start(1 << 20);  // 4 MiB over 2 connections at 1 MiB/s each: about 2 s
  const std::string dest = out_ / "model";
  Preload p("gs://bkt/m --to " + dest + " --probe-port 0 --probe-host 127.0.0.1 --progress-interval 0.3"
            " --concurrency 2 --remote-chunk 256KiB " + Cmd(),
            env_);
  const int port = p.ProbePort();
  ASSERT_GT(port, 0) << p.err();
  // Loading: 503 with the progress fields, and CMD not started.
  Probe loading = Get(port);
  ASSERT_EQ(loading.status, 503) << loading.body;
  for (const char* k : {"state", "ready", "bytes_done", "bytes_total", "bytes_per_second", "eta_seconds", "elapsed_seconds"})
    EXPECT_TRUE(loading.body.contains(k)) << k << " " << loading.body;
  EXPECT_FALSE(loading.body["ready"].get<bool>());
  bool saw_bytes_moving = false;
  Probe last;
  ASSERT_TRUE(WaitFor([&] {
    last = Get(port, "/any/path");
    if (last.status == 503) {
      EXPECT_FALSE(Exists(Marker("started"))) << "CMD started before the model was ready: " << last.body;
      const auto done = last.body["bytes_done"].get<std::uint64_t>();
      saw_bytes_moving |= done > 0 && done < last.body["bytes_total"].get<std::uint64_t>() &&
                          last.body["state"] == "fetching" && !last.body["eta_seconds"].is_null();
    }
    return last.status == 200;
  })) << p.err();
  EXPECT_TRUE(saw_bytes_moving) << "a probe saw bytes arriving with an ETA";
  // "ready" for the moment between the last file's rename and CMD's start.
  EXPECT_TRUE(last.body["state"] == "serving" || last.body["state"] == "ready") << last.body;
  EXPECT_EQ(last.body["model"], "ready");
  EXPECT_EQ(last.body["bytes_done"], last.body["bytes_total"]);
  ASSERT_TRUE(WaitFor([&] { return Exists(Marker("started")); }));
  EXPECT_EQ(ReadFile(Marker("started")), dest + "\n") << "COLDSTART_MODEL_DIR";
  ExpectCmdSawTheModel();
  EXPECT_EQ(Get(port).status, 200) << "200 while CMD runs";
  EXPECT_EQ(ReadFile(Marker("fds")).find("socket:"), std::string::npos)
      << "CMD holds none of preload's sockets (the probe's port): " << ReadFile(Marker("fds"));
  Stop("3");
  auto r = p.Wait();
  EXPECT_EQ(r.code, 3) << "CMD's exit status is preload's: " << r.err;
  // stderr is a file here: JSON lines, progress while loading, then each change of state.
  std::vector<nlohmann::json> events;
  for (const auto& line : LinesOf(r.err)) {
    if (line.empty() || line[0] != '{') continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    events.push_back(j);
  }
  int progress = 0;
  for (const auto& j : events) progress += j["event"] == "progress";
  EXPECT_GE(progress, 2) << r.err;
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["event"], "state");
  EXPECT_EQ(events.back()["state"], "exited");
  EXPECT_EQ(events.back()["exit_status"], 3);
}

TEST_F(PreloadCli, ExitStatusIsCmdsAndADeathBySignalIs128PlusIt) {
  Start(0);
  for (const auto& [stop, want] : std::vector<std::pair<std::string, int>>{{"0", 0}, {"kill", 137}}) {
    std::filesystem::remove_all(tmp_ / "stop");
    std::filesystem::remove_all(tmp_ / "started");
    Preload p("gs://bkt/m --to " + (out_ / "m") + " --progress off " + Cmd(), env_);
    ASSERT_TRUE(WaitFor([&] { return Exists(Marker("started")); })) << p.err();
    Stop(stop);
    auto r = p.Wait();
    EXPECT_EQ(r.code, want) << stop << ": " << r.err;
    EXPECT_TRUE(r.err.empty()) << r.err;
  }
}

TEST_F(PreloadCli, SigtermAndSigintAreForwardedToCmdOnce) {
  Start(0);
  for (const auto& [sig, want] : std::vector<std::pair<int, int>>{{SIGTERM, 42}, {SIGINT, 43}}) {
    std::filesystem::remove_all(tmp_ / "started");
    std::filesystem::remove_all(tmp_ / "signals");
    Preload p("gs://bkt/m --to " + (out_ / "m") + " --progress off " + Cmd(), "EXIT_ON_SIGNAL=1 " + env_);
    ASSERT_TRUE(WaitFor([&] { return Exists(Marker("started")); })) << p.err();
    p.Signal(sig);
    auto r = p.Wait();
    EXPECT_EQ(r.code, want) << r.err;
    EXPECT_EQ(ReadFile(Marker("signals")), sig == SIGTERM ? "TERM\n" : "INT\n");
  }
  // A CMD that keeps running after a signal gets each one; one sent twice at once (to us and
  // to our group, as `timeout` does) arrives once.
  std::filesystem::remove_all(tmp_ / "started");
  std::filesystem::remove_all(tmp_ / "signals");
  Preload p("gs://bkt/m --to " + (out_ / "m") + " --progress off " + Cmd(), env_);
  ASSERT_TRUE(WaitFor([&] { return Exists(Marker("started")); })) << p.err();
  p.Signal(SIGTERM);
  p.Signal(SIGTERM);
  ASSERT_TRUE(WaitFor([&] { return ReadFile(Marker("signals")) == "TERM\n"; })) << ReadFile(Marker("signals"));
  std::this_thread::sleep_for(700ms);
  p.Signal(SIGINT);
  ASSERT_TRUE(WaitFor([&] { return ReadFile(Marker("signals")) == "TERM\nINT\n"; })) << ReadFile(Marker("signals"));
  EXPECT_TRUE(p.Running()) << "preload waits for CMD, whatever signals came";
  Stop("5");
  EXPECT_EQ(p.Wait().code, 5);
}

TEST_F(PreloadCli, CmdGetsSigtermWhenPreloadIsKilled) {
  Start(0);
  Preload p("gs://bkt/m --to " + (out_ / "m") + " --progress off " + Cmd(), "EXIT_ON_SIGNAL=1 " + env_);
  ASSERT_TRUE(WaitFor([&] { return Exists(Marker("started")); })) << p.err();
  p.Signal(SIGKILL);
  EXPECT_EQ(p.Wait().code, 137);
  EXPECT_TRUE(WaitFor([&] { return ReadFile(Marker("signals")) == "TERM\n"; }, 5s))
      << "CMD, in its own process group, is not left running without us";
}

TEST_F(PreloadCli, SignalBeforeCmdCancelsTheFetchAndCmdNeverRuns) {
  Start(1 << 20);
  Preload p("gs://bkt/m --to " + (out_ / "m") + " --progress off --concurrency 1 --remote-chunk 128KiB " + Cmd(), env_);
  std::this_thread::sleep_for(700ms);
  p.Signal(SIGTERM);
  auto r = p.Wait();
  EXPECT_EQ(r.code, 143) << r.err;
  EXPECT_EQ(LinesOf(r.err).size(), 1u) << r.err;
  EXPECT_EQ(r.err.rfind("coldstart: cancelled by SIGTERM", 0), 0u) << r.err;
  std::this_thread::sleep_for(200ms);
  EXPECT_FALSE(Exists(Marker("started")));
}

TEST_F(PreloadCli, FailedFetchNeverStartsCmdAndEndsInOneErrorLine) {
  Start(0);
  auto missing = Preload("gs://bkt/nope --to " + (out_ / "x") + " --progress off " + Cmd(), env_).Wait();
  EXPECT_EQ(missing.code, 3) << missing.err;
  EXPECT_EQ(LinesOf(missing.err).size(), 1u) << missing.err;
  EXPECT_EQ(missing.err.rfind("coldstart: error: ", 0), 0u) << missing.err;
  EXPECT_NE(missing.err.find("gs://bkt/nope"), std::string::npos) << missing.err;

  server_->AddFault(*coldstart::fakegcs::ParseFaultSpec("kind=corrupt,after=200000,count=0,object=bkt/m/model-00001-of-00002.safetensors"));
  Preload p("gs://bkt/m --to " + (out_ / "c") + " --probe-port 0 --probe-host 127.0.0.1 --progress json " + Cmd(), env_);
  auto r = p.Wait();
  EXPECT_EQ(r.code, 5) << r.err;
  auto lines = LinesOf(r.err);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.back().rfind("coldstart: error: ", 0), 0u) << r.err;
  EXPECT_NE(lines.back().find("CRC32C mismatch"), std::string::npos) << r.err;
  int errors = 0;
  for (const auto& l : lines) errors += l.find("error") != std::string::npos && l[0] != '{';
  EXPECT_EQ(errors, 1) << r.err;
  EXPECT_FALSE(Exists(Marker("started")));
  EXPECT_FALSE(Exists(out_ / "c/model-00001-of-00002.safetensors"));
}

TEST_F(PreloadCli, ReadyUrlHoldsThe200UntilCmdsOwnHealthAnswers) {
  Start(0);
  std::atomic<bool> healthy{false};
  coldstart::testing::LoopbackServer health;
  health.server().Get("/health", [&](const httplib::Request&, httplib::Response& res) {
    res.status = healthy ? 200 : 503;
    res.set_content("{}", "application/json");
  });
  health.Start();
  Preload p("gs://bkt/m --to " + (out_ / "m") + " --probe-port 0 --probe-host 127.0.0.1 --progress off --ready-url " +
                health.url("/health") + " " + Cmd(),
            env_);
  const int port = p.ProbePort();
  ASSERT_GT(port, 0) << p.err();
  ASSERT_TRUE(WaitFor([&] { return Exists(Marker("started")); })) << p.err();
  // The model is ready and CMD runs, but its health URL says 503: so does the probe.
  std::this_thread::sleep_for(1200ms);
  Probe waiting = Get(port);
  EXPECT_EQ(waiting.status, 503) << waiting.body;
  EXPECT_EQ(waiting.body["state"], "server-starting");
  EXPECT_EQ(waiting.body["model"], "ready");
  healthy = true;
  Probe ready;
  ASSERT_TRUE(WaitFor([&] { return (ready = Get(port)).status == 200; }, 5s)) << ready.body;
  EXPECT_EQ(ready.body["state"], "serving");
  EXPECT_EQ(ready.body["server"], "healthy");
  Stop("0");
  EXPECT_EQ(p.Wait().code, 0);
}

TEST_F(PreloadCli, UsageErrorsAreExitTwoInOneLine) {
  Start(0);
  const std::string m = " --to " + (out_ / "m");
  const std::vector<std::string> cases = {
      "gs://bkt/m" + m,                                                     // no CMD
      "gs://bkt/m" + m + " --",                                             // nothing after --
      "gs://bkt/m" + m + " --mount " + (out_ / "mnt") + " -- true",         // both
      "gs://bkt/m -- true",                                                 // neither
      "gs://bkt/m" + m + " --ready-url http://127.0.0.1:9/ -- true",        // no probe to gate
      "gs://bkt/m" + m + " --probe-port 0 --ready-url ftp://x/ -- true",    // not http(s)
      "gs://bkt/m" + m + " --progress sideways -- true",
      "gs://bkt/m" + m + " --probe-port 70000 -- true",
      "gs://bkt/m" + m + " --cache-dir " + (out_ / "cache") + " -- true",   // --to has no cache
      "/tmp" + m + " -- true",                                              // local source with --to
  };
  for (const auto& args : cases) {
    auto r = Preload(args, env_).Wait();
    EXPECT_EQ(r.code, 2) << args << ": " << r.err;
    EXPECT_EQ(LinesOf(r.err).size(), 1u) << args << ": " << r.err;
    EXPECT_EQ(r.err.rfind("coldstart: error: ", 0), 0u) << args << ": " << r.err;
  }
  EXPECT_FALSE(Exists(out_ / "m")) << "nothing fetched for a usage error";
}

TEST_F(PreloadCli, CmdNotFoundAndProbePortTakenAreOneLine) {
  Start(0);
  auto r = Preload("gs://bkt/m --to " + (out_ / "m") + " --progress off -- /nonexistent/server --port 1", env_).Wait();
  EXPECT_EQ(r.code, 127) << r.err;
  EXPECT_EQ(LinesOf(r.err).size(), 1u) << r.err;
  EXPECT_NE(r.err.find("cannot run '/nonexistent/server': No such file or directory"), std::string::npos) << r.err;

  coldstart::testing::LoopbackServer taken;
  auto busy = Preload("gs://bkt/m --to " + (out_ / "n") + " --progress off --probe-host 127.0.0.1 --probe-port " +
                          std::to_string(taken.port()) + " " + Cmd(),
                      env_)
                  .Wait();
  EXPECT_EQ(busy.code, 6) << busy.err;
  EXPECT_EQ(LinesOf(busy.err).size(), 1u) << busy.err;
  EXPECT_NE(busy.err.find("cannot listen on 127.0.0.1:" + std::to_string(taken.port())), std::string::npos) << busy.err;
  EXPECT_FALSE(Exists(Marker("started")));
}

// ---- --mount: CMD starts at once on the FUSE mount, the probe waits for read-ahead ----

bool MountedAt(const std::string& dir) {
  return ReadFile("/proc/self/mounts").find(" " + dir + " fuse") != std::string::npos;
}

class PreloadMount : public PreloadCli {
 protected:
  void SetUp() override {
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "no usable /dev/fuse";
    if (std::system("command -v fusermount3 >/dev/null 2>&1") != 0) GTEST_SKIP() << "fusermount3 is not installed";
  }
};

TEST_F(PreloadMount, CmdStartsOnTheMountAtOnceAndTheProbeWaitsForReadAhead) {
  Start(512 << 10);  // 4 MiB over 2 connections at 512 KiB/s each: about 4 s
  const std::string mnt = out_ / "mnt", cache = out_ / "cache";
  Preload p("gs://bkt/m --mount " + mnt + " --cache-dir " + cache +
                " --probe-port 0 --probe-host 127.0.0.1 --progress off --concurrency 2 " + Cmd(),
            env_);
  const int port = p.ProbePort();
  ASSERT_GT(port, 0) << p.err();
  ASSERT_TRUE(WaitFor([&] { return Exists(Marker("launched")); })) << p.err();
  Probe early = Get(port);
  EXPECT_EQ(early.status, 503) << early.body;
  EXPECT_EQ(early.body["mode"], "mount");
  EXPECT_EQ(early.body["model"], "fetching") << "CMD runs before the model is all there: " << early.body;
  EXPECT_EQ(early.body["server"], "running");
  EXPECT_TRUE(MountedAt(mnt));
  Probe done;
  ASSERT_TRUE(WaitFor([&] { return (done = Get(port)).status == 200; })) << p.err();
  EXPECT_EQ(done.body["state"], "serving");
  EXPECT_EQ(done.body["bytes_done"], done.body["bytes_total"]);
  ASSERT_TRUE(WaitFor([&] { return Exists(Marker("started")); }));
  EXPECT_EQ(ReadFile(Marker("started")), mnt + "\n") << "COLDSTART_MODEL_DIR is the mount point";
  ExpectCmdSawTheModel();  // read through the mount while read-ahead ran
  Stop("4");
  auto r = p.Wait();
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_FALSE(MountedAt(mnt)) << "unmounted when CMD exits";

  // Second start: the cache has every byte, so nothing comes from the server.
  server_->ResetStats();
  for (const char* f : {"stop", "seen", "started", "launched"}) std::filesystem::remove_all(tmp_ / f);
  Preload again("gs://bkt/m --mount " + mnt + " --cache-dir " + cache +
                    " --probe-port 0 --probe-host 127.0.0.1 --progress off " + Cmd(),
                env_);
  const int port2 = again.ProbePort();
  ASSERT_GT(port2, 0) << again.err();
  ASSERT_TRUE(WaitFor([&] { return Get(port2).status == 200; }, 5s)) << again.err();
  ASSERT_TRUE(WaitFor([&] { return Exists(Marker("started")); }));
  ExpectCmdSawTheModel();
  Stop("0");
  EXPECT_EQ(again.Wait().code, 0);
  EXPECT_EQ(server_->stats().media_bytes_sent, 0u) << "a warm cache serves the second start";
}

TEST_F(PreloadMount, SigtermGoesToCmdAndTheMountIsGoneAfter) {
  Start(0);
  const std::string mnt = out_ / "mnt";
  Preload p("gs://bkt/m --mount " + mnt + " --cache-dir " + (out_ / "cache") + " --progress off " + Cmd(),
            "EXIT_ON_SIGNAL=1 " + env_);
  ASSERT_TRUE(WaitFor([&] { return Exists(Marker("started")); })) << p.err();
  p.Signal(SIGTERM);
  auto r = p.Wait();
  EXPECT_EQ(r.code, 42) << r.err;
  EXPECT_FALSE(MountedAt(mnt));
}

}  // namespace
