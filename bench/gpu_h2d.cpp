// Host-to-device bandwidth: plain pinned cudaMemcpyAsync against the CudaCopyEngine moving the
// same bytes, so the engine's cost (events, the completion thread, round-robin streams) shows as
// a ratio. 1 GiB in 64 MiB copies on 1 and 4 streams, one warm-up pass and 5 timed repeats; one
// JSON object per line on stdout.
//
//   gpu_h2d [device-index]
//
// Without a usable GPU it prints one line saying so and exits 0, so scripts can run it anywhere.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "coldstart/loader/copy_engine.h"

namespace {

using coldstart::loader::Conversion;
using coldstart::loader::CopyEngine;
using coldstart::loader::CopyRequest;
using Clock = std::chrono::steady_clock;

constexpr std::uint64_t kTotal = 1ull << 30;
constexpr std::uint64_t kCopy = 64ull << 20;
constexpr std::uint64_t kCopies = kTotal / kCopy;
constexpr int kRepeats = 5;

struct Stats {
  double median = 0, min = 0, max = 0;  // GB/s (1e9 bytes per second)
};

Stats Summarise(std::vector<double> gbps) {
  std::sort(gbps.begin(), gbps.end());
  return {gbps[gbps.size() / 2], gbps.front(), gbps.back()};
}

void PrintRow(const char* mode, unsigned streams, const Stats& s) {
  std::printf(
      "{\"bench\":\"gpu_h2d\",\"mode\":\"%s\",\"streams\":%u,\"bytes\":%llu,\"copy_bytes\":%llu,"
      "\"repeats\":%d,\"gbps_median\":%.3f,\"gbps_min\":%.3f,\"gbps_max\":%.3f}\n",
      mode, streams, static_cast<unsigned long long>(kTotal),
      static_cast<unsigned long long>(kCopy), kRepeats, s.median, s.min, s.max);
  std::fflush(stdout);
}

bool Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::fprintf(stderr, "gpu_h2d: %s failed: %s (%s)\n", what, cudaGetErrorString(e),
               cudaGetErrorName(e));
  return false;
}

// RAII for the plain measurement's handles.
struct PinnedHost {
  void* p = nullptr;
  ~PinnedHost() {
    if (p) cudaFreeHost(p);
  }
};
struct DeviceMem {
  void* p = nullptr;
  ~DeviceMem() {
    if (p) cudaFree(p);
  }
};
struct Streams {
  std::vector<cudaStream_t> s;
  ~Streams() {
    for (auto x : s) cudaStreamDestroy(x);
  }
};

// Timed passes of kCopies copies round-robin over `streams`; the first pass is a warm-up.
bool Plain(unsigned streams, void* host, void* dev, Stats* out) {
  Streams ss;
  for (unsigned i = 0; i < streams; ++i) {
    cudaStream_t s = nullptr;
    if (!Check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"))
      return false;
    ss.s.push_back(s);
  }
  std::vector<double> gbps;
  for (int pass = 0; pass <= kRepeats; ++pass) {
    const auto t0 = Clock::now();
    for (std::uint64_t i = 0; i < kCopies; ++i) {
      if (!Check(cudaMemcpyAsync(static_cast<char*>(dev) + i * kCopy,
                                 static_cast<char*>(host) + i * kCopy, kCopy,
                                 cudaMemcpyHostToDevice, ss.s[i % streams]),
                 "cudaMemcpyAsync"))
        return false;
    }
    for (auto s : ss.s)
      if (!Check(cudaStreamSynchronize(s), "cudaStreamSynchronize")) return false;
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    if (pass > 0) gbps.push_back(static_cast<double>(kTotal) / secs / 1e9);
  }
  *out = Summarise(std::move(gbps));
  return true;
}

// The same bytes through the engine: 16 staging slots of 64 MiB (as a loader would allocate
// them), one Submit per slot, Drain per pass.
bool Engine(int device, unsigned streams, Conversion conversion, Stats* out) {
  auto made = coldstart::loader::MakeCudaCopyEngine({.device = device, .streams = streams});
  if (!made.ok()) {
    std::fprintf(stderr, "gpu_h2d: %s\n", made.error().message.c_str());
    return false;
  }
  std::unique_ptr<CopyEngine> engine = std::move(made).value();
  const std::uint64_t out_bytes = conversion == Conversion::kBf16ToF32 ? 2 * kTotal : kTotal;
  auto dev = engine->AllocateDevice(out_bytes);
  if (!dev.ok()) {
    std::fprintf(stderr, "gpu_h2d: %s\n", dev.error().message.c_str());
    return false;
  }
  std::vector<coldstart::loader::StagingMemory> slots;
  for (std::uint64_t i = 0; i < kCopies; ++i) {
    auto s = engine->AllocateStaging(kCopy);
    if (!s.ok()) {
      std::fprintf(stderr, "gpu_h2d: %s\n", s.error().message.c_str());
      return false;
    }
    // 0x3F80 repeated = bf16 1.0: touches every page and is a sane conversion input.
    for (std::uint64_t j = 0; j + 1 < kCopy; j += 2) {
      s->data()[j] = std::byte{0x80};
      s->data()[j + 1] = std::byte{0x3F};
    }
    slots.push_back(std::move(s).value());
  }
  const std::uint64_t out_per_copy = out_bytes / kCopies;
  std::vector<double> gbps;
  for (int pass = 0; pass <= kRepeats; ++pass) {
    const auto t0 = Clock::now();
    for (std::uint64_t i = 0; i < kCopies; ++i) {
      CopyRequest r{slots[i].data(), kCopy, dev->ptr() + i * out_per_copy, conversion};
      auto st = engine->Submit(r, [](coldstart::Status) {});
      if (!st.ok()) {
        std::fprintf(stderr, "gpu_h2d: %s\n", st.error().message.c_str());
        return false;
      }
    }
    if (auto st = engine->Drain(); !st.ok()) {
      std::fprintf(stderr, "gpu_h2d: %s\n", st.error().message.c_str());
      return false;
    }
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    if (pass > 0) gbps.push_back(static_cast<double>(kTotal) / secs / 1e9);  // source bytes
  }
  *out = Summarise(std::move(gbps));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const int device = argc > 1 ? std::atoi(argv[1]) : 0;
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0 || device < 0 || device >= count) {
    std::printf("gpu_h2d: no usable CUDA device cuda:%d on this machine (%s); nothing to measure\n",
                device, e != cudaSuccess ? cudaGetErrorName(e) : "device count too small");
    return 0;
  }
  if (!Check(cudaSetDevice(device), "cudaSetDevice")) return 1;

  const unsigned kStreams[] = {1, 4};
  Stats plain[2];
  {
    PinnedHost host;
    DeviceMem dev;
    if (!Check(cudaHostAlloc(&host.p, kTotal, cudaHostAllocPortable), "cudaHostAlloc of 1 GiB") ||
        !Check(cudaMalloc(&dev.p, kTotal), "cudaMalloc of 1 GiB"))
      return 1;
    std::memset(host.p, 0x5A, kTotal);  // fault the pages in before timing
    for (int i = 0; i < 2; ++i) {
      if (!Plain(kStreams[i], host.p, dev.p, &plain[i])) return 1;
      PrintRow("plain", kStreams[i], plain[i]);
    }
  }  // freed before the engine allocates its own 1 GiB of staging
  for (int i = 0; i < 2; ++i) {
    Stats engine;
    if (!Engine(device, kStreams[i], Conversion::kNone, &engine)) return 1;
    PrintRow("engine", kStreams[i], engine);
    std::printf("{\"bench\":\"gpu_h2d\",\"mode\":\"ratio\",\"streams\":%u,"
                "\"engine_over_plain\":%.3f}\n",
                kStreams[i], engine.median / plain[i].median);
  }
  // Conversion costs, for reference: source (bf16) bytes per second.
  Stats f16;
  if (!Engine(device, 4, Conversion::kBf16ToF16, &f16)) return 1;
  PrintRow("engine_bf16_to_f16", 4, f16);
  return 0;
}
