// Ctrl-C and SIGTERM for long subcommands (prefetch, load): the first one asks the running
// operation to stop (progress callbacks return false, waits end) so it can clean up and say so in
// one line; a second one exits at once.
//
// How: SIGINT and SIGTERM are blocked in every thread and a thread of their own takes them with
// sigwait(), so no system call anywhere is interrupted (EINTR) and nothing runs in a signal
// handler. A signal the process inherited as ignored (nohup, `cmd &` without job control) stays
// ignored, as POSIX programs do.
#pragma once

#include <functional>
#include <string>
#include <string_view>

namespace coldstart::cli {

// Call before the subcommand starts any thread (threads inherit the signal mask). Idempotent.
void InstallCancelSignals();
// The signal that asked to stop (SIGINT, SIGTERM), or 0.
int CancelSignal();
inline bool CancelRequested() { return CancelSignal() != 0; }
// Also calls `fn` (on the signal thread) at the first signal, or at once when one came
// already: for operations that stop by being told (a mount unmounts). Empty clears it; after
// that returns, `fn` is not running and will not run.
void OnCancelSignal(std::function<void()> fn);
// Prints "coldstart: cancelled by SIGINT[ (detail)]" on stderr; returns 128 + the signal
// (130 for SIGINT, 143 for SIGTERM).
int ReportCancelled(std::string_view detail = {});

// For a step that cannot be told to stop and has nothing to clean up (listing a model and
// reading its headers): while it lives, the first signal (or one that came already) ends the
// process at once, after ReportCancelled(detail). The handler OnCancelSignal had set is back
// afterwards.
class ExitOnCancel {
 public:
  explicit ExitOnCancel(std::string detail);
  ~ExitOnCancel();
  ExitOnCancel(const ExitOnCancel&) = delete;
  ExitOnCancel& operator=(const ExitOnCancel&) = delete;

 private:
  std::function<void()> saved_;
};

// From now on every SIGINT and SIGTERM is sent on to process `pid` (preload's CMD, which
// decides what a signal means) instead of cancelling, and a second one no longer exits.
// Returns the signal that had already asked to stop before this call (0 if none), so the
// caller can pass on one that arrived while CMD was being started.
int ForwardSignalsTo(long pid);

}  // namespace coldstart::cli
