// The stand-in device: the same pipeline as CUDA, without a GPU.
#include <pthread.h>
#include <sys/mman.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "coldstart/core/env.h"
#include "coldstart/core/crc32c.h"
#include "coldstart/loader/copy_engine.h"

namespace coldstart::loader {
namespace {

using Clock = std::chrono::steady_clock;

// An address range that no host memory backs: the discard mode's "device memory".
constexpr std::uintptr_t kDiscardBase = std::uintptr_t{1} << 46;

class SimEngine final : public CopyEngine {
 public:
  explicit SimEngine(SimEngineOptions o) : o_(o), thread_([this] { Run(); }) {}
  ~SimEngine() override {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  std::string Describe() const override {
    char buf[128];
    std::snprintf(buf, sizeof buf, "sim device (%.1f GB/s copy engine, %s)", o_.bytes_per_second / 1e9,
                  o_.keep_bytes ? "keeps bytes" : "checksums and discards bytes");
    return buf;
  }

  Result<DeviceBuffer> AllocateDevice(std::uint64_t bytes) override {
    if (!o_.keep_bytes) return DeviceBuffer(kDiscardBase, bytes, nullptr);
    if (bytes == 0) return DeviceBuffer();
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
      return MakeSysError(Errc::kResourceExhausted, "sim device: cannot allocate " + FormatBytes(static_cast<double>(bytes)), errno);
    return DeviceBuffer(reinterpret_cast<std::uintptr_t>(p), bytes,
                        [bytes](std::uintptr_t ptr) { ::munmap(reinterpret_cast<void*>(ptr), bytes); });
  }

  Result<StagingMemory> AllocateStaging(std::uint64_t bytes) override {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      return MakeSysError(Errc::kResourceExhausted, "cannot allocate " + FormatBytes(static_cast<double>(bytes)) + " of staging memory", errno);
    return StagingMemory(static_cast<std::byte*>(p), bytes, [bytes](std::byte* q) { ::munmap(q, bytes); });
  }

  Status Submit(const CopyRequest& r, std::function<void(Status)> done) override {
    if (r.conversion != Conversion::kNone && (r.len % 2 != 0))
      return MakeError(Errc::kInvalidArgument, "conversion of an odd number of bytes");
    std::lock_guard lk(mu_);
    queue_.push_back({r, std::move(done), Clock::now()});
    ++pending_;
    ++submitted_;
    cv_.notify_all();
    return OkStatus();
  }

  Status Drain() override {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return pending_ == 0; });
    return OkStatus();
  }

  Status ReadBack(std::uintptr_t src, std::uint64_t len, std::byte* dst) override {
    if (!o_.keep_bytes)
      return MakeError(Errc::kUnavailable, "the sim device is discarding bytes (--sim-discard): nothing to read back");
    if (len > 0) std::memcpy(dst, reinterpret_cast<const void*>(src), len);
    return OkStatus();
  }

  // Copies complete in submission order, so "the first N submitted are done" is the marker:
  // its value is N + 1 (0 would read as no event).
  Result<DeviceEvent> RecordJoinEvent() override {
    std::lock_guard lk(mu_);
    return DeviceEvent(static_cast<std::uintptr_t>(submitted_ + 1), 0, nullptr);
  }
  Status WaitEvent(std::uintptr_t event) override {
    if (event == 0) return MakeError(Errc::kInvalidArgument, "sim device: waiting for a null event");
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return completed_ + 1 >= event; });
    return OkStatus();
  }
  std::uint32_t checksum() const {
    std::lock_guard lk(mu_);
    return checksum_;
  }

 private:
  struct Item {
    CopyRequest r;
    std::function<void(Status)> done;
    Clock::time_point submitted;
  };

  void Run() {
    pthread_setname_np(pthread_self(), "cs-sim-copy");
    Clock::time_point busy_until = Clock::now();
    std::unique_lock lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      Item it = std::move(queue_.front());
      queue_.pop_front();
      lk.unlock();
      // The copy takes len / bandwidth of engine time, back to back like a DMA engine, which
      // starts a copy when it is submitted if idle: the timeline follows submissions, not
      // when this thread got the CPU (on a loaded 2-core host it can be woken milliseconds
      // late, and that lateness must not pile up into a slower "device").
      const auto cost = std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(static_cast<double>(it.r.len) / o_.bytes_per_second));
      busy_until = std::max(busy_until, it.submitted) + cost;
      Status st = OkStatus();
      copied_ += it.r.len;
      if (o_.fail_after_bytes >= 0 && static_cast<double>(copied_) > o_.fail_after_bytes) {
        st = MakeError(Errc::kIo, "sim device: injected copy failure after " + std::to_string(copied_) + " bytes");
      } else if (o_.keep_bytes) {
        auto* dst = reinterpret_cast<std::byte*>(it.r.dst);
        switch (it.r.conversion) {
          case Conversion::kNone: std::memcpy(dst, it.r.src, it.r.len); break;
          case Conversion::kBf16ToF16: ConvertBf16ToF16(it.r.src, it.r.len / 2, dst); break;
          case Conversion::kBf16ToF32: ConvertBf16ToF32(it.r.src, it.r.len / 2, dst); break;
        }
      } else {
        std::uint32_t c = Crc32c(it.r.src, it.r.len);
        std::lock_guard g(mu_);
        checksum_ ^= c;
      }
      std::this_thread::sleep_until(busy_until);
      it.done(std::move(st));
      lk.lock();
      --pending_;
      ++completed_;
      cv_.notify_all();
    }
  }

  SimEngineOptions o_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::uint64_t pending_ = 0;
  std::uint64_t submitted_ = 0, completed_ = 0;  // copies, in order
  std::uint64_t copied_ = 0;  // engine thread only
  std::uint32_t checksum_ = 0;
  bool stop_ = false;
  std::thread thread_;  // last: starts after every member above is ready
};

}  // namespace

Result<DeviceEvent> CopyEngine::RecordJoinEvent() {
  return MakeError(Errc::kUnavailable, Describe() + ": no device events");
}
Status CopyEngine::WaitEvent(std::uintptr_t) {
  return MakeError(Errc::kUnavailable, Describe() + ": no device events");
}

std::string DeviceSpec::ToString() const {
  switch (kind) {
    case DeviceKind::kCpu: return "cpu";
    case DeviceKind::kSim: return "sim";
    case DeviceKind::kCuda: return "cuda:" + std::to_string(index);
  }
  return "?";
}

Result<DeviceSpec> ParseDevice(std::string_view text) {
  if (text == "cpu") return DeviceSpec{DeviceKind::kCpu, 0};
  if (text == "sim") return DeviceSpec{DeviceKind::kSim, 0};
  if (text == "cuda") return DeviceSpec{DeviceKind::kCuda, 0};
  if (text.substr(0, 5) == "cuda:" && text.size() > 5 && text.size() < 9) {
    int idx = 0;
    for (char c : text.substr(5)) {
      if (c < '0' || c > '9') goto bad;
      idx = idx * 10 + (c - '0');
    }
    return DeviceSpec{DeviceKind::kCuda, idx};
  }
bad:
  return MakeError(Errc::kInvalidArgument, "device '" + std::string(text) + "' is not one of cpu, cuda, cuda:N, sim");
}

std::unique_ptr<CopyEngine> MakeSimCopyEngine(const SimEngineOptions& options) {
  return std::make_unique<SimEngine>(options);
}

}  // namespace coldstart::loader
