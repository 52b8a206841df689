// Streaming a model into device memory: chunks from any source (GCS/HTTP ranges, local
// io_uring reads) land in a ring of staging buffers (pinned for CUDA) bounded by a byte
// budget; each filled buffer is handed to the copy engine (cudaMemcpyAsync on several
// streams, or the stand-in device) and reused as soon as its copies complete. Fetching waits
// for copies only when the whole budget is in use, so a cold start takes about as long as the
// slower of the network/disk and PCIe, and host memory stays bounded whatever the model's size.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "coldstart/core/timeline.h"
#include "coldstart/fetch/local_reader.h"
#include "coldstart/cache/disk_cache.h"
#include "coldstart/loader/copy_engine.h"
#include "coldstart/loader/model.h"
#include "coldstart/loader/remote_loader.h"

namespace coldstart::loader {

enum class LoadOrder {
  kFile,          // file order: sequential reads, best for disks
  kLargestFirst,  // biggest tensors first: the long transfers start early
  kLayer,         // embeddings, then layer 0, 1, ...: a server can start on early layers
};
Result<LoadOrder> ParseLoadOrder(std::string_view text);  // file | largest | layer

struct DeviceTensor {
  const TensorEntry* entry = nullptr;  // name, file dtype and shape, source bytes
  DType dtype = DType::kU8;            // dtype in device memory (after conversion)
  std::uintptr_t data = 0;             // device address
  std::uint64_t nbytes = 0;            // bytes in device memory
};

struct DeviceLoadOptions {
  DeviceSpec device{DeviceKind::kSim, 0};
  // Staging budget (--staging-bytes, COLDSTART_STAGING_BYTES); 0 = 1/8 of available memory,
  // capped at 2 GiB (at least 2 chunks). Never exceeded; a budget below 2 chunks is an error.
  std::uint64_t staging_bytes = 0;
  // Bytes per staging buffer; 0 = the remote chunk size, or 16 MiB for local files.
  std::uint64_t chunk_bytes = 0;
  std::function<bool(const std::string& tensor)> filter;  // load only tensors it accepts
  // Device memory for the whole model (one call, `bytes` = every selected tensor, 256-byte
  // aligned); empty = the engine allocates (cudaMalloc). Lets a server hand over memory from
  // its own allocator (e.g. a caching allocator's block).
  std::function<Result<DeviceBuffer>(std::uint64_t bytes)> allocator;
  LoadOrder order = LoadOrder::kFile;
  Conversion bf16_conversion = Conversion::kNone;         // applied to BF16 tensors only
  fetch::LocalReadOptions read;                           // local sources
  SimEngineOptions sim;
  CudaEngineOptions cuda;
  // Called once per tensor as soon as all its bytes are in device memory: on an engine thread,
  // or, for zero-byte tensors, on the thread that dispatched their chunk. May run concurrently.
  std::function<void(const DeviceTensor&)> on_ready;
  // On the loading thread about every 100 ms; false cancels (in-flight work drains first).
  std::function<bool(std::uint64_t done, std::uint64_t total)> progress;
  // Remote sources: serve what this disk cache holds and write what is fetched into it (the
  // plan's chunks become the cache's chunks). Processes sharing it fetch each chunk once.
  std::shared_ptr<cache::DiskCache> cache;

  Status ApplyEnv(const Env& env);  // COLDSTART_STAGING_BYTES, COLDSTART_SIM_*, read options
};

struct PhaseStats {
  Timeline timeline;              // phases since process start ("first_byte", "fetch", "h2d", "ready", ...)
  double first_byte_seconds = 0;  // from start to the first byte in staging
  double fetch_seconds = 0;       // from start to the last byte in staging
  double h2d_seconds = 0;         // from the first copy submitted to the last completed
  double total_seconds = 0;
  std::uint64_t fetch_bytes = 0;
  std::uint64_t h2d_bytes = 0;            // bytes written to device memory
  std::uint64_t staging_budget = 0;
  std::uint64_t peak_staging_bytes = 0;   // high-water mark of staging buffers in use
  std::uint64_t chunk_bytes = 0;
  std::uint64_t copies = 0;
  bool crc32c_verified = false;           // remote: every object verified
  std::uint64_t cache_hit_bytes = 0;      // served from the disk cache
  std::uint64_t cache_filled_bytes = 0;   // written to the disk cache
  std::string engine;                     // copy engine description
};

class DeviceModel {
 public:
  const ModelLayout& layout() const { return layout_; }
  const std::vector<DeviceTensor>& tensors() const { return tensors_; }
  const DeviceTensor* Find(std::string_view name) const;
  const PhaseStats& stats() const { return stats_; }
  const DeviceSpec& device() const { return device_; }
  CopyEngine& engine() const { return *engine_; }
  // Copies a tensor's device bytes to host memory (digests, tests).
  Status ReadBack(const DeviceTensor& t, std::byte* dst) const { return engine_->ReadBack(t.data, t.nbytes, dst); }

 private:
  friend class LoadRun;  // engine.cpp
  friend Result<std::shared_ptr<DeviceModel>> LoadLocalToDevice(ModelLayout, const DeviceLoadOptions&);
  friend Result<std::shared_ptr<DeviceModel>> LoadRemoteToDevice(RemoteModel, const DeviceLoadOptions&);
  ModelLayout layout_;
  DeviceSpec device_;
  std::unique_ptr<CopyEngine> engine_;  // declared before memory_: memory is freed first
  DeviceBuffer memory_;
  std::vector<DeviceTensor> tensors_;
  PhaseStats stats_;
};

// Local model folder or file.
Result<std::shared_ptr<DeviceModel>> LoadLocalToDevice(ModelLayout layout, const DeviceLoadOptions& options);
// Remote model (OpenRemoteModel first).
Result<std::shared_ptr<DeviceModel>> LoadRemoteToDevice(RemoteModel model, const DeviceLoadOptions& options);
// The copy engine for a device (kUnavailable with a clear message for cuda without GPU).
Result<std::unique_ptr<CopyEngine>> MakeCopyEngine(const DeviceLoadOptions& options);

// The one-call API: a source as the user names it (local path, gs://, http(s)://) onto a
// device. Local sources read with io_uring; remote ones through the ranged-read engine.
class Loader {
 public:
  Loader(std::string source, DeviceLoadOptions options, fetch::RemoteOptions remote = {})
      : source_(std::move(source)), options_(std::move(options)), remote_(std::move(remote)) {}
  // `env` supplies credentials and endpoint variables for remote sources.
  Result<std::shared_ptr<DeviceModel>> Load(const Env& env = Env::FromProcess()) const;

 private:
  std::string source_;
  DeviceLoadOptions options_;
  fetch::RemoteOptions remote_;
};

}  // namespace coldstart::loader
