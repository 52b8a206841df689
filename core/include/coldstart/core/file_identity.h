// What a local file was when it was looked at: device, inode, size and the modification and
// change times in nanoseconds. Two looks that differ mean the file was replaced or rewritten in
// between (a same-size rewrite in place keeps device, inode and size but moves both times).
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <string>

namespace coldstart {

struct FileIdentity {
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;
  std::int64_t ctime_ns = 0;

  // Header-only so the parser sources build alone (tests/ builds them with sanitizers).
  static FileIdentity FromStat(const struct stat& st) {
    FileIdentity id;
    id.dev = static_cast<std::uint64_t>(st.st_dev);
    id.ino = static_cast<std::uint64_t>(st.st_ino);
    id.size = static_cast<std::uint64_t>(st.st_size);
    id.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
    id.ctime_ns = static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec;
    return id;
  }
  // False for a default identity (a remote object, or a file never stat'ed): nothing to compare.
  bool known() const { return ino != 0 || dev != 0; }
  bool operator==(const FileIdentity&) const = default;
};

// What differs from `before` to `after`, for an error message: "replaced by another file",
// "size 10 -> 12 bytes", "modified at 2026-12-03T05:40:01.123456789Z".
std::string DescribeFileChange(const FileIdentity& before, const FileIdentity& after);

}  // namespace coldstart
