// Shared pieces of the `coldstart` executable's subcommands.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "coldstart/core/result.h"

namespace coldstart::cli {

// Exit codes (README "Exit codes"). Usage errors are 2 like most Unix tools.
int ExitCodeFor(Errc code);
// Prints "coldstart: error: <message>" as one line on stderr; returns ExitCodeFor(code).
int ReportError(const Error& e);

enum class ProgressMode { kAuto, kBar, kJson, kOff };
Result<ProgressMode> ParseProgressMode(const std::string& text);

// A bar on a TTY ("\r[#####-----] 1.2/2.0 GiB 1.5 GB/s ETA 1s"), JSON lines about once a
// second in kJson mode, nothing in kOff (and in kAuto when stderr is not a TTY).
class ProgressPrinter {
 public:
  ProgressPrinter(ProgressMode mode, std::string what);
  ~ProgressPrinter();
  void Update(std::uint64_t done, std::uint64_t total);
  void Finish();

 private:
  ProgressMode mode_;
  std::string what_;
  std::chrono::steady_clock::time_point start_, last_;
  bool drawn_ = false;
};

double SecondsSince(std::chrono::steady_clock::time_point t0);

// SHA-256 (hex) of `sizes.size()` items spread over the cores, largest first. `feed(i, buf)`
// returns item i's bytes: a pointer to them, or after copying them into `buf` (read back from
// a device). The first error wins.
using DigestFeed = std::function<Result<const std::byte*>(std::size_t i, std::vector<std::byte>& buf)>;
Result<std::vector<std::string>> ParallelSha256(const std::vector<std::uint64_t>& sizes, const DigestFeed& feed);
std::string FormatRate(double bytes_per_second);  // "1.52 GB/s" (decimal, like dd and curl)

}  // namespace coldstart::cli
