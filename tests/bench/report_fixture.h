// Shared by the report tests: a Report with every case the page must handle (several scenarios,
// peers, runs and replicas, overlapping phases, samples, a failed row, a skipped scenario, notes,
// markup, quotes, UTF-8 and control characters, NaN, infinities and negatives), and a small strict
// reader of the HTML the report writes.
#pragma once

#include <cctype>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "coldstart/bench/result.h"

namespace coldstart::bench::testing {

inline RunRow Row(std::string scenario, std::string peer, int run, double total_s) {
  RunRow r;
  r.scenario = std::move(scenario);
  r.peer = std::move(peer);
  r.run = run;
  r.total_s = total_s;
  r.bytes = 100 << 20;
  return r;
}

// Samples of a steady transfer of `bytes` from `from_s` to `to_s`, every 0.1 s.
inline std::vector<Sample> Steady(double from_s, double to_s, std::uint64_t bytes) {
  std::vector<Sample> out;
  for (double t = from_s; t <= to_s + 1e-9; t += 0.1)
    out.push_back({t, static_cast<std::uint64_t>(static_cast<double>(bytes) * (t - from_s) / (to_s - from_s))});
  return out;
}

inline Report SampleReport() {
  constexpr std::uint64_t kModel = 100 << 20;
  Report rep;
  rep.source = "gs://bucket/<model>&\"'";
  rep.command = "coldstart bench gs://bucket/m --html '<script>alert('x')</script>'";
  rep.machine = "2 vCPU \xE2\x80\x94 \xC3\x9Cn\xC3\xAF\x63\xC3\xB8\x64\xC3\xA9 \xF0\x9F\x9A\x80";
  rep.date = "2026-12-03T12:00:00Z";
  rep.conditions = "per-connection cap 50 MB/s, cold, bell\x01";
  rep.model_bytes = kModel;

  // copy-then-load: one stream, 3 runs (10, 11, 9 s).
  for (int run = 0; run < 3; ++run) {
    double total = run == 0 ? 10 : run == 1 ? 11 : 9;
    RunRow r = Row("copy-then-load", "curl", run, total);
    r.cold = true;
    r.cold_method = "fadvise";
    r.note = "cold: fadvise, all pages evicted (mincore)";
    r.phases = {{"copy", 0, total - 2, kModel}, {"load", total - 2, total, kModel}};
    r.samples = Steady(0, total - 2, kModel);
    rep.rows.push_back(r);
  }
  // load: coldstart, 3 runs (1.0, 1.2, 0.9 s), fetch and load overlapping.
  for (int run = 0; run < 3; ++run) {
    double total = run == 0 ? 1.0 : run == 1 ? 1.2 : 0.9;
    RunRow r = Row("load", "coldstart", run, total);
    r.phases = {{"listing", 0, 0.05, 0},
                {"first_byte", 0.05, 0.1, 0},
                {"fetch", 0.1, total - 0.1, kModel},
                {"load", 0.2, total, kModel}};
    r.samples = Steady(0.1, total - 0.1, kModel);
    rep.rows.push_back(r);
  }
  // mount-then-read: coldstart 2 s; rclone 5 runs (8, 7, 9, 100, 6: median 8, run 0); a failing
  // gcsfuse with markup in its name and error.
  {
    RunRow r = Row("mount-then-read", "coldstart", 0, 2.0);
    r.phases = {{"fetch", 0.1, 1.9, kModel}, {"ready", 1.9, 2.0, 0}};
    r.samples = Steady(0.1, 1.9, kModel);
    rep.rows.push_back(r);
  }
  const double rclone[] = {8, 7, 9, 100, 6};
  for (int run = 0; run < 5; ++run) {
    RunRow r = Row("mount-then-read", "rclone", run, rclone[run]);
    r.phases = {{"fetch", 0.2, rclone[run] - 0.5, kModel}, {"ready", rclone[run] - 0.5, rclone[run], 0}};
    r.samples = Steady(0.2, rclone[run] - 0.5, kModel);
    rep.rows.push_back(r);
  }
  {
    RunRow r = Row("mount-then-read", "gcsfuse<b>", 0, 0.4);
    r.ok = false;
    r.error = "connection refused <script>x</script> & \"quoted\"";
    r.phases = {{"listing", 0, 0.4, 0}};
    rep.rows.push_back(r);
  }
  // parallel-copy-then-load: skipped.
  {
    RunRow r = Row("parallel-copy-then-load", "aria2c", 0, 0);
    r.ok = false;
    r.error = "aria2c: not installed";
    r.note = "skipped: neither aria2c nor rclone is installed";
    rep.rows.push_back(r);
  }
  // load-cache-cold: four replicas at once (1.4, 1.5, 1.6, 1.5 s), origin 1.1x the model.
  const double replicas[] = {1.4, 1.5, 1.6, 1.5};
  for (int k = 0; k < 4; ++k) {
    RunRow r = Row("load-cache-cold", "coldstart", 0, replicas[k]);
    r.replica = k;
    r.origin_bytes = kModel + kModel / 10;
    r.phases = {{"fetch", 0.1, replicas[k] - 0.1, kModel / 4}, {"disk", 0.15, replicas[k], kModel / 4}};
    rep.rows.push_back(r);
  }
  // device: broken numbers everywhere, and a phase of its own with markup and UTF-8.
  {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double inf = std::numeric_limits<double>::infinity();
    RunRow r = Row("device", "coldstart", 0, nan);
    r.phases = {{"h2d", -1, inf, kModel}, {"<b>bold</b> \xC3\xA9t\xC3\xA4pe", nan, 0.5, 0}, {"load", 0.5, -3, 0}};
    r.samples = {{nan, 10}, {-1, 20}, {inf, 30}, {0.5, 40}};
    rep.rows.push_back(r);
  }
  return rep;
}

// The five characters HTML must escape, as the test's own oracle (the ampersand first, so
// the entities it writes are not escaped again).
inline std::string Escape(std::string s) {
  static constexpr std::pair<std::string_view, std::string_view> kEntities[] = {
      {"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}, {"'", "&#39;"}};
  for (const auto& [raw, entity] : kEntities)
    for (std::size_t at = s.find(raw); at != std::string::npos; at = s.find(raw, at + entity.size()))
      s.replace(at, raw.size(), entity);
  return s;
}

struct Element {
  std::string name;
  std::map<std::string, std::string> attrs;
  std::string text;  // the text inside it, descendants included, entities left as written
};

struct Document {
  std::vector<Element> elements;  // in document order
  std::string error;              // empty when well formed
};

// A strict reader of the subset of HTML the report writes: every element closed in order (void
// elements and "/>" excepted), every attribute value quoted, no '<' or '>' outside markup, '&'
// only as an entity, <style> as raw text.
inline Document ParseHtml(std::string_view html) {
  Document doc;
  std::vector<std::size_t> open;
  auto fail = [&](std::size_t at, const std::string& what) {
    doc.error = what + " at byte " + std::to_string(at) + ": '" + std::string(html.substr(at, 60)) + "'";
    return doc;
  };
  auto is_void = [](const std::string& n) {
    return n == "meta" || n == "br" || n == "hr" || n == "img" || n == "input" || n == "link" || n == "wbr";
  };
  auto name_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == ':'; };
  std::size_t i = 0;
  const std::size_t n = html.size();
  while (i < n) {
    char c = html[i];
    if (c == '<') {
      if (html.substr(i, 4) == "<!--") {
        std::size_t e = html.find("-->", i);
        if (e == std::string_view::npos) return fail(i, "unterminated comment");
        i = e + 3;
        continue;
      }
      if (html.substr(i, 2) == "<!") {
        std::size_t e = html.find('>', i);
        if (e == std::string_view::npos) return fail(i, "unterminated declaration");
        i = e + 1;
        continue;
      }
      if (html.substr(i, 2) == "</") {
        std::size_t j = i + 2;
        while (j < n && name_char(html[j])) ++j;
        std::string name(html.substr(i + 2, j - i - 2));
        if (j >= n || html[j] != '>') return fail(i, "bad closing tag");
        if (open.empty() || doc.elements[open.back()].name != name)
          return fail(i, "</" + name + "> closes <" + (open.empty() ? "nothing" : doc.elements[open.back()].name) + ">");
        open.pop_back();
        i = j + 1;
        continue;
      }
      std::size_t j = i + 1;
      if (j >= n || !std::isalpha(static_cast<unsigned char>(html[j]))) return fail(i, "raw '<' in text");
      while (j < n && name_char(html[j])) ++j;
      Element e;
      e.name = std::string(html.substr(i + 1, j - i - 1));
      bool self_closing = false;
      for (;;) {
        while (j < n && html[j] == ' ') ++j;
        if (j >= n) return fail(i, "unterminated tag");
        if (html[j] == '>') {
          ++j;
          break;
        }
        if (html.substr(j, 2) == "/>") {
          self_closing = true;
          j += 2;
          break;
        }
        std::size_t k = j;
        while (k < n && name_char(html[k])) ++k;
        if (k == j) return fail(j, "bad attribute name");
        std::string attr(html.substr(j, k - j));
        if (k >= n || html[k] != '=' || k + 1 >= n || (html[k + 1] != '"' && html[k + 1] != '\''))
          return fail(j, "attribute " + attr + " without a quoted value");
        char q = html[k + 1];
        std::size_t end = html.find(q, k + 2);
        if (end == std::string_view::npos) return fail(j, "unterminated attribute value");
        std::string value(html.substr(k + 2, end - k - 2));
        if (value.find('<') != std::string::npos) return fail(j, "'<' in an attribute value");
        if (e.attrs.count(attr)) return fail(j, "duplicate attribute " + attr);
        e.attrs[attr] = value;
        j = end + 1;
      }
      doc.elements.push_back(std::move(e));
      const std::string& name = doc.elements.back().name;
      if (name == "style" && !self_closing) {
        std::size_t end = html.find("</style>", j);
        if (end == std::string_view::npos) return fail(i, "unterminated <style>");
        i = end + 8;
        continue;
      }
      if (!self_closing && !is_void(name)) open.push_back(doc.elements.size() - 1);
      i = j;
      continue;
    }
    if (c == '>') return fail(i, "raw '>' in text");
    if (c == '&') {
      std::size_t j = i + 1;
      if (j < n && html[j] == '#') ++j;
      std::size_t k = j;
      while (k < n && std::isalnum(static_cast<unsigned char>(html[k]))) ++k;
      if (k == j || k >= n || html[k] != ';') return fail(i, "raw '&' in text");
    }
    for (std::size_t idx : open) doc.elements[idx].text += c;
    ++i;
  }
  if (!open.empty()) {
    doc.error = "<" + doc.elements[open.back()].name + "> is never closed";
  }
  return doc;
}

inline std::size_t CountOf(const Document& doc, std::string_view name) {
  std::size_t count = 0;
  for (const Element& e : doc.elements) count += e.name == name ? 1 : 0;
  return count;
}

}  // namespace coldstart::bench::testing
