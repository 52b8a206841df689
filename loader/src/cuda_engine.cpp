// The CUDA copy engine (copy_engine.h): pinned staging -> device memory with cudaMemcpyAsync on
// several non-blocking streams, an event per copy, and one completion thread that reports each
// copy to its `done` once its event has fired. Built only when CMake found a CUDA compiler; the
// runtime is linked statically, so a machine without a driver still loads this code and gets
// kUnavailable from MakeCudaCopyEngine instead of a loader error.
//
// Contract details beyond copy_engine.h:
//  - When Submit returns an error, nothing was enqueued and `done` is never called.
//  - Drain returns the first error any `done` received since the previous Drain (so a caller that
//    only checks Drain still sees failures), and must not be called from a `done` callback.
//  - `done` may call Submit (no engine lock is held while it runs).
//  - The engine must not be destroyed from a `done` callback (the destructor drains).
//  - Every entry point makes the engine's device current and restores the caller's device after,
//    so the engine never changes which GPU other CUDA code on the calling thread talks to.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <cuda_runtime_api.h>

#include "coldstart/core/env.h"  // FormatBytes
#include "coldstart/loader/copy_engine.h"
#include "convert_internal.h"

namespace coldstart::loader {
namespace {

// "out of memory (cudaErrorMemoryAllocation)": the string for people, the name for searching.
std::string ErrorText(cudaError_t e) {
  return std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ")";
}

Errc CodeFor(cudaError_t e) {
  switch (e) {
    case cudaErrorMemoryAllocation:
      return Errc::kResourceExhausted;
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorDevicesUnavailable:
    case cudaErrorInvalidDevice:
    case cudaErrorSystemNotReady:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
    case cudaErrorNoKernelImageForDevice:
      return Errc::kUnavailable;
    case cudaErrorInvalidValue:
      return Errc::kInvalidArgument;
    default:
      return Errc::kInternal;
  }
}

Error CudaError(const std::string& what, cudaError_t e) {
  return MakeError(CodeFor(e), what + " failed: " + ErrorText(e));
}

std::string DeviceName(int device) { return "cuda:" + std::to_string(device); }

// Makes `device` current on this thread for the guard's lifetime, then restores the caller's.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device) status_ = cudaSetDevice(device);
  }
  ~DeviceGuard() {
    if (previous_ >= 0 && status_ == cudaSuccess) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  cudaError_t status() const { return status_; }

 private:
  int previous_ = -1;
  cudaError_t status_ = cudaSuccess;
};

// RAII owners for the runtime's handles. The deleters ignore errors: a destructor cannot report
// them, and after a sticky device error they fail for every handle anyway.
struct StreamDeleter {
  void operator()(cudaStream_t s) const { cudaStreamDestroy(s); }
};
struct EventDeleter {
  void operator()(cudaEvent_t e) const { cudaEventDestroy(e); }
};
struct DeviceFree {
  void operator()(void* p) const { cudaFree(p); }
};
using StreamPtr = std::unique_ptr<std::remove_pointer_t<cudaStream_t>, StreamDeleter>;
using EventPtr = std::unique_ptr<std::remove_pointer_t<cudaEvent_t>, EventDeleter>;
using DevicePtr = std::unique_ptr<void, DeviceFree>;

// Checks the driver and the device index; one sentence naming the device for each failure.
Status CheckDevice(int device) {
  const std::string prefix = "--device " + DeviceName(device) + ": ";
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorInsufficientDriver) {
    int driver = 0;
    (void)cudaDriverGetVersion(&driver);  // 0 when no driver is installed at all
    if (driver == 0) {
      return MakeError(Errc::kUnavailable,
                       prefix + "no CUDA driver on this machine (cudaErrorInsufficientDriver)");
    }
    return MakeError(Errc::kUnavailable,
                     prefix + "the CUDA driver (" + std::to_string(driver / 1000) + "." +
                         std::to_string(driver % 1000 / 10) +
                         ") is older than the CUDA runtime coldstart was built with (" +
                         std::to_string(CUDART_VERSION / 1000) + "." +
                         std::to_string(CUDART_VERSION % 1000 / 10) +
                         ") (cudaErrorInsufficientDriver)");
  }
  if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
    return MakeError(Errc::kUnavailable,
                     prefix + "the CUDA driver sees no GPU on this machine (cudaErrorNoDevice)");
  }
  if (e != cudaSuccess) {
    return MakeError(Errc::kUnavailable, prefix + "CUDA is not usable: " + ErrorText(e));
  }
  if (device >= count) {
    return MakeError(Errc::kUnavailable,
                     prefix + "no such device; this machine has " + std::to_string(count) +
                         (count == 1 ? " CUDA device (cuda:0)"
                                     : " CUDA devices (cuda:0 to cuda:" +
                                           std::to_string(count - 1) + ")"));
  }
  return OkStatus();
}

class CudaCopyEngine final : public CopyEngine {
 public:
  // Use Make(): construction can fail.
  CudaCopyEngine(int device, std::string name) : device_(device), name_(std::move(name)) {}

  static Result<std::unique_ptr<CopyEngine>> Make(const CudaEngineOptions& options) {
    const std::string dev = DeviceName(options.device);
    DeviceGuard guard(options.device);
    if (guard.status() != cudaSuccess) {
      return CudaError("--device " + dev + ": selecting the device", guard.status());
    }
    // Creates the primary context now, so exclusive-mode or out-of-memory devices fail here
    // rather than in the first Submit.
    if (cudaError_t e = cudaFree(nullptr); e != cudaSuccess) {
      Error err = CudaError("initialising the device", e);
      err.code = Errc::kUnavailable;
      return std::move(err).WithContext("--device " + dev);
    }
    cudaDeviceProp prop{};
    if (cudaError_t e = cudaGetDeviceProperties(&prop, options.device); e != cudaSuccess) {
      return CudaError("--device " + dev + ": cudaGetDeviceProperties", e);
    }
    auto engine = std::make_unique<CudaCopyEngine>(options.device, prop.name);
    for (unsigned i = 0; i < options.streams; ++i) {
      cudaStream_t s = nullptr;
      // Non-blocking: our copies must not serialise with work on the legacy default stream
      // (libtorch's, say) nor wait for it.
      if (cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking); e != cudaSuccess) {
        return CudaError("--device " + dev + ": creating stream " + std::to_string(i), e);
      }
      auto lane = std::make_unique<Lane>();
      lane->stream.reset(s);
      engine->lanes_.push_back(std::move(lane));
    }
    {
      cudaStream_t s = nullptr;
      if (cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking); e != cudaSuccess) {
        return CudaError("--device " + dev + ": creating the marker stream", e);
      }
      engine->marker_.reset(s);
    }
    engine->completion_ = std::thread([raw = engine.get()] { raw->CompletionLoop(); });
    return std::unique_ptr<CopyEngine>(std::move(engine));
  }

  ~CudaCopyEngine() override {
    if (completion_.joinable()) {
      (void)Drain();
      {
        std::lock_guard lock(mu_);
        stop_ = true;
      }
      work_cv_.notify_all();
      completion_.join();
    }
    // Streams, events and scratch go with the device current, whatever the caller's is.
    DeviceGuard guard(device_);
    lanes_.clear();
    marker_.reset();
    free_events_.clear();
  }

  std::string Describe() const override {
    return name_ + " (" + DeviceName(device_) + "), " + std::to_string(lanes_.size()) +
           (lanes_.size() == 1 ? " stream" : " streams");
  }

  Result<DeviceBuffer> AllocateDevice(std::uint64_t bytes) override {
    DeviceGuard guard(device_);
    void* p = nullptr;
    if (cudaError_t e = cudaMalloc(&p, bytes); e != cudaSuccess) {
      return CudaError("cudaMalloc of " + FormatBytes(static_cast<double>(bytes)) + " on " +
                           DeviceName(device_),
                       e);
    }
    // The buffer may outlive the engine, so its free function captures only the device index.
    const int device = device_;
    return DeviceBuffer(reinterpret_cast<std::uintptr_t>(p), bytes, [device](std::uintptr_t ptr) {
      DeviceGuard g(device);
      cudaFree(reinterpret_cast<void*>(ptr));
    });
  }

  Result<StagingMemory> AllocateStaging(std::uint64_t bytes) override {
    if (bytes == 0) return StagingMemory();
    DeviceGuard guard(device_);
    void* p = nullptr;
    // Pinned, so cudaMemcpyAsync DMAs straight from it; portable, so it stays pinned for every
    // context (several engines on several GPUs can share a staging pool). Not write-combined:
    // the loader reads staged bytes back on the CPU (checksums), which WC memory makes ~10x
    // slower.
    if (cudaError_t e = cudaHostAlloc(&p, bytes, cudaHostAllocPortable); e != cudaSuccess) {
      return CudaError("cudaHostAlloc of " + FormatBytes(static_cast<double>(bytes)) +
                           " of pinned staging memory",
                       e);
    }
    return StagingMemory(static_cast<std::byte*>(p), bytes,
                         [](std::byte* q) { cudaFreeHost(q); });
  }

  Status Submit(const CopyRequest& request, std::function<void(Status)> done) override {
    CS_RETURN_IF_ERROR(Validate(request));
    DeviceGuard guard(device_);
    if (guard.status() != cudaSuccess) return CudaError("selecting " + DeviceName(device_), guard.status());
    CS_ASSIGN_OR_RETURN(EventPtr event, TakeEvent());

    Lane& lane = *lanes_[next_lane_.fetch_add(1, std::memory_order_relaxed) % lanes_.size()];
    // The lane lock keeps enqueue order on the stream equal to the order of lane.pending, which
    // the completion thread relies on, and guards the scratch buffer.
    std::lock_guard lane_lock(lane.mu);
    if (Status s = Enqueue(lane, request, event.get()); !s.ok()) {
      ReturnEvent(std::move(event));
      return s;
    }
    {
      std::lock_guard lock(mu_);
      lane.pending.push_back(Pending{std::move(event), std::move(done), request.len});
      ++outstanding_;
    }
    work_cv_.notify_one();
    return OkStatus();
  }

  Status Drain() override {
    if (std::this_thread::get_id() == completion_.get_id()) {
      return MakeError(Errc::kInvalidArgument,
                       "CopyEngine::Drain called from a done callback (it would wait for itself)");
    }
    std::unique_lock lock(mu_);
    idle_cv_.wait(lock, [&] { return outstanding_ == 0; });
    if (first_error_) {
      Error e = std::move(*first_error_);
      first_error_.reset();
      return e;
    }
    return OkStatus();
  }

  Status ReadBack(std::uintptr_t src, std::uint64_t len, std::byte* dst) override {
    if (len == 0) return OkStatus();
    DeviceGuard guard(device_);
    if (cudaError_t e = cudaMemcpy(dst, reinterpret_cast<const void*>(src), len,
                                   cudaMemcpyDeviceToHost);
        e != cudaSuccess) {
      return CudaError("reading back " + FormatBytes(static_cast<double>(len)) + " from " +
                           DeviceName(device_),
                       e);
    }
    return OkStatus();
  }

  // Every lane's stream records an event (capturing what was enqueued on it so far), the
  // marker stream waits on all of them, and the join event is recorded on the marker stream:
  // one event that covers copies spread over several streams, without the host waiting.
  Result<DeviceEvent> RecordJoinEvent() override {
    DeviceGuard guard(device_);
    if (guard.status() != cudaSuccess) return CudaError("selecting " + DeviceName(device_), guard.status());
    std::lock_guard marker_lock(marker_mu_);
    for (auto& lane : lanes_) {
      std::lock_guard lane_lock(lane->mu);
      cudaEvent_t tmp = nullptr;
      if (cudaError_t e = cudaEventCreateWithFlags(&tmp, cudaEventDisableTiming); e != cudaSuccess)
        return CudaError("cudaEventCreate on " + DeviceName(device_), e);
      EventPtr owned(tmp);  // destroying a recorded event is allowed: freed once it completes
      if (cudaError_t e = cudaEventRecord(tmp, lane->stream.get()); e != cudaSuccess)
        return CudaError("cudaEventRecord on " + DeviceName(device_), e);
      if (cudaError_t e = cudaStreamWaitEvent(marker_.get(), tmp, 0); e != cudaSuccess)
        return CudaError("cudaStreamWaitEvent on " + DeviceName(device_), e);
    }
    cudaEvent_t join = nullptr;
    if (cudaError_t e = cudaEventCreateWithFlags(&join, cudaEventDisableTiming); e != cudaSuccess)
      return CudaError("cudaEventCreate on " + DeviceName(device_), e);
    if (cudaError_t e = cudaEventRecord(join, marker_.get()); e != cudaSuccess) {
      cudaEventDestroy(join);
      return CudaError("cudaEventRecord on " + DeviceName(device_), e);
    }
    const int device = device_;
    return DeviceEvent(reinterpret_cast<std::uintptr_t>(join), 0, [device](std::uintptr_t ev) {
      DeviceGuard g(device);
      cudaEventDestroy(reinterpret_cast<cudaEvent_t>(ev));
    });
  }

  Status WaitEvent(std::uintptr_t event) override {
    if (event == 0) return MakeError(Errc::kInvalidArgument, "waiting for a null CUDA event");
    DeviceGuard guard(device_);
    if (cudaError_t e = cudaEventSynchronize(reinterpret_cast<cudaEvent_t>(event)); e != cudaSuccess)
      return CudaError("cudaEventSynchronize on " + DeviceName(device_), e);
    return OkStatus();
  }

 private:
  struct Pending {
    EventPtr event;
    std::function<void(Status)> done;
    std::uint64_t len = 0;
  };
  // One stream and what has been enqueued on it, oldest first.
  struct Lane {
    StreamPtr stream;
    std::mutex mu;          // enqueue order + scratch
    DevicePtr scratch;      // conversions: raw bf16 lands here, the kernel writes dst
    std::uint64_t scratch_size = 0;
    std::deque<Pending> pending;  // guarded by the engine's mu_
  };

  static Status Validate(const CopyRequest& r) {
    if (r.len == 0) return OkStatus();
    if (r.src == nullptr || r.dst == 0) {
      return MakeError(Errc::kInvalidArgument, "copy request with a null source or destination");
    }
    if (r.conversion == Conversion::kNone) return OkStatus();
    const std::uintptr_t out = r.conversion == Conversion::kBf16ToF32 ? 4 : 2;
    if (r.len % 2 != 0) {
      return MakeError(Errc::kInvalidArgument,
                       "bf16 conversion of " + std::to_string(r.len) +
                           " bytes: not a whole number of 2-byte elements");
    }
    // A misaligned element store would fault the kernel and poison the whole context.
    if (r.dst % out != 0) {
      return MakeError(Errc::kInvalidArgument,
                       "bf16 conversion: destination not aligned to " + std::to_string(out) +
                           " bytes");
    }
    return OkStatus();
  }

  // Enqueues the copy (and conversion) and the event record on lane's stream; lane.mu held.
  Status Enqueue(Lane& lane, const CopyRequest& r, cudaEvent_t event) {
    cudaStream_t stream = lane.stream.get();
    if (r.len > 0 && r.conversion == Conversion::kNone) {
      if (cudaError_t e = cudaMemcpyAsync(reinterpret_cast<void*>(r.dst), r.src, r.len,
                                          cudaMemcpyHostToDevice, stream);
          e != cudaSuccess) {
        return CudaError("cudaMemcpyAsync of " + FormatBytes(static_cast<double>(r.len)) +
                             " to " + DeviceName(device_),
                         e);
      }
    } else if (r.len > 0) {
      CS_RETURN_IF_ERROR(EnsureScratch(lane, r.len));
      if (cudaError_t e = cudaMemcpyAsync(lane.scratch.get(), r.src, r.len,
                                          cudaMemcpyHostToDevice, stream);
          e != cudaSuccess) {
        return CudaError("cudaMemcpyAsync of " + FormatBytes(static_cast<double>(r.len)) +
                             " to conversion scratch on " + DeviceName(device_),
                         e);
      }
      // Same stream: the kernel starts after the copy, and the next copy into this scratch
      // starts after the kernel, so one scratch buffer per stream needs no further sync.
      const std::uint64_t elements = r.len / 2;
      void* dst = reinterpret_cast<void*>(r.dst);
      const bool to_f32 = r.conversion == Conversion::kBf16ToF32;
      cudaError_t e = to_f32 ? internal::LaunchBf16ToF32(lane.scratch.get(), dst, elements, stream)
                             : internal::LaunchBf16ToF16(lane.scratch.get(), dst, elements, stream);
      if (e != cudaSuccess) {
        return CudaError(std::string("launching the bf16 to ") + (to_f32 ? "fp32" : "fp16") +
                             " kernel",
                         e);
      }
    }
    if (cudaError_t e = cudaEventRecord(event, stream); e != cudaSuccess) {
      return CudaError("cudaEventRecord", e);
    }
    return OkStatus();
  }

  Status EnsureScratch(Lane& lane, std::uint64_t bytes) {
    if (lane.scratch_size >= bytes) return OkStatus();
    // Earlier kernels on this stream may still read the old scratch. Copies are at most a
    // staging slot, so this happens once or twice per stream.
    if (lane.scratch) {
      if (cudaError_t e = cudaStreamSynchronize(lane.stream.get()); e != cudaSuccess) {
        return CudaError("waiting for the stream before growing conversion scratch", e);
      }
      lane.scratch.reset();
      lane.scratch_size = 0;
    }
    constexpr std::uint64_t kGrain = 1 << 20;  // round up so slightly larger copies reuse it
    const std::uint64_t size = (bytes + kGrain - 1) / kGrain * kGrain;
    void* p = nullptr;
    if (cudaError_t e = cudaMalloc(&p, size); e != cudaSuccess) {
      return CudaError("cudaMalloc of " + FormatBytes(static_cast<double>(size)) +
                           " of conversion scratch on " + DeviceName(device_),
                       e);
    }
    lane.scratch.reset(p);
    lane.scratch_size = size;
    return OkStatus();
  }

  Result<EventPtr> TakeEvent() {
    {
      std::lock_guard lock(events_mu_);
      if (!free_events_.empty()) {
        EventPtr e = std::move(free_events_.back());
        free_events_.pop_back();
        return e;
      }
    }
    cudaEvent_t e = nullptr;
    // No timing: cheaper to record, and we only ask "has it happened".
    if (cudaError_t err = cudaEventCreateWithFlags(&e, cudaEventDisableTiming); err != cudaSuccess) {
      return CudaError("cudaEventCreateWithFlags", err);
    }
    return EventPtr(e);
  }

  void ReturnEvent(EventPtr e) {
    std::lock_guard lock(events_mu_);
    free_events_.push_back(std::move(e));
  }

  // Polls the oldest event of every lane. Polling (cudaEventQuery, then a short sleep) rather
  // than cudaEventSynchronize on one event: copies on other streams may finish first and are
  // reported as soon as they do; and a blocking wait would spin a core under the default
  // scheduling policy. `done` never runs with a lock held, so it may Submit again.
  void CompletionLoop() {
    DeviceGuard guard(device_);
    // 50 us is <2% of a 64 MiB copy at PCIe 5 speeds; the thread sleeps on a condition
    // variable whenever nothing is in flight.
    constexpr auto kPoll = std::chrono::microseconds(50);
    for (;;) {
      {
        std::unique_lock lock(mu_);
        work_cv_.wait(lock, [&] { return stop_ || outstanding_ > 0; });
        if (stop_ && outstanding_ == 0) return;
      }
      bool progressed = false;
      for (auto& lane_ptr : lanes_) {
        Lane& lane = *lane_ptr;
        for (;;) {
          cudaEvent_t event = nullptr;
          {
            std::lock_guard lock(mu_);
            if (lane.pending.empty()) break;
            // Only this thread pops, and deque::push_back keeps references valid.
            event = lane.pending.front().event.get();
          }
          const cudaError_t e = cudaEventQuery(event);
          if (e == cudaErrorNotReady) break;
          Pending p;
          {
            std::lock_guard lock(mu_);
            p = std::move(lane.pending.front());
            lane.pending.pop_front();
          }
          Status status = OkStatus();
          if (e != cudaSuccess) {
            status = CudaError("copy of " + FormatBytes(static_cast<double>(p.len)) + " to " +
                                   DeviceName(device_),
                               e);
            // Sticky errors make the event unusable; do not recycle it.
            p.event.reset();
          } else {
            ReturnEvent(std::move(p.event));
          }
          Finish(std::move(p.done), std::move(status));
          progressed = true;
        }
      }
      if (!progressed) std::this_thread::sleep_for(kPoll);
    }
  }

  void Finish(std::function<void(Status)> done, Status status) {
    const bool failed = !status.ok();
    std::optional<Error> error;
    if (failed) error = status.error();
    if (done) done(std::move(status));
    {
      std::lock_guard lock(mu_);
      if (failed && !first_error_) first_error_ = std::move(error);
      --outstanding_;
    }
    idle_cv_.notify_all();
  }

  const int device_;
  const std::string name_;
  std::vector<std::unique_ptr<Lane>> lanes_;  // fixed after Make()
  StreamPtr marker_;       // joins the lanes for RecordJoinEvent; fixed after Make()
  std::mutex marker_mu_;   // one join at a time on the marker stream
  std::atomic<std::uint64_t> next_lane_{0};

  std::mutex events_mu_;
  std::vector<EventPtr> free_events_;

  std::mutex mu_;  // pending queues, outstanding_, first_error_, stop_
  std::condition_variable work_cv_;
  std::condition_variable idle_cv_;
  std::uint64_t outstanding_ = 0;  // submitted and `done` not yet returned
  std::optional<Error> first_error_;
  bool stop_ = false;
  std::thread completion_;  // joined in the destructor, before the handles above go
};

}  // namespace

Result<std::unique_ptr<CopyEngine>> MakeCudaCopyEngine(const CudaEngineOptions& options) {
  if (options.device < 0) {
    return MakeError(Errc::kInvalidArgument,
                     "--device cuda:" + std::to_string(options.device) +
                         ": the device index must be 0 or more");
  }
  // More streams than copy engines (2-3 per GPU) and a few kernels buys nothing.
  constexpr unsigned kMaxStreams = 64;
  if (options.streams == 0 || options.streams > kMaxStreams) {
    return MakeError(Errc::kInvalidArgument,
                     "COLDSTART_CUDA_STREAMS: " + std::to_string(options.streams) +
                         " streams; expected 1 to " + std::to_string(kMaxStreams));
  }
  CS_RETURN_IF_ERROR(CheckDevice(options.device));
  return CudaCopyEngine::Make(options);
}

bool CudaCompiledIn() { return true; }

}  // namespace coldstart::loader
