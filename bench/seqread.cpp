// Baselines for bench/local_load.py: read() each file front to back, the way `cat` or a naive
// loader does, either into one reused buffer (bytes discarded: what the target names)
// or into one fresh buffer as large as the files, with transparent huge pages, like coldstart's
// arena (bytes kept: what a loader must do). Prints one JSON row.
//   seqread BUFFER_BYTES FILE...     reused buffer
//   seqread --keep FILE...           fresh buffer holding everything
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: seqread BUFFER_BYTES|--keep FILE...\n");
    return 2;
  }
  const bool keep = std::strcmp(argv[1], "--keep") == 0;
  auto t0 = std::chrono::steady_clock::now();
  std::size_t total_size = 0;
  for (int i = 2; i < argc; ++i) {
    struct stat st {};
    if (::stat(argv[i], &st) != 0) {
      std::perror(argv[i]);
      return 1;
    }
    total_size += static_cast<std::size_t>(st.st_size);
  }
  const std::size_t chunk = keep ? (16u << 20) : std::strtoull(argv[1], nullptr, 10);
  std::vector<char> reused;
  char* arena = nullptr;
  if (keep) {
    arena = static_cast<char*>(::mmap(nullptr, total_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (arena == MAP_FAILED) return 1;
    ::madvise(arena, total_size, MADV_HUGEPAGE);
  } else {
    reused.resize(chunk);
  }
  unsigned long long total = 0;
  for (int i = 2; i < argc; ++i) {
    int fd = ::open(argv[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      std::perror(argv[i]);
      return 1;
    }
    for (;;) {
      char* dst = keep ? arena + total : reused.data();
      ssize_t n = ::read(fd, dst, chunk);
      if (n < 0) {
        std::perror("read");
        return 1;
      }
      if (n == 0) break;
      total += static_cast<unsigned long long>(n);
    }
    ::close(fd);
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("{\"bytes\": %llu, \"seconds\": %.6f}\n", total, s);
  return 0;
}
