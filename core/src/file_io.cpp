#include "coldstart/core/file_io.h"

#include <unistd.h>

#include <cerrno>
#include <string>

namespace coldstart {

Result<std::size_t> ReadAt(int fd, void* buf, std::size_t len, std::uint64_t off, std::string_view what) {
  auto* p = static_cast<unsigned char*>(buf);
  std::size_t done = 0;
  while (done < len) {
    ssize_t n = ::pread(fd, p + done, len - done, static_cast<off_t>(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakePathError(std::string(what) + ": cannot read", errno);
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return done;
}

Status WriteAt(int fd, const void* buf, std::size_t len, std::uint64_t off, std::string_view what) {
  const auto* p = static_cast<const unsigned char*>(buf);
  while (len > 0) {
    ssize_t n = ::pwrite(fd, p, len, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return MakePathError(std::string(what) + ": cannot write", errno);
    }
    if (n == 0) return MakePathError(std::string(what) + ": cannot write", ENOSPC);
    p += n;
    off += static_cast<std::uint64_t>(n);
    len -= static_cast<std::size_t>(n);
  }
  return OkStatus();
}

}  // namespace coldstart
