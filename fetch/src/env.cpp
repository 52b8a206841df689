#include "coldstart/env.h"

#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

extern char** environ;

namespace coldstart {
namespace {

// name, default, why. Keep sorted by module; `coldstart env` prints this.
constexpr std::array kVars = {
    // fetch/: local reads
    EnvVarInfo{"COLDSTART_IO_ENGINE", "auto",
               "auto|uring|pread. auto probes io_uring and falls back to pread threads when "
               "the kernel or a seccomp profile refuses it."},
    EnvVarInfo{"COLDSTART_DIRECT_IO", "auto",
               "auto|on|off. auto reads a file with O_DIRECT unless most of it is already in the "
               "page cache (checked with mincore): cold NVMe reads skip a copy, warm reads stay "
               "memory-speed."},
    EnvVarInfo{"COLDSTART_READ_CHUNK", "8MiB",
               "Size of one local read request. 8 MiB saturated virtio and NVMe disks in our "
               "runs; smaller chunks cost CPU per byte, larger ones delay the first tensor."},
    EnvVarInfo{"COLDSTART_READ_QUEUE_DEPTH", "8",
               "Reads in flight per I/O thread (io_uring SQ entries)."},
    EnvVarInfo{"COLDSTART_READ_THREADS", "0",
               "I/O threads for local reads; 0 = one per core, at most 8. Warm page-cache reads "
               "are memory copies done by the submitting thread, so they scale with threads."},
    // fetch/: remote ranged reads
    EnvVarInfo{"COLDSTART_CONCURRENCY", "32",
               "Ranged GETs in flight. Cloud storage serves each connection at tens of MB/s; "
               "with a 50 MB/s cap, 32 connections reached 1.43 GB/s of a 2-core machine's "
               "~2.2 GB/s (bench/RESULTS.md), 64 gained little and cost CPU."},
    EnvVarInfo{"COLDSTART_FETCH_THREADS", "0",
               "Threads driving the curl multi handles; 0 = one per core, at most 4."},
    EnvVarInfo{"COLDSTART_CHUNK", "16MiB",
               "Bytes per ranged GET. Large enough that request latency (~30 ms to GCS) is "
               "amortised, small enough to spread a shard over many connections."},
    EnvVarInfo{"COLDSTART_HTTP2", "0",
               "Use HTTP/2 (multiplexed streams on one connection). Off by default: per-"
               "connection caps make separate HTTP/1.1 connections faster."},
    // fetch/: remote sources (gs://, http(s)://)
    EnvVarInfo{"COLDSTART_ENDPOINT", "https://storage.googleapis.com",
               "GCS JSON API endpoint, same as --endpoint (which wins). Use it for a private or "
               "regional endpoint; credentials are still sent to it."},
    EnvVarInfo{"STORAGE_EMULATOR_HOST", "(unset)",
               "Google client libraries' emulator switch: host:port or URL of a GCS emulator "
               "(http:// assumed). Used when no endpoint is given; requests are anonymous "
               "unless an access token is given."},
    EnvVarInfo{"COLDSTART_ACCESS_TOKEN", "(unset)",
               "OAuth access token for GCS, same as --access-token (which wins); tried before "
               "any credentials file. Never printed."},
    EnvVarInfo{"GOOGLE_APPLICATION_CREDENTIALS", "(unset)",
               "Path of a service_account or authorized_user JSON key, as in every Google "
               "client library; tried after an explicit token. Malformed = error."},
    EnvVarInfo{"CLOUDSDK_CONFIG", "$HOME/.config/gcloud",
               "gcloud's config folder; its application_default_credentials.json (from `gcloud "
               "auth application-default login`) is tried after GOOGLE_APPLICATION_CREDENTIALS."},
    EnvVarInfo{"HOME", "(from the login)",
               "Only used to find gcloud's config folder when CLOUDSDK_CONFIG is unset."},
    EnvVarInfo{"GCE_METADATA_HOST", "metadata.google.internal",
               "host[:port] of the GCE/GKE metadata server, the last credentials source before "
               "anonymous (also how tests point it at a local fake)."},
    EnvVarInfo{"COLDSTART_METADATA", "auto",
               "auto|off. auto asks the metadata server for a token when no other credentials "
               "are found (a ~1 s probe off Google Cloud); off skips it and goes anonymous."},
    EnvVarInfo{"COLDSTART_RETRY_ATTEMPTS", "8",
               "Attempts per remote request, the first included. 8 rides out a ~30 s outage "
               "with the default backoff."},
    EnvVarInfo{"COLDSTART_RETRY_INITIAL", "200ms",
               "Backoff before the second attempt; doubles per failure, with equal jitter (a "
               "delay is 50-100% of the base) so many loaders do not retry in lockstep."},
    EnvVarInfo{"COLDSTART_RETRY_MAX_BACKOFF", "10s",
               "Cap on one backoff delay."},
    EnvVarInfo{"COLDSTART_RETRY_DEADLINE", "10m",
               "No new attempt of a request this long after its first attempt."},
    EnvVarInfo{"COLDSTART_STALL_TIMEOUT", "20s",
               "A transfer that receives no bytes for this long is abandoned and retried: "
               "faster than waiting for TCP to notice a dead connection."},
    EnvVarInfo{"COLDSTART_PREFETCH_FSYNC", "0",
               "1 = fdatasync each prefetched file before renaming it (survives power loss). Off "
               "by default: it doubled a 1 GiB prefetch's time here, and a re-run re-verifies "
               "every present file's CRC32C, so a torn file is fetched again."},
    // loader/: device streaming
    EnvVarInfo{"COLDSTART_STAGING_BYTES", "0",
               "Staging budget for --device cuda/sim; 0 = 1/8 of available memory, at most 2 GiB. "
               "Host memory of a device load stays within it plus ~128 MiB whatever the model."},
    EnvVarInfo{"COLDSTART_SIM_BANDWIDTH", "25GB",
               "Copy bandwidth of the stand-in device in bytes/s (PCIe 4.0 x16 pinned ~25 GB/s)."},
    EnvVarInfo{"COLDSTART_CUDA_STREAMS", "4",
               "CUDA streams (copies in flight) for --device cuda, 1 to 64. 4 keeps the copy "
               "engine busy while completions are reported and conversion kernels run."},
    // loader/
    EnvVarInfo{"COLDSTART_HUGE_PAGES", "1",
               "Ask for transparent huge pages on the host arena: a 2 GiB model takes 1024 page "
               "faults instead of 524288."},
    EnvVarInfo{"COLDSTART_PROGRESS", "auto",
               "auto|bar|json|off: what --progress auto means. auto draws a bar on a TTY and nothing "
               "otherwise; json writes one JSON line a second to stderr (container logs)."},
};

constexpr std::string_view kPrefix = "COLDSTART_";

Error BadValue(std::string_view what, std::string_view text, std::string_view expect) {
  return MakeError(Errc::kInvalidArgument, std::string(what) + ": '" + std::string(text) +
                                               "' is not " + std::string(expect));
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// Splits "12.5GiB" into 12.5 and "GiB"; fails on anything that is not a plain decimal.
bool SplitNumber(std::string_view s, double* number, std::string_view* suffix) {
  size_t i = 0;
  bool digits = false, dot = false;
  while (i < s.size()) {
    char c = s[i];
    if (c >= '0' && c <= '9') {
      digits = true;
    } else if (c == '.' && !dot) {
      dot = true;
    } else {
      break;
    }
    ++i;
  }
  if (!digits) return false;
  std::string num(s.substr(0, i));
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(num.c_str(), &end);
  if (errno != 0 || end != num.c_str() + num.size() || !std::isfinite(v)) return false;
  *number = v;
  *suffix = Trim(s.substr(i));
  return true;
}

bool IEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

}  // namespace

std::span<const EnvVarInfo> KnownEnvVars() { return kVars; }

Env Env::FromProcess() {
  std::map<std::string, std::string> values;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    size_t eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view name = kv.substr(0, eq);
    bool known = name.substr(0, kPrefix.size()) == kPrefix;
    for (const auto& v : kVars) known = known || v.name == name;
    if (known) values.emplace(std::string(name), std::string(kv.substr(eq + 1)));
  }
  return FromMap(std::move(values));
}

Env Env::FromMap(std::map<std::string, std::string> values) {
  Env env;
  for (auto& [k, v] : values) env.values_.emplace(k, v);
  return env;
}

Status Env::Validate() const {
  for (const auto& [name, value] : values_) {
    if (name.substr(0, kPrefix.size()) != kPrefix) continue;
    bool known = false;
    for (const auto& v : kVars) known = known || v.name == name;
    if (!known) {
      return MakeError(Errc::kInvalidArgument,
                       "unknown environment variable " + name +
                           " (run `coldstart env` for the list of COLDSTART_* variables)");
    }
  }
  return OkStatus();
}

std::optional<std::string> Env::Get(std::string_view name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

Result<std::optional<std::uint64_t>> Env::GetBytes(std::string_view name) const {
  auto v = Get(name);
  if (!v) return std::optional<std::uint64_t>{};
  auto r = ParseBytes(*v);
  if (!r.ok()) return std::move(r).error().WithContext(name);
  return std::optional<std::uint64_t>{*r};
}

Result<std::optional<std::uint64_t>> Env::GetUint(std::string_view name) const {
  auto v = Get(name);
  if (!v) return std::optional<std::uint64_t>{};
  auto r = ParseUint(*v);
  if (!r.ok()) return std::move(r).error().WithContext(name);
  return std::optional<std::uint64_t>{*r};
}

Result<std::optional<double>> Env::GetSeconds(std::string_view name) const {
  auto v = Get(name);
  if (!v) return std::optional<double>{};
  auto r = ParseSeconds(*v);
  if (!r.ok()) return std::move(r).error().WithContext(name);
  return std::optional<double>{*r};
}

Result<std::optional<bool>> Env::GetBool(std::string_view name) const {
  auto v = Get(name);
  if (!v) return std::optional<bool>{};
  auto r = ParseBool(*v);
  if (!r.ok()) return std::move(r).error().WithContext(name);
  return std::optional<bool>{*r};
}

Result<std::uint64_t> ParseBytes(std::string_view text) {
  std::string_view s = Trim(text);
  double number = 0;
  std::string_view suffix;
  if (!SplitNumber(s, &number, &suffix)) return BadValue("size", text, "a size like 8MiB");
  struct Unit {
    std::string_view name;
    double mult;
  };
  static constexpr Unit kUnits[] = {
      {"", 1},           {"b", 1},
      {"k", 0x1p10},     {"kb", 0x1p10},  {"kib", 0x1p10},
      {"m", 0x1p20},     {"mb", 0x1p20},  {"mib", 0x1p20},
      {"g", 0x1p30},     {"gb", 0x1p30},  {"gib", 0x1p30},
      {"t", 0x1p40},     {"tb", 0x1p40},  {"tib", 0x1p40},
  };
  for (const auto& u : kUnits) {
    if (IEquals(u.name, suffix)) {
      double bytes = number * u.mult;
      if (bytes >= 0x1p63) return BadValue("size", text, "a size below 8 EiB");
      if (bytes != std::floor(bytes)) return BadValue("size", text, "a whole number of bytes");
      return static_cast<std::uint64_t>(bytes);
    }
  }
  return BadValue("size", text, "a size (units: B, KiB, MiB, GiB, TiB)");
}

Result<std::uint64_t> ParseUint(std::string_view text) {
  std::string_view s = Trim(text);
  if (s.empty() || s.size() > 19) return BadValue("number", text, "a non-negative integer");
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return BadValue("number", text, "a non-negative integer");
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return v;
}

Result<double> ParseSeconds(std::string_view text) {
  std::string_view s = Trim(text);
  double number = 0;
  std::string_view suffix;
  if (!SplitNumber(s, &number, &suffix)) return BadValue("duration", text, "a duration like 30s");
  if (suffix.empty() || suffix == "s") return number;
  if (suffix == "ms") return number / 1000.0;
  if (suffix == "m" || suffix == "min") return number * 60.0;
  if (suffix == "h") return number * 3600.0;
  return BadValue("duration", text, "a duration (units: ms, s, m, h)");
}

Result<bool> ParseBool(std::string_view text) {
  std::string_view s = Trim(text);
  for (auto t : {"1", "true", "yes", "on"})
    if (IEquals(s, t)) return true;
  for (auto f : {"0", "false", "no", "off"})
    if (IEquals(s, f)) return false;
  return BadValue("flag", text, "a boolean (1/0, true/false, yes/no, on/off)");
}

std::string FormatBytes(double bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", bytes, kUnits[u]);
  return buf;
}

}  // namespace coldstart
