// `coldstart preload`: the state of a container entrypoint that fetches a model while it
// answers the startup probe, then runs the server (CMD). Two machines side by side:
//
//   model:  starting -> fetching -> verifying -> ready          (--to: Prefetch)
//           starting -> fetching -> ready                       (--mount: read-ahead done)
//           any      -> failed
//   server: not-started -> starting -> running [-> healthy] -> exited
//
// One word sums both up for people and probes (`state`): failed, exited, the model's phase
// while it is not ready, then ready (CMD not started yet), server-starting (CMD runs, its
// --ready-url has not answered 200 yet) and serving. The probe answers 200 exactly when
// Ready() is true. Thread-safe: the fetch threads report progress, the probe server and the
// progress printer take snapshots, the main thread moves the server machine.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>

#include "coldstart/cache/mount.h"
#include "coldstart/core/result.h"
#include "coldstart/fetch/remote.h"
#include "coldstart/loader/prefetch.h"

namespace coldstart::loader {

enum class ModelPhase { kStarting, kFetching, kVerifying, kReady, kFailed };
enum class ServerPhase { kNotStarted, kStarting, kRunning, kHealthy, kExited };
std::string_view ModelPhaseName(ModelPhase p);    // "starting", "fetching", ...
std::string_view ServerPhaseName(ServerPhase p);  // "not-started", "starting", "running", "healthy", "exited"

struct PreloadInfo {
  std::string source;           // as the user gave it
  std::string mode;             // "to" | "mount"
  std::string dest;             // the DIR or MNT (COLDSTART_MODEL_DIR)
  bool wait_for_server = false; // --ready-url: Ready() also needs the server to be healthy
};

struct PreloadSnapshot {
  std::string state;  // see the top of this file
  ModelPhase model = ModelPhase::kStarting;
  ServerPhase server = ServerPhase::kNotStarted;
  bool ready = false;
  std::uint64_t bytes_done = 0, bytes_total = 0;
  double bytes_per_second = 0;            // over the last few seconds
  std::optional<double> eta_seconds;      // unknown before bytes flow
  double elapsed_seconds = 0;             // since construction
  std::optional<double> model_ready_seconds;  // when the model became ready
  std::string error;                      // model failed: the one-line error
  long server_pid = 0;
  std::optional<int> exit_status;         // the server's (128+N for a signal)
};

class PreloadStatus {
 public:
  using Clock = std::chrono::steady_clock;
  explicit PreloadStatus(PreloadInfo info, std::function<Clock::time_point()> now = &Clock::now);

  // Model machine. Progress while fetching (bytes of this run; total may grow once known);
  // a report after the model failed or became ready is ignored.
  void Progress(std::uint64_t done, std::uint64_t total);
  void Verifying();
  void ModelReady();
  void ModelFailed(const Error& e);
  // Server machine.
  void ServerStarted(long pid);
  void ServerHealthy();
  void ServerExited(int exit_status);

  bool Ready() const;
  PreloadSnapshot Snapshot() const;
  // The probe's body: {"state", "ready", "model", "server", "source", "mode", "dest",
  // "bytes_done", "bytes_total", "bytes_per_second", "eta_seconds" (null when unknown),
  // "elapsed_seconds", "percent", ["error"], ["pid"], ["exit_status"], ["model_ready_seconds"]}.
  std::string ToJson() const;
  const PreloadInfo& info() const { return info_; }

 private:
  bool ReadyLocked() const;
  double Seconds(Clock::time_point t) const;

  const PreloadInfo info_;
  const std::function<Clock::time_point()> now_;
  const Clock::time_point start_;
  mutable std::mutex mu_;
  // GUARDED_BY(mu_). INVARIANT: samples_ is ordered by time and spans at most kRateWindow
  // plus one sample, so the rate is that of the last few seconds, not since boot (a model that
  // waited 20 s for credentials must not show a rate too low for the rest of its fetch).
  ModelPhase model_ = ModelPhase::kStarting;
  ServerPhase server_ = ServerPhase::kNotStarted;
  std::uint64_t done_ = 0, total_ = 0;
  std::deque<std::pair<Clock::time_point, std::uint64_t>> samples_;
  std::optional<Clock::time_point> model_ready_at_;
  std::string error_;
  long pid_ = 0;
  std::optional<int> exit_status_;
};

// Runs Prefetch(session, dest, options) and moves `status` along: fetching on the first
// progress report, verifying once every byte is in (the files are read back and checked),
// ready or failed when it returns. options.progress is still called (it can cancel).
Result<PrefetchReport> PreloadTo(fetch::RemoteSession& session, const std::string& dest, PrefetchOptions options,
                                 PreloadStatus& status);

// --mount: moves `status` along with a mount's read-ahead (call it every so often): bytes
// cached of the total, then ready once read-ahead has every file, or failed when it gave up
// on some (their names are in the mount's log lines).
void UpdateFromMount(const cache::MountProgress& progress, PreloadStatus& status);

}  // namespace coldstart::loader
