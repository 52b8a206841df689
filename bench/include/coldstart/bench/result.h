// What `coldstart bench` measures, one row per scenario, peer and run: the schema of --json
// (README "coldstart bench"), the input of the HTML report and of --compare.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "coldstart/core/result.h"

namespace coldstart::bench {

// One phase of a run on the run's clock (seconds since the run's first process started):
// "listing", "first_byte", "fetch", "disk", "load", "h2d", "runtime_init", "first_token",
// "ready", or a peer's own ("copy").
struct Phase {
  std::string name;
  double start_s = 0;
  double end_s = 0;
  std::uint64_t bytes = 0;  // bytes moved in this phase, 0 when not known
};

// Bytes done at a moment of the run (progress lines of the child), for throughput over time.
struct Sample {
  double t_s = 0;
  std::uint64_t bytes = 0;
};

struct RunRow {
  std::string scenario;      // copy-then-load, parallel-copy-then-load, prefetch-then-load, load,
                             // load-cache-cold, load-cache-warm, mount-then-read, device,
                             // first-token, server
  std::string peer;          // who did the work: coldstart, curl, aria2c, rclone, gcsfuse, transformers, ...
  int run = 0;               // 0-based repetition
  int replica = -1;          // --replicas: which replica, else -1
  bool ok = true;
  std::string error;         // when !ok
  std::string note;          // e.g. why a scenario was skipped, which cold method was used
  bool cold = false;         // page cache dropped before the run
  std::string cold_method;   // "fadvise", "drop_caches", "" (warm)
  double total_s = 0;        // start to ready (the scenario's end)
  std::uint64_t bytes = 0;   // model bytes delivered
  std::uint64_t origin_bytes = 0;  // bytes the origin served (fake server), 0 when unknown
  std::vector<Phase> phases;
  std::vector<Sample> samples;
};

struct Report {
  std::string source;        // what was benchmarked (as the user named it)
  std::string command;       // the coldstart bench command line
  std::string machine;       // "2 vCPU, 24 GiB, Linux 6.1" (uname, nproc, cgroup limit)
  std::string date;          // ISO 8601 UTC
  std::string conditions;    // "per-connection cap 50 MB/s, warm", ...
  std::uint64_t model_bytes = 0;
  std::vector<RunRow> rows;
};

// The JSON of --json and its reader (for --compare and the report); the reader checks every
// field and names the one that is wrong.
std::string ToJson(const Report& report);
Result<Report> ReportFromJson(std::string_view text);

// One self-contained HTML page: inline SVG (a phase Gantt per scenario, throughput over time, a
// ratio table against the best peer of each scenario); no script or asset from anywhere.
std::string RenderHtml(const Report& report);

}  // namespace coldstart::bench
