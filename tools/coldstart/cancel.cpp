#include "cancel.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

namespace coldstart::cli {
namespace {

std::atomic<int> g_signal{0};
std::atomic<bool> g_installed{false};
// GUARDED_BY(g_forward_mu): once set, signals go to this process instead of cancelling.
std::mutex g_forward_mu;
long g_forward_pid = 0;
int g_forwarded_sig = 0;
std::chrono::steady_clock::time_point g_forwarded_at;
std::mutex g_handler_mu;
std::function<void()> g_handler;  // GUARDED_BY(g_handler_mu)

const char* SignalName(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal"; }

}  // namespace

void InstallCancelSignals() {
  if (g_installed.exchange(true)) return;
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGINT, SIGTERM}) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    sigaddset(&set, sig);
  }
  if (sigisemptyset(&set)) return;
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // Lives until the process exits (a thread blocked in sigwait needs no join).
  std::thread([set] {
    pthread_setname_np(pthread_self(), "cs-signals");
    std::chrono::steady_clock::time_point first;
    for (;;) {
      int sig = 0;
      if (::sigwait(&set, &sig) != 0) continue;
      {
        std::lock_guard lk(g_forward_mu);
        if (g_forward_pid > 0) {
          // The same signal twice within 500 ms is one request sent to us and to our group
          // (`timeout`, a terminal): CMD, in a process group of its own, gets it once.
          const auto now = std::chrono::steady_clock::now();
          if (sig != g_forwarded_sig || now - g_forwarded_at >= std::chrono::milliseconds(500))
            ::kill(static_cast<pid_t>(g_forward_pid), sig);
          g_forwarded_sig = sig;
          g_forwarded_at = now;
          continue;
        }
      }
      int expected = 0;
      if (g_signal.compare_exchange_strong(expected, sig)) {
        first = std::chrono::steady_clock::now();
        std::lock_guard lk(g_handler_mu);
        if (g_handler) g_handler();
        continue;
      }
      // One keypress or `timeout` can deliver the same signal twice (to the process and to its
      // group): only a later one means "again".
      if (std::chrono::steady_clock::now() - first < std::chrono::milliseconds(500)) continue;
      // A second signal: the user does not want to wait for the clean-up.
      char line[96];
      int n = std::snprintf(line, sizeof line, "\ncoldstart: %s again: exiting now\n", SignalName(sig));
      if (n > 0) (void)!::write(STDERR_FILENO, line, static_cast<std::size_t>(n));
      ::_exit(128 + sig);
    }
  }).detach();
}

int ForwardSignalsTo(long pid) {
  std::lock_guard lk(g_forward_mu);
  g_forward_pid = pid;
  return g_signal.load();
}

void OnCancelSignal(std::function<void()> fn) {
  std::lock_guard lk(g_handler_mu);
  g_handler = std::move(fn);
  if (g_handler && CancelRequested()) g_handler();
}

ExitOnCancel::ExitOnCancel(std::string detail) {
  std::function<void()> exit_now = [detail = std::move(detail)] { ::_exit(ReportCancelled(detail)); };
  std::lock_guard lk(g_handler_mu);
  saved_ = std::exchange(g_handler, exit_now);
  if (CancelRequested()) exit_now();
}

ExitOnCancel::~ExitOnCancel() {
  std::lock_guard lk(g_handler_mu);
  g_handler = std::move(saved_);
}

int CancelSignal() { return g_signal.load(std::memory_order_relaxed); }

int ReportCancelled(std::string_view detail) {
  const int sig = CancelSignal();
  std::string line = std::string("coldstart: cancelled by ") + SignalName(sig);
  if (!detail.empty()) line += " (" + std::string(detail) + ")";
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';
  std::fprintf(stderr, "%s\n", line.c_str());
  return 128 + (sig != 0 ? sig : SIGINT);
}

}  // namespace coldstart::cli
