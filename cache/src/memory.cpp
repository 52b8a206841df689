#include "coldstart/cache/memory.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <optional>
#include <sstream>
#include <string_view>
#include <vector>

#include "coldstart/core/env.h"

namespace coldstart::cache {
namespace {

constexpr std::uint64_t kNoLimit = UINT64_MAX;
// cgroup v1 reports "no limit" as LONG_MAX rounded down to a page (9223372036854771712);
// anything from 2^60 up is treated as none.
constexpr std::uint64_t kV1Unlimited = 1ull << 60;

std::optional<std::string> ReadText(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\n' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

std::optional<std::uint64_t> ParseU64(std::string_view s) {
  s = Trim(s);
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<std::uint64_t> ReadU64(const std::string& path) {
  auto t = ReadText(path);
  if (!t) return std::nullopt;
  return ParseU64(*t);
}

// The value of `key` in a "key value" file (memory.stat), or of "Key: N kB" in /proc/meminfo.
std::optional<std::uint64_t> ReadKeyed(const std::string& path, std::string_view key) {
  auto t = ReadText(path);
  if (!t) return std::nullopt;
  std::istringstream in(*t);
  for (std::string line; std::getline(in, line);) {
    std::string_view l = line;
    if (l.size() <= key.size() || l.substr(0, key.size()) != key) continue;
    std::string_view rest = l.substr(key.size());
    if (rest.front() == ':') rest.remove_prefix(1);
    else if (rest.front() != ' ' && rest.front() != '\t') continue;
    rest = Trim(rest);
    std::uint64_t mult = 1;
    if (rest.size() > 3 && rest.substr(rest.size() - 3) == " kB") {
      rest.remove_suffix(3);
      mult = 1024;
    }
    auto v = ParseU64(rest);
    if (!v || *v > UINT64_MAX / mult) return std::nullopt;
    return *v * mult;
  }
  return std::nullopt;
}

bool IsDir(const std::string& path) { return ::access((path + "/.").c_str(), F_OK) == 0; }

struct Level {
  std::uint64_t limit = kNoLimit;
  std::uint64_t available = kNoLimit;
};

// One cgroup folder's limit and what is left of it; kNoLimit when it has none (or cannot say).
Level ReadLevel(const std::string& dir, bool v2) {
  Level l;
  std::optional<std::uint64_t> limit, usage, inactive;
  if (v2) {
    auto t = ReadText(dir + "/memory.max");
    if (!t || Trim(*t) == "max") return l;
    limit = ParseU64(*t);
    usage = ReadU64(dir + "/memory.current");
    inactive = ReadKeyed(dir + "/memory.stat", "inactive_file");
  } else {
    limit = ReadU64(dir + "/memory.limit_in_bytes");
    if (limit && *limit >= kV1Unlimited) return l;
    usage = ReadU64(dir + "/memory.usage_in_bytes");
    inactive = ReadKeyed(dir + "/memory.stat", "total_inactive_file");
    if (!inactive) inactive = ReadKeyed(dir + "/memory.stat", "inactive_file");
  }
  if (!limit || !usage) return l;  // malformed or missing: no limit we can trust
  const std::uint64_t working = *usage - std::min(*usage, inactive.value_or(0));
  l.limit = *limit;
  l.available = *limit - std::min(*limit, working);
  return l;
}

std::vector<std::string> Components(std::string_view path) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < path.size()) {
    std::size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    if (j > i) {
      std::string_view c = path.substr(i, j - i);
      if (c == "..") return {};  // never leave the mount
      if (c != ".") out.emplace_back(c);
    }
    i = j + 1;
  }
  return out;
}

}  // namespace

MemoryAvailability ProbeAvailableMemory(const MemoryProbe& probe) {
  MemoryAvailability m;
  if (auto avail = ReadKeyed(probe.meminfo, "MemAvailable")) {
    m.host_bytes = *avail;
  } else {
    long pages = ::sysconf(_SC_AVPHYS_PAGES), size = ::sysconf(_SC_PAGESIZE);
    m.host_bytes = pages > 0 && size > 0 ? static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(size)
                                         : (4ull << 30);
  }
  m.bytes = m.host_bytes;

  // v1's memory controller line ("4:memory:/path", maybe "4:cpu,memory:/path") wins over the
  // v2 line ("0::/path"), which on a hybrid system has no memory controller.
  std::optional<std::string> v1_path, v2_path;
  if (auto text = ReadText(probe.proc_self_cgroup)) {
    std::istringstream in(*text);
    for (std::string line; std::getline(in, line);) {
      auto a = line.find(':');
      auto b = a == std::string::npos ? std::string::npos : line.find(':', a + 1);
      if (b == std::string::npos) continue;
      std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
      if (line.substr(0, a) == "0" && controllers.empty()) v2_path = path;
      std::istringstream cs(controllers);
      for (std::string c; std::getline(cs, c, ',');)
        if (c == "memory") v1_path = path;
    }
  }
  const bool v2 = !v1_path.has_value();
  std::string mount = v2 ? probe.cgroup_root : probe.cgroup_root + "/memory";
  const std::optional<std::string>& rel = v2 ? v2_path : v1_path;
  if (!rel || !IsDir(mount)) return m;
  std::vector<std::string> comps = Components(*rel);
  // Without a cgroup namespace the path names the host's view; the mount is then our own
  // cgroup (what Docker mounts), so start there.
  {
    std::string dir = mount;
    for (const auto& c : comps) dir += "/" + c;
    if (!IsDir(dir)) comps.clear();
  }
  std::uint64_t best = kNoLimit;
  for (std::size_t k = comps.size() + 1; k-- > 0;) {
    std::string dir = mount;
    for (std::size_t i = 0; i < k; ++i) dir += "/" + comps[i];
    Level l = ReadLevel(dir, v2);
    if (l.limit == kNoLimit || l.available >= best) continue;
    best = l.available;
    m.cgroup_limit = l.limit;
    m.cgroup = std::string(v2 ? "v2 " : "v1 ") + dir;
  }
  m.bytes = std::min(m.host_bytes, best);
  return m;
}

std::uint64_t AvailableMemoryBytes(const MemoryProbe& probe) { return ProbeAvailableMemory(probe).bytes; }

std::uint64_t AvailableMemoryBytes() { return AvailableMemoryBytes(MemoryProbe{}); }

std::string MemoryAvailability::ToString() const {
  std::string s = FormatBytes(static_cast<double>(bytes)) + " available";
  if (cgroup_limit)
    s += " (cgroup " + cgroup.substr(0, 2) + " limit " + FormatBytes(static_cast<double>(cgroup_limit)) + " at " +
         cgroup.substr(3) + ")";
  else
    s += " (MemAvailable; no cgroup memory limit)";
  return s;
}

}  // namespace coldstart::cache
