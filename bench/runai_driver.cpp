// Drives Run:ai Model Streamer's C library (libstreamer.so from the PyPI package
// runai-model-streamer) the way its Python front (FileStreamer / SafetensorsStreamer) does, with no
// Python interpreter in the process: start a streamer, ask the library for the direct-I/O block of
// the files' mounts, submit every tensor of every file as one range whose destination is in one
// buffer per file, placed congruent with its file offset (what requests_iterator.py's _place()
// does so that the library can read directly), wait for one response per range, end the streamer.
// The safetensors headers are read with pread() (the Python front reads them through the streamer:
// two tiny submissions). Compiled against no Run:ai header: the symbols are taken with dlsym and
// declared here as libstreamer/__init__.py declares them for ctypes. Prints one JSON row.
//   runai_driver [--whole-file] [--one-submission] [--verify] LIBSTREAMER_SO FILE...
// --whole-file submits one range per file (the data section) instead of one per tensor;
// --one-submission makes one submission for all files instead of one per file; --verify compares
// every byte with pread() afterwards (for checking the harness, not for timing).
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

struct RunaiDevice {  // RunaiFileStreamerDevice, passed by value
  int type;           // 0 = CPU
  int id;
};

using StartFn = int (*)(void** streamer);
using EndFn = void (*)(void* streamer);
using ProbeFn = int (*)(void* streamer, const char** paths, unsigned num_paths, std::size_t* block);
using RequestFn = int (*)(void* streamer, std::uint64_t* submission_id, std::uint32_t num_files, const char** paths,
                          const std::uint32_t* num_ranges, const std::size_t* range_offsets,
                          const std::size_t* range_sizes, void* const* range_dsts, RunaiDevice device);
using ResponseFn = int (*)(void* streamer, std::uint64_t* submission_id, std::uint32_t* file_index,
                           std::uint32_t* range_index, int* submission_done, unsigned timeout_ms);
using ResponseStrFn = const char* (*)(int code);

struct File {
  std::string path;
  std::size_t data_start = 0;                                  // 8 + header length
  std::vector<std::pair<std::size_t, std::size_t>> ranges;     // absolute file offset, size
  char* buffer = nullptr;                                      // base congruent with data_start
  std::size_t data_size = 0;
};

bool ReadExact(int fd, void* dst, std::size_t size, std::size_t offset) {
  auto* p = static_cast<char*>(dst);
  while (size > 0) {
    const ssize_t n = ::pread(fd, p, size, static_cast<off_t>(offset));
    if (n <= 0) return false;
    p += n;
    size -= static_cast<std::size_t>(n);
    offset += static_cast<std::size_t>(n);
  }
  return true;
}

// Every "data_offsets":[begin,end] of a safetensors header, sorted by begin.
bool ParseHeader(File& f, bool whole_file) {
  const int fd = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  std::uint64_t n = 0;
  std::string header;
  bool ok = ReadExact(fd, &n, 8, 0) && n < (100u << 20);
  if (ok) {
    header.resize(n);
    ok = ReadExact(fd, header.data(), n, 8);
  }
  ::close(fd);
  if (!ok) return false;
  f.data_start = 8 + n;
  std::vector<std::pair<std::size_t, std::size_t>> spans;
  const std::string key = "\"data_offsets\"";
  for (std::size_t at = header.find(key); at != std::string::npos; at = header.find(key, at + key.size())) {
    const char* p = header.c_str() + at + key.size();
    while (*p == ' ' || *p == ':' || *p == '[') ++p;
    char* end = nullptr;
    const std::size_t begin = std::strtoull(p, &end, 10);
    p = end;
    while (*p == ' ' || *p == ',') ++p;
    const std::size_t stop = std::strtoull(p, &end, 10);
    if (stop < begin) return false;
    spans.emplace_back(begin, stop);
  }
  std::sort(spans.begin(), spans.end());
  for (const auto& [begin, stop] : spans) f.data_size = std::max(f.data_size, stop);
  if (whole_file) {
    if (f.data_size > 0) f.ranges.emplace_back(f.data_start, f.data_size);
  } else {
    for (const auto& [begin, stop] : spans) f.ranges.emplace_back(f.data_start + begin, stop - begin);
  }
  return true;
}

template <typename T>
T Sym(void* lib, const char* name) {
  void* p = ::dlsym(lib, name);
  if (p == nullptr) {
    std::fprintf(stderr, "runai_driver: %s not in the library\n", name);
    std::exit(1);
  }
  return reinterpret_cast<T>(p);
}

}  // namespace

int main(int argc, char** argv) {
  const auto t0 = std::chrono::steady_clock::now();
  bool whole_file = false, per_file = true, verify = false;
  int i = 1;
  for (; i < argc && std::strncmp(argv[i], "--", 2) == 0; ++i) {
    if (std::strcmp(argv[i], "--whole-file") == 0) whole_file = true;
    else if (std::strcmp(argv[i], "--one-submission") == 0) per_file = false;
    else if (std::strcmp(argv[i], "--verify") == 0) verify = true;
    else {
      std::fprintf(stderr, "runai_driver: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (argc - i < 2) {
    std::fprintf(stderr, "usage: runai_driver [--whole-file] [--one-submission] [--verify] LIBSTREAMER_SO FILE...\n");
    return 2;
  }
  void* lib = ::dlopen(argv[i], RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    std::fprintf(stderr, "runai_driver: %s\n", ::dlerror());
    return 1;
  }
  const auto start = Sym<StartFn>(lib, "runai_file_streamer_start");
  const auto end = Sym<EndFn>(lib, "runai_file_streamer_end");
  const auto probe = Sym<ProbeFn>(lib, "runai_file_streamer_probe_direct_block_size");
  const auto request = Sym<RequestFn>(lib, "runai_file_streamer_request");
  const auto response = Sym<ResponseFn>(lib, "runai_file_streamer_response");
  const auto response_str = Sym<ResponseStrFn>(lib, "runai_file_streamer_response_str");

  std::vector<File> files;
  std::vector<const char*> paths;
  for (++i; i < argc; ++i) files.emplace_back().path = argv[i];
  for (auto& f : files) {
    if (!ParseHeader(f, whole_file)) {
      std::fprintf(stderr, "runai_driver: cannot read the safetensors header of %s\n", f.path.c_str());
      return 1;
    }
    paths.push_back(f.path.c_str());
  }

  void* streamer = nullptr;
  int rc = start(&streamer);
  if (rc != 0) {
    std::fprintf(stderr, "runai_driver: start: %s\n", response_str(rc));
    return 1;
  }
  std::size_t block = 0;
  rc = probe(streamer, paths.data(), static_cast<unsigned>(paths.size()), &block);
  if (block == 0) block = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

  // One buffer per file, each range placed so that its address and its file offset leave the same
  // remainder modulo the block.
  std::size_t total = 0, num_ranges = 0;
  std::vector<std::uint32_t> counts;
  std::vector<std::size_t> offsets, sizes;
  std::vector<void*> dsts;
  for (auto& f : files) {
    const std::size_t bytes = f.data_size + 2 * block;
    char* raw = static_cast<char*>(std::malloc(bytes));
    if (raw == nullptr) return 1;
    if (bytes >= (4u << 20)) {  // numpy's default_malloc
      const std::size_t skip = 4096 - reinterpret_cast<std::uintptr_t>(raw) % 4096;
      ::madvise(raw + skip, bytes - skip, MADV_HUGEPAGE);
    }
    const auto addr = reinterpret_cast<std::uintptr_t>(raw);
    f.buffer = raw + ((f.data_start % block) + block - addr % block) % block;
    counts.push_back(static_cast<std::uint32_t>(f.ranges.size()));
    for (const auto& [offset, size] : f.ranges) {
      offsets.push_back(offset);
      sizes.push_back(size);
      dsts.push_back(f.buffer + (offset - f.data_start));
      total += size;
      ++num_ranges;
    }
  }

  std::size_t submitted_files = 0, range_base = 0;
  while (submitted_files < files.size()) {
    const std::size_t n = per_file ? 1 : files.size();
    std::size_t r = 0;
    for (std::size_t k = 0; k < n; ++k) r += counts[submitted_files + k];
    std::uint64_t id = 0;
    rc = request(streamer, &id, static_cast<std::uint32_t>(n), paths.data() + submitted_files,
                 counts.data() + submitted_files, offsets.data() + range_base, sizes.data() + range_base,
                 dsts.data() + range_base, RunaiDevice{0, 0});
    if (rc != 0) {
      std::fprintf(stderr, "runai_driver: request: %s\n", response_str(rc));
      return 1;
    }
    submitted_files += n;
    range_base += r;
  }
  for (std::size_t got = 0; got < num_ranges; ++got) {
    std::uint64_t id = 0;
    std::uint32_t file_index = 0, range_index = 0;
    int done = 0;
    rc = response(streamer, &id, &file_index, &range_index, &done, 0);
    if (rc != 0) {
      std::fprintf(stderr, "runai_driver: response %zu of %zu: %s\n", got, num_ranges, response_str(rc));
      return 1;
    }
  }
  end(streamer);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  if (verify) {
    std::vector<char> expect;
    for (const auto& f : files) {
      const int fd = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
      for (const auto& [offset, size] : f.ranges) {
        expect.resize(size);
        if (!ReadExact(fd, expect.data(), size, offset) ||
            std::memcmp(expect.data(), f.buffer + (offset - f.data_start), size) != 0) {
          std::fprintf(stderr, "runai_driver: %s: bytes differ in the range at %zu\n", f.path.c_str(), offset);
          return 1;
        }
      }
      ::close(fd);
    }
  }
  std::printf("{\"files\": %zu, \"ranges\": %zu, \"bytes\": %zu, \"direct_block\": %zu, \"seconds\": %.6f, "
              "\"verified\": %s}\n",
              files.size(), num_ranges, total, block, seconds, verify ? "true" : "false");
  return 0;
}
