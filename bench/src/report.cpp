// The HTML report of `coldstart bench --html`: one self-contained page a person can open from a
// CI artifact or mail around. Inline CSS and inline SVG only; no script at all, and a
// Content-Security-Policy that forbids any (and any fetched asset), so the page stays what it was
// written as wherever it is opened (tests/bench/report_browser_test.cpp renders it in Chromium and
// fails on any console message, CSP violations included).
//
// Every string from the report is escaped; every number that reaches an SVG attribute goes through
// Clean() first (NaN, infinities and negatives become 0) and is written with std::to_chars, so the
// page does not depend on the process's locale.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "coldstart/bench/result.h"
#include "coldstart/core/env.h"

namespace coldstart::bench {
namespace {

// The peer whose scenarios the ratios are taken against.
constexpr std::string_view kSelf = "coldstart";
// Throughput is smoothed over this window (centred), shortened for runs under 4 windows long so
// a one-second load still shows its shape.
constexpr double kSmoothWindowS = 0.5;
// More repetitions than this per scenario and peer: the Gantt shows the median run only.
constexpr int kMaxRunsDrawn = 3;
// Labels longer than this (code points) are cut with an ellipsis; the full text is in a tooltip.
constexpr std::size_t kMaxLabelChars = 30;
// Nothing the harness measures lasts longer; a larger value is a broken row, drawn as this.
constexpr double kMaxSeconds = 1e7;

// ---- text ----------------------------------------------------------------------------------

void AppendEscaped(std::string& out, std::string_view s) {
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: {
        auto u = static_cast<unsigned char>(c);
        // Control characters are parse errors in HTML; show them as U+FFFD.
        if ((u < 0x20 && c != '\t' && c != '\n' && c != '\r') || u == 0x7f)
          out += "\xEF\xBF\xBD";
        else
          out += c;
      }
    }
  }
}

std::string Esc(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  AppendEscaped(out, s);
  return out;
}

// At most `max_chars` code points of UTF-8 text, cut on a code point boundary, with "…".
std::string Shorten(std::string_view s, std::size_t max_chars) {
  std::size_t chars = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) continue;  // continuation byte
    if (chars == max_chars - 1) {
      std::size_t rest = 0;
      for (std::size_t j = i; j < s.size(); ++j)
        if ((static_cast<unsigned char>(s[j]) & 0xC0) != 0x80) ++rest;
      if (rest <= 1) return std::string(s);
      return std::string(s.substr(0, i)) + "\xE2\x80\xA6";
    }
    ++chars;
  }
  return std::string(s);
}

// A finite, non-negative number of sane size: what may reach a coordinate or a label.
double Clean(double v) {
  if (!std::isfinite(v) || v < 0) return 0;
  return std::min(v, kMaxSeconds * 1e6);
}

double CleanSeconds(double v) { return std::min(Clean(v), kMaxSeconds); }

std::string Fixed(double v, int decimals) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, Clean(v), std::chars_format::fixed, decimals);
  if (r.ec != std::errc()) return "0";
  return std::string(buf, r.ptr);
}

// A coordinate: one decimal is finer than a screen pixel at the page's widths.
std::string N(double v) { return Fixed(v, 1); }

std::string FormatSeconds(double s) {
  s = CleanSeconds(s);
  int decimals = s < 1 ? 3 : s < 10 ? 2 : s < 100 ? 1 : 0;
  return Fixed(s, decimals) + " s";
}

// Decimal megabytes per second, the unit network and disk rates are quoted in.
std::string FormatRate(double bytes_per_s) {
  double mb = Clean(bytes_per_s) / 1e6;
  if (mb >= 1000) return Fixed(mb / 1000, 2) + " GB/s";
  int decimals = mb >= 100 ? 0 : mb >= 10 ? 1 : 2;
  return Fixed(mb, decimals) + " MB/s";
}

std::string FormatRatio(double r) { return Fixed(r, r >= 1 ? 1 : 2) + "x"; }

// ---- grouping ------------------------------------------------------------------------------

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct PeerGroup {
  std::string peer;
  std::vector<const RunRow*> rows;  // in report order
  std::vector<double> ok_totals;    // rows that succeeded with a time (a skip has none)
  int ok_rows = 0;
  int runs = 0;      // distinct run indices
  int replicas = 0;  // distinct replica indices >= 0
  bool Ok() const { return !ok_totals.empty(); }
  double Min() const { return *std::min_element(ok_totals.begin(), ok_totals.end()); }
  double Max() const { return *std::max_element(ok_totals.begin(), ok_totals.end()); }
  double Med() const { return Median(ok_totals); }
};

struct ScenarioGroup {
  std::string name;
  std::vector<PeerGroup> peers;  // in order of first appearance
  const PeerGroup* Best() const {
    const PeerGroup* best = nullptr;
    for (const auto& p : peers)
      if (p.Ok() && (best == nullptr || p.Med() < best->Med())) best = &p;
    return best;
  }
  const PeerGroup* Self() const {
    for (const auto& p : peers)
      if (p.peer == kSelf && p.Ok()) return &p;
    return nullptr;
  }
  // The fastest peer other than coldstart.
  const PeerGroup* BestOther() const {
    const PeerGroup* best = nullptr;
    for (const auto& p : peers)
      if (p.peer != kSelf && p.Ok() && (best == nullptr || p.Med() < best->Med())) best = &p;
    return best;
  }
};

std::size_t CountDistinct(std::vector<int> v) {
  std::sort(v.begin(), v.end());
  return static_cast<std::size_t>(std::unique(v.begin(), v.end()) - v.begin());
}

std::vector<ScenarioGroup> Group(const Report& report) {
  std::vector<ScenarioGroup> out;
  for (const RunRow& row : report.rows) {
    auto s = std::find_if(out.begin(), out.end(), [&](const auto& g) { return g.name == row.scenario; });
    if (s == out.end()) s = out.insert(out.end(), ScenarioGroup{row.scenario, {}});
    auto p = std::find_if(s->peers.begin(), s->peers.end(), [&](const auto& g) { return g.peer == row.peer; });
    if (p == s->peers.end()) p = s->peers.insert(s->peers.end(), PeerGroup{row.peer, {}, {}, 0, 0, 0});
    p->rows.push_back(&row);
    p->ok_rows += row.ok ? 1 : 0;
    if (row.ok && CleanSeconds(row.total_s) > 0) p->ok_totals.push_back(CleanSeconds(row.total_s));
  }
  for (auto& s : out)
    for (auto& p : s.peers) {
      std::vector<int> runs, replicas;
      for (const RunRow* r : p.rows) {
        runs.push_back(r->run);
        if (r->replica >= 0) replicas.push_back(r->replica);
      }
      p.runs = static_cast<int>(CountDistinct(runs));
      p.replicas = static_cast<int>(CountDistinct(replicas));
    }
  return out;
}

// The run whose time (its slowest replica) is the median of the peer's successful runs, the lower
// one of two; -1 when no run succeeded.
int MedianRun(const PeerGroup& p) {
  std::vector<std::pair<double, int>> totals;  // (time, run)
  for (const RunRow* r : p.rows) {
    if (!r->ok) continue;
    auto it = std::find_if(totals.begin(), totals.end(), [&](const auto& t) { return t.second == r->run; });
    if (it == totals.end())
      totals.emplace_back(CleanSeconds(r->total_s), r->run);
    else
      it->first = std::max(it->first, CleanSeconds(r->total_s));
  }
  if (totals.empty()) return -1;
  std::sort(totals.begin(), totals.end());
  return totals[(totals.size() - 1) / 2].second;
}

// The rows a Gantt draws for a peer: every run when there are few, else the median run's.
std::vector<const RunRow*> GanttRows(const PeerGroup& p, bool* median_only) {
  *median_only = p.runs > kMaxRunsDrawn;
  std::vector<const RunRow*> rows;
  if (!*median_only) {
    rows = p.rows;
  } else {
    int run = MedianRun(p);
    if (run < 0) run = p.rows.front()->run;
    for (const RunRow* r : p.rows)
      if (r->run == run) rows.push_back(r);
  }
  std::stable_sort(rows.begin(), rows.end(), [](const RunRow* a, const RunRow* b) {
    return a->run != b->run ? a->run < b->run : a->replica < b->replica;
  });
  return rows;
}

// ---- charts --------------------------------------------------------------------------------

struct Ticks {
  double step = 1;
  double max = 1;  // the axis end: a multiple of step >= the data's maximum
  int decimals = 0;
};

// 1, 2 or 5 times a power of ten, giving about `target` intervals up to `max`.
Ticks NiceTicks(double max, int target) {
  Ticks t;
  max = Clean(max);
  if (max <= 0) return t;
  double raw = max / target;
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double f = raw / mag;
  t.step = (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
  t.max = std::ceil(max / t.step - 1e-9) * t.step;
  t.decimals = std::max(0, static_cast<int>(-std::floor(std::log10(t.step) + 1e-9)));
  return t;
}

struct Color {
  std::string_view name;
  std::string_view fill;
};

// Phases keep their colour across reports; unknown ones take the spare colours in order.
// In the order they happen on a run's clock (the legend's order).
constexpr Color kPhaseColors[] = {
    {"listing", "#9c755f"},      {"first_byte", "#bab0ac"},  {"copy", "#ff9da7"},
    {"fetch", "#4e79a7"},        {"disk", "#f28e2b"},        {"load", "#59a14f"},
    {"h2d", "#76b7b2"},          {"runtime_init", "#edc948"}, {"first_token", "#e15759"},
    {"ready", "#b07aa1"},
};
constexpr std::string_view kSpareColors[] = {"#8cd17d", "#499894", "#d4a6c8", "#a0cbe8",
                                             "#f1ce63", "#86bcb6", "#d37295", "#79706e"};
// Lines of the throughput chart (Tableau 10); past ten, the colours repeat dashed.
constexpr std::string_view kSeriesColors[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                              "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
constexpr std::string_view kNoPhaseColor = "#cfd4da";

class PhasePalette {
 public:
  std::string_view Of(const std::string& name) {
    for (const auto& c : kPhaseColors)
      if (c.name == name) {
        Use(name);
        return c.fill;
      }
    auto it = std::find(spare_names_.begin(), spare_names_.end(), name);
    std::size_t i = static_cast<std::size_t>(it - spare_names_.begin());
    if (it == spare_names_.end()) spare_names_.push_back(name);
    Use(name);
    return kSpareColors[i % std::size(kSpareColors)];
  }
  // The names drawn, known phases in their order on a run's clock, then the others as first drawn.
  std::vector<std::string> Used() const {
    std::vector<std::string> names = used_;
    auto rank = [](const std::string& name) {
      for (std::size_t i = 0; i < std::size(kPhaseColors); ++i)
        if (kPhaseColors[i].name == name) return i;
      return std::size(kPhaseColors);
    };
    std::stable_sort(names.begin(), names.end(),
                     [&](const std::string& a, const std::string& b) { return rank(a) < rank(b); });
    return names;
  }

 private:
  void Use(const std::string& name) {
    if (std::find(used_.begin(), used_.end(), name) == used_.end()) used_.push_back(name);
  }
  std::vector<std::string> spare_names_;
  std::vector<std::string> used_;
};

struct Segment {
  const Phase* phase;
  double start, end;
};

// Phases that overlap (a fetch under a load) go to separate lanes; sequential ones share one.
std::vector<std::vector<Segment>> Lanes(const std::vector<Phase>& phases) {
  std::vector<Segment> segs;
  for (const Phase& p : phases) {
    double a = CleanSeconds(p.start_s), b = CleanSeconds(p.end_s);
    segs.push_back({&p, std::min(a, b), std::max(a, b)});
  }
  std::stable_sort(segs.begin(), segs.end(), [](const Segment& x, const Segment& y) { return x.start < y.start; });
  std::vector<std::vector<Segment>> lanes;
  for (const Segment& s : segs) {
    auto lane = std::find_if(lanes.begin(), lanes.end(),
                             [&](const auto& l) { return l.back().end <= s.start + 1e-9; });
    if (lane == lanes.end())
      lanes.push_back({s});
    else
      lane->push_back(s);
  }
  return lanes;
}

std::string RowLabel(const RunRow& r) {
  std::string label = r.peer.empty() ? "(no peer)" : r.peer;
  label += " \xC2\xB7 run " + std::to_string(r.run);
  if (r.replica >= 0) label += " \xC2\xB7 replica " + std::to_string(r.replica);
  return label;
}

// Geometry shared by the Gantt charts so every scenario is drawn on the same seconds axis.
constexpr double kChartW = 1000;
constexpr double kGanttLeft = 200;   // row labels
constexpr double kGanttRight = 90;   // the total at the end of each bar
constexpr double kLaneH = 13;
constexpr double kLaneGap = 2;
constexpr double kGroupGap = 10;
constexpr double kAxisH = 34;

void AppendAxisX(std::string& o, double left, double width, double top, double bottom, const Ticks& t,
                 std::string_view unit) {
  int n = static_cast<int>(std::lround(t.max / t.step));
  for (int i = 0; i <= n; ++i) {
    double v = i * t.step;
    double x = left + width * v / t.max;
    o += "<line class=\"grid\" x1=\"" + N(x) + "\" y1=\"" + N(top) + "\" x2=\"" + N(x) + "\" y2=\"" + N(bottom) + "\"/>";
    o += "<text class=\"tick\" x=\"" + N(x) + "\" y=\"" + N(bottom + 15) + "\" text-anchor=\"middle\">" +
         Fixed(v, t.decimals) + "</text>";
  }
  o += "<line class=\"axis\" x1=\"" + N(left) + "\" y1=\"" + N(bottom) + "\" x2=\"" + N(left + width) + "\" y2=\"" +
       N(bottom) + "\"/>";
  o += "<text class=\"unit\" x=\"" + N(left + width) + "\" y=\"" + N(bottom + 30) + "\" text-anchor=\"end\">";
  AppendEscaped(o, unit);
  o += "</text>";
}

void AppendGantt(std::string& o, const ScenarioGroup& s, const Ticks& axis, PhasePalette& palette,
                 bool* used_no_phase) {
  struct Bar {
    const RunRow* row;
    std::string label;
    std::vector<std::vector<Segment>> lanes;
  };
  std::vector<Bar> bars;
  std::vector<const RunRow*> undrawn;
  for (const PeerGroup& p : s.peers) {
    bool median_only = false;
    for (const RunRow* r : GanttRows(p, &median_only)) {
      if (r->phases.empty() && CleanSeconds(r->total_s) <= 0) {
        undrawn.push_back(r);
        continue;
      }
      std::string label = RowLabel(*r);
      if (median_only) label += " (median of " + std::to_string(p.runs) + ")";
      bars.push_back({r, std::move(label), Lanes(r->phases)});
    }
  }
  std::string undrawn_list;
  for (std::size_t i = 0; i < undrawn.size(); ++i) {
    undrawn_list += (i ? ", " : "") + Esc(RowLabel(*undrawn[i]));
    if (!undrawn[i]->ok) undrawn_list += " (failed)";
  }
  if (bars.empty()) {
    o += "<p class=\"empty\">No run of this scenario recorded phases or a time to draw: " + undrawn_list + ".</p>";
    return;
  }
  double height = 6;
  for (const Bar& b : bars)
    height += std::max<std::size_t>(1, b.lanes.size()) * (kLaneH + kLaneGap) - kLaneGap + kGroupGap;
  double plot_w = kChartW - kGanttLeft - kGanttRight;
  double bottom = height;
  height += kAxisH;
  o += "<svg class=\"chart\" viewBox=\"0 0 " + N(kChartW) + " " + N(height) + "\" role=\"img\" aria-label=\"";
  o += "phase timeline of " + Esc(s.name) + "\">";
  AppendAxisX(o, kGanttLeft, plot_w, 0, bottom, axis, "seconds since the run started");
  auto X = [&](double sec) { return kGanttLeft + plot_w * std::min(CleanSeconds(sec), axis.max) / axis.max; };
  double y = 6;
  for (const Bar& b : bars) {
    std::size_t lanes = std::max<std::size_t>(1, b.lanes.size());
    double group_h = lanes * (kLaneH + kLaneGap) - kLaneGap;
    std::string shown = Shorten(b.label, kMaxLabelChars);
    o += "<text class=\"label\" x=\"" + N(kGanttLeft - 8) + "\" y=\"" + N(y + group_h / 2 + 4) +
         "\" text-anchor=\"end\">";
    if (shown != b.label) o += "<title>" + Esc(b.label) + "</title>";
    o += Esc(shown) + "</text>";
    double end = CleanSeconds(b.row->total_s);
    if (b.lanes.empty()) {
      *used_no_phase = true;
      o += "<rect x=\"" + N(X(0)) + "\" y=\"" + N(y) + "\" width=\"" + N(std::max(1.5, X(end) - X(0))) +
           "\" height=\"" + N(kLaneH) + "\" fill=\"" + std::string(kNoPhaseColor) + "\"><title>" +
           Esc(b.label) + ": no phases recorded, total " + FormatSeconds(end) + "</title></rect>";
    }
    for (std::size_t li = 0; li < b.lanes.size(); ++li) {
      double ly = y + li * (kLaneH + kLaneGap);
      for (const Segment& seg : b.lanes[li]) {
        const Phase& ph = *seg.phase;
        end = std::max(end, seg.end);
        std::string tip = ph.name + ": " + FormatSeconds(seg.start) + " to " + FormatSeconds(seg.end) + " (" +
                          FormatSeconds(seg.end - seg.start) + ")";
        if (ph.bytes > 0) {
          tip += ", " + FormatBytes(static_cast<double>(ph.bytes));
          if (seg.end > seg.start) tip += ", " + FormatRate(static_cast<double>(ph.bytes) / (seg.end - seg.start));
        }
        o += "<rect x=\"" + N(X(seg.start)) + "\" y=\"" + N(ly) + "\" width=\"" +
             N(std::max(1.5, X(seg.end) - X(seg.start))) + "\" height=\"" + N(kLaneH) + "\" fill=\"" +
             std::string(palette.Of(ph.name)) + "\"><title>" + Esc(tip) + "</title></rect>";
      }
    }
    // A successful row without a usable time (NaN, 0) says so rather than "0.000 s".
    bool timed = CleanSeconds(b.row->total_s) > 0;
    std::string tail = !b.row->ok ? "failed" : timed ? FormatSeconds(b.row->total_s) : "no time recorded";
    std::string cls = !b.row->ok ? "total failed" : timed ? "total" : "total untimed";
    o += "<text class=\"" + cls + "\" x=\"" + N(X(end) + 6) +
         "\" y=\"" + N(y + group_h / 2 + 4) + "\">" + Esc(tail) + "</text>";
    y += group_h + kGroupGap;
  }
  o += "</svg>";
  if (!undrawn.empty()) o += "<p class=\"dim\">Not drawn (no phases and no time): " + undrawn_list + ".</p>";
}

struct Point {
  double t, v;
};

struct Rate {
  std::vector<Point> points;  // (s, bytes/s)
  double mean = 0;            // bytes/s over the samples' span
};

// Bytes per second over time from a run's progress samples: cumulative bytes interpolated
// linearly between samples, differenced over a centred window (kSmoothWindowS, shorter for runs
// under four windows, clipped at the ends). The run starts at (0 s, 0 bytes). No points when the
// samples span no time.
Rate Throughput(const std::vector<Sample>& samples) {
  std::vector<Point> pts;
  for (const Sample& s : samples) pts.push_back({CleanSeconds(s.t_s), static_cast<double>(s.bytes)});
  std::stable_sort(pts.begin(), pts.end(), [](const Point& a, const Point& b) { return a.t < b.t; });
  if (!pts.empty() && pts.front().t > 0) pts.insert(pts.begin(), {0, 0});
  if (pts.size() < 2 || pts.back().t <= pts.front().t) return {};
  auto bytes_at = [&](double t) {
    auto it = std::upper_bound(pts.begin(), pts.end(), t, [](double v, const Point& p) { return v < p.t; });
    if (it == pts.begin()) return pts.front().v;
    if (it == pts.end()) return pts.back().v;
    const Point& a = *(it - 1);  // a.t <= t < it->t
    return a.v + (it->v - a.v) * (t - a.t) / (it->t - a.t);
  };
  double t0 = pts.front().t, t1 = pts.back().t;
  double half = std::min(kSmoothWindowS, (t1 - t0) / 4) / 2;
  constexpr int kSteps = 200;
  Rate r;
  for (int i = 0; i <= kSteps; ++i) {
    double t = t0 + (t1 - t0) * i / kSteps;
    double a = std::max(t0, t - half), b = std::min(t1, t + half);
    r.points.push_back({t, Clean((bytes_at(b) - bytes_at(a)) / (b - a))});
  }
  r.mean = Clean((pts.back().v - pts.front().v) / (t1 - t0));
  return r;
}

void AppendThroughput(std::string& o, const std::vector<ScenarioGroup>& groups) {
  struct Series {
    std::string label;
    int run;
    Rate rate;
  };
  std::vector<Series> series;
  std::vector<std::string> without;
  for (const ScenarioGroup& s : groups)
    for (const PeerGroup& p : s.peers) {
      // The median successful run among those with samples.
      std::vector<const RunRow*> cands;
      for (const RunRow* r : p.rows)
        if (r->ok && !r->samples.empty()) cands.push_back(r);
      std::stable_sort(cands.begin(), cands.end(), [](const RunRow* a, const RunRow* b) {
        return CleanSeconds(a->total_s) < CleanSeconds(b->total_s);
      });
      std::string name = s.name + " \xC2\xB7 " + p.peer;
      Rate rate;
      const RunRow* median = cands.empty() ? nullptr : cands[(cands.size() - 1) / 2];
      if (median != nullptr) rate = Throughput(median->samples);
      if (rate.points.empty()) {
        without.push_back(std::move(name));
        continue;
      }
      series.push_back({std::move(name), median->run, std::move(rate)});
    }
  if (series.empty()) {
    o += "<p class=\"empty\">No successful run recorded progress samples, so there is no throughput to draw.</p>";
    return;
  }
  double tmax = 0, vmax = 0;
  for (const Series& s : series)
    for (const Point& p : s.rate.points) {
      tmax = std::max(tmax, p.t);
      vmax = std::max(vmax, p.v / 1e6);
    }
  Ticks tx = NiceTicks(tmax, 10), ty = NiceTicks(vmax, 5);
  constexpr double kLeft = 70, kRight = 20, kTop = 12, kPlotH = 300;
  double plot_w = kChartW - kLeft - kRight;
  double bottom = kTop + kPlotH;
  o += "<svg class=\"chart\" viewBox=\"0 0 " + N(kChartW) + " " + N(bottom + kAxisH) +
       "\" role=\"img\" aria-label=\"throughput over time\">";
  AppendAxisX(o, kLeft, plot_w, kTop, bottom, tx, "seconds since the run started");
  int ny = static_cast<int>(std::lround(ty.max / ty.step));
  for (int i = 0; i <= ny; ++i) {
    double v = i * ty.step;
    double y = bottom - kPlotH * v / ty.max;
    if (i > 0)
      o += "<line class=\"grid\" x1=\"" + N(kLeft) + "\" y1=\"" + N(y) + "\" x2=\"" + N(kLeft + plot_w) +
           "\" y2=\"" + N(y) + "\"/>";
    o += "<text class=\"tick\" x=\"" + N(kLeft - 6) + "\" y=\"" + N(y + 4) + "\" text-anchor=\"end\">" +
         Fixed(v, ty.decimals) + "</text>";
  }
  o += "<line class=\"axis\" x1=\"" + N(kLeft) + "\" y1=\"" + N(kTop) + "\" x2=\"" + N(kLeft) + "\" y2=\"" +
       N(bottom) + "\"/>";
  o += "<text class=\"unit\" transform=\"translate(16 " + N(kTop + kPlotH / 2) +
       ") rotate(-90)\" text-anchor=\"middle\">MB/s</text>";
  for (std::size_t i = 0; i < series.size(); ++i) {
    const Series& s = series[i];
    double peak = 0;
    for (const Point& p : s.rate.points) peak = std::max(peak, p.v);
    o += "<polyline class=\"line\" fill=\"none\" stroke=\"" +
         std::string(kSeriesColors[i % std::size(kSeriesColors)]) + "\"";
    if (i >= std::size(kSeriesColors)) o += " stroke-dasharray=\"6 3\"";
    o += " points=\"";
    for (const Point& p : s.rate.points)
      o += N(kLeft + plot_w * p.t / tx.max) + "," + N(bottom - kPlotH * std::min(p.v / 1e6, ty.max) / ty.max) + " ";
    o.back() = '"';
    o += "><title>" + Esc(s.label) + " (run " + std::to_string(s.run) + "): peak " + FormatRate(peak) +
         ", mean " + FormatRate(s.rate.mean) + "</title></polyline>";
  }
  o += "</svg><ul class=\"legend\">";
  for (std::size_t i = 0; i < series.size(); ++i) {
    o += "<li><span class=\"swatch line";
    if (i >= std::size(kSeriesColors)) o += " dashed";
    o += "\" style=\"border-color:" + std::string(kSeriesColors[i % std::size(kSeriesColors)]) + "\"></span>" +
         Esc(series[i].label) + " <span class=\"dim\">run " + std::to_string(series[i].run) + ", mean " +
         FormatRate(series[i].rate.mean) + "</span></li>";
  }
  o += "</ul>";
  if (!without.empty()) {
    o += "<p class=\"dim\">No progress samples from ";
    for (std::size_t i = 0; i < without.size(); ++i) o += (i ? ", " : "") + Esc(without[i]);
    o += ".</p>";
  }
}

// ---- sections ------------------------------------------------------------------------------

constexpr std::string_view kCss = R"css(
body{margin:0;background:#f4f5f7;color:#1f2328;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1120px;margin:0 auto;padding:20px 28px 40px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:17px;margin:0 0 10px}
h3{font-size:14px;margin:16px 0 4px}
section{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:14px 18px;margin:16px 0}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;margin:10px 0 0}
dl.meta dt{color:#57606a}
dl.meta dd{margin:0;overflow-wrap:anywhere}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;background:#f0f2f4;padding:1px 4px;border-radius:4px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid #e5e8eb;text-align:left;vertical-align:top}
th{font-weight:600;color:#57606a;background:#f6f8fa;white-space:nowrap}
td.num,th.num{text-align:right;white-space:nowrap}
td.scenario{font-weight:600;background:#fbfbfc}
td.ratio{white-space:nowrap}
tr.self td{background:#f1f8ff}
td.error{color:#cf222e;white-space:pre-wrap;overflow-wrap:anywhere;font-family:ui-monospace,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:12.5px}
svg.chart{display:block;width:100%;height:auto;margin:2px 0 4px}
svg.chart text{font-family:inherit;font-size:12px;fill:#1f2328}
svg.chart .grid{stroke:#eaedf0}
svg.chart .axis{stroke:#8c959f}
svg.chart .tick,svg.chart .unit{fill:#57606a;font-size:11px}
svg.chart .total{font-weight:600}
svg.chart .failed{fill:#cf222e}
svg.chart .untimed{fill:#57606a;font-weight:400;font-style:italic}
svg.chart .line{stroke-width:2;stroke-linejoin:round}
ul.legend{list-style:none;padding:0;margin:6px 0 8px;display:flex;flex-wrap:wrap;gap:4px 18px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.swatch.line{width:18px;height:0;border-top:3px solid;border-radius:0;vertical-align:3px}
.swatch.dashed{border-top-style:dashed}
ul.ratios{margin:6px 0 0;padding-left:20px}
ul.ratios b{font-variant-numeric:tabular-nums}
.dim{color:#57606a}
.empty{color:#57606a;font-style:italic}
.bad{color:#cf222e}
)css";

void AppendMetaItem(std::string& o, std::string_view name, const std::string& value, bool code = false) {
  o += "<dt>";
  o += name;
  o += "</dt><dd>";
  if (value.empty())
    o += "<span class=\"dim\">not recorded</span>";
  else if (code)
    o += "<code>" + Esc(value) + "</code>";
  else
    o += Esc(value);
  o += "</dd>";
}

void AppendHeader(std::string& o, const Report& report, const std::vector<ScenarioGroup>& groups) {
  o += "<header><h1>coldstart bench";
  if (!report.source.empty()) o += ": " + Esc(report.source);
  o += "</h1><dl class=\"meta\">";
  AppendMetaItem(o, "Source", report.source, true);
  AppendMetaItem(o, "Command", report.command, true);
  AppendMetaItem(o, "Machine", report.machine);
  AppendMetaItem(o, "Date", report.date);
  AppendMetaItem(o, "Conditions", report.conditions);
  AppendMetaItem(o, "Model size", report.model_bytes ? FormatBytes(static_cast<double>(report.model_bytes)) + " (" +
                                                           std::to_string(report.model_bytes) + " bytes)"
                                                     : std::string());
  std::size_t failed = 0;
  for (const RunRow& r : report.rows) failed += r.ok ? 0 : 1;
  std::string runs = std::to_string(report.rows.size()) + " rows in " + std::to_string(groups.size()) +
                     (groups.size() == 1 ? " scenario" : " scenarios");
  if (failed) runs += ", " + std::to_string(failed) + " failed";
  AppendMetaItem(o, "Runs", runs);
  o += "</dl></header>";
}

// coldstart's fastest scenario against the best of every other scenario.
void AppendOverall(std::string& o, const std::vector<ScenarioGroup>& groups) {
  o += "<section><h2>coldstart against the other ways</h2>";
  const ScenarioGroup* best = nullptr;
  for (const ScenarioGroup& s : groups)
    if (s.Self() && (best == nullptr || s.Self()->Med() < best->Self()->Med())) best = &s;
  if (best == nullptr) {
    o += "<p class=\"empty\">No coldstart run succeeded, so there is no overall ratio.</p></section>";
    return;
  }
  double self = best->Self()->Med();
  o += "<p>coldstart's fastest scenario is <b>" + Esc(best->name) + "</b>, median " + FormatSeconds(self) +
       ". Each other scenario's fastest peer, by median, against it (above 1x: coldstart is faster):</p>";
  std::string items;
  for (const ScenarioGroup& s : groups) {
    const PeerGroup* other = s.Best();
    if (&s == best || other == nullptr) continue;
    items += "<li><b>" + Esc(s.name) + " / " + Esc(best->name) + " = ";
    items += self > 0 ? FormatRatio(other->Med() / self) : std::string("n/a");
    items += "</b> <span class=\"dim\">(" + Esc(other->peer) + " " + FormatSeconds(other->Med()) + " against " +
             FormatSeconds(self) + ")</span></li>";
  }
  if (items.empty())
    o += "<p class=\"empty\">No other scenario succeeded to compare with.</p>";
  else
    o += "<ul class=\"ratios\">" + items + "</ul>";
  o += "</section>";
}

// What the ratio column says for one peer of a scenario: against coldstart where it ran, else
// against the scenario's fastest peer. Above 1x: the other is slower.
std::string RatioCell(const ScenarioGroup& s, const PeerGroup& p) {
  if (!p.Ok()) return "<span class=\"dim\">&mdash;</span>";
  auto ratio = [](double num, double den) { return den > 0 ? FormatRatio(num / den) : std::string("n/a"); };
  const PeerGroup* self = s.Self();
  if (p.peer == kSelf) {
    const PeerGroup* other = s.BestOther();
    if (other == nullptr) return "<span class=\"dim\">no other peer</span>";
    return "<b>" + Esc(other->peer) + " / coldstart = " + ratio(other->Med(), p.Med()) + "</b>";
  }
  if (self != nullptr) return Esc(p.peer) + " / coldstart = " + ratio(p.Med(), self->Med());
  const PeerGroup* best = s.Best();
  if (best == &p) return s.peers.size() > 1 ? "<span class=\"dim\">fastest</span>" : "<span class=\"dim\">&mdash;</span>";
  return Esc(p.peer) + " / " + Esc(best->peer) + " = " + ratio(p.Med(), best->Med());
}

void AppendTable(std::string& o, const std::vector<ScenarioGroup>& groups, std::uint64_t model_bytes) {
  o += "<section><h2>Time to ready</h2><table class=\"results\"><thead><tr><th>Scenario</th><th>Peer</th>"
       "<th>Runs</th><th class=\"num\">Min</th><th class=\"num\">Median</th><th class=\"num\">Max</th>"
       "<th class=\"num\">Rate</th><th class=\"num\">Origin served</th><th>Ratio</th></tr></thead><tbody>";
  for (const ScenarioGroup& s : groups) {
    for (std::size_t i = 0; i < s.peers.size(); ++i) {
      const PeerGroup& p = s.peers[i];
      o += p.peer == kSelf ? "<tr class=\"self\">" : "<tr>";
      if (i == 0)
        o += "<td class=\"scenario\" rowspan=\"" + std::to_string(s.peers.size()) + "\">" + Esc(s.name) + "</td>";
      o += "<td>" + Esc(p.peer) + "</td><td>";
      o += std::to_string(p.ok_rows) + " of " + std::to_string(p.rows.size()) + " ok";
      if (p.ok_rows < static_cast<int>(p.rows.size())) o += " <span class=\"bad\">&#9679;</span>";
      std::vector<std::string> methods;
      for (const RunRow* r : p.rows)
        if (r->cold && std::find(methods.begin(), methods.end(), r->cold_method) == methods.end())
          methods.push_back(r->cold_method);
      if (p.replicas > 0) o += "<br><span class=\"dim\">" + std::to_string(p.replicas) + " replicas</span>";
      if (!methods.empty()) {
        o += "<br><span class=\"dim\">cold:";
        for (const auto& m : methods) o += " " + (m.empty() ? std::string("yes") : Esc(m));
        o += "</span>";
      }
      o += "</td>";
      if (p.Ok()) {
        o += "<td class=\"num\">" + FormatSeconds(p.Min()) + "</td><td class=\"num\"><b>" + FormatSeconds(p.Med()) +
             "</b></td><td class=\"num\">" + FormatSeconds(p.Max()) + "</td>";
      } else {
        o += p.ok_rows ? "<td class=\"num dim\" colspan=\"3\">no time recorded</td>"
                       : "<td class=\"num bad\" colspan=\"3\">failed</td>";
      }
      std::vector<double> bytes, origin;
      for (const RunRow* r : p.rows)
        if (r->ok) {
          bytes.push_back(static_cast<double>(r->bytes));
          origin.push_back(static_cast<double>(r->origin_bytes));
        }
      double b = Median(bytes), ob = Median(origin);
      o += "<td class=\"num\">" + (b > 0 && p.Med() > 0 ? FormatRate(b / p.Med()) : std::string("&mdash;")) + "</td>";
      o += "<td class=\"num\">";
      if (ob > 0) {
        o += FormatBytes(ob);
        if (model_bytes) o += " <span class=\"dim\">(" + FormatRatio(ob / static_cast<double>(model_bytes)) + " model)</span>";
      } else {
        o += "&mdash;";
      }
      o += "</td><td class=\"ratio\">" + RatioCell(s, p) + "</td></tr>";
    }
  }
  o += "</tbody></table><p class=\"dim\">Min, median and max of the successful runs, seconds from the first "
       "process's start to ready. Rate: bytes delivered over the median time. Origin served: bytes the origin "
       "sent in the median row.</p></section>";
}

void AppendTimelines(std::string& o, const std::vector<ScenarioGroup>& groups) {
  o += "<section><h2>Where the seconds go</h2>";
  double max_s = 0;
  for (const ScenarioGroup& s : groups)
    for (const PeerGroup& p : s.peers) {
      bool median_only = false;
      for (const RunRow* r : GanttRows(p, &median_only)) {
        max_s = std::max(max_s, CleanSeconds(r->total_s));
        for (const Phase& ph : r->phases) max_s = std::max({max_s, CleanSeconds(ph.start_s), CleanSeconds(ph.end_s)});
      }
    }
  if (max_s <= 0) {
    o += "<p class=\"empty\">No run recorded phases or a time, so there is no timeline to draw.</p></section>";
    return;
  }
  Ticks axis = NiceTicks(max_s, 10);
  PhasePalette palette;
  bool no_phase = false;
  std::string charts;
  for (const ScenarioGroup& s : groups) {
    charts += "<h3>" + Esc(s.name) + "</h3>";
    AppendGantt(charts, s, axis, palette, &no_phase);
  }
  o += "<p class=\"dim\">Each phase on the run's clock, one bar group per run (the median run when there are more "
       "than " + std::to_string(kMaxRunsDrawn) + "); overlapping phases stack. Every scenario on the same axis. "
       "Hover a segment for its times, bytes and rate.</p><ul class=\"legend\">";
  for (const std::string& name : palette.Used())
    o += "<li><span class=\"swatch\" style=\"background:" + std::string(palette.Of(name)) + "\"></span>" +
         Esc(name) + "</li>";
  if (no_phase)
    o += "<li><span class=\"swatch\" style=\"background:" + std::string(kNoPhaseColor) +
         "\"></span>total, no phases recorded</li>";
  o += "</ul>" + charts + "</section>";
}

void AppendFailuresAndNotes(std::string& o, const Report& report) {
  std::string failures, notes;
  for (const RunRow& r : report.rows) {
    if (r.ok) continue;
    failures += "<tr><td>" + Esc(r.scenario) + "</td><td>" + Esc(r.peer) + "</td><td class=\"num\">" +
                std::to_string(r.run) + (r.replica >= 0 ? " / " + std::to_string(r.replica) : std::string()) +
                "</td><td class=\"error\">" + (r.error.empty() ? std::string("(no error text)") : Esc(r.error)) +
                "</td></tr>";
  }
  // A note repeated over runs (a skip reason, the cold method) is listed once, with its runs.
  struct Note {
    const RunRow* first;
    std::vector<int> runs;
  };
  std::vector<Note> distinct;
  for (const RunRow& r : report.rows) {
    if (r.note.empty()) continue;
    auto it = std::find_if(distinct.begin(), distinct.end(), [&](const Note& n) {
      return n.first->scenario == r.scenario && n.first->peer == r.peer && n.first->note == r.note;
    });
    if (it == distinct.end())
      distinct.push_back({&r, {r.run}});
    else if (std::find(it->runs.begin(), it->runs.end(), r.run) == it->runs.end())
      it->runs.push_back(r.run);
  }
  for (const Note& n : distinct) {
    notes += "<li><b>" + Esc(n.first->scenario) + " \xC2\xB7 " + Esc(n.first->peer) + "</b> <span class=\"dim\">(" +
             (n.runs.size() == 1 ? "run" : "runs");
    for (std::size_t i = 0; i < n.runs.size(); ++i) notes += (i ? ", " : " ") + std::to_string(n.runs[i]);
    notes += ")</span>: " + Esc(n.first->note) + "</li>";
  }
  if (failures.empty() && notes.empty()) return;
  o += "<section><h2>Failures and notes</h2>";
  if (!failures.empty())
    o += "<table class=\"failures\"><thead><tr><th>Scenario</th><th>Peer</th><th class=\"num\">Run / replica</th>"
         "<th>Error</th></tr></thead><tbody>" + failures + "</tbody></table>";
  if (!notes.empty()) o += "<ul class=\"notes\">" + notes + "</ul>";
  o += "</section>";
}
}  // namespace

std::string RenderHtml(const Report& report) {
  std::vector<ScenarioGroup> groups = Group(report);
  std::string o;
  o.reserve(64 * 1024);
  o += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
       "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
       "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>coldstart bench";
  if (!report.source.empty()) o += ": " + Esc(report.source);
  o += "</title><style>";
  o += kCss;
  o += "</style></head><body><main>";
  AppendHeader(o, report, groups);
  if (report.rows.empty()) {
    o += "<section><p class=\"empty\">This report holds no runs.</p></section>";
  } else {
    AppendOverall(o, groups);
    AppendTable(o, groups, report.model_bytes);
    AppendTimelines(o, groups);
    o += "<section><h2>Throughput over time</h2><p class=\"dim\">Bytes per second of the median run of each "
         "scenario and peer, from its progress samples, averaged over a sliding " +
         Fixed(kSmoothWindowS, 1) + " s window.</p>";
    AppendThroughput(o, groups);
    o += "</section>";
    AppendFailuresAndNotes(o, report);
  }
  o += "</main></body></html>\n";
  return o;
}

}  // namespace coldstart::bench
