#include "process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>

extern char** environ;

namespace coldstart::bench::detail {
namespace {

constexpr std::size_t kErrTailBytes = 4096;

struct Pipe {
  int r = -1, w = -1;
  ~Pipe() {
    if (r >= 0) ::close(r);
    if (w >= 0) ::close(w);
  }
};

}  // namespace

Result<std::unique_ptr<Child>> Child::Start(ChildSpec spec) {
  if (spec.argv.empty()) return MakeError(Errc::kInvalidArgument, "no command to run");
  Pipe out, err;
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return MakeSysError(Errc::kIo, "pipe", errno);
  out.r = fds[0], out.w = fds[1];
  if (::pipe2(fds, O_CLOEXEC) != 0) return MakeSysError(Errc::kIo, "pipe", errno);
  err.r = fds[0], err.w = fds[1];

  // The environment: ours, with the spec's entries replacing same-named ones.
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    std::string kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string::npos) env[kv.substr(0, eq)] = kv;
  }
  for (const auto& kv : spec.env) {
    if (kv.find('=') == std::string::npos) env.erase(kv);
    else env[kv.substr(0, kv.find('='))] = kv;
  }
  std::vector<char*> envp;
  for (auto& [k, kv] : env) envp.push_back(kv.data());
  envp.push_back(nullptr);
  std::vector<char*> argv;
  for (auto& a : spec.argv) argv.push_back(a.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out.w, 1);
  posix_spawn_file_actions_adddup2(&fa, err.w, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // Default signal handling and an empty mask, whatever this process blocks for its own
  // signal thread.
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  for (int s : {SIGINT, SIGTERM, SIGPIPE, SIGHUP}) sigaddset(&defaults, s);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  if (spec.own_group) {
    posix_spawnattr_setpgroup(&attr, 0);
    flags |= POSIX_SPAWN_SETPGROUP;
  }
  posix_spawnattr_setflags(&attr, flags);

  std::unique_ptr<Child> c(new Child());
  c->started_ = Clock::now();
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, argv[0], &fa, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return MakeSysError(ErrcFromErrno(rc), "cannot start " + spec.argv[0], rc);
  c->pid_ = pid;
  c->spec_ = std::move(spec);
  ::close(out.w), out.w = -1;
  ::close(err.w), err.w = -1;
  const int ro = out.r, re = err.r;
  out.r = err.r = -1;
  c->reader_ = std::thread([p = c.get(), ro, re] { p->ReadLoop(ro, re); });
  return c;
}

void Child::ReadLoop(int out_fd, int err_fd) {
  std::string line;
  char buf[65536];
  pollfd p[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
  int open = 2;
  while (open > 0) {
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t n = ::read(p[i].fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(p[i].fd);
        p[i].fd = -1;
        --open;
        continue;
      }
      const auto now = Clock::now();
      if (i == 0) {
        std::lock_guard lk(mu_);
        out_.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      {
        std::lock_guard lk(mu_);
        err_.append(buf, static_cast<std::size_t>(n));
        if (err_.size() > 2 * kErrTailBytes) err_.erase(0, err_.size() - kErrTailBytes);
      }
      line.append(buf, static_cast<std::size_t>(n));
      for (auto nl = line.find('\n'); nl != std::string::npos; nl = line.find('\n')) {
        if (spec_.on_stderr_line) spec_.on_stderr_line(line.substr(0, nl), now);
        line.erase(0, nl + 1);
      }
    }
  }
}

void Child::Signal(int sig) {
  if (spec_.own_group) ::kill(-pid_, sig);
  else if (!exited_) ::kill(pid_, sig);
}

void Child::Reap(int status) {
  ended_ = Clock::now();
  exited_ = true;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

bool Child::Running() {
  if (exited_) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) Reap(status);
  return !exited_;
}

bool Child::Wait(double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
  bool by_itself = true;
  while (Running()) {
    if (Clock::now() >= deadline) {
      by_itself = false;
      Signal(SIGKILL);
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      Reap(status);
      break;
    }
    ::usleep(1000);
  }
  if (reader_.joinable()) {
    // A grandchild may keep the pipes open: its group goes with the child.
    if (spec_.own_group) ::kill(-pid_, SIGKILL);
    reader_.join();
  }
  return by_itself;
}

void Child::Terminate(double grace_s) {
  if (!Running()) {
    Wait(0);
    return;
  }
  Signal(SIGTERM);
  Wait(grace_s);
}

Child::~Child() {
  if (pid_ > 0) Terminate(2);
}

std::string Child::out() const {
  std::lock_guard lk(mu_);
  return out_;
}

std::string Child::err_tail() const {
  std::lock_guard lk(mu_);
  return err_.size() > kErrTailBytes ? err_.substr(err_.size() - kErrTailBytes) : err_;
}

std::string Child::Describe() const {
  std::string tail = err_tail();
  while (!tail.empty() && (tail.back() == '\n' || tail.back() == '\r')) tail.pop_back();
  if (auto nl = tail.rfind('\n'); nl != std::string::npos) tail.erase(0, nl + 1);
  std::string what = spec_.argv.empty() ? "?" : spec_.argv[0];
  if (spec_.argv.size() > 1) what += " " + spec_.argv[1];
  return what + " exited with " + std::to_string(exit_code_) + (tail.empty() ? "" : ": " + tail);
}

Result<std::unique_ptr<Child>> RunChild(ChildSpec spec, double timeout_s) {
  const std::string name = spec.argv.empty() ? "" : spec.argv[0];
  CS_ASSIGN_OR_RETURN(auto c, Child::Start(std::move(spec)));
  if (!c->Wait(timeout_s))
    return MakeError(Errc::kTimeout, name + " did not finish within " + std::to_string(static_cast<int>(timeout_s)) + " s");
  return c;
}

}  // namespace coldstart::bench::detail
