// The terminal summary of `coldstart bench` and `--compare` (runner.h).
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <map>

#include "coldstart/bench/runner.h"

namespace coldstart::bench {
namespace {

// Rows of one scenario and peer (and replica count), in the order first seen.
struct Group {
  std::string scenario, peer;
  bool replicas = false;
  int replica_count = 0;            // K of --replicas
  std::vector<double> totals;       // ok rows
  std::uint64_t bytes = 0, origin = 0;
  int rows = 0;
  std::vector<std::string> notes;   // skipped or failed rows
};

std::string Key(const RunRow& r) { return r.scenario + "\t" + r.peer + (r.replica >= 0 ? "\tx" : ""); }

std::vector<Group> Groups(const Report& rep) {
  std::vector<Group> groups;
  std::map<std::string, std::size_t> index;
  for (const auto& r : rep.rows) {
    auto [it, added] = index.emplace(Key(r), groups.size());
    if (added) groups.push_back({r.scenario, r.peer, r.replica >= 0, 0, {}, 0, 0, 0, {}});
    Group& g = groups[it->second];
    ++g.rows;
    g.replica_count = std::max(g.replica_count, r.replica + 1);
    if (r.ok) {
      g.totals.push_back(r.total_s);
      g.bytes = std::max(g.bytes, r.bytes);
      g.origin = std::max(g.origin, r.origin_bytes);
    } else {
      std::string what = r.error.empty() ? r.note : r.error;
      if (std::find(g.notes.begin(), g.notes.end(), what) == g.notes.end()) g.notes.push_back(what);
    }
  }
  for (auto& g : groups) std::sort(g.totals.begin(), g.totals.end());
  return groups;
}

double Median(const std::vector<double>& sorted) {
  if (sorted.empty()) return NAN;
  const std::size_t n = sorted.size();
  return n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

}  // namespace

std::string SummaryTable(const Report& rep) {
  const auto groups = Groups(rep);
  double baseline[2] = {NAN, NAN};  // copy-then-load's median (the seeds' way), alone and as replicas
  for (const auto& g : groups)
    if (g.scenario == "copy-then-load" && !g.totals.empty()) baseline[g.replicas] = Median(g.totals);
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%-24s %-13s %5s %8s %8s %8s %10s %7s %8s\n", "scenario", "peer", "ok", "min s",
                "median s", "max s", "rate", "origin", "speed-up");
  out += line;
  std::string notes;
  for (const auto& g : groups) {
    const std::string peer = g.peer + (g.replicas ? " x" + std::to_string(g.replica_count) : "");
    const std::string ok = std::to_string(g.totals.size()) + "/" + std::to_string(g.rows);
    if (g.totals.empty()) {
      std::snprintf(line, sizeof line, "%-24s %-13s %5s %8s %8s %8s %10s %7s %8s\n", g.scenario.c_str(), peer.c_str(),
                    ok.c_str(), "-", "-", "-", "-", "-", "-");
    } else {
      const double med = Median(g.totals);
      char rate[32] = "-", origin[32] = "-", speedup[32] = "-";
      if (g.bytes > 0 && med > 0) std::snprintf(rate, sizeof rate, "%.0f MB/s", static_cast<double>(g.bytes) / med / 1e6);
      if (g.origin > 0 && rep.model_bytes > 0)
        std::snprintf(origin, sizeof origin, "%.2fx", static_cast<double>(g.origin) / static_cast<double>(rep.model_bytes));
      const double base = baseline[g.replicas];
      if (std::isfinite(base) && med > 0) std::snprintf(speedup, sizeof speedup, "%.2fx", base / med);
      std::snprintf(line, sizeof line, "%-24s %-13s %5s %8.3f %8.3f %8.3f %10s %7s %8s\n", g.scenario.c_str(),
                    peer.c_str(), ok.c_str(), g.totals.front(), med, g.totals.back(), rate, origin, speedup);
    }
    out += line;
    for (const auto& n : g.notes) notes += "  " + g.scenario + " (" + g.peer + "): " + n + "\n";
  }
  out += "origin: bytes the origin served per run (all replicas together) per model byte; speed-up: copy-then-load's "
         "median / this median\n";
  if (!notes.empty()) out += "notes:\n" + notes;
  return out;
}

Comparison Compare(const Report& old, const Report& now) {
  Comparison c;
  const auto before = Groups(old), after = Groups(now);
  char line[256];
  std::snprintf(line, sizeof line, "%-24s %-13s %10s %10s %8s\n", "scenario", "peer", "old s", "new s", "change");
  c.text += line;
  for (const auto& a : after) {
    const std::string peer = a.peer + (a.replicas ? " x" + std::to_string(a.replica_count) : "");
    auto b = std::find_if(before.begin(), before.end(),
                          [&](const Group& g) { return g.scenario == a.scenario && g.peer == a.peer && g.replicas == a.replicas; });
    if (b == before.end() || b->totals.empty() || a.totals.empty()) {
      const char* why = b == before.end() ? "new" : a.totals.empty() ? "no ok run now" : "no ok run before";
      std::snprintf(line, sizeof line, "%-24s %-13s %10s %10s %8s\n", a.scenario.c_str(), peer.c_str(), "-", "-", why);
      c.text += line;
      continue;
    }
    const double mo = Median(b->totals), mn = Median(a.totals);
    const double change = mo > 0 ? mn / mo - 1 : 0;
    const bool slower = change > 0.10;
    c.slower = c.slower || slower;
    std::snprintf(line, sizeof line, "%-24s %-13s %10.3f %10.3f %+7.1f%%%s\n", a.scenario.c_str(), peer.c_str(), mo, mn,
                  100 * change, slower ? "  SLOWER" : change < -0.10 ? "  faster" : "");
    c.text += line;
  }
  for (const auto& b : before)
    if (std::none_of(after.begin(), after.end(),
                     [&](const Group& g) { return g.scenario == b.scenario && g.peer == b.peer && g.replicas == b.replicas; })) {
      std::snprintf(line, sizeof line, "%-24s %-13s %10s %10s %8s\n", b.scenario.c_str(), b.peer.c_str(), "-", "-", "gone");
      c.text += line;
    }
  c.text += c.slower ? "slower: at least one median is more than 10% above the old one\n"
                     : "no median is more than 10% slower\n";
  return c;
}

Result<double> ParseRate(std::string_view text) {
  std::string s(text);
  if (s.size() > 2 && s.compare(s.size() - 2, 2, "/s") == 0) s.resize(s.size() - 2);
  char* end = nullptr;
  const double number = std::strtod(s.c_str(), &end);
  std::string unit(end ? end : "");
  for (auto& ch : unit) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  static const std::map<std::string, double> kUnits{
      {"", 1},      {"b", 1},       {"k", 1e3},        {"kb", 1e3},        {"m", 1e6},
      {"mb", 1e6},  {"g", 1e9},     {"gb", 1e9},       {"kib", 1024.0},    {"mib", 1048576.0},
      {"gib", 1073741824.0}};
  auto u = kUnits.find(unit);
  if (end == s.c_str() || u == kUnits.end() || !std::isfinite(number) || number < 0)
    return MakeError(Errc::kInvalidArgument, "'" + std::string(text) + "' is not a rate like 50MB/s, 4MiB or 1000000");
  return number * u->second;
}

}  // namespace coldstart::bench
