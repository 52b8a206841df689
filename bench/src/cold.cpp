// --cold: the model's pages out of the page cache before a run, and a check that they are.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <filesystem>

#include "coldstart/bench/runner.h"

namespace coldstart::bench {
namespace {

namespace fs = std::filesystem;

Result<std::vector<std::string>> FilesUnder(const std::vector<std::string>& paths) {
  std::vector<std::string> files;
  for (const auto& p : paths) {
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) {
      files.push_back(p);
      continue;
    }
    if (!fs::is_directory(p, ec)) continue;  // not made yet (a destination): nothing cached
    for (fs::recursive_directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec))
      if (it->is_regular_file(ec)) files.push_back(it->path().string());
    if (ec) return MakePathError("listing " + p, ec.value());
  }
  return files;
}

// Resident bytes of one file (mincore over a PROT_NONE-free read mapping).
Result<std::uint64_t> ResidentOf(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return MakePathError("open " + path, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size == 0) {
    ::close(fd);
    return std::uint64_t{0};
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) return MakePathError("mmap " + path, errno);
  const long page = ::sysconf(_SC_PAGESIZE);
  std::vector<unsigned char> vec((size + page - 1) / page);
  const int rc = ::mincore(m, size, vec.data());
  const int err = errno;
  ::munmap(m, size);
  if (rc != 0) return MakePathError("mincore " + path, err);
  std::uint64_t pages = 0;
  for (auto v : vec) pages += v & 1;
  return std::min<std::uint64_t>(pages * static_cast<std::uint64_t>(page), size);
}

Result<std::uint64_t> Resident(const std::vector<std::string>& files) {
  std::uint64_t total = 0;
  for (const auto& f : files) {
    CS_ASSIGN_OR_RETURN(auto r, ResidentOf(f));
    total += r;
  }
  return total;
}

}  // namespace

Result<std::uint64_t> ResidentBytes(const std::string& path) {
  CS_ASSIGN_OR_RETURN(auto files, FilesUnder({path}));
  return Resident(files);
}

Result<std::string> DropPages(const std::vector<std::string>& paths) {
  CS_ASSIGN_OR_RETURN(auto files, FilesUnder(paths));
  std::uint64_t total = 0;
  for (const auto& f : files) {
    const int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return MakePathError("open " + f, errno);
    struct stat st {};
    if (::fstat(fd, &st) == 0) total += static_cast<std::uint64_t>(st.st_size);
    // Dirty pages are not dropped: write them back first.
    ::fdatasync(fd);
    const int rc = ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
    if (rc != 0) return MakeSysError(Errc::kIo, "posix_fadvise(DONTNEED) " + f, rc);
  }
  CS_ASSIGN_OR_RETURN(auto left, Resident(files));
  if (left == 0) return std::string("fadvise");
  // Pages mapped by another process stay; the whole page cache can still go, where allowed.
  if (::access("/proc/sys/vm/drop_caches", W_OK) == 0) {
    if (FILE* f = std::fopen("/proc/sys/vm/drop_caches", "w")) {
      const bool wrote = std::fputs("1\n", f) >= 0;
      if (std::fclose(f) == 0 && wrote) {
        CS_ASSIGN_OR_RETURN(left, Resident(files));
        if (left == 0) return std::string("fadvise+drop_caches");
      }
    }
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "fadvise (%.0f%% still resident)",
                total ? 100.0 * static_cast<double>(left) / static_cast<double>(total) : 0.0);
  return std::string(buf);
}

}  // namespace coldstart::bench
