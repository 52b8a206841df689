#include "coldstart/core/timeline.h"

#include <algorithm>

namespace coldstart {
namespace {
// Initialised with the other static objects of the program, before main().
Timeline::Clock::time_point g_process_start = Timeline::Clock::now();
}  // namespace

Timeline::Clock::time_point Timeline::ProcessStart() { return g_process_start; }

void Timeline::SetProcessStart(Clock::time_point t) { g_process_start = t; }

double Timeline::SinceProcessStart(Clock::time_point t) {
  return std::chrono::duration<double>(t - g_process_start).count();
}

void Timeline::Mark(std::string_view phase, Clock::time_point t) {
  std::lock_guard lk(mu_);
  for (const auto& e : entries_)
    if (e.first == phase) return;
  entries_.emplace_back(std::string(phase), SinceProcessStart(t));
}

void Timeline::Set(std::string_view phase, Clock::time_point t) {
  std::lock_guard lk(mu_);
  for (auto& e : entries_)
    if (e.first == phase) {
      e.second = SinceProcessStart(t);
      return;
    }
  entries_.emplace_back(std::string(phase), SinceProcessStart(t));
}

bool Timeline::Has(std::string_view phase) const { return Seconds(phase) >= 0; }

double Timeline::Seconds(std::string_view phase) const {
  std::lock_guard lk(mu_);
  for (const auto& e : entries_)
    if (e.first == phase) return e.second;
  return -1;
}

std::vector<std::pair<std::string, double>> Timeline::Entries() const {
  std::lock_guard lk(mu_);
  return entries_;
}

}  // namespace coldstart
