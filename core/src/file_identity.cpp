#include "coldstart/core/file_identity.h"

#include <cstdio>
#include <ctime>

namespace coldstart {
namespace {

std::string UtcNanos(std::int64_t ns) {
  std::time_t secs = static_cast<std::time_t>(ns / 1'000'000'000);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char buf[64];
  std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%09lldZ", static_cast<long long>(ns % 1'000'000'000));
  return buf;
}

}  // namespace

std::string DescribeFileChange(const FileIdentity& before, const FileIdentity& after) {
  if (before.dev != after.dev || before.ino != after.ino) return "replaced by another file";
  std::string out;
  if (before.size != after.size)
    out = "size " + std::to_string(before.size) + " -> " + std::to_string(after.size) + " bytes";
  if (before.mtime_ns != after.mtime_ns)
    out += (out.empty() ? "" : ", ") + std::string("modified at ") + UtcNanos(after.mtime_ns);
  else if (before.ctime_ns != after.ctime_ns)
    out += (out.empty() ? "" : ", ") + std::string("changed at ") + UtcNanos(after.ctime_ns);
  return out.empty() ? "unchanged" : out;
}

}  // namespace coldstart
