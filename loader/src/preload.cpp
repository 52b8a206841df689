#include "coldstart/loader/preload.h"

#include <nlohmann/json.hpp>

#include <algorithm>

namespace coldstart::loader {
namespace {

// The rate behind the ETA is measured over this window: long enough to smooth out chunk
// completions (a 16 MiB chunk at 50 MB/s lands every 0.3 s per connection), short enough to
// follow a change of speed within a probe period or two.
constexpr std::chrono::seconds kRateWindow{5};

}  // namespace

std::string_view ModelPhaseName(ModelPhase p) {
  switch (p) {
    case ModelPhase::kStarting: return "starting";
    case ModelPhase::kFetching: return "fetching";
    case ModelPhase::kVerifying: return "verifying";
    case ModelPhase::kReady: return "ready";
    case ModelPhase::kFailed: return "failed";
  }
  return "unknown";
}

std::string_view ServerPhaseName(ServerPhase p) {
  switch (p) {
    case ServerPhase::kNotStarted: return "not-started";
    case ServerPhase::kStarting: return "starting";
    case ServerPhase::kRunning: return "running";
    case ServerPhase::kHealthy: return "healthy";
    case ServerPhase::kExited: return "exited";
  }
  return "unknown";
}

PreloadStatus::PreloadStatus(PreloadInfo info, std::function<Clock::time_point()> now)
    : info_(std::move(info)), now_(std::move(now)), start_(now_()) {}

double PreloadStatus::Seconds(Clock::time_point t) const {
  return std::chrono::duration<double>(t - start_).count();
}

void PreloadStatus::Progress(std::uint64_t done, std::uint64_t total) {
  const auto t = now_();
  std::lock_guard lk(mu_);
  if (model_ == ModelPhase::kReady || model_ == ModelPhase::kFailed) return;
  if (model_ == ModelPhase::kStarting) model_ = ModelPhase::kFetching;
  done_ = std::max(done_, done);
  total_ = std::max(total, done_);
  samples_.emplace_back(t, done_);
  while (samples_.size() > 2 && t - samples_[1].first >= kRateWindow) samples_.pop_front();
}

void PreloadStatus::Verifying() {
  std::lock_guard lk(mu_);
  if (model_ == ModelPhase::kStarting || model_ == ModelPhase::kFetching) model_ = ModelPhase::kVerifying;
}

void PreloadStatus::ModelReady() {
  const auto t = now_();
  std::lock_guard lk(mu_);
  if (model_ == ModelPhase::kFailed || model_ == ModelPhase::kReady) return;
  model_ = ModelPhase::kReady;
  model_ready_at_ = t;
  done_ = total_ = std::max(done_, total_);
}

void PreloadStatus::ModelFailed(const Error& e) {
  std::lock_guard lk(mu_);
  if (model_ == ModelPhase::kFailed) return;
  model_ = ModelPhase::kFailed;
  error_ = e.ToString();
}

void PreloadStatus::ServerStarted(long pid) {
  std::lock_guard lk(mu_);
  if (server_ != ServerPhase::kNotStarted) return;
  pid_ = pid;
  // Without --ready-url nothing tells a starting server from a running one.
  server_ = info_.wait_for_server ? ServerPhase::kStarting : ServerPhase::kRunning;
}

void PreloadStatus::ServerHealthy() {
  std::lock_guard lk(mu_);
  if (server_ == ServerPhase::kStarting || server_ == ServerPhase::kRunning) server_ = ServerPhase::kHealthy;
}

void PreloadStatus::ServerExited(int exit_status) {
  std::lock_guard lk(mu_);
  server_ = ServerPhase::kExited;
  exit_status_ = exit_status;
}

bool PreloadStatus::ReadyLocked() const {
  if (model_ != ModelPhase::kReady) return false;
  if (server_ == ServerPhase::kExited) return false;
  return !info_.wait_for_server || server_ == ServerPhase::kHealthy;
}

bool PreloadStatus::Ready() const {
  std::lock_guard lk(mu_);
  return ReadyLocked();
}

PreloadSnapshot PreloadStatus::Snapshot() const {
  const auto t = now_();
  std::lock_guard lk(mu_);
  PreloadSnapshot s;
  s.model = model_;
  s.server = server_;
  s.ready = ReadyLocked();
  s.bytes_done = done_;
  s.bytes_total = total_;
  s.elapsed_seconds = Seconds(t);
  s.error = error_;
  s.server_pid = pid_;
  s.exit_status = exit_status_;
  if (model_ready_at_) s.model_ready_seconds = Seconds(*model_ready_at_);
  // Bytes since the last sample at least kRateWindow old (the oldest one while the fetch is
  // younger than that), over the time since. The window ends now, so a stalled fetch shows 0
  // after kRateWindow; once the model is ready it ends there (the rate the model came at).
  if (!samples_.empty()) {
    const auto end = model_ready_at_ ? *model_ready_at_ : t;
    auto base = samples_.front();
    for (const auto& sample : samples_) {
      if (end - sample.first < kRateWindow) break;
      base = sample;
    }
    const double secs = std::chrono::duration<double>(end - base.first).count();
    if (secs > 0) s.bytes_per_second = static_cast<double>(done_ - base.second) / secs;
  }
  if (model_ == ModelPhase::kReady) {
    s.eta_seconds = 0.0;
  } else if (model_ == ModelPhase::kFetching && s.bytes_per_second > 0) {
    s.eta_seconds = static_cast<double>(total_ - done_) / s.bytes_per_second;
  }
  if (model_ == ModelPhase::kFailed) {
    s.state = "failed";
  } else if (server_ == ServerPhase::kExited) {
    s.state = "exited";
  } else if (model_ != ModelPhase::kReady) {
    s.state = ModelPhaseName(model_);
  } else if (server_ == ServerPhase::kNotStarted) {
    s.state = "ready";
  } else if (info_.wait_for_server && server_ != ServerPhase::kHealthy) {
    s.state = "server-starting";
  } else {
    s.state = "serving";
  }
  return s;
}

std::string PreloadStatus::ToJson() const {
  const PreloadSnapshot s = Snapshot();
  nlohmann::ordered_json j{{"state", s.state},
                           {"ready", s.ready},
                           {"model", ModelPhaseName(s.model)},
                           {"server", ServerPhaseName(s.server)},
                           {"source", info_.source},
                           {"mode", info_.mode},
                           {"dest", info_.dest},
                           {"bytes_done", s.bytes_done},
                           {"bytes_total", s.bytes_total},
                           {"percent", s.bytes_total ? 100.0 * static_cast<double>(s.bytes_done) /
                                                           static_cast<double>(s.bytes_total)
                                                     : (s.model == ModelPhase::kReady ? 100.0 : 0.0)},
                           {"bytes_per_second", s.bytes_per_second},
                           {"eta_seconds", s.eta_seconds ? nlohmann::ordered_json(*s.eta_seconds) : nullptr},
                           {"elapsed_seconds", s.elapsed_seconds}};
  if (s.model_ready_seconds) j["model_ready_seconds"] = *s.model_ready_seconds;
  if (!s.error.empty()) j["error"] = s.error;
  if (s.server_pid) j["pid"] = s.server_pid;
  if (s.exit_status) j["exit_status"] = *s.exit_status;
  return j.dump();
}

Result<PrefetchReport> PreloadTo(fetch::RemoteSession& session, const std::string& dest, PrefetchOptions options,
                                 PreloadStatus& status) {
  auto user_progress = std::move(options.progress);
  options.progress = [&status, &user_progress](std::uint64_t done, std::uint64_t total) {
    status.Progress(done, total);
    // The last bytes are in: the finisher reads each file back and checks it before renaming.
    if (done >= total) status.Verifying();
    return !user_progress || user_progress(done, total);
  };
  auto r = Prefetch(session, dest, options);
  if (!r.ok()) {
    status.ModelFailed(r.error());
    return r;
  }
  // Nothing to fetch (every file already present and verified) reports no progress at all.
  status.Progress(r->bytes, r->bytes);
  status.ModelReady();
  return r;
}

void UpdateFromMount(const cache::MountProgress& p, PreloadStatus& status) {
  status.Progress(p.bytes_cached, p.bytes_total);
  if (!p.read_ahead_done) return;
  if (p.read_ahead_failures == 0) {
    status.ModelReady();
    return;
  }
  status.ModelFailed(MakeError(Errc::kIo, "read-ahead failed for " + std::to_string(p.read_ahead_failures) + " of the files (" +
                                              FormatBytes(static_cast<double>(p.bytes_total - p.bytes_cached)) +
                                              " not cached); the log names them"));
}

}  // namespace coldstart::loader
