#include "cli.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <optional>
#include <thread>

#include "coldstart/core/hash.h"

#include "coldstart/core/env.h"

namespace coldstart::cli {

int ExitCodeFor(Errc code) {
  switch (code) {
    case Errc::kInvalidArgument: return 2;
    case Errc::kNotFound: return 3;
    case Errc::kFormat: return 4;
    case Errc::kIntegrity: return 5;
    case Errc::kIo: return 6;
    case Errc::kPermissionDenied: return 7;
    case Errc::kHttp:
    case Errc::kNetwork:
    case Errc::kTimeout: return 8;
    case Errc::kUnavailable: return 9;
    case Errc::kResourceExhausted: return 10;
    case Errc::kCancelled: return 130;
    case Errc::kInternal: return 1;
  }
  return 1;
}

int ReportError(const Error& e) {
  std::string msg = e.ToString();
  for (char& c : msg)
    if (c == '\n' || c == '\r') c = ' ';
  std::fprintf(stderr, "coldstart: error: %s\n", msg.c_str());
  return ExitCodeFor(e.code);
}

Result<ProgressMode> ParseProgressMode(const std::string& text) {
  if (text == "auto") return ProgressMode::kAuto;
  if (text == "bar") return ProgressMode::kBar;
  if (text == "json") return ProgressMode::kJson;
  if (text == "off" || text == "none") return ProgressMode::kOff;
  return MakeError(Errc::kInvalidArgument, "progress mode '" + text + "' is not one of auto, bar, json, off");
}

Result<std::vector<std::string>> ParallelSha256(const std::vector<std::uint64_t>& sizes, const DigestFeed& feed) {
  std::vector<std::string> out(sizes.size());
  std::vector<std::size_t> order(sizes.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return sizes[a] > sizes[b]; });
  std::atomic<std::size_t> next{0};
  std::mutex mu;
  std::optional<Error> err;
  auto work = [&] {
    std::vector<std::byte> buf;
    for (std::size_t k; (k = next.fetch_add(1)) < order.size();) {
      const std::size_t i = order[k];
      auto bytes = feed(i, buf);
      if (!bytes.ok()) {
        std::lock_guard lk(mu);
        if (!err) err = std::move(bytes).error();
        return;
      }
      Sha256 h;
      h.Update(*bytes, sizes[i]);
      out[i] = h.HexDigest();
    }
  };
  const unsigned n = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  for (unsigned i = 1; i < n; ++i) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  if (err) return *err;
  return out;
}

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string FormatRate(double bps) {
  char buf[48];
  if (bps >= 1e9)
    std::snprintf(buf, sizeof buf, "%.2f GB/s", bps / 1e9);
  else
    std::snprintf(buf, sizeof buf, "%.1f MB/s", bps / 1e6);
  return buf;
}

ProgressPrinter::ProgressPrinter(ProgressMode mode, std::string what)
    : mode_(mode), what_(std::move(what)), start_(std::chrono::steady_clock::now()), last_(start_) {
  if (mode_ == ProgressMode::kAuto) {
    // COLDSTART_PROGRESS decides what --progress auto means (e.g. json in a container log).
    if (auto v = Env::FromProcess().Get("COLDSTART_PROGRESS")) {
      auto m = ParseProgressMode(*v);
      if (m.ok()) mode_ = *m;
    }
  }
  if (mode_ == ProgressMode::kAuto) mode_ = ::isatty(STDERR_FILENO) ? ProgressMode::kBar : ProgressMode::kOff;
}

ProgressPrinter::~ProgressPrinter() { Finish(); }

void ProgressPrinter::Update(std::uint64_t done, std::uint64_t total) {
  if (mode_ == ProgressMode::kOff) return;
  auto now = std::chrono::steady_clock::now();
  double since_last = std::chrono::duration<double>(now - last_).count();
  if (since_last < (mode_ == ProgressMode::kJson ? 1.0 : 0.1) && done < total) return;
  last_ = now;
  double elapsed = std::chrono::duration<double>(now - start_).count();
  double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0;
  double eta = rate > 0 && total > done ? static_cast<double>(total - done) / rate : 0;
  if (mode_ == ProgressMode::kJson) {
    std::fprintf(stderr,
                 "{\"event\":\"progress\",\"what\":\"%s\",\"bytes\":%llu,\"total\":%llu,\"seconds\":%.3f,"
                 "\"bytes_per_second\":%.0f}\n",
                 what_.c_str(), static_cast<unsigned long long>(done), static_cast<unsigned long long>(total),
                 elapsed, rate);
    return;
  }
  constexpr int kWidth = 30;
  int filled = total > 0 ? static_cast<int>(kWidth * static_cast<double>(done) / static_cast<double>(total)) : kWidth;
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.append(static_cast<std::size_t>(kWidth - filled), '-');
  std::fprintf(stderr, "\r%s [%s] %s / %s  %s  ETA %.0fs   ", what_.c_str(), bar.c_str(),
               FormatBytes(static_cast<double>(done)).c_str(), FormatBytes(static_cast<double>(total)).c_str(),
               FormatRate(rate).c_str(), eta);
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressPrinter::Finish() {
  if (drawn_) {
    std::fprintf(stderr, "\n");
    drawn_ = false;
  }
}

}  // namespace coldstart::cli
