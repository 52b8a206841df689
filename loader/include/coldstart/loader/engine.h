// The streaming engine: one chunk plan, a Source that moves the plan's bytes (local files
// through the I/O reader, gs:// and http(s):// through the process's fetch transport) and a
// Sink that takes them (the host arena, the device through the staging ring, a file on disk,
// or a Tee of several), driven by one load that returns a LoadHandle at once.
//
//  - A chunk starts only once its destination is held (Sink::TryReserve): a full sink delays
//    new chunks, never ranges in flight, and never blocks the fetch event loop.
//  - Bytes land once (from the socket or the disk) in the primary sink's memory; a Tee hands
//    the same bytes to its other sinks (write to a file and copy to the device: one fetch).
//  - The handle waits for a tensor, a layer (`model.layers.N.*`) or everything; a tensor waited
//    for is fetched ahead of the read-ahead; per-tensor and per-layer callbacks; progress;
//    cancel; stats; the Timeline.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "coldstart/cache/disk_cache.h"
#include "coldstart/cache/partial_file.h"
#include "coldstart/core/timeline.h"
#include "coldstart/fetch/range_fetcher.h"
#include "coldstart/loader/device_loader.h"
#include "coldstart/loader/host_loader.h"
#include "coldstart/loader/remote_loader.h"

namespace coldstart::loader {

// The part of one tensor that lies inside one chunk.
struct Piece {
  std::uint32_t tensor;       // index into layout.tensors
  std::uint64_t chunk_off;    // where its bytes start inside the chunk
  std::uint64_t len;          // source bytes
  std::uint64_t tensor_off;   // source offset inside the tensor
};

struct Chunk {
  std::uint32_t file;
  std::uint64_t offset;  // absolute file offset
  std::uint64_t length;
  std::vector<Piece> pieces;
};

struct PlanOptions {
  std::function<bool(const std::string& tensor)> filter;
  LoadOrder order = LoadOrder::kFile;
  Conversion bf16_conversion = Conversion::kNone;
  std::uint64_t chunk_bytes = 16ull << 20;
  // Chunks never cross a multiple of this file offset (the disk cache's chunks); 0 = none.
  std::uint64_t align_bytes = 0;
};

// What moves where: the selected tensors in load order, their place in device memory (after
// conversion), and the chunks that cover them. Adjacent selected tensors share chunks, so
// small tensors (norms) never become tiny requests; a chunk never splits a converted element.
struct Plan {
  std::vector<std::uint32_t> selected;          // load order
  std::vector<std::uint64_t> dev_offset;        // per layout tensor (UINT64_MAX: not selected)
  std::vector<std::uint64_t> out_bytes;         // per layout tensor
  std::vector<DType> out_dtype;
  std::vector<Conversion> conversion;
  std::uint64_t device_bytes = 0;
  std::uint64_t source_bytes = 0;
  std::vector<Chunk> chunks;
  std::vector<std::vector<std::size_t>> chunks_of_tensor;  // per layout tensor
};
// kNotFound when the filter selects nothing.
Result<Plan> MakePlan(const ModelLayout& layout, const PlanOptions& options);

// The layer a tensor belongs to ("model.layers.12.mlp..." -> 12), or -1.
int TensorLayer(std::string_view name);

// Readiness of one load: which tensors and layers are in their final place. Thread-safe.
class LoadState {
 public:
  LoadState(const ModelLayout& layout, const Plan& plan);
  // `len` more bytes of tensor t are final. Fires on_tensor (and on_layer when the layer is
  // complete) once, on the calling thread.
  void BytesLanded(std::uint32_t t, std::uint64_t len);
  void Finish(Status status);  // the load ended (ok, failed or cancelled)
  Status WaitTensor(std::uint32_t t);
  Status WaitLayer(int layer);
  Status WaitAll();
  bool Ready(std::uint32_t t) const;
  bool Finished() const;
  std::uint64_t tensors_ready() const { return ready_count_.load(); }

  std::function<void(std::uint32_t tensor)> on_tensor;
  std::function<void(int layer)> on_layer;

 private:
  const Plan& plan_;
  std::vector<std::atomic<std::uint64_t>> remaining_;
  std::vector<int> layer_of_;
  std::vector<std::atomic<std::uint32_t>> layer_remaining_;  // index layer
  std::atomic<std::uint64_t> ready_count_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::uint8_t> ready_;     // GUARDED_BY(mu_)
  std::optional<Status> finished_;      // GUARDED_BY(mu_)
};

// Where a chunk's bytes go. Sinks are driven by one Source; TryReserve/Commit/Release may be
// called from several threads at once.
class Sink {
 public:
  virtual ~Sink() = default;
  // Memory for chunk c (its length, at an address congruent to c.offset modulo 4 KiB so local
  // reads may use O_DIRECT), or nullptr when the sink is full now: it calls the space callback
  // when room frees up. Never blocks.
  virtual std::byte* TryReserve(std::size_t c) = 0;
  // Chunk c's bytes are in `data` (from TryReserve), with their CRC32C. The sink owns the
  // reservation from here and frees it once the bytes are consumed.
  virtual Status Commit(std::size_t c, std::byte* data, std::uint32_t crc32c) = 0;
  // A reservation that will never be filled (error, cancel).
  virtual void Release(std::size_t c, std::byte* data) = 0;
  // For a Tee: take chunk c's bytes from someone else's memory (copied or written now).
  virtual Status Accept(std::size_t c, const std::byte* data, std::uint32_t crc32c);
  // The source has verified every object it delivered (CRC32C/MD5): drain copies, flush and
  // rename files. Called once, after the last Commit, only when the load succeeded.
  virtual Status Finish() = 0;
  // The load failed or was cancelled: wait for work in flight, remove what must not stay.
  virtual void Abort() {}
  virtual void SetSpaceCallback(std::function<void()> cb) { (void)cb; }
  // Chunks a local source should read in one batch (a device ring alternates halves).
  virtual std::size_t PreferredBatch() const { return SIZE_MAX; }
  // Reservations a remote source should hold at once (in flight).
  virtual std::size_t MaxInFlight() const { return SIZE_MAX; }
  // Whole data section of file i in host memory, if this sink keeps one (MD5 verification).
  virtual const std::byte* HostFileData(std::uint32_t file) const { (void)file; return nullptr; }
};

// Knobs and hooks a Source gets from the load.
struct SourceControl {
  std::atomic<bool> cancel{false};
  std::function<bool(std::uint64_t done)> progress;  // false cancels
  Timeline* timeline = nullptr;
  // Set by the source: ask for tensor t's chunks before the read-ahead.
  std::function<void(std::uint32_t tensor)> boost;
  std::vector<std::uint32_t> pending_boosts;  // asked for before the source set `boost`
  std::mutex boost_mu;  // guards boost and pending_boosts
};

struct SourceStats {
  std::uint64_t bytes = 0;
  fetch::LocalReadStats read;   // local sources
  fetch::FetchStats fetch;      // remote sources
  bool all_verified = false;    // every object verified (remote)
  unsigned verified_md5 = 0;
  std::uint64_t cache_hit_bytes = 0;     // served from the disk cache (remote with a cache)
  std::uint64_t cache_filled_bytes = 0;  // written to the disk cache by this load
};

class Source {
 public:
  virtual ~Source() = default;
  // Moves every chunk of the plan into the sink; returns when all are committed and verified,
  // or with the first error (Errc::kCancelled after control.cancel or a false progress).
  virtual Status Run(const Plan& plan, Sink& sink, SourceControl& control, SourceStats* stats) = 0;
};

std::unique_ptr<Source> MakeLocalSource(const ModelLayout& layout, fetch::LocalReadOptions options);
std::unique_ptr<Source> MakeRemoteSource(const RemoteModel& model);

// Writes the bytes it is handed into the model's files under `dir` (same relative names):
// headers first, data as it arrives, each file through a cache::PartialFile (a lock per file, a
// unique temporary name, verified on disk against the arrival CRCs and `expected` (per file;
// empty = none) before the rename). A file another process is writing is left to it. Used in a
// Tee to keep a copy on disk of what is loaded (one fetch). Writes go through the io_uring write
// service; `stable_source`: the bytes handed over stay valid until the load ends (a host
// arena), so writes are queued and not waited for until Finish.
Result<std::unique_ptr<Sink>> MakeFileSink(const ModelLayout& layout, std::vector<std::string> header_bytes,
                                           std::vector<cache::ExpectedChecksums> expected,
                                           const Plan& plan, std::string dir, bool stable_source = false);
// Hands each chunk to `primary` (which owns the memory) and the same bytes to every other.
std::unique_ptr<Sink> MakeTee(std::unique_ptr<Sink> primary, std::vector<std::unique_ptr<Sink>> others);

struct LoadOptions : DeviceLoadOptions {
  cache::HostArenaOptions arena;   // --device cpu
  // Also write the model's files under this folder, from the same fetched bytes (a Tee).
  std::string also_write_to;
  // Called once per layer as soon as all its selected tensors are final.
  std::function<void(int layer)> on_layer;
  // Remote chunks nobody waits on yet go at this priority (kNow for a load a server blocks on).
  fetch::FetchPriority priority = fetch::FetchPriority::kNow;
};

// A load in progress. Waits return the load's error if it failed. Destroying the handle
// cancels the load and waits for it to stop.
class LoadHandle {
 public:
  virtual ~LoadHandle() = default;
  virtual Status WaitTensor(std::string_view name) = 0;  // fetched ahead of the read-ahead
  virtual Status WaitLayer(int layer) = 0;
  // The layer's join event, once every copy of its tensors is submitted (it is fetched ahead
  // of the read-ahead): a cudaEvent_t on CUDA that a compute stream can cudaStreamWaitEvent on
  // while the copies are still in flight (CopyEngine::WaitEvent waits on the host; the sim
  // device's events are sequence numbers). Valid while the handle lives. kUnavailable for
  // --device cpu; kNotFound for a layer with no selected tensor; the load's error if it failed.
  virtual Result<std::uintptr_t> LayerEvent(int layer) = 0;
  // Host-side wait for an event from LayerEvent (cudaEventSynchronize on CUDA).
  virtual Status WaitEvent(std::uintptr_t event) = 0;
  virtual Status WaitAll() = 0;
  virtual bool Ready(std::string_view name) const = 0;
  // Where a selected tensor's bytes go, fixed from the start of the load: a host address for
  // --device cpu, else a device address. Read them only once WaitTensor/WaitLayer returned
  // (host) or after the layer's event (device). This is what lets a runtime compute layer 0
  // while later layers still arrive, over the load's own memory (no second copy).
  struct Placement {
    const TensorEntry* entry = nullptr;  // name, file dtype and shape
    DType dtype = DType::kU8;            // dtype in memory (after --convert)
    std::uintptr_t address = 0;
    std::uint64_t nbytes = 0;
    bool on_device = false;  // CUDA memory (the sim device's stand-in memory is host memory)
    int device_index = 0;
  };
  // kNotFound for a tensor this load does not hold.
  virtual Result<Placement> Place(std::string_view name) const = 0;
  // Every tensor of the model (a filtered load holds only the selected ones: Place says).
  // The memory behind every Placement lives as long as the handle.
  virtual const ModelLayout& layout() const = 0;
  virtual void Cancel() = 0;
  struct Progress {
    std::uint64_t bytes_done = 0, bytes_total = 0;
    std::uint64_t tensors_ready = 0, tensors_total = 0;
    bool finished = false;
  };
  virtual Progress progress() const = 0;
  // Marks include "io_started": every thread the load's source needs has been started (the
  // transport's, the readers'), so a dlopen may begin without holding them up (glibc's loader
  // lock blocks pthread_create while libraries are mapped and relocated).
  virtual const Timeline& timeline() const = 0;
  // After WaitAll() succeeded: the model (host for --device cpu, else device).
  virtual std::shared_ptr<HostModel> host_model() const = 0;
  virtual std::shared_ptr<DeviceModel> device_model() const = 0;
  virtual const SourceStats& source_stats() const = 0;
};

// A host (--device cpu) load with these options.
LoadOptions ToLoadOptions(const HostLoadOptions& host);

// Loads that took their staging memory from the process's pool instead of allocating it.
std::uint64_t StagingPoolReuses();

// Starts loading and returns at once. `timeline` may carry marks made before (listing).
Result<std::shared_ptr<LoadHandle>> StartLoad(OpenedModel model, LoadOptions options, Timeline timeline = {});

}  // namespace coldstart::loader
