// Child processes of `coldstart bench`: spawned with pipes on stdout and stderr, stderr read
// line by line as it comes (progress events), timed on the steady clock.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "coldstart/core/result.h"

namespace coldstart::bench::detail {

using Clock = std::chrono::steady_clock;

struct ChildSpec {
  std::vector<std::string> argv;  // argv[0] is looked up in PATH
  std::vector<std::string> env;   // "NAME=VALUE" entries added to (or replacing) this process's;
                                  // a bare "NAME" removes it
  // Its own process group (Terminate reaches a shell's children). Otherwise it stays in ours,
  // so a Ctrl-C on the terminal reaches it as it reaches `coldstart bench`.
  bool own_group = false;
  // Called on the reader thread for each complete stderr line, with when it arrived.
  std::function<void(const std::string& line, Clock::time_point t)> on_stderr_line;
};

// One running child.
class Child {
 public:
  static Result<std::unique_ptr<Child>> Start(ChildSpec spec);
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();  // terminates it if still running

  Clock::time_point started() const { return started_; }
  // Waits until it exits or `timeout_s` passes (then kills the group); true when it exited
  // by itself. The exit time is taken within a millisecond of the exit.
  bool Wait(double timeout_s);
  // SIGTERM to the group, SIGKILL after `grace_s`; then Wait.
  void Terminate(double grace_s = 5);
  bool Running();

  int exit_code() const { return exit_code_; }  // 128 + signal when killed
  Clock::time_point ended() const { return ended_; }
  std::string out() const;       // all of stdout (after Wait)
  std::string err_tail() const;  // the last lines of stderr (4 KiB)
  // "argv[0] exited with 3: <last stderr line>".
  std::string Describe() const;

 private:
  Child() = default;
  void Reap(int status);
  void Signal(int sig);  // to its group when it has one
  void ReadLoop(int out_fd, int err_fd);

  ChildSpec spec_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_code_ = -1;
  Clock::time_point started_, ended_;
  std::thread reader_;
  mutable std::mutex mu_;
  std::string out_;   // GUARDED_BY(mu_)
  std::string err_;   // GUARDED_BY(mu_): the tail
};

// Runs argv to completion (timeout_s, then killed); the Child for its output and times.
Result<std::unique_ptr<Child>> RunChild(ChildSpec spec, double timeout_s);

}  // namespace coldstart::bench::detail
