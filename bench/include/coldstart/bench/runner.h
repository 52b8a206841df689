// `coldstart bench`: runs each scenario (a named recipe of child processes: coldstart itself and
// the peers people use today) on the same model under the same conditions, and returns one row
// per scenario, peer, run and replica (result.h).
//
// A local SRC folder is served by the fake GCS server on loopback (gs://bench/model, and its
// XML-style http://127.0.0.1:PORT/bench/model/FILE URLs for curl, aria2c and rclone), shaped by
// the per-connection and link caps, so gs:// scenarios run on any machine; the server's counters
// give each row's origin bytes. A gs:// or http(s):// SRC is used as it is (no caps, no peers).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "coldstart/bench/result.h"
#include "coldstart/core/result.h"

namespace coldstart::bench {

// Every scenario, in the order they run.
const std::vector<std::string>& ScenarioNames();
// The ones run when none is named: all but `server` (it needs --cmd) and `device`.
std::vector<std::string> DefaultScenarios();

struct BenchOptions {
  std::string source;                  // SRC: a model folder, gs://BUCKET/PREFIX or http(s)://
  std::vector<std::string> scenarios;  // empty: DefaultScenarios()
  int runs = 1;                        // repetitions of each scenario
  bool cold = false;                   // drop the model's pages before each run (DropPages)
  double cap_per_connection = 0;       // bytes/s per connection of the fake server; 0 = none
  double cap_link = 0;                 // bytes/s of all connections together; 0 = none
  int replicas = 1;                    // copies of each scenario started at once
  std::string coldstart_exe = "/proc/self/exe";  // the coldstart the children run
  std::string work_dir;                // temp folders go under it ("" = $TMPDIR or /tmp)
  double timeout_s = 3600;             // per child process
  std::string device = "sim";          // scenario `device`: sim or cuda[:N]
  // Scenario `server`: CMD run by /bin/sh ({src} is replaced by the served model's URL,
  // {coldstart} by coldstart_exe), timed until ready_url answers 200, then until a POST of
  // request_file to request_url (default: ready_url's origin + /v1/completions) returns.
  std::string server_cmd, ready_url, request_file, request_url;
  std::string command;                 // recorded in the report
  // One line per event ("load run 2/3: 1.23 s"), for a progress line on stderr.
  std::function<void(const std::string&)> progress;
  // Asked between runs (and while waiting for a server or a mount): true stops the bench, which
  // removes its temp folders and returns kCancelled. A Ctrl-C on the terminal reaches the
  // children too (they share our process group), so the run in flight ends at once.
  std::function<bool()> cancelled;
};

Result<Report> RunBench(const BenchOptions& options);

// A rate in bytes/s as the caps take it: "50MB" and "50MB/s" are 50e6 (decimal K, M, G, as
// network rates are given), "4MiB" is 4 * 2^20, a bare number is bytes/s.
Result<double> ParseRate(std::string_view text);

// --cold: drops every file's pages under `paths` (files or folders): posix_fadvise(DONTNEED)
// after fdatasync, checked with mincore; /proc/sys/vm/drop_caches too where fadvise left pages
// and it is writable. Returns the method that worked: "fadvise", "fadvise+drop_caches", or
// "fadvise (N% still resident)".
Result<std::string> DropPages(const std::vector<std::string>& paths);
// Bytes of `path`'s pages in the page cache (mincore over every file below it).
Result<std::uint64_t> ResidentBytes(const std::string& path);

// The terminal table printed at the end of every run: per scenario and peer (and replica
// count), ok runs, min / median / max seconds, the rate, the origin's bytes per model, and the
// speed-up against copy-then-load; then the notes of skipped or failed rows.
std::string SummaryTable(const Report& report);

// --compare: per scenario and peer the median's change from `old` to `now`; a change above
// +10% is "slower". `slower` is true when one is.
struct Comparison {
  std::string text;
  bool slower = false;
};
Comparison Compare(const Report& old, const Report& now);

}  // namespace coldstart::bench
