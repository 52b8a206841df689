#include "coldstart/core/env.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>

extern char** environ;

namespace coldstart {
namespace {

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

namespace {
struct Registered {
  std::string_view module;
  int rank;
  std::span<const EnvVarInfo> vars;
};
// Function-local so registrars in any translation unit find it constructed.
std::vector<Registered>& Registry() {
  static std::vector<Registered> r;
  return r;
}
}  // namespace

EnvRegistrar::EnvRegistrar(std::string_view module, int rank, std::span<const EnvVarInfo> vars) {
  auto& r = Registry();
  auto pos = std::find_if(r.begin(), r.end(), [&](const Registered& x) { return x.rank > rank; });
  r.insert(pos, Registered{module, rank, vars});
}

std::vector<EnvVarInfo> KnownEnvVars() {
  std::vector<EnvVarInfo> out;
  for (const auto& m : Registry()) out.insert(out.end(), m.vars.begin(), m.vars.end());
  return out;
}

const EnvVarInfo* FindEnvVar(std::string_view name) {
  for (const auto& m : Registry())
    for (const auto& v : m.vars)
      if (v.name == name) return &v;
  return nullptr;
}

std::string RedactEnvValue(std::string_view name, std::string_view value) {
  if (const EnvVarInfo* info = FindEnvVar(name); info && info->secret) return "(set, hidden)";
  std::string out(value);
  const auto scheme = out.find("://");
  if (scheme == std::string::npos) return out;
  const std::size_t auth_start = scheme + 3;
  std::size_t auth_end = out.find_first_of("/?#", auth_start);
  if (auth_end == std::string::npos) auth_end = out.size();
  const auto at = out.rfind('@', auth_end);
  if (at != std::string::npos && at >= auth_start) {
    const auto colon = out.find(':', auth_start);
    if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
  }
  if (auto q = out.find('?', auth_start); q != std::string::npos) out = out.substr(0, q + 1) + "***";
  return out;
}

Env Env::FromProcess() {
  std::map<std::string, std::string> values;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    size_t eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view name = kv.substr(0, eq);
    bool known = name.substr(0, kPrefix.size()) == kPrefix;
    known = known || FindEnvVar(name) != nullptr;
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
    if (FindEnvVar(name) == nullptr) {
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
