// Where staged bytes go: a copy engine moves filled staging buffers into device memory.
//
// Implementations: CUDA (cudaMemcpyAsync on several streams, events per copy; loader/src/
// cuda_engine.cpp, built only when the toolkit is found), and the stand-in "sim" device (a
// thread that copies at a configured bandwidth, keeping the bytes or only checksumming them)
// that runs the same pipeline on machines without a GPU. The CPU device needs no engine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "coldstart/loader/safetensors.h"
#include "coldstart/core/result.h"

namespace coldstart::loader {

enum class DeviceKind { kCpu, kCuda, kSim };

struct DeviceSpec {
  DeviceKind kind = DeviceKind::kCpu;
  int index = 0;  // cuda:N
  std::string ToString() const;  // "cpu", "cuda:0", "sim"
};
// "cpu", "cuda", "cuda:N", "sim".
Result<DeviceSpec> ParseDevice(std::string_view text);

// Memory owned by an engine (device memory, or pinned staging memory), freed through the
// engine's function when released. Move-only.
template <typename Ptr>
class EngineMemory {
 public:
  EngineMemory() = default;
  EngineMemory(Ptr p, std::uint64_t size, std::function<void(Ptr)> free_fn)
      : p_(p), size_(size), free_(std::move(free_fn)) {}
  EngineMemory(EngineMemory&& o) noexcept { *this = std::move(o); }
  EngineMemory& operator=(EngineMemory&& o) noexcept {
    if (this != &o) {
      Reset();
      p_ = o.p_;
      size_ = o.size_;
      free_ = std::move(o.free_);
      o.p_ = Ptr{};
      o.size_ = 0;
      o.free_ = nullptr;
    }
    return *this;
  }
  EngineMemory(const EngineMemory&) = delete;
  EngineMemory& operator=(const EngineMemory&) = delete;
  ~EngineMemory() { Reset(); }
  Ptr ptr() const { return p_; }   // device address (CUDA) or host address (sim, staging)
  Ptr data() const { return p_; }
  std::uint64_t size() const { return size_; }
  void Reset() {
    if (p_ && free_) free_(p_);
    p_ = Ptr{};
    size_ = 0;
  }

 private:
  Ptr p_{};
  std::uint64_t size_ = 0;
  std::function<void(Ptr)> free_;
};

using DeviceBuffer = EngineMemory<std::uintptr_t>;
using StagingMemory = EngineMemory<std::byte*>;
// A device-side marker (a cudaEvent_t on CUDA; a copy sequence number on the sim device).
using DeviceEvent = EngineMemory<std::uintptr_t>;

// Optional element conversion done by the engine while copying (bf16 -> fp16 / fp32).
enum class Conversion { kNone, kBf16ToF16, kBf16ToF32 };

struct CopyRequest {
  const std::byte* src = nullptr;  // inside this engine's staging memory
  std::uint64_t len = 0;           // source bytes
  std::uintptr_t dst = 0;          // device address; receives len bytes, or len/2 * 2|4 when converting
  Conversion conversion = Conversion::kNone;  // len and src are multiples of 2 when converting
};

class CopyEngine {
 public:
  virtual ~CopyEngine() = default;
  virtual std::string Describe() const = 0;  // "NVIDIA H100 80GB HBM3 (cuda:0), 4 streams"

  virtual Result<DeviceBuffer> AllocateDevice(std::uint64_t bytes) = 0;
  virtual Result<StagingMemory> AllocateStaging(std::uint64_t bytes) = 0;

  // Enqueues one copy; returns at once (the caller keeps src untouched until done). `done` runs
  // exactly once, on an engine thread, after the bytes are in device memory (or with the error).
  // Copies may complete out of order.
  virtual Status Submit(const CopyRequest& request, std::function<void(Status)> done) = 0;
  // Blocks until every submitted copy has called its `done`.
  virtual Status Drain() = 0;
  // Device -> host, synchronous (digests, tests). kUnavailable for engines that discard bytes.
  virtual Status ReadBack(std::uintptr_t src, std::uint64_t len, std::byte* dst) = 0;

  // A marker that completes once every copy submitted before this call is in device memory,
  // whatever stream it went on: a compute stream waits on it (cudaStreamWaitEvent on the
  // cudaEvent_t it holds) instead of the host waiting for the copies. Valid until destroyed.
  // kUnavailable where the engine has no such markers.
  virtual Result<DeviceEvent> RecordJoinEvent();
  // Host-side wait for a marker from RecordJoinEvent (cudaEventSynchronize).
  virtual Status WaitEvent(std::uintptr_t event);
};

struct CudaEngineOptions {
  int device = 0;
  unsigned streams = 4;  // COLDSTART_CUDA_STREAMS: copies in flight on separate streams
};

// kUnavailable with one clear sentence when coldstart was built without CUDA, or there is no
// driver or no such device. Never aborts the process.
Result<std::unique_ptr<CopyEngine>> MakeCudaCopyEngine(const CudaEngineOptions& options);
// Whether this build has the CUDA engine compiled in.
bool CudaCompiledIn();

struct SimEngineOptions {
  double bytes_per_second = 25e9;  // COLDSTART_SIM_BANDWIDTH: ~PCIe 4.0 x16 pinned H2D
  bool keep_bytes = true;          // false: checksum (CRC32C) and discard, for models > RAM
  double fail_after_bytes = -1;    // tests: the copy that crosses this many bytes fails
};

// The stand-in device: device memory is host memory (or nothing when discarding), a copy
// thread applies the bandwidth, conversions run on the CPU with the same rounding as CUDA.
std::unique_ptr<CopyEngine> MakeSimCopyEngine(const SimEngineOptions& options);

// Reference conversions (round-to-nearest-even for fp16, exact for fp32), shared by the sim
// engine and the tests of the CUDA kernels.
void ConvertBf16ToF16(const std::byte* src, std::uint64_t elements, std::byte* dst);
void ConvertBf16ToF32(const std::byte* src, std::uint64_t elements, std::byte* dst);

}  // namespace coldstart::loader
