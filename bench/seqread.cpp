// Baseline for bench/local_load.py: read() each file front to back into one reused buffer,
// the way `cat` or a naive loader does. Prints one JSON row.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: seqread BUFFER_BYTES FILE...\n");
    return 2;
  }
  const std::size_t buf_size = std::strtoull(argv[1], nullptr, 10);
  std::vector<char> buf(buf_size);
  auto t0 = std::chrono::steady_clock::now();
  unsigned long long total = 0;
  for (int i = 2; i < argc; ++i) {
    int fd = ::open(argv[i], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      std::perror(argv[i]);
      return 1;
    }
    for (;;) {
      ssize_t n = ::read(fd, buf.data(), buf.size());
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
