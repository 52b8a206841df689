// One Timeline per load: every phase of a cold start as seconds since the process started, so
// the figures of a preloader, a load and a first token line up on one axis (`--json` prints it).
//
// "Process start" is when core's static initialisers ran: before main(), after the dynamic
// loader; for a container entrypoint that is within a few milliseconds of exec.
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace coldstart {

class Timeline {
 public:
  using Clock = std::chrono::steady_clock;
  static Clock::time_point ProcessStart();
  static double SinceProcessStart(Clock::time_point t = Clock::now());
  // For a plugin that carries its own copy of core (libcoldstart_torch.so): its static
  // initialisers ran at dlopen, so the executable hands over its own process start, once,
  // before any Timeline of the plugin is used.
  static void SetProcessStart(Clock::time_point t);

  // Records `phase` at `t` (now by default). The first record of a phase wins, so callers on
  // several threads may all mark "first_byte".
  void Mark(std::string_view phase, Clock::time_point t = Clock::now());
  // Overwrites (for phases that end: the last byte, the last copy).
  void Set(std::string_view phase, Clock::time_point t = Clock::now());
  bool Has(std::string_view phase) const;
  double Seconds(std::string_view phase) const;  // since process start; -1 when not marked
  // (phase, seconds since process start), in the order first marked.
  std::vector<std::pair<std::string, double>> Entries() const;

  Timeline() = default;
  Timeline(const Timeline& o) : entries_(o.Entries()) {}
  Timeline& operator=(const Timeline& o) {
    if (this != &o) {
      auto e = o.Entries();
      std::lock_guard lk(mu_);
      entries_ = std::move(e);
    }
    return *this;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<std::string, double>> entries_;  // GUARDED_BY(mu_)
};

}  // namespace coldstart
