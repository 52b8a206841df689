// `coldstart bench`: the cold-start benchmark (bench/, runner.h), and `--compare OLD NEW`.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "cancel.h"
#include "cli.h"
#include "coldstart/bench/result.h"
#include "coldstart/bench/runner.h"
#include "commands.h"

namespace coldstart::cli {
namespace {

Result<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return MakePathError("cannot read " + path, errno);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return MakePathError("cannot write " + path, errno);
  out << text;
  out.close();
  if (!out) return MakePathError("cannot write " + path, errno);
  return OkStatus();
}

Result<bench::Report> ReadReport(const std::string& path) {
  CS_ASSIGN_OR_RETURN(auto text, ReadText(path));
  auto r = bench::ReportFromJson(text);
  if (!r.ok()) return std::move(r).error().WithContext(path);
  return r;
}

// Exit 0 when nothing got more than 10% slower, 1 when something did (README).
int RunCompare(const BenchArgs& args) {
  auto old = ReadReport(args.compare[0]);
  if (!old.ok()) return ReportError(old.error());
  auto now = ReadReport(args.compare[1]);
  if (!now.ok()) return ReportError(now.error());
  const auto c = bench::Compare(*old, *now);
  std::fputs(c.text.c_str(), stdout);
  return c.slower ? 1 : 0;
}

}  // namespace

int RunBench(const BenchArgs& args) {
  if (!args.compare.empty()) {
    if (args.compare.size() != 2) return ReportError(MakeError(Errc::kInvalidArgument, "--compare takes OLD.json NEW.json"));
    return RunCompare(args);
  }
  if (args.source.empty())
    return ReportError(MakeError(Errc::kInvalidArgument, "coldstart bench needs SRC (or --compare OLD.json NEW.json)"));
  InstallCancelSignals();  // before the bench's threads (the fake server's) start
  bench::BenchOptions o;
  o.source = args.source;
  o.scenarios = args.scenarios;
  o.runs = args.runs;
  o.cold = args.cold;
  o.replicas = args.replicas;
  o.work_dir = args.work_dir;
  o.timeout_s = args.timeout_s;
  o.device = args.device;
  o.server_cmd = args.server_cmd;
  o.ready_url = args.ready_url;
  o.request_file = args.request_file;
  o.request_url = args.request_url;
  o.command = args.command_line;
  for (auto [text, cap, flag] : {std::tuple{&args.cap_per_connection, &o.cap_per_connection, "--cap-per-connection"},
                                 std::tuple{&args.cap_link, &o.cap_link, "--cap-link"}}) {
    if (text->empty()) continue;
    auto r = bench::ParseRate(*text);
    if (!r.ok()) return ReportError(std::move(r).error().WithContext(flag));
    *cap = *r;
  }
  o.progress = [](const std::string& line) { std::fprintf(stderr, "coldstart bench: %s\n", line.c_str()); };
  o.cancelled = [] { return CancelRequested(); };
  auto report = bench::RunBench(o);
  if (!report.ok() && report.error().code == Errc::kCancelled) return ReportCancelled(report.error().message);
  if (!report.ok()) return ReportError(report.error());
  if (!args.json.empty())
    if (auto st = WriteText(args.json, bench::ToJson(*report)); !st.ok()) return ReportError(st.error());
  if (!args.html.empty())
    if (auto st = WriteText(args.html, bench::RenderHtml(*report)); !st.ok()) return ReportError(st.error());
  std::printf("coldstart bench %s: %s\n%s\n%s", report->source.c_str(), report->conditions.c_str(),
              report->machine.c_str(), bench::SummaryTable(*report).c_str());
  std::fflush(stdout);
  // A failed run (not a skipped one) makes the exit status 1; its row is in the report.
  for (const auto& r : report->rows)
    if (!r.ok && !r.error.empty()) return 1;
  return 0;
}

}  // namespace coldstart::cli
