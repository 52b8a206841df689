// RenderHtml (bench/src/report.cpp): the page's structure, escaping, figures and ratios, read back
// with a small strict parser. report_browser_test.cpp renders the same pages in Chromium.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "coldstart/bench/result.h"
#include "report_fixture.h"

namespace coldstart::bench {
namespace {

using testing::CountOf;
using testing::Element;
using testing::Escape;
using testing::ParseHtml;

TEST(ReportHtml, IsWellFormedWithBalancedSvgAndTables) {
  std::string html = RenderHtml(testing::SampleReport());
  auto doc = ParseHtml(html);
  ASSERT_TRUE(doc.error.empty()) << doc.error;
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
  // One Gantt per scenario that has something to draw, and the throughput chart.
  EXPECT_EQ(CountOf(doc, "svg"), 6u);
  EXPECT_EQ(CountOf(doc, "table"), 2u);  // results, failures
  EXPECT_GT(CountOf(doc, "rect"), 20u);
  EXPECT_GE(CountOf(doc, "polyline"), 3u);
}

TEST(ReportHtml, NoScriptAndNoAssetFromAnywhere) {
  std::string html = RenderHtml(testing::SampleReport());
  auto doc = ParseHtml(html);
  ASSERT_TRUE(doc.error.empty()) << doc.error;
  for (const Element& e : doc.elements) {
    EXPECT_NE(e.name, "script");
    EXPECT_NE(e.name, "img");
    EXPECT_NE(e.name, "link");
    EXPECT_NE(e.name, "iframe");
    for (const auto& [name, value] : e.attrs) {
      EXPECT_NE(name, "src") << e.name;
      EXPECT_NE(name, "href") << e.name;
      EXPECT_NE(name.rfind("on", 0), 0u) << e.name << " " << name;
    }
  }
  EXPECT_NE(html.find("Content-Security-Policy"), std::string::npos);
  EXPECT_NE(html.find("default-src 'none'"), std::string::npos);
}

TEST(ReportHtml, EscapesEveryStringFromTheReport) {
  std::string html = RenderHtml(testing::SampleReport());
  std::string lower = html;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  EXPECT_EQ(lower.find("<script"), std::string::npos);
  EXPECT_EQ(lower.find("<b>bold"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"), std::string::npos);  // command
  EXPECT_NE(html.find("gcsfuse&lt;b&gt;"), std::string::npos);                                  // a peer
  EXPECT_NE(html.find("refused &lt;script&gt;x&lt;/script&gt; &amp; &quot;quoted&quot;"), std::string::npos);
  EXPECT_NE(html.find("&lt;b&gt;bold&lt;/b&gt; \xC3\xA9t\xC3\xA4pe"), std::string::npos);  // a phase name
  // UTF-8 passes through; a control character does not.
  EXPECT_NE(html.find("\xE2\x80\x94 \xC3\x9Cn\xC3\xAF\x63\xC3\xB8\x64\xC3\xA9 \xF0\x9F\x9A\x80"), std::string::npos);
  EXPECT_EQ(html.find('\x01'), std::string::npos);
  EXPECT_NE(html.find("bell\xEF\xBF\xBD"), std::string::npos);
}

TEST(ReportHtml, EveryScenarioAndPeerAppears) {
  Report report = testing::SampleReport();
  std::string html = RenderHtml(report);
  for (const RunRow& r : report.rows) {
    EXPECT_NE(html.find(">" + Escape(r.scenario) + "<"), std::string::npos) << r.scenario;
    EXPECT_NE(html.find(">" + Escape(r.peer) + "<"), std::string::npos) << r.peer;
  }
}

TEST(ReportHtml, RatiosAgainstTheBestPeerAndColdstartsBestScenario) {
  std::string html = RenderHtml(testing::SampleReport());
  // Medians: copy-then-load/curl 10 s, load/coldstart 1 s, mount-then-read coldstart 2 s and
  // rclone 8 s (of 8, 7, 9, 100, 6), load-cache-cold/coldstart 1.5 s (four replicas).
  EXPECT_NE(html.find("coldstart's fastest scenario is <b>load</b>, median 1.00 s"), std::string::npos);
  EXPECT_NE(html.find("copy-then-load / load = 10.0x"), std::string::npos);
  EXPECT_NE(html.find("mount-then-read / load = 2.0x"), std::string::npos);
  EXPECT_NE(html.find("load-cache-cold / load = 1.5x"), std::string::npos);
  // The scenario's own ratio, in coldstart's row and in the other peer's.
  EXPECT_NE(html.find("<b>rclone / coldstart = 4.0x</b>"), std::string::npos);
  // A failed peer is no one's best and has no ratio; a skipped scenario none either.
  EXPECT_EQ(html.find("gcsfuse&lt;b&gt; / coldstart"), std::string::npos);
  EXPECT_EQ(html.find("parallel-copy-then-load / load"), std::string::npos);
  // min/median/max of the rclone runs.
  EXPECT_NE(html.find("<td class=\"num\">6.00 s</td><td class=\"num\"><b>8.00 s</b></td>"
                      "<td class=\"num\">100 s</td>"),
            std::string::npos);
}

TEST(ReportHtml, RatioBelowOneAndScenarioWithoutCoreStart) {
  Report report;
  report.rows.push_back(testing::Row("load", "coldstart", 0, 4.0));
  report.rows.push_back(testing::Row("load", "runai", 0, 2.0));
  report.rows.push_back(testing::Row("mount-then-read", "rclone", 0, 9.0));
  report.rows.push_back(testing::Row("mount-then-read", "gcsfuse", 0, 3.0));
  std::string html = RenderHtml(report);
  EXPECT_NE(html.find("<b>runai / coldstart = 0.50x</b>"), std::string::npos);
  EXPECT_NE(html.find("rclone / gcsfuse = 3.0x"), std::string::npos);
  EXPECT_NE(html.find("mount-then-read / load = 0.75x"), std::string::npos);
}

TEST(ReportHtml, GanttShowsEveryRunUpToThreeElseTheMedianRun) {
  std::string html = RenderHtml(testing::SampleReport());
  const std::string dot = " \xC2\xB7 ";
  // curl: 3 runs, all drawn.
  for (int run = 0; run < 3; ++run)
    EXPECT_NE(html.find(">curl" + dot + "run " + std::to_string(run) + "</text>"), std::string::npos) << run;
  // rclone: 5 runs, only the median one (8 s, run 0).
  EXPECT_NE(html.find(">rclone" + dot + "run 0 (median of 5)</text>"), std::string::npos);
  for (int run = 1; run < 5; ++run)
    EXPECT_EQ(html.find("rclone" + dot + "run " + std::to_string(run)), std::string::npos) << run;
  // Replicas each get a bar.
  for (int k = 0; k < 4; ++k)
    EXPECT_NE(html.find("coldstart" + dot + "run 0" + dot + "replica " + std::to_string(k)), std::string::npos);
  // The end of each bar: its total, or that it failed.
  EXPECT_NE(html.find("class=\"total\""), std::string::npos);
  EXPECT_NE(html.find(">10.0 s</text>"), std::string::npos);
  EXPECT_NE(html.find("class=\"total failed\""), std::string::npos);
  // device's row succeeded with a NaN time: said, not drawn as 0.
  EXPECT_NE(html.find("\">no time recorded</text>"), std::string::npos);
  EXPECT_EQ(html.find(">0.000 s</text>"), std::string::npos);
}

TEST(ReportHtml, PhaseLegendAndOverlappingPhasesInLanes) {
  std::string html = RenderHtml(testing::SampleReport());
  // The legend: known phases in clock order whatever order they were drawn in, then the others.
  std::size_t last = 0;
  for (const char* phase : {"listing", "first_byte", "copy", "fetch", "disk", "load", "h2d", "ready",
                            "&lt;b&gt;bold&lt;/b&gt; \xC3\xA9t\xC3\xA4pe"}) {
    std::size_t at = html.find("</span>" + std::string(phase) + "</li>");
    ASSERT_NE(at, std::string::npos) << phase;
    EXPECT_GT(at, last) << phase;
    last = at;
  }
  EXPECT_EQ(html.find("</span>first_token</li>"), std::string::npos);  // not drawn, not listed
  // load (0.2..1.0) overlaps fetch (0.1..0.9) in the coldstart load runs: a second lane, 15 px
  // (lane and gap) below the first; the tooltip gives the phase's times, bytes and rate.
  EXPECT_NE(html.find("<title>fetch: 0.100 s to 0.900 s (0.800 s), 100.00 MiB, 131 MB/s</title>"),
            std::string::npos);
  auto doc = ParseHtml(html);
  ASSERT_TRUE(doc.error.empty()) << doc.error;
  double fetch_y = -1, load_y = -1;
  for (std::size_t i = 0; i + 1 < doc.elements.size(); ++i) {
    const Element& e = doc.elements[i];
    if (e.name != "rect") continue;
    if (e.text.rfind("fetch: 0.100 s", 0) == 0 && fetch_y < 0) fetch_y = std::stod(e.attrs.at("y"));
    if (e.text.rfind("load: 0.200 s", 0) == 0 && load_y < 0) load_y = std::stod(e.attrs.at("y"));
  }
  ASSERT_GE(fetch_y, 0);
  ASSERT_GE(load_y, 0);
  EXPECT_DOUBLE_EQ(load_y - fetch_y, 15.0);
}

TEST(ReportHtml, NumbersInTheSvgAreFiniteAndNonNegative) {
  std::string html = RenderHtml(testing::SampleReport());  // holds NaN, inf and negative values
  auto doc = ParseHtml(html);
  ASSERT_TRUE(doc.error.empty()) << doc.error;
  std::size_t checked = 0;
  for (const Element& e : doc.elements) {
    for (const auto& [name, value] : e.attrs) {
      if (name != "x" && name != "y" && name != "width" && name != "height" && name != "x1" && name != "x2" &&
          name != "y1" && name != "y2" && name != "points" && name != "viewBox")
        continue;
      std::string v = value;
      for (char& c : v)
        if (c == ',') c = ' ';
      std::size_t pos = 0;
      while (pos < v.size()) {
        if (v[pos] == ' ') {
          ++pos;
          continue;
        }
        std::size_t used = 0;
        double d = std::stod(v.substr(pos), &used);
        EXPECT_TRUE(std::isfinite(d) && d >= 0) << e.name << " " << name << "=" << value;
        pos += used;
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 500u);
  std::string lower = html;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  EXPECT_EQ(lower.find("nan"), std::string::npos);
}

TEST(ReportHtml, ThroughputIsSmoothedBytesPerSecond) {
  Report report;
  // 50 MB/s for a second, then 200 MB/s for a second, sampled every 0.1 s.
  RunRow r = testing::Row("load", "coldstart", 0, 2.0);
  for (int i = 1; i <= 20; ++i) {
    double t = i * 0.1;
    double bytes = t <= 1 ? t * 50e6 : 50e6 + (t - 1) * 200e6;
    r.samples.push_back({t, static_cast<std::uint64_t>(std::llround(bytes))});
  }
  report.rows.push_back(r);
  std::string html = RenderHtml(report);
  EXPECT_NE(html.find("load \xC2\xB7 coldstart (run 0): peak 200 MB/s, mean 125 MB/s</title>"), std::string::npos);
  // The y axis reaches 200 MB/s; the x axis 2 s.
  EXPECT_NE(html.find(">200</text>"), std::string::npos);
  EXPECT_NE(html.find(">2.0</text>"), std::string::npos);
  EXPECT_NE(html.find(">MB/s</text>"), std::string::npos);
}

TEST(ReportHtml, EmptyReportRenders) {
  std::string html = RenderHtml(Report{});
  auto doc = ParseHtml(html);
  ASSERT_TRUE(doc.error.empty()) << doc.error;
  EXPECT_NE(html.find("This report holds no runs."), std::string::npos);
  EXPECT_EQ(CountOf(doc, "svg"), 0u);
  EXPECT_NE(html.find("not recorded"), std::string::npos);  // empty header fields
}

TEST(ReportHtml, RowsWithoutPhasesOrSamplesGetASentence) {
  Report report;
  report.rows.push_back(testing::Row("load", "coldstart", 0, 3.0));  // a time, no phases, no samples
  RunRow failed = testing::Row("copy-then-load", "curl", 0, 0);
  failed.ok = false;
  failed.error = "curl: exit 7";
  report.rows.push_back(failed);
  std::string html = RenderHtml(report);
  auto doc = ParseHtml(html);
  ASSERT_TRUE(doc.error.empty()) << doc.error;
  EXPECT_NE(html.find("No successful run recorded progress samples"), std::string::npos);
  EXPECT_NE(html.find("No run of this scenario recorded phases or a time to draw: curl \xC2\xB7 run 0 (failed)."),
            std::string::npos);
  EXPECT_NE(html.find("total, no phases recorded"), std::string::npos);  // the grey bar's legend
  EXPECT_NE(html.find("curl: exit 7"), std::string::npos);
  EXPECT_NE(html.find("No other scenario succeeded to compare with."), std::string::npos);

  Report only_failed;
  only_failed.rows.push_back(failed);
  html = RenderHtml(only_failed);
  EXPECT_NE(html.find("No coldstart run succeeded, so there is no overall ratio."), std::string::npos);
  EXPECT_NE(html.find("No run recorded phases or a time, so there is no timeline to draw."), std::string::npos);
  EXPECT_NE(html.find(">failed</td>"), std::string::npos);
}

TEST(ReportHtml, FailuresAndNotesAreListedOnce) {
  std::string html = RenderHtml(testing::SampleReport());
  // The cold method note repeats over three runs: listed once, with the runs.
  EXPECT_NE(html.find("(runs 0, 1, 2)</span>: cold: fadvise, all pages evicted (mincore)"), std::string::npos);
  std::size_t first = html.find("cold: fadvise, all pages evicted");
  EXPECT_EQ(html.find("cold: fadvise, all pages evicted", first + 1), std::string::npos);
  EXPECT_NE(html.find("skipped: neither aria2c nor rclone is installed"), std::string::npos);
  EXPECT_NE(html.find("aria2c: not installed"), std::string::npos);
  // Cold runs and replicas are said in the table; origin bytes against the model.
  EXPECT_NE(html.find("<span class=\"dim\">cold: fadvise</span>"), std::string::npos);
  EXPECT_NE(html.find("<span class=\"dim\">4 replicas</span>"), std::string::npos);
  EXPECT_NE(html.find("(1.1x model)"), std::string::npos);
}

TEST(ReportHtml, LongLabelsAreShortenedWithTheFullTextInATooltip) {
  Report report;
  std::string peer = "a-peer-with-a-very-long-name-\xC3\xA9\xC3\xA9\xC3\xA9-that-goes-on-and-on";
  report.rows.push_back(testing::Row("load", peer, 0, 1.0));
  std::string html = RenderHtml(report);
  // 29 code points, then the ellipsis; the full label in the <title>.
  EXPECT_NE(html.find(">a-peer-with-a-very-long-name-\xE2\x80\xA6</text>"), std::string::npos);
  EXPECT_NE(html.find("<title>" + peer + " \xC2\xB7 run 0</title>"), std::string::npos);
}

}  // namespace
}  // namespace coldstart::bench
