// The report in a real browser: headless Chromium (Debian package chromium, tools/setup.sh) renders
// the page, dumps its DOM and takes a screenshot. The page must log nothing to the console (a
// script error or a blocked asset would: the page's Content-Security-Policy forbids both, and a
// control page below proves such a violation is seen), the DOM must hold what the HTML said, and
// the screenshot must show the charts (pixels of the phases' exact colours), not a blank page.
// Skips where chromium is absent.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#ifdef COLDSTART_HAVE_PNG
#include <png.h>
#endif

#include "../common/temp_dir.h"
#include "coldstart/bench/result.h"
#include "report_fixture.h"

namespace coldstart::bench {
namespace {

using coldstart::testing::ReadFile;
using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;

std::string FindChromium() {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  std::vector<std::string> all;
  while (std::getline(dirs, dir, ':')) all.push_back(dir.empty() ? "." : dir);
  for (const char* name : {"chromium", "chromium-browser", "google-chrome"})
    for (const std::string& d : all) {
      std::string candidate = d + "/" + name;
      if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    }
  return "";
}

struct Rendered {
  int status = -1;
  std::string dom;
  std::string log;                    // Chromium's stderr
  std::vector<std::string> console;   // its console lines (script errors, CSP violations, ...)
};

// Renders `html` at 1280x2000 (screenshot to `png`) and returns the DOM and what was logged.
Rendered Render(const TempDir& dir, const std::string& html, const std::string& name, const std::string& png) {
  std::string page = dir / (name + ".html");
  WriteFile(page, html);
  std::string dom_file = dir / (name + ".dom"), log_file = dir / (name + ".log");
  // The browser's profile in the test's folder; `timeout` bounds a hung browser.
  std::string cmd = "timeout 60 '" + FindChromium() + "' --headless --no-sandbox --disable-gpu " +
                    "--disable-dev-shm-usage --no-first-run --user-data-dir='" + dir / (name + ".profile") +
                    "' --window-size=1280,2000 --hide-scrollbars --screenshot='" + png +
                    "' --dump-dom --enable-logging=stderr --v=0 'file://" + page + "' >'" + dom_file + "' 2>'" +
                    log_file + "'";
  Rendered r;
  int rc = std::system(cmd.c_str());
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  r.dom = ReadFile(dom_file);
  r.log = ReadFile(log_file);
  std::stringstream lines(r.log);
  std::string line;
  while (std::getline(lines, line))
    if (line.find(":CONSOLE") != std::string::npos) r.console.push_back(line);
  return r;
}

std::size_t Count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class ReportBrowser : public ::testing::Test {
 protected:
  void SetUp() override {
    if (FindChromium().empty())
      GTEST_SKIP() << "chromium is not installed (Debian package chromium; tools/setup.sh installs it)";
  }
  TempDir dir_;
};

TEST_F(ReportBrowser, RendersWithoutConsoleMessagesAndKeepsItsStructure) {
  std::string html = RenderHtml(testing::SampleReport());
  Rendered r = Render(dir_, html, "report", dir_ / "report.png");
  ASSERT_EQ(r.status, 0) << r.log;
  std::string console;
  for (const auto& l : r.console) console += l + "\n";
  EXPECT_TRUE(r.console.empty()) << console;
  // The DOM Chromium built holds every element the page wrote: no markup the parser had to
  // repair away or re-nest (a stray '<' from the report's strings would show here too).
  ASSERT_FALSE(r.dom.empty()) << r.log;
  for (const char* tag : {"<svg", "<rect", "<polyline", "<table", "<tr", "<td", "<section", "<li"})
    EXPECT_EQ(Count(r.dom, tag), Count(html, tag)) << tag;
  EXPECT_EQ(Count(r.dom, "<script"), 0u);
  EXPECT_NE(r.dom.find("copy-then-load / load = 10.0x"), std::string::npos);
}

TEST_F(ReportBrowser, AControlPageWithABlockedAssetIsCaught) {
  // The report's own page with one external image: the Content-Security-Policy blocks it and the
  // console says so. Proves the check above would see a page that reaches out.
  std::string html = RenderHtml(testing::SampleReport());
  std::size_t end = html.find("</main>");
  ASSERT_NE(end, std::string::npos);
  html.insert(end, "<img src=\"http://127.0.0.1:9/pixel.png\" alt=\"\">");
  Rendered r = Render(dir_, html, "control", dir_ / "control.png");
  ASSERT_EQ(r.status, 0) << r.log;
  ASSERT_EQ(r.console.size(), 1u) << r.log;
  EXPECT_NE(r.console[0].find("Content Security Policy"), std::string::npos) << r.console[0];
}

#ifdef COLDSTART_HAVE_PNG
struct Image {
  unsigned width = 0, height = 0;
  std::vector<unsigned char> rgba;
  std::string error;
};

Image ReadPng(const std::string& path) {
  Image img;
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&png, path.c_str())) {
    img.error = png.message;
    return img;
  }
  png.format = PNG_FORMAT_RGBA;
  img.rgba.resize(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, img.rgba.data(), 0, nullptr)) {
    img.error = png.message;
    png_image_free(&png);
    return img;
  }
  img.width = png.width;
  img.height = png.height;
  return img;
}
#endif

TEST_F(ReportBrowser, ScreenshotShowsTheCharts) {
#ifndef COLDSTART_HAVE_PNG
  GTEST_SKIP() << "built without libpng (Debian package libpng-dev), which reads the screenshot";
#else
  std::string png = dir_ / "report.png";
  Rendered r = Render(dir_, RenderHtml(testing::SampleReport()), "shot", png);
  ASSERT_EQ(r.status, 0) << r.log;
  Image img = ReadPng(png);
  ASSERT_TRUE(img.error.empty()) << img.error;
  ASSERT_EQ(img.width, 1280u);
  ASSERT_EQ(img.height, 2000u);
  std::set<std::uint32_t> colours;
  std::size_t ink = 0, fetch = 0, copy = 0;
  const std::size_t pixels = std::size_t{img.width} * img.height;
  const std::uint32_t background = 0xf4f5f7, white = 0xffffff;
  for (std::size_t p = 0; p < pixels; ++p) {
    const unsigned char* px = &img.rgba[p * 4];
    std::uint32_t rgb = (std::uint32_t{px[0]} << 16) | (std::uint32_t{px[1]} << 8) | px[2];
    colours.insert(rgb);
    if (rgb != background && rgb != white) ++ink;
    if (rgb == 0x4e79a7) ++fetch;  // the fetch phase's colour (and the first throughput line's)
    if (rgb == 0xff9da7) ++copy;   // the copy phase's
  }
  // Text, tables and charts: far from a blank or single-colour page.
  EXPECT_GT(colours.size(), 64u);
  EXPECT_GT(ink, pixels / 50) << ink << " of " << pixels;
  // Phase bars are 13 px tall and tens of px wide: the SVG was drawn, in the colours it says.
  EXPECT_GT(fetch, 1000u);
  EXPECT_GT(copy, 1000u);
#endif
}

TEST_F(ReportBrowser, EmptyReportRendersCleanly) {
  Rendered r = Render(dir_, RenderHtml(Report{}), "empty", dir_ / "empty.png");
  ASSERT_EQ(r.status, 0) << r.log;
  EXPECT_TRUE(r.console.empty()) << r.log;
  EXPECT_NE(r.dom.find("This report holds no runs."), std::string::npos);
}

}  // namespace
}  // namespace coldstart::bench
