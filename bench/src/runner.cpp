// The scenarios of `coldstart bench` and the loop that runs them (runner.h).
//
// Every scenario is a recipe of child processes run one after the other on one clock: the run
// starts at t0 (just before its first child is spawned) and every phase is in seconds since t0.
// A coldstart child's --json "timeline" is in seconds since ITS process start; its spawn time
// (the offset added) is within a few milliseconds of that (exec and the dynamic loader).
#include "coldstart/bench/runner.h"

#include <httplib.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "coldstart/core/env.h"
#include "coldstart/fake_gcs/server.h"
#include "process.h"

namespace coldstart::bench {
namespace {

namespace fs = std::filesystem;
using detail::Child;
using detail::ChildSpec;
using detail::Clock;
using Json = nlohmann::json;

constexpr const char* kBucket = "bench";
constexpr const char* kPrefix = "model";

double Since(Clock::time_point t0, Clock::time_point t) { return std::chrono::duration<double>(t - t0).count(); }

struct ModelFile {
  std::string name;  // relative to the model folder, '/'-separated
  std::uint64_t size = 0;
};

// What every run of every scenario shares: where the model is read from and how.
struct Ctx {
  const BenchOptions& o;
  std::string exe;                 // the coldstart the children run
  std::string remote;              // the URL coldstart children read (gs://bench/model when served)
  std::string http_base;           // "http://127.0.0.1:PORT/bench/model/" when served, else ""
  std::string local;               // the local SRC folder, "" for a remote SRC
  std::vector<ModelFile> files;
  std::uint64_t model_bytes = 0;
  std::unique_ptr<fakegcs::Server> server;
  std::vector<std::string> env;    // for every child
  std::string work;                // temp root, removed at the end
  std::atomic<int> next_id{0};     // unique temp folder names

  explicit Ctx(const BenchOptions& options) : o(options) {}
  std::string Temp(const std::string& what) { return work + "/" + what + "-" + std::to_string(next_id++); }
  bool Cancelled() const { return o.cancelled && o.cancelled(); }
};

std::string FindInPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (dir.empty()) continue;
    const std::string p = dir + "/" + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

std::uint64_t BytesUnder(const std::string& dir) {
  std::uint64_t total = 0;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return 0;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->is_regular_file(ec)) total += it->file_size(ec);
  return total;
}

// Folder sizes every 200 ms while a copier runs: the throughput-over-time samples of peers
// that print no machine-readable progress.
class DirSampler {
 public:
  DirSampler(std::string dir, Clock::time_point t0, std::vector<Sample>* out)
      : thread_([this, dir = std::move(dir), t0, out] {
          std::unique_lock lk(mu_);
          while (!cv_.wait_for(lk, std::chrono::milliseconds(200), [this] { return stop_; }))
            out->push_back({Since(t0, Clock::now()), BytesUnder(dir)});
        }) {}
  ~DirSampler() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // GUARDED_BY(mu_)
  std::thread thread_;
};

// `{"event":"progress",...,"bytes":N}` lines of a coldstart child -> samples.
std::function<void(const std::string&, Clock::time_point)> ProgressSamples(RunRow* row, Clock::time_point t0) {
  return [row, t0](const std::string& line, Clock::time_point t) {
    if (line.find("\"progress\"") == std::string::npos) return;
    Json j = Json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || j.value("event", "") != "progress") return;
    auto b = j.find("bytes");
    if (b == j.end() || !b->is_number_unsigned()) return;
    row->samples.push_back({Since(t0, t), b->get<std::uint64_t>()});
  };
}

Result<std::unique_ptr<Child>> Run(Ctx& c, std::vector<std::string> argv,
                                   std::function<void(const std::string&, Clock::time_point)> on_line = {}) {
  ChildSpec spec;
  spec.argv = std::move(argv);
  spec.env = c.env;
  spec.on_stderr_line = std::move(on_line);
  CS_ASSIGN_OR_RETURN(auto child, detail::RunChild(std::move(spec), c.o.timeout_s));
  if (child->exit_code() != 0) return MakeError(Errc::kInternal, child->Describe());
  return child;
}

Result<Json> StdoutJson(const Child& child, const std::string& what) {
  const std::string out = child.out();
  Json j = Json::parse(out, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return MakeError(Errc::kFormat, what + " --json printed no JSON object: " + out.substr(0, 200));
  return j;
}

Result<std::uint64_t> JsonBytes(const Json& j, const std::string& what) {
  auto b = j.find("bytes");
  if (b == j.end() || !b->is_number_unsigned()) return MakeError(Errc::kFormat, what + " --json: \"bytes\" is missing");
  return b->get<std::uint64_t>();
}

// A child's timeline marks as consecutive phases on the run's clock: each phase runs from the
// previous mark (the child's spawn for the first) to its own. Marks not numbers (layer lists)
// and negative ones (not reached) are left out. Returns the time of `end_mark` (or of the last
// mark when it is absent), on the run's clock.
double AddTimeline(RunRow& row, const Json& timeline, double offset, const std::map<std::string, std::string>& rename,
                   const std::string& end_mark) {
  std::vector<std::pair<double, std::string>> marks;
  if (timeline.is_object())
    for (auto it = timeline.begin(); it != timeline.end(); ++it)
      if (it.value().is_number() && it.value().get<double>() >= 0) marks.emplace_back(it.value().get<double>(), it.key());
  std::stable_sort(marks.begin(), marks.end());
  double prev = offset, end = offset;
  bool found = false;
  for (const auto& [t, name] : marks) {
    auto r = rename.find(name);
    const double at = offset + t;
    row.phases.push_back({r == rename.end() ? name : r->second, prev, std::max(prev, at), 0});
    prev = std::max(prev, at);
    if (name == end_mark) end = prev, found = true;
    if (!found) end = prev;
  }
  return end;
}

// `coldstart load DIR --no-torch` after a copy: one "load" phase; the run ends at its ready.
Status LocalLoad(Ctx& c, RunRow& row, Clock::time_point t0, const std::string& dir) {
  CS_ASSIGN_OR_RETURN(auto child, Run(c, {c.exe, "load", dir, "--no-torch", "--json"}));
  CS_ASSIGN_OR_RETURN(auto j, StdoutJson(*child, "coldstart load"));
  CS_ASSIGN_OR_RETURN(row.bytes, JsonBytes(j, "coldstart load"));
  const double start = Since(t0, child->started());
  double ready = Since(t0, child->ended());
  if (auto tl = j.find("timeline"); tl != j.end() && tl->is_object() && tl->contains("ready") && (*tl)["ready"].is_number())
    ready = start + (*tl)["ready"].get<double>();
  row.phases.push_back({"load", start, ready, row.bytes});
  row.total_s = ready;
  return OkStatus();
}

// load, load-cache-cold/-warm, device: `coldstart load URL` streaming into memory (or the device).
Status RemoteLoad(Ctx& c, RunRow& row, Clock::time_point t0, const std::string& cache_dir, const std::string& device) {
  std::vector<std::string> argv{c.exe, "load", c.remote, "--json", "--progress", "json"};
  if (device.empty()) argv.push_back("--no-torch");
  else argv.insert(argv.end(), {"--device", device});
  if (!cache_dir.empty()) argv.insert(argv.end(), {"--cache-dir", cache_dir});
  CS_ASSIGN_OR_RETURN(auto child, Run(c, argv, ProgressSamples(&row, t0)));
  CS_ASSIGN_OR_RETURN(auto j, StdoutJson(*child, "coldstart load"));
  CS_ASSIGN_OR_RETURN(row.bytes, JsonBytes(j, "coldstart load"));
  const double start = Since(t0, child->started());
  row.total_s = AddTimeline(row, j.value("timeline", Json::object()), start, {}, "ready");
  for (auto& p : row.phases)
    if (p.name == "fetch") p.bytes = row.bytes;
  if (auto cache = j.find("cache"); cache != j.end() && cache->is_object())
    row.note = "cache: " + std::to_string(cache->value("hit_bytes", std::uint64_t{0})) + " bytes served, " +
               std::to_string(cache->value("filled_bytes", std::uint64_t{0})) + " written";
  return OkStatus();
}

Status PrefetchThenLoad(Ctx& c, RunRow& row, Clock::time_point t0) {
  const std::string dest = c.Temp("prefetch");
  CS_ASSIGN_OR_RETURN(auto child, Run(c, {c.exe, "prefetch", c.remote, dest, "--json", "--progress", "json"},
                                      ProgressSamples(&row, t0)));
  CS_ASSIGN_OR_RETURN(auto j, StdoutJson(*child, "coldstart prefetch"));
  CS_ASSIGN_OR_RETURN(auto bytes, JsonBytes(j, "coldstart prefetch"));
  const double start = Since(t0, child->started()), end = Since(t0, child->ended());
  double first = start;
  if (auto fb = j.find("first_byte_seconds"); fb != j.end() && fb->is_number()) first = std::min(end, start + fb->get<double>());
  row.phases.push_back({"first_byte", start, first, 0});
  row.phases.push_back({"prefetch", first, end, bytes});
  auto st = LocalLoad(c, row, t0, dest);
  std::error_code ec;
  fs::remove_all(dest, ec);
  return st;
}

// A peer copies the model into a folder, then coldstart loads it from there.
Status CopyThenLoad(Ctx& c, RunRow& row, Clock::time_point t0) {
  const std::string dest = c.Temp("copy-" + row.peer);
  std::vector<std::string> argv;
  if (row.peer == "curl") {
    // One process, one connection, one file after another: `gcloud storage cp` without
    // parallelism, or the curl of a boot script.
    argv = {"curl", "-sS", "--fail", "--create-dirs"};
    for (const auto& f : c.files) argv.insert(argv.end(), {"-o", dest + "/" + f.name, c.http_base + f.name});
  } else if (row.peer == "aria2c") {
    const std::string list = dest + ".aria2";
    std::ofstream out(list);
    for (const auto& f : c.files) out << c.http_base << f.name << "\n  out=" << f.name << "\n";
    out.close();
    if (!out) return MakeError(Errc::kIo, "cannot write " + list);
    argv = {"aria2c", "-x16", "-s16", "-k1M", "--dir", dest, "-i", list, "--quiet=true", "--file-allocation=none",
            "--allow-overwrite=true", "--auto-file-renaming=false"};
  } else {  // rclone: its GCS backend against the fake server, 16 streams per file
    argv = {"rclone", "copy", std::string(":gcs:") + kBucket + "/" + kPrefix, dest, "--gcs-anonymous",
            "--gcs-endpoint", c.server->endpoint() + "/storage/v1/", "--multi-thread-streams", "16",
            "--multi-thread-cutoff", "1M", "--config", "/dev/null", "-q"};
  }
  Result<std::unique_ptr<Child>> child = MakeError(Errc::kInternal, "unset");
  {
    DirSampler sampler(dest, t0, &row.samples);
    child = Run(c, argv);
  }
  if (!child.ok()) return std::move(child).error();
  const std::uint64_t copied = BytesUnder(dest);
  row.phases.push_back({"copy", Since(t0, (*child)->started()), Since(t0, (*child)->ended()), copied});
  if (copied < c.model_bytes)
    return MakeError(Errc::kIntegrity, row.peer + " copied " + std::to_string(copied) + " of " + std::to_string(c.model_bytes) + " bytes");
  auto st = LocalLoad(c, row, t0, dest);
  std::error_code ec;
  fs::remove_all(dest, ec);
  fs::remove(dest + ".aria2", ec);
  return st;
}

// `coldstart run SRC --prompt-ids 2,3,4 --max-new-tokens 1`: to the first token.
Status FirstToken(Ctx& c, RunRow& row, Clock::time_point t0) {
  CS_ASSIGN_OR_RETURN(auto child, Run(c, {c.exe, "run", c.remote, "--prompt-ids", "2,3,4", "--max-new-tokens", "1", "--json"}));
  CS_ASSIGN_OR_RETURN(auto j, StdoutJson(*child, "coldstart run"));
  const double start = Since(t0, child->started());
  row.total_s = AddTimeline(row, j.value("timeline", Json::object()), start,
                            {{"libtorch_loaded", "runtime_init"}, {"load_ready", "ready"}}, "first_token");
  // The run ended at the first token: what came after it is not part of the start.
  std::erase_if(row.phases, [&](const Phase& p) { return p.start_s >= row.total_s && p.name != "first_token"; });
  row.bytes = c.model_bytes;
  return OkStatus();
}

// Touches every page of `path` through a read-only shared mapping, as a server that mmaps its
// weights (safetensors' safe_open, llama.cpp) does; returns the file's size.
Result<std::uint64_t> TouchEveryPage(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return MakePathError("open " + path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return MakePathError("stat " + path, err);
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return std::uint64_t{0};
  }
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  const int err = errno;
  ::close(fd);
  if (m == MAP_FAILED) return MakePathError("mmap " + path, err);
  ::madvise(m, size, MADV_SEQUENTIAL);
  const auto* p = static_cast<const volatile unsigned char*>(m);
  for (std::size_t off = 0; off < size; off += 4096) (void)p[off];  // volatile: every read happens
  (void)p[size - 1];
  ::munmap(m, size);
  return static_cast<std::uint64_t>(size);
}

bool Mounted(const std::string& dir) {
  struct stat a {}, b {};
  return ::stat(dir.c_str(), &a) == 0 && ::stat((dir + "/..").c_str(), &b) == 0 && a.st_dev != b.st_dev;
}

// mount-then-read: a FUSE mount (coldstart mount, or rclone mount --vfs-cache-mode full), then
// every .safetensors file of it read through mmap, page by page.
Status MountThenRead(Ctx& c, RunRow& row, Clock::time_point t0) {
  const std::string mnt = c.Temp("mnt"), cache = c.Temp("mount-cache");
  std::error_code ec;
  fs::create_directories(mnt, ec);
  if (ec) return MakePathError("mkdir " + mnt, ec.value());
  ChildSpec spec;
  if (row.peer == "rclone")
    spec.argv = {"rclone", "mount", std::string(":gcs:") + kBucket + "/" + kPrefix, mnt, "--gcs-anonymous", "--gcs-endpoint",
                 c.server->endpoint() + "/storage/v1/", "--vfs-cache-mode", "full", "--cache-dir", cache, "--read-only",
                 "--config", "/dev/null", "-q"};
  else
    spec.argv = {c.exe, "mount", c.remote, mnt, "--cache-dir", cache, "--progress", "off"};
  spec.env = c.env;
  CS_ASSIGN_OR_RETURN(auto child, Child::Start(std::move(spec)));
  struct Unmount {
    std::string mnt, cache;
    Child* child;
    ~Unmount() {
      if (Mounted(mnt)) {
        ChildSpec u;
        u.argv = {"fusermount3", "-u", mnt};
        if (auto r = detail::RunChild(std::move(u), 30); !r.ok() || (*r)->exit_code() != 0) {
          ChildSpec lazy;
          lazy.argv = {"fusermount3", "-uz", mnt};
          (void)detail::RunChild(std::move(lazy), 30);
        }
      }
      if (!child->Wait(10)) child->Terminate();
      std::error_code ec;
      fs::remove(mnt, ec);
      fs::remove_all(cache, ec);
    }
  } unmount{mnt, cache, child.get()};
  const double start = Since(t0, child->started());
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(c.o.timeout_s));
  while (!Mounted(mnt)) {
    if (!child->Running()) return MakeError(Errc::kInternal, "the mount ended before it was up: " + child->Describe());
    if (Clock::now() > deadline) return MakeError(Errc::kTimeout, mnt + " was not mounted in time");
    if (c.Cancelled()) return MakeError(Errc::kCancelled, "cancelled while mounting");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const double mounted = Since(t0, Clock::now());
  row.phases.push_back({"mount", start, mounted, 0});
  std::vector<std::string> shards;
  for (fs::recursive_directory_iterator it(mnt, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().extension() == ".safetensors") shards.push_back(it->path().string());
  if (ec) return MakePathError("listing " + mnt, ec.value());
  if (shards.empty()) return MakeError(Errc::kNotFound, "no .safetensors file under the mount " + mnt);
  std::sort(shards.begin(), shards.end());
  std::uint64_t bytes = 0;
  for (const auto& f : shards) {
    CS_ASSIGN_OR_RETURN(auto n, TouchEveryPage(f));
    bytes += n;
    row.samples.push_back({Since(t0, Clock::now()), bytes});
  }
  const double read = Since(t0, Clock::now());
  row.phases.push_back({"read", mounted, read, bytes});
  row.bytes = bytes;
  row.total_s = read;
  return OkStatus();
}

std::string Replace(std::string s, const std::string& from, const std::string& to) {
  for (auto p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

// scheme://host:port of a URL, and its path.
std::pair<std::string, std::string> SplitUrl(const std::string& url) {
  const auto scheme = url.find("://");
  const auto slash = url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  if (slash == std::string::npos) return {url, "/"};
  return {url.substr(0, slash), url.substr(slash)};
}

// `server`: any command, to its health URL's 200 and to the answer of a first request.
Status ServerScenario(Ctx& c, RunRow& row, Clock::time_point t0) {
  ChildSpec spec;
  spec.argv = {"/bin/sh", "-c", Replace(Replace(c.o.server_cmd, "{src}", c.remote), "{coldstart}", c.exe)};
  spec.env = c.env;
  spec.own_group = true;
  CS_ASSIGN_OR_RETURN(auto child, Child::Start(std::move(spec)));
  const double start = Since(t0, child->started());
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(c.o.timeout_s));
  auto [origin, path] = SplitUrl(c.o.ready_url);
  httplib::Client http(origin);
  http.set_connection_timeout(1);
  double ready = -1;
  while (Clock::now() < deadline && !c.Cancelled()) {
    if (!child->Running()) {
      child->Wait(0);
      return MakeError(Errc::kInternal, "the server stopped before it was ready: " + child->Describe());
    }
    if (auto r = http.Get(path); r && r->status == 200) {
      ready = Since(t0, Clock::now());
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (ready < 0) {
    child->Terminate();
    if (c.Cancelled()) return MakeError(Errc::kCancelled, "cancelled while waiting for " + c.o.ready_url);
    return MakeError(Errc::kTimeout, c.o.ready_url + " did not answer 200 within " + std::to_string(c.o.timeout_s) + " s");
  }
  row.phases.push_back({"ready", start, ready, 0});
  row.total_s = ready;
  if (!c.o.request_file.empty()) {
    std::ifstream in(c.o.request_file, std::ios::binary);
    std::stringstream body;
    body << in.rdbuf();
    auto [req_origin, req_path] = SplitUrl(c.o.request_url.empty() ? origin + "/v1/completions" : c.o.request_url);
    httplib::Client rc(req_origin);
    rc.set_read_timeout(static_cast<time_t>(c.o.timeout_s));
    auto r = rc.Post(req_path, body.str(), "application/json");
    if (!r || r->status != 200) {
      child->Terminate();
      return MakeError(Errc::kHttp, "the first request to " + req_origin + req_path + " " +
                                        (r ? "answered " + std::to_string(r->status) + ": " + r->body.substr(0, 200)
                                           : "failed: " + httplib::to_string(r.error())));
    }
    const double answered = Since(t0, Clock::now());
    row.phases.push_back({"first_token", ready, answered, 0});
    row.total_s = answered;
  }
  child->Terminate();
  row.bytes = c.model_bytes;
  return OkStatus();
}

// The peers of a scenario and why one is skipped ("" when it runs).
std::vector<std::pair<std::string, std::string>> Peers(const Ctx& c, const std::string& scenario) {
  const std::string no_local = "peers copy over http from the fake server, which serves a local SRC only";
  if (scenario == "copy-then-load") {
    if (c.http_base.empty()) return {{"curl", no_local}};
    return {{"curl", FindInPath("curl").empty() ? "curl is not installed" : ""}};
  }
  if (scenario == "parallel-copy-then-load") {
    std::vector<std::pair<std::string, std::string>> out;
    for (const char* p : {"aria2c", "rclone"})
      out.emplace_back(p, c.http_base.empty()             ? no_local
                          : FindInPath(p).empty()         ? std::string(p) + " is not installed (tools/setup.sh --bench)"
                                                          : "");
    return out;
  }
  if (scenario == "server") {
    std::string first = c.o.server_cmd.substr(0, c.o.server_cmd.find(' '));
    first = Replace(first, "{coldstart}", "coldstart");
    first = first.substr(first.rfind('/') == std::string::npos ? 0 : first.rfind('/') + 1);
    if (c.o.server_cmd.empty() || c.o.ready_url.empty()) return {{"server", "needs --cmd and --ready-url"}};
    return {{first.empty() ? "server" : first, ""}};
  }
  if (scenario == "first-token") {
    std::string why;
    if (!c.local.empty() && !fs::exists(c.local + "/config.json")) why = "the model has no config.json";
    else if (!fs::exists(fs::path(c.exe).parent_path() / "libcoldstart_torch.so"))
      why = "libcoldstart_torch.so (the libtorch plugin) is not next to " + c.exe;
    return {{"coldstart", why}};
  }
  if (scenario == "mount-then-read") {
    std::string why;
    if (::access("/dev/fuse", R_OK | W_OK) != 0) why = "/dev/fuse is missing or not usable";
    else if (FindInPath("fusermount3").empty()) why = "fusermount3 is not installed (fuse3)";
    std::vector<std::pair<std::string, std::string>> out{{"coldstart", why}};
    if (why.empty() && c.http_base.empty()) why = no_local;
    if (why.empty() && FindInPath("rclone").empty()) why = "rclone is not installed (tools/setup.sh --bench)";
    out.emplace_back("rclone", why);
    return out;
  }
  return {{"coldstart", ""}};
}

Status RunOne(Ctx& c, const std::string& scenario, RunRow& row, Clock::time_point t0, const std::string& cache_dir) {
  if (scenario == "load") return RemoteLoad(c, row, t0, "", "");
  if (scenario == "load-cache-cold" || scenario == "load-cache-warm") return RemoteLoad(c, row, t0, cache_dir, "");
  if (scenario == "device") return RemoteLoad(c, row, t0, "", c.o.device);
  if (scenario == "prefetch-then-load") return PrefetchThenLoad(c, row, t0);
  if (scenario == "copy-then-load" || scenario == "parallel-copy-then-load") return CopyThenLoad(c, row, t0);
  if (scenario == "first-token") return FirstToken(c, row, t0);
  if (scenario == "server") return ServerScenario(c, row, t0);
  if (scenario == "mount-then-read") return MountThenRead(c, row, t0);
  return MakeError(Errc::kInvalidArgument, "unknown scenario " + scenario);
}

std::string Machine() {
  std::string m = std::to_string(std::thread::hardware_concurrency()) + " CPUs";
  std::ifstream mem("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  if (mem >> key >> kib && key == "MemTotal:") m += ", " + FormatBytes(static_cast<double>(kib) * 1024) + " RAM";
  std::ifstream cg("/sys/fs/cgroup/memory.max");
  std::string limit;
  if (cg >> limit && limit != "max") m += " (cgroup limit " + FormatBytes(std::strtod(limit.c_str(), nullptr)) + ")";
  utsname u{};
  if (::uname(&u) == 0) m += std::string(", ") + u.sysname + " " + u.release + " " + u.machine;
  return m;
}

std::string UtcNow() {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Status Prepare(Ctx& c) {
  std::error_code ec;
  c.exe = fs::read_symlink(c.o.coldstart_exe, ec).string();
  if (ec) c.exe = fs::absolute(c.o.coldstart_exe, ec).string();
  if (::access(c.exe.c_str(), X_OK) != 0) return MakePathError("the coldstart executable " + c.exe, errno);
  std::string base = c.o.work_dir;
  if (base.empty()) {
    const char* t = std::getenv("TMPDIR");
    base = t && *t ? t : "/tmp";
  }
  std::string tmpl = base + "/coldstart-bench-XXXXXX";
  if (!::mkdtemp(tmpl.data())) return MakePathError("mkdtemp " + tmpl, errno);
  c.work = tmpl;
  // The user's cache variable would turn `load` into a cached load: every cache is explicit here.
  c.env = {"COLDSTART_CACHE_DIR", "COLDSTART_PROGRESS"};
  const std::string& src = c.o.source;
  if (src.rfind("gs://", 0) == 0 || src.rfind("http://", 0) == 0 || src.rfind("https://", 0) == 0) {
    c.remote = src;
    return OkStatus();
  }
  if (!fs::is_directory(src, ec)) return MakeError(Errc::kNotFound, src + " is not a model folder, gs:// or http(s):// URL");
  c.local = fs::canonical(src, ec).string();
  for (fs::recursive_directory_iterator it(c.local, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    ModelFile f{it->path().lexically_relative(c.local).generic_string(), it->file_size(ec)};
    c.model_bytes += f.size;
    c.files.push_back(std::move(f));
  }
  if (ec) return MakePathError("listing " + c.local, ec.value());
  std::sort(c.files.begin(), c.files.end(), [](const ModelFile& a, const ModelFile& b) { return a.name < b.name; });
  if (c.files.empty()) return MakeError(Errc::kNotFound, src + " has no files");
  // ROOT/bench/model -> the folder: the fake server serves it as gs://bench/model.
  fs::create_directories(c.work + "/origin/" + kBucket, ec);
  fs::create_directory_symlink(c.local, c.work + "/origin/" + kBucket + "/" + kPrefix, ec);
  if (ec) return MakePathError("symlink in " + c.work, ec.value());
  fakegcs::ServerOptions so;
  so.root = c.work + "/origin";
  so.rate_limit_bytes_per_s = c.o.cap_per_connection;
  so.link_rate_limit_bytes_per_s = c.o.cap_link;
  so.md5 = false;  // an MD5 pass over a multi-GiB model would stall the first listing
  so.threads = 256;
  CS_ASSIGN_OR_RETURN(c.server, fakegcs::Server::Start(so));
  c.remote = std::string("gs://") + kBucket + "/" + kPrefix;
  c.http_base = c.server->endpoint() + "/" + kBucket + "/" + kPrefix + "/";
  c.env.push_back("STORAGE_EMULATOR_HOST=" + c.server->endpoint());
  c.env.push_back("COLDSTART_METADATA=off");
  return OkStatus();
}

// "50 MB/s" (decimal, as network rates are given).
std::string Rate(double bytes_per_s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g MB/s", bytes_per_s / 1e6);
  return buf;
}

std::string Conditions(const BenchOptions& o, const Ctx& c) {
  std::string s = c.local.empty() ? "remote SRC as is" : "fake GCS on loopback";
  if (o.cap_per_connection > 0) s += ", per-connection cap " + Rate(o.cap_per_connection);
  if (o.cap_link > 0) s += ", link cap " + Rate(o.cap_link);
  s += o.cold ? ", cold (page cache dropped before each run)" : ", warm page cache";
  s += ", " + std::to_string(o.runs) + " run" + (o.runs == 1 ? "" : "s");
  if (o.replicas > 1) s += ", " + std::to_string(o.replicas) + " replicas at once";
  return s;
}

}  // namespace

const std::vector<std::string>& ScenarioNames() {
  static const std::vector<std::string> names{"copy-then-load", "parallel-copy-then-load", "prefetch-then-load", "load",
                                              "load-cache-cold", "load-cache-warm", "mount-then-read", "device",
                                              "first-token", "server"};
  return names;
}

std::vector<std::string> DefaultScenarios() {
  return {"copy-then-load", "parallel-copy-then-load", "prefetch-then-load", "load", "load-cache-cold",
          "load-cache-warm", "mount-then-read", "first-token"};
}

Result<Report> RunBench(const BenchOptions& o) {
  std::vector<std::string> scenarios = o.scenarios.empty() ? DefaultScenarios() : o.scenarios;
  for (const auto& s : scenarios)
    if (std::find(ScenarioNames().begin(), ScenarioNames().end(), s) == ScenarioNames().end())
      return MakeError(Errc::kInvalidArgument, "unknown scenario '" + s + "'");
  if (o.runs < 1) return MakeError(Errc::kInvalidArgument, "--runs must be at least 1");
  if (o.replicas < 1) return MakeError(Errc::kInvalidArgument, "--replicas must be at least 1");
  if (o.cap_per_connection < 0 || o.cap_link < 0) return MakeError(Errc::kInvalidArgument, "a cap must be >= 0");
  Ctx c(o);
  auto prepared = Prepare(c);
  struct Cleanup {
    Ctx& c;
    ~Cleanup() {
      if (c.server) c.server->Stop();
      std::error_code ec;
      if (!c.work.empty()) fs::remove_all(c.work, ec);
    }
  } cleanup{c};
  if (!prepared.ok()) return std::move(prepared).error();
  if (c.local.empty() && (o.cap_per_connection > 0 || o.cap_link > 0))
    return MakeError(Errc::kInvalidArgument, "--cap-per-connection and --cap-link shape the fake server, which serves a local SRC only");

  Report rep;
  rep.source = o.source;
  rep.command = o.command;
  rep.machine = Machine();
  rep.date = UtcNow();
  rep.conditions = Conditions(o, c);
  rep.model_bytes = c.model_bytes;
  auto say = [&](const std::string& s) {
    if (o.progress) o.progress(s);
  };

  const std::string warm_cache = c.work + "/cache-warm";
  bool warm_primed = false;
  for (int run = 0; run < o.runs; ++run) {
    for (const auto& scenario : scenarios) {
      for (const auto& [peer, skip] : Peers(c, scenario)) {
        if (c.Cancelled())
          return MakeError(Errc::kCancelled, "coldstart bench stopped after " + std::to_string(rep.rows.size()) + " rows");
        if (!skip.empty()) {
          if (run == 0) {
            RunRow row;
            row.scenario = scenario, row.peer = peer, row.ok = false, row.note = "skipped: " + skip;
            rep.rows.push_back(std::move(row));
            say(scenario + " (" + peer + "): skipped: " + skip);
          }
          continue;
        }
        std::string cache_dir;
        if (scenario == "load-cache-warm") {
          cache_dir = warm_cache;
          if (!warm_primed) {  // untimed: fills the cache the warm runs read
            say(scenario + ": filling the cache");
            RunRow prime;
            if (auto st = RemoteLoad(c, prime, Clock::now(), cache_dir, ""); !st.ok())
              say(scenario + ": filling the cache failed: " + st.error().message);
            warm_primed = true;
          }
        } else if (scenario == "load-cache-cold") {
          cache_dir = c.Temp("cache-cold");  // empty, shared by the replicas of this run
        }
        std::string cold_method;
        if (o.cold) {
          std::vector<std::string> paths;
          if (!c.local.empty()) paths.push_back(c.local);
          if (scenario == "load-cache-warm") paths.push_back(warm_cache);
          auto m = DropPages(paths);
          cold_method = m.ok() ? *m : "failed: " + m.error().message;
        }
        say(scenario + " (" + peer + ") run " + std::to_string(run + 1) + "/" + std::to_string(o.runs) + "...");
        const std::uint64_t origin0 = c.server ? c.server->stats().media_bytes_sent : 0;
        std::vector<RunRow> rows(static_cast<std::size_t>(o.replicas));
        const auto t0 = Clock::now();
        {
          std::vector<std::thread> threads;
          for (int k = 0; k < o.replicas; ++k) {
            threads.emplace_back([&, k] {
              RunRow& row = rows[static_cast<std::size_t>(k)];
              row.scenario = scenario, row.peer = peer, row.run = run, row.replica = o.replicas > 1 ? k : -1;
              row.cold = o.cold, row.cold_method = cold_method;
              auto st = RunOne(c, scenario, row, t0, cache_dir);
              if (!st.ok()) row.ok = false, row.error = st.error().message;
            });
          }
          for (auto& t : threads) t.join();
        }
        const std::uint64_t origin = c.server ? c.server->stats().media_bytes_sent - origin0 : 0;
        for (auto& row : rows) {
          row.origin_bytes = origin;
          if (row.ok && c.model_bytes == 0) rep.model_bytes = std::max(rep.model_bytes, row.bytes);
          char buf[160];
          std::snprintf(buf, sizeof buf, "%s (%s) run %d/%d%s: %s", scenario.c_str(), peer.c_str(), run + 1, o.runs,
                        row.replica >= 0 ? (" replica " + std::to_string(row.replica)).c_str() : "",
                        row.ok ? (std::to_string(row.total_s).substr(0, 6) + " s").c_str() : "failed");
          say(buf + (row.ok ? "" : ": " + row.error));
          rep.rows.push_back(std::move(row));
        }
        if (scenario == "load-cache-cold") {
          std::error_code ec;
          fs::remove_all(cache_dir, ec);
        }
      }
    }
  }
  return rep;
}

}  // namespace coldstart::bench
