#include "coldstart/loader/engine.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "cache_link.h"
#include "coldstart/cache/memory.h"
#include "coldstart/core/crc32c.h"
#include "coldstart/core/file_io.h"
#include "coldstart/core/hash.h"
#include "coldstart/core/log.h"
#include "coldstart/fetch/file_writer.h"
#include "coldstart/core/relative_path.h"

namespace coldstart::loader {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint64_t kDeviceAlign = 256;  // cudaMalloc's alignment, and enough for any dtype
constexpr std::uint64_t kPage = 4096;

}  // namespace

int TensorLayer(std::string_view name) {
  auto p = name.find("layers.");
  if (p == std::string_view::npos) return -1;
  int v = 0;
  bool any = false;
  for (std::size_t i = p + 7; i < name.size() && name[i] >= '0' && name[i] <= '9' && v < 100000000; ++i) {
    v = v * 10 + (name[i] - '0');
    any = true;
  }
  return any ? v : -1;
}

Result<Plan> MakePlan(const ModelLayout& m, const PlanOptions& o) {
  if (o.chunk_bytes < kPage)
    return MakeError(Errc::kInvalidArgument, "chunk size " + std::to_string(o.chunk_bytes) + " is below 4 KiB");
  Plan p;
  const auto n = m.tensors.size();
  p.dev_offset.assign(n, UINT64_MAX);
  p.out_bytes.assign(n, 0);
  p.out_dtype.resize(n);
  p.conversion.assign(n, Conversion::kNone);
  p.chunks_of_tensor.resize(n);
  for (std::uint32_t i = 0; i < n; ++i)
    if (!o.filter || o.filter(m.tensors[i].name)) p.selected.push_back(i);
  if (p.selected.empty()) return MakeError(Errc::kNotFound, m.source + ": no tensor matches the filter");
  auto file_order = [&](std::uint32_t a, std::uint32_t b) {
    const auto &x = m.tensors[a], &y = m.tensors[b];
    return x.file != y.file ? x.file < y.file : x.offset < y.offset;
  };
  switch (o.order) {
    case LoadOrder::kFile: std::stable_sort(p.selected.begin(), p.selected.end(), file_order); break;
    case LoadOrder::kLargestFirst:
      std::stable_sort(p.selected.begin(), p.selected.end(), [&](auto a, auto b) {
        return m.tensors[a].nbytes != m.tensors[b].nbytes ? m.tensors[a].nbytes > m.tensors[b].nbytes : file_order(a, b);
      });
      break;
    case LoadOrder::kLayer:
      std::stable_sort(p.selected.begin(), p.selected.end(), [&](auto a, auto b) {
        // Embeddings first, then layers in order, then everything else (final norm, lm_head).
        auto key = [&](std::uint32_t t) {
          int layer = TensorLayer(m.tensors[t].name);
          int group = layer >= 0 ? 1 : (m.tensors[t].name.find("embed") != std::string::npos ? 0 : 2);
          return std::make_pair(group, layer);
        };
        auto ka = key(a), kb = key(b);
        return ka != kb ? ka < kb : file_order(a, b);
      });
      break;
  }
  for (auto t : p.selected) {
    const auto& e = m.tensors[t];
    p.out_dtype[t] = e.dtype;
    p.out_bytes[t] = e.nbytes;
    if (e.dtype == DType::kBF16 && o.bf16_conversion != Conversion::kNone) {
      p.conversion[t] = o.bf16_conversion;
      p.out_dtype[t] = o.bf16_conversion == Conversion::kBf16ToF16 ? DType::kF16 : DType::kF32;
      p.out_bytes[t] = o.bf16_conversion == Conversion::kBf16ToF16 ? e.nbytes : e.nbytes * 2;
    }
    p.dev_offset[t] = (p.device_bytes + kDeviceAlign - 1) / kDeviceAlign * kDeviceAlign;
    p.device_bytes = p.dev_offset[t] + p.out_bytes[t];
    p.source_bytes += e.nbytes;
  }
  // Runs: tensors consecutive in load order and adjacent in one file are fetched together.
  std::size_t i = 0;
  while (i < p.selected.size()) {
    std::size_t j = i + 1;
    std::uint64_t end = m.tensors[p.selected[i]].offset + m.tensors[p.selected[i]].nbytes;
    while (j < p.selected.size() && m.tensors[p.selected[j]].file == m.tensors[p.selected[i]].file &&
           m.tensors[p.selected[j]].offset == end) {
      end += m.tensors[p.selected[j]].nbytes;
      ++j;
    }
    const std::uint32_t file = m.tensors[p.selected[i]].file;
    std::uint64_t pos = m.tensors[p.selected[i]].offset;
    std::size_t k = i;  // first tensor of the run not yet fully covered
    while (pos < end) {
      std::uint64_t cut = std::min(end, pos + o.chunk_bytes);
      if (o.align_bytes) cut = std::min(cut, (pos / o.align_bytes + 1) * o.align_bytes);
      // Never split a converted BF16 element across two chunks.
      for (std::size_t q = k; q < j; ++q) {
        const auto& e = m.tensors[p.selected[q]];
        if (cut > e.offset && cut < e.offset + e.nbytes) {
          if (p.conversion[p.selected[q]] != Conversion::kNone && (cut - e.offset) % 2 == 1) --cut;
          break;
        }
      }
      Chunk c{file, pos, cut - pos, {}};
      for (std::size_t q = k; q < j; ++q) {
        const auto& e = m.tensors[p.selected[q]];
        std::uint64_t a = std::max(pos, e.offset), b = std::min(cut, e.offset + e.nbytes);
        if (e.offset >= cut) break;
        if (b > a || e.nbytes == 0) c.pieces.push_back({p.selected[q], a - pos, b - a, a - e.offset});
        if (e.offset + e.nbytes <= cut) k = q + 1;
      }
      p.chunks.push_back(std::move(c));
      pos = cut;
    }
    // Zero-byte tensors at the end of a run (or alone) still need a ready call.
    for (std::size_t q = k; q < j; ++q)
      if (m.tensors[p.selected[q]].nbytes == 0) {
        if (p.chunks.empty() || p.chunks.back().file != file) p.chunks.push_back({file, end, 0, {}});
        p.chunks.back().pieces.push_back({p.selected[q], 0, 0, 0});
      }
    i = j;
  }
  for (std::size_t c = 0; c < p.chunks.size(); ++c)
    for (const auto& pc : p.chunks[c].pieces) p.chunks_of_tensor[pc.tensor].push_back(c);
  return p;
}

// ---------------------------------------------------------------------------------------------
// LoadState

LoadState::LoadState(const ModelLayout& m, const Plan& plan)
    : plan_(plan), remaining_(m.tensors.size()), layer_of_(m.tensors.size(), -1), ready_(m.tensors.size(), 0) {
  int max_layer = -1;
  for (auto t : plan.selected) {
    remaining_[t] = m.tensors[t].nbytes;
    layer_of_[t] = TensorLayer(m.tensors[t].name);
    max_layer = std::max(max_layer, layer_of_[t]);
  }
  layer_remaining_ = std::vector<std::atomic<std::uint32_t>>(static_cast<std::size_t>(max_layer + 1));
  for (auto t : plan.selected)
    if (layer_of_[t] >= 0) ++layer_remaining_[static_cast<std::size_t>(layer_of_[t])];
}

void LoadState::BytesLanded(std::uint32_t t, std::uint64_t len) {
  if (remaining_[t].fetch_sub(len) != len) return;
  {
    std::lock_guard lk(mu_);
    ready_[t] = 1;
  }
  ++ready_count_;
  cv_.notify_all();
  if (on_tensor) on_tensor(t);
  const int layer = layer_of_[t];
  if (layer >= 0 && layer_remaining_[static_cast<std::size_t>(layer)].fetch_sub(1) == 1 && on_layer) on_layer(layer);
}

void LoadState::Finish(Status status) {
  {
    std::lock_guard lk(mu_);
    if (!finished_) finished_ = std::move(status);
  }
  cv_.notify_all();
}

bool LoadState::Ready(std::uint32_t t) const {
  std::lock_guard lk(mu_);
  return t < ready_.size() && ready_[t];
}

bool LoadState::Finished() const {
  std::lock_guard lk(mu_);
  return finished_.has_value();
}

Status LoadState::WaitTensor(std::uint32_t t) {
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return ready_[t] || finished_.has_value(); });
  if (ready_[t]) return OkStatus();
  if (!finished_->ok()) return *finished_;
  return MakeError(Errc::kInternal, "load finished without tensor " + std::to_string(t));
}

Status LoadState::WaitLayer(int layer) {
  if (layer < 0 || static_cast<std::size_t>(layer) >= layer_remaining_.size())
    return MakeError(Errc::kNotFound, "no selected tensor belongs to layer " + std::to_string(layer));
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return layer_remaining_[static_cast<std::size_t>(layer)].load() == 0 || finished_.has_value(); });
  if (layer_remaining_[static_cast<std::size_t>(layer)].load() == 0) return OkStatus();
  return finished_->ok() ? MakeError(Errc::kInternal, "load finished without layer " + std::to_string(layer)) : *finished_;
}

Status LoadState::WaitAll() {
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return finished_.has_value(); });
  return *finished_;
}

Status Sink::Accept(std::size_t, const std::byte*, std::uint32_t) {
  return MakeError(Errc::kInternal, "this sink cannot take part in a tee");
}

namespace {

// ---------------------------------------------------------------------------------------------
// Sinks

// Every chunk straight to its final place in one host arena (never full).
class HostArenaSink final : public Sink {
 public:
  HostArenaSink(const ModelLayout& m, const Plan& plan, LoadState& state, std::byte* arena,
                std::vector<std::uint64_t> file_pos)
      : m_(m), plan_(plan), state_(state), arena_(arena), file_pos_(std::move(file_pos)) {}
  std::byte* TryReserve(std::size_t c) override { return Dest(c); }
  Status Commit(std::size_t c, std::byte*, std::uint32_t) override {
    for (const auto& pc : plan_.chunks[c].pieces) state_.BytesLanded(pc.tensor, pc.len);
    return OkStatus();
  }
  Status Accept(std::size_t c, const std::byte* data, std::uint32_t crc) override {
    std::memcpy(Dest(c), data, plan_.chunks[c].length);
    return Commit(c, nullptr, crc);
  }
  void Release(std::size_t, std::byte*) override {}
  Status Finish() override { return OkStatus(); }
  const std::byte* HostFileData(std::uint32_t file) const override { return arena_ + file_pos_[file]; }

 private:
  std::byte* Dest(std::size_t c) {
    const Chunk& ch = plan_.chunks[c];
    return arena_ + file_pos_[ch.file] + (ch.offset - m_.files[ch.file].header.data_start());
  }
  const ModelLayout& m_;
  const Plan& plan_;
  LoadState& state_;
  std::byte* arena_;
  std::vector<std::uint64_t> file_pos_;
};

// Fixed-size staging buffers carved from one allocation.
class StagingRing {
 public:
  StagingRing(StagingMemory* mem, std::uint64_t slot_bytes, std::uint64_t slots) : slot_(slot_bytes) {
    for (std::uint64_t k = 0; k < slots; ++k) free_.push_back(mem->data() + k * slot_);
    slots_ = free_.size();
  }
  std::byte* TryAcquire() {
    std::lock_guard lk(mu_);
    if (free_.empty()) return nullptr;
    std::byte* p = free_.back();
    free_.pop_back();
    peak_ = std::max(peak_, slots_ - free_.size());
    return p;
  }
  void Release(std::byte* p) {
    {
      std::lock_guard lk(mu_);
      free_.push_back(p);
    }
    // Under cb_mu_: once SetSpaceCallback(nullptr) returns, no call of the old callback runs
    // (it may point at a source's stack).
    std::lock_guard cl(cb_mu_);
    if (space_) space_();
  }
  void SetSpaceCallback(std::function<void()> cb) {
    std::lock_guard lk(cb_mu_);
    space_ = std::move(cb);
  }
  std::size_t slots() const { return slots_; }
  std::uint64_t peak_bytes() const {
    std::lock_guard lk(mu_);
    return peak_ * slot_;
  }

 private:
  std::uint64_t slot_;
  std::size_t slots_ = 0;
  mutable std::mutex mu_;
  std::vector<std::byte*> free_;  // GUARDED_BY(mu_)
  std::size_t peak_ = 0;
  std::mutex cb_mu_;
  std::function<void()> space_;  // GUARDED_BY(cb_mu_)
};

// The process's staging memory: pinned host memory is slow to allocate (cudaHostAlloc of 1 GiB
// takes ~0.3 s) and the budget is the same from one load to the next, so it outlives a load.
// One pooled allocation per device; a load takes it if it is large enough and free.
class StagingPool {
 public:
  static StagingPool& Get() {
    static StagingPool p;
    return p;
  }
  Result<StagingMemory> Take(const std::string& device, std::uint64_t bytes, CopyEngine& engine) {
    {
      std::lock_guard lk(mu_);
      auto it = pool_.find(device);
      if (it != pool_.end() && it->second.size() >= bytes) {
        StagingMemory m = std::move(it->second);
        pool_.erase(it);
        ++reused_;
        return m;
      }
    }
    return engine.AllocateStaging(bytes);
  }
  void Give(const std::string& device, StagingMemory mem) {
    std::lock_guard lk(mu_);
    auto& slot = pool_[device];
    if (slot.size() < mem.size()) slot = std::move(mem);
  }
  std::uint64_t reused() const {
    std::lock_guard lk(mu_);
    return reused_;
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, StagingMemory> pool_;
  std::uint64_t reused_ = 0;
};

// 1/8 of the memory this process may still use (the cgroup's limit inside a container, never
// the host's free memory), at most 2 GiB.
std::uint64_t DefaultStagingBudget() { return std::min<std::uint64_t>(2ull << 30, cache::AvailableMemoryBytes() / 8); }

// Chunks land in a ring of staging buffers; each filled buffer goes to the copy engine and is
// reused as soon as its copies are done.
// The join event of each layer of a device load (LoadHandle::LayerEvent): recorded by the
// sink's dispatching threads as soon as every copy of the layer is submitted, so a compute
// stream can queue the layer's work behind its copies while they are still in flight. Owned by
// the load (it outlives the sink).
class LayerEvents {
 public:
  explicit LayerEvents(std::size_t layers) : events_(layers), recorded_(layers, 0), errors_(layers) {}

  void Record(int layer, Result<DeviceEvent> ev) {
    {
      std::lock_guard lk(mu_);
      const auto i = static_cast<std::size_t>(layer);
      if (ev.ok()) {
        events_[i] = std::move(ev).value();
      } else {
        errors_[i] = std::move(ev).error();
      }
      recorded_[i] = 1;
    }
    cv_.notify_all();
  }
  void Finish(const Status& st) {
    {
      std::lock_guard lk(mu_);
      finished_ = st;
    }
    cv_.notify_all();
  }
  Result<std::uintptr_t> Wait(int layer) {
    if (layer < 0 || static_cast<std::size_t>(layer) >= events_.size())
      return MakeError(Errc::kNotFound, "no selected tensor belongs to layer " + std::to_string(layer));
    const auto i = static_cast<std::size_t>(layer);
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return recorded_[i] || finished_.has_value(); });
    if (recorded_[i]) {
      if (errors_[i]) return *errors_[i];
      return events_[i].ptr();
    }
    if (!finished_->ok()) return finished_->error();
    return MakeError(Errc::kNotFound, "no selected tensor belongs to layer " + std::to_string(layer));
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<DeviceEvent> events_;         // GUARDED_BY(mu_)
  std::vector<std::uint8_t> recorded_;      // GUARDED_BY(mu_)
  std::vector<std::optional<Error>> errors_;  // GUARDED_BY(mu_)
  std::optional<Status> finished_;          // GUARDED_BY(mu_)
};

class DeviceSink final : public Sink {
 public:
  DeviceSink(const Plan& plan, LoadState& state, std::uintptr_t device_base, CopyEngine& engine, std::string device,
             StagingMemory mem, std::uint64_t slot_bytes, std::uint64_t slots, const std::vector<int>& layer_of,
             LayerEvents* layer_events)
      : plan_(plan), state_(state), base_(device_base), engine_(engine), device_(std::move(device)), mem_(std::move(mem)),
        ring_(&mem_, slot_bytes, slots), slot_of_(plan.chunks.size(), nullptr), layer_of_(layer_of),
        layer_events_(layer_events) {
    std::size_t layers = 0;
    for (int l : layer_of_) layers = std::max(layers, static_cast<std::size_t>(l + 1));
    unsubmitted_ = std::vector<std::atomic<std::uint32_t>>(layers);
    for (const Chunk& c : plan_.chunks)
      for (const Piece& pc : c.pieces)
        if (layer_of_[pc.tensor] >= 0) ++unsubmitted_[static_cast<std::size_t>(layer_of_[pc.tensor])];
  }
  ~DeviceSink() override {
    // Copies read the staging memory: it goes back to the pool only once they are drained.
    (void)engine_.Drain();
    StagingPool::Get().Give(device_, std::move(mem_));
  }

  std::byte* TryReserve(std::size_t c) override {
    std::byte* slot = ring_.TryAcquire();
    if (!slot) return nullptr;
    slot_of_[c] = slot;
    return slot + plan_.chunks[c].offset % kPage;
  }
  void Release(std::size_t c, std::byte*) override {
    if (std::byte* s = std::exchange(slot_of_[c], nullptr)) ring_.Release(s);
  }
  Status Commit(std::size_t c, std::byte* data, std::uint32_t) override {
    Dispatch(c, data);
    std::lock_guard lk(mu_);
    if (error_) return *error_;
    return OkStatus();
  }
  Status Finish() override {
    CS_RETURN_IF_ERROR(engine_.Drain());
    std::lock_guard lk(mu_);
    if (error_) return *error_;
    return OkStatus();
  }
  void Abort() override { (void)engine_.Drain(); }
  void SetSpaceCallback(std::function<void()> cb) override { ring_.SetSpaceCallback(std::move(cb)); }
  std::size_t PreferredBatch() const override { return std::clamp<std::size_t>(ring_.slots() / 2, 1, 8); }
  std::size_t MaxInFlight() const override { return std::max<std::size_t>(1, ring_.slots() / 2); }

  std::uint64_t h2d_bytes() const { return h2d_bytes_.load(); }
  std::uint64_t copies() const { return copies_.load(); }
  std::uint64_t peak_bytes() const { return ring_.peak_bytes(); }
  Clock::time_point first_submit() const { return Clock::time_point(Clock::duration(first_submit_.load())); }
  Clock::time_point last_copy() const { return Clock::time_point(Clock::duration(last_copy_.load())); }

 private:
  void Fail(Error e) {
    std::lock_guard lk(mu_);
    if (!error_) error_ = std::move(e);
  }
  void Dispatch(std::size_t ci, std::byte* data) {
    const Chunk& c = plan_.chunks[ci];
    std::byte* slot = std::exchange(slot_of_[ci], nullptr);
    std::int64_t zero = 0;
    first_submit_.compare_exchange_strong(zero, Clock::now().time_since_epoch().count());
    auto refs = std::make_shared<std::atomic<std::size_t>>(c.pieces.size());
    if (c.pieces.empty()) {
      if (slot) ring_.Release(slot);
      return;
    }
    for (const Piece& pc : c.pieces) {
      if (pc.len == 0) {  // zero-size tensor: ready at once
        state_.BytesLanded(pc.tensor, 0);
        if (refs->fetch_sub(1) == 1 && slot) ring_.Release(slot);
        PieceSubmitted(pc.tensor);
        continue;
      }
      const Conversion conv = plan_.conversion[pc.tensor];
      const std::uint64_t scale = conv == Conversion::kBf16ToF32 ? 2 : 1;
      CopyRequest r{data + pc.chunk_off, pc.len, base_ + plan_.dev_offset[pc.tensor] + pc.tensor_off * scale,
                    conv};
      auto st = engine_.Submit(r, [this, pc, refs, slot, scale](Status s) {
        if (!s.ok()) Fail(std::move(s).error());
        h2d_bytes_ += pc.len * scale;
        last_copy_ = Clock::now().time_since_epoch().count();
        if (s.ok()) state_.BytesLanded(pc.tensor, pc.len);
        if (refs->fetch_sub(1) == 1 && slot) ring_.Release(slot);
      });
      ++copies_;
      if (!st.ok()) {
        Fail(std::move(st).error());
        if (refs->fetch_sub(1) == 1 && slot) ring_.Release(slot);
      }
      PieceSubmitted(pc.tensor);
    }
  }
  // The last piece of a layer is on its way to the device: its join event covers it (and
  // every copy submitted before it).
  void PieceSubmitted(std::uint32_t t) {
    const int layer = layer_of_[t];
    if (layer < 0 || !layer_events_) return;
    if (unsubmitted_[static_cast<std::size_t>(layer)].fetch_sub(1) == 1)
      layer_events_->Record(layer, engine_.RecordJoinEvent());
  }

  const Plan& plan_;
  LoadState& state_;
  std::uintptr_t base_;  // the model's device memory
  CopyEngine& engine_;
  std::string device_;
  StagingMemory mem_;
  StagingRing ring_;
  std::vector<std::byte*> slot_of_;  // chunk -> its slot while reserved
  const std::vector<int>& layer_of_;  // per layout tensor
  LayerEvents* layer_events_;
  std::vector<std::atomic<std::uint32_t>> unsubmitted_;  // per layer: pieces not yet submitted
  std::atomic<std::uint64_t> h2d_bytes_{0}, copies_{0};
  std::atomic<std::int64_t> first_submit_{0}, last_copy_{0};
  std::mutex mu_;
  std::optional<Error> error_;
};

// Writes what it is handed into the model's files under a folder, each through a
// cache::PartialFile (the same file writer as prefetch): a lock per file, a unique temporary
// name, and before the rename the ranges must tile the file, match the object's checksum when
// the source has one, and read back from disk with the CRC32C they arrived with. Writes go
// through the io_uring write service; when the bytes stay put until the load ends (a host
// arena), they are queued and Accept returns at once, so the fetch loop never waits for the
// page-cache copy; otherwise (staging slots reused after the copy) Accept waits for them.
class FileSink final : public Sink {
 public:
  void SetStableSource(bool stable) { async_ = stable; }
  struct File {
    std::optional<cache::PartialFile> partial;  // none: another process is writing this file
    std::uint64_t want = 0;                     // data bytes to receive
    std::atomic<std::uint64_t> got{0};
  };
  FileSink(const ModelLayout& m, const Plan& plan) : m_(m), plan_(plan), files_(m.files.size()) {}
  ~FileSink() override { Abort(); }

  Status Open(const std::vector<std::string>& headers, std::vector<cache::ExpectedChecksums> expected, const std::string& dir) {
    namespace fs = std::filesystem;
    expected_ = std::move(expected);
    expected_.resize(m_.files.size());
    for (const auto& c : plan_.chunks) files_[c.file].want += c.length;
    for (std::size_t i = 0; i < m_.files.size(); ++i) {
      File& f = files_[i];
      CS_RETURN_IF_ERROR(CheckRelativePath(m_.files[i].name, "file name", dir));
      const std::string final_path = (fs::path(dir) / m_.files[i].name).string();
      std::error_code ec;
      fs::create_directories(fs::path(final_path).parent_path(), ec);
      if (ec) return MakeError(ec.value() == EACCES ? Errc::kPermissionDenied : Errc::kIo, final_path + ": cannot create its folder: " + ec.message());
      // The load must not wait for another writer of the same file: that one keeps it.
      CS_ASSIGN_OR_RETURN(auto lock, cache::FileLock::TryAcquire(final_path));
      if (!lock) {
        LogWarning(final_path + ": another process is writing it; this load does not");
        continue;
      }
      const std::string& h = headers[i];
      cache::PartialFileOptions po;
      po.resume = false;  // a tee writes what the load reads; nothing to resume from
      CS_ASSIGN_OR_RETURN(auto pf, cache::PartialFile::Open(std::move(*lock), h.size() + m_.files[i].header.data_bytes, "", po));
      CS_RETURN_IF_ERROR(pf.Write(0, reinterpret_cast<const std::byte*>(h.data()), h.size()));
      CS_RETURN_IF_ERROR(pf.RangeDone(0, h.size(), Crc32c(h.data(), h.size())));
      f.partial = std::move(pf);
    }
    return OkStatus();
  }
  std::byte* TryReserve(std::size_t) override { return nullptr; }  // only ever part of a tee
  void Release(std::size_t, std::byte*) override {}
  Status Commit(std::size_t c, std::byte* data, std::uint32_t crc) override { return Accept(c, data, crc); }
  Status Accept(std::size_t c, const std::byte* data, std::uint32_t crc) override {
    const Chunk& ch = plan_.chunks[c];
    File& f = files_[ch.file];
    if (!f.partial) return OkStatus();
    {
      std::lock_guard lk(mu_);
      if (error_) return *error_;
    }
    auto& writer = fetch::FileWriter::Shared();
    if (!async_) {
      if (auto st = writer.Write(f.partial->fd(), ch.offset, data, ch.length); !st.ok())
        return std::move(st).error().WithContext(f.partial->partial_path());
      CS_RETURN_IF_ERROR(f.partial->RangeDone(ch.offset, ch.length, crc));
      f.got += ch.length;
      return OkStatus();
    }
    {
      std::lock_guard lk(mu_);
      ++pending_;
    }
    writer.Submit(f.partial->fd(), ch.offset, data, ch.length, [this, &f, off = ch.offset, len = ch.length, crc](Status st) {
      if (st.ok()) st = f.partial->RangeDone(off, len, crc);
      if (st.ok()) f.got += len;
      // Notified under the lock: Drain() may return and the sink be destroyed as soon as the
      // lock is released, so nothing of it is touched after that (TSan caught a cv destroyed
      // while notified).
      std::lock_guard lk(mu_);
      if (!st.ok() && !error_) error_ = std::move(st).error().WithContext(f.partial->partial_path());
      --pending_;
      cv_.notify_all();
    });
    return OkStatus();
  }
  // Queued writes have completed (before a commit, or before the files go away).
  Status Drain() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return pending_ == 0; });
    if (error_) return *error_;
    return OkStatus();
  }
  // Only files whose every data byte was received become final (a filtered load keeps none
  // of the files it did not read whole).
  Status Finish() override {
    CS_RETURN_IF_ERROR(Drain());
    for (std::size_t i = 0; i < files_.size(); ++i) {
      File& f = files_[i];
      if (!f.partial) continue;
      const bool whole = f.got.load() == m_.files[i].header.data_bytes && f.want == f.got.load();
      if (!whole) {
        f.partial->Abandon(false);
        f.partial.reset();
        continue;
      }
      auto v = f.partial->Commit(expected_[i]);
      f.partial.reset();
      if (!v.ok()) return std::move(v).error();
    }
    return OkStatus();
  }
  void Abort() override {
    (void)Drain();
    for (auto& f : files_) {
      if (f.partial) f.partial->Abandon(false);
      f.partial.reset();
    }
  }

 private:
  const ModelLayout& m_;
  const Plan& plan_;
  std::vector<File> files_;
  std::vector<cache::ExpectedChecksums> expected_;  // per file
  bool async_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  unsigned pending_ = 0;          // GUARDED_BY(mu_): queued writes not yet completed
  std::optional<Error> error_;    // GUARDED_BY(mu_): the first failed write
};

class TeeSink final : public Sink {
 public:
  TeeSink(std::unique_ptr<Sink> primary, std::vector<std::unique_ptr<Sink>> others)
      : primary_(std::move(primary)), others_(std::move(others)) {}
  std::byte* TryReserve(std::size_t c) override { return primary_->TryReserve(c); }
  void Release(std::size_t c, std::byte* d) override { primary_->Release(c, d); }
  Status Commit(std::size_t c, std::byte* data, std::uint32_t crc) override {
    // The others first: the primary may hand its memory back as soon as it has committed.
    for (auto& o : others_) {
      if (auto st = o->Accept(c, data, crc); !st.ok()) {
        primary_->Release(c, data);
        return st;
      }
    }
    return primary_->Commit(c, data, crc);
  }
  Status Finish() override {
    CS_RETURN_IF_ERROR(primary_->Finish());
    for (auto& o : others_) CS_RETURN_IF_ERROR(o->Finish());
    return OkStatus();
  }
  void Abort() override {
    primary_->Abort();
    for (auto& o : others_) o->Abort();
  }
  void SetSpaceCallback(std::function<void()> cb) override { primary_->SetSpaceCallback(std::move(cb)); }
  std::size_t PreferredBatch() const override { return primary_->PreferredBatch(); }
  std::size_t MaxInFlight() const override { return primary_->MaxInFlight(); }
  const std::byte* HostFileData(std::uint32_t f) const override { return primary_->HostFileData(f); }

 private:
  std::unique_ptr<Sink> primary_;
  std::vector<std::unique_ptr<Sink>> others_;
};

// ---------------------------------------------------------------------------------------------
// Sources

// Local files through the I/O reader (io_uring rings or pread threads).
class LocalSource final : public Source {
 public:
  LocalSource(const ModelLayout& m, fetch::LocalReadOptions o) : m_(m), o_(std::move(o)) {}

  Status Run(const Plan& plan, Sink& sink, SourceControl& ctl, SourceStats* stats) override {
    std::vector<std::string> paths;
    std::vector<FileIdentity> seen;  // when the headers were read: a file changed since is refused
    for (const auto& f : m_.files) {
      paths.push_back(f.path);
      seen.push_back(f.identity);
    }
    CS_ASSIGN_OR_RETURN(auto files, fetch::LocalFileSet::Open(paths, o_.direct, seen));
    // The layout was made from headers read earlier; a file that changed size since would
    // put bytes in the wrong places.
    for (std::size_t i = 0; i < m_.files.size(); ++i)
      if (files.file(i).size != m_.files[i].size)
        return MakeError(Errc::kIntegrity, m_.files[i].path + ": file is " + std::to_string(files.file(i).size) +
                                               " bytes now but its header described " + std::to_string(m_.files[i].size) +
                                               " (changed while loading?)");
    CS_ASSIGN_OR_RETURN(auto reader, fetch::SharedLocalReader(o_));
    // Every thread this load needs exists now (see LoadHandle: "io_started").
    if (ctl.timeline) ctl.timeline->Mark("io_started");
    std::mutex space_mu;
    std::condition_variable space_cv;
    bool space = false;
    sink.SetSpaceCallback([&] {
      {
        std::lock_guard lk(space_mu);
        space = true;
      }
      space_cv.notify_all();
    });
    const std::size_t batch_max = std::max<std::size_t>(1, sink.PreferredBatch());
    std::uint64_t done_bytes = 0;
    std::size_t next = 0;
    Status result;
    while (next < plan.chunks.size()) {
      if (ctl.cancel) {
        result = MakeError(Errc::kCancelled, "load cancelled");
        break;
      }
      std::vector<std::pair<std::size_t, std::byte*>> batch;
      while (batch.size() < batch_max && next < plan.chunks.size()) {
        std::byte* d = sink.TryReserve(next);
        if (!d) break;
        batch.push_back({next++, d});
      }
      if (batch.empty()) {
        std::unique_lock lk(space_mu);
        space_cv.wait_for(lk, std::chrono::milliseconds(50), [&] { return space; });
        space = false;
        continue;
      }
      std::vector<fetch::ReadRange> ranges;
      for (auto& [ci, dest] : batch) {
        const Chunk& c = plan.chunks[ci];
        ranges.push_back({c.file, c.offset, c.length, dest});
      }
      const std::uint64_t base = done_bytes;
      fetch::LocalReadStats rs;
      auto st = reader->Read(
          files, ranges,
          [&](std::uint64_t d) {
            if (d > 0 && ctl.timeline) ctl.timeline->Mark("first_byte");
            return !ctl.cancel && (!ctl.progress || ctl.progress(base + d));
          },
          &rs);
      Accumulate(rs, &stats->read);
      if (!st.ok()) {
        for (auto& [ci, dest] : batch) sink.Release(ci, dest);
        result = st.error().code == Errc::kCancelled ? Status(MakeError(Errc::kCancelled, "load cancelled")) : st;
        break;
      }
      if (ctl.timeline) ctl.timeline->Mark("first_byte");
      for (std::size_t k = 0; k < batch.size(); ++k) {
        auto [ci, dest] = batch[k];
        done_bytes += plan.chunks[ci].length;
        if (auto cs = sink.Commit(ci, dest, 0); !cs.ok()) {
          for (std::size_t r = k + 1; r < batch.size(); ++r) sink.Release(batch[r].first, batch[r].second);
          result = cs;
          break;
        }
      }
      if (!result.ok()) break;
      if (ctl.progress && !ctl.progress(done_bytes)) ctl.cancel = true;
    }
    sink.SetSpaceCallback(nullptr);
    stats->bytes = done_bytes;
    if (ctl.timeline) ctl.timeline->Set("fetch");
    // A file rewritten in place during the reads would mix old and new tensors.
    if (result.ok()) result = files.CheckUnchanged();
    return result;
  }

 private:
  static void Accumulate(const fetch::LocalReadStats& a, fetch::LocalReadStats* s) {
    s->engine = a.engine;
    s->threads = a.threads;
    s->bytes += a.bytes;
    s->direct_bytes += a.direct_bytes;
    s->requests += a.requests;
    s->short_reads += a.short_reads;
    s->retries += a.retries;
    s->direct_fallbacks += a.direct_fallbacks;
  }
  const ModelLayout& m_;
  fetch::LocalReadOptions o_;
};

// gs:// and http(s):// through the process's fetch transport.
//
// With a disk cache (CacheLink): a chunk the cache holds is read from it (checked against its
// CRC32C) instead of fetched; a chunk another process is fetching right now is waited for,
// then read (single flight across processes); a chunk nobody has is fetched and written to the
// cache from the same bytes. The whole-object CRC32C check covers both kinds of bytes.
class RemoteSource final : public Source {
 public:
  RemoteSource(const RemoteModel& rm, const ModelLayout& m, fetch::FetchPriority prio, internal::CacheLink* cache = nullptr)
      : rm_(rm), m_(m), prio_(prio), cache_(cache) {}

  Status Run(const Plan& plan, Sink& sink, SourceControl& ctl, SourceStats* stats) override {
    std::vector<std::uint32_t> crcs(plan.chunks.size());
    std::vector<std::size_t> all(plan.chunks.size());
    for (std::size_t c = 0; c < all.size(); ++c) all[c] = c;
    CS_ASSIGN_OR_RETURN(auto refetch, Pass(plan, all, sink, ctl, stats, crcs, /*use_cache=*/cache_ != nullptr));
    if (!refetch.empty()) {
      // Cached chunks that failed their check on the way out: fetched once more, from the origin.
      LogWarning(std::to_string(refetch.size()) + " cached chunk(s) of " + rm_.session->source().original +
                 " did not match their CRC32C; fetched again");
      fetch::FetchStats first = stats->fetch;
      CS_ASSIGN_OR_RETURN(auto again, Pass(plan, refetch, sink, ctl, stats, crcs, /*use_cache=*/false));
      (void)again;
      stats->fetch.bytes += first.bytes;
      stats->fetch.requests += first.requests;
      stats->fetch.retries += first.retries;
    }
    if (cache_) {
      stats->cache_hit_bytes = cache_->hit_bytes();
      stats->cache_filled_bytes = cache_->filled_bytes();
    }
    stats->bytes = stats->fetch.bytes + stats->cache_hit_bytes;
    return Verify(plan, sink, stats, crcs);
  }

 private:
  // Moves the chunks `which` into the sink; returns cached chunks that failed their check.
  Result<std::vector<std::size_t>> Pass(const Plan& plan, const std::vector<std::size_t>& which, Sink& sink,
                                        SourceControl& ctl, SourceStats* stats, std::vector<std::uint32_t>& crcs,
                                        bool use_cache) {
    fetch::FetchOptions fo = rm_.session->options().fetch;
    // Every GET in flight holds a destination. With a staging ring at most half the slots
    // fetch, so filled chunks can queue for the copy engine while the next ones arrive (with
    // GETs holding all but one slot the copy engine starved: 1.57 of 2 GB/s on the stand-in).
    fo.concurrency = static_cast<unsigned>(std::min<std::size_t>(fo.concurrency, sink.MaxInFlight()));
    std::vector<fetch::RemoteObject> objs;
    for (const auto& f : rm_.files) objs.push_back(f.object);
    std::vector<fetch::FetchRange> ranges;  // range r is plan chunk which[r]
    std::vector<std::size_t> range_of(plan.chunks.size(), SIZE_MAX);
    for (std::size_t r = 0; r < which.size(); ++r) {
      const Chunk& c = plan.chunks[which[r]];
      ranges.push_back({c.file, c.offset, c.length});
      range_of[which[r]] = r;
    }
    std::atomic<bool> committed_error{false};
    std::mutex err_mu;
    std::optional<Error> sink_error;
    auto fail = [&](const Error& e) {
      std::lock_guard lk(err_mu);
      if (!sink_error) sink_error = e;
      committed_error = true;
    };
    // Chunks the cache holds are read by this thread, never by the fetch event loop.
    std::vector<cache::ChunkClaim> claims(use_cache ? which.size() : 0);
    std::mutex local_mu;
    std::condition_variable local_cv;
    std::deque<std::pair<std::size_t, std::byte*>> local;  // (range, memory)
    std::vector<std::size_t> refetch;
    std::atomic<std::uint64_t> local_bytes{0};
    bool fetch_done = false;
    fetch::FetchCallbacks cb;
    cb.acquire = [&](std::size_t r) -> std::byte* {
      const std::size_t c = which[r];
      if (use_cache) {
        if (auto state = cache_->Claim(c, &claims[r])) {
          if (*state == cache::ClaimState::kBusy) return nullptr;  // someone fetches it: asked again soon
          std::byte* dest = sink.TryReserve(c);
          if (!dest) {
            claims[r].Release();
            return nullptr;
          }
          if (*state == cache::ClaimState::kPresent) {
            {
              std::lock_guard lk(local_mu);
              local.push_back({r, dest});
            }
            local_cv.notify_one();
            return fetch::kRangeSkipped;
          }
          return dest;
        }
      }
      return sink.TryReserve(c);
    };
    cb.done = [&](std::size_t r, std::byte* dest, std::uint32_t crc) -> Status {
      const std::size_t c = which[r];
      crcs[c] = crc;
      if (ctl.timeline) ctl.timeline->Mark("first_byte");
      if (use_cache && claims[r].held()) cache_->Fill(c, std::move(claims[r]), dest, crc);
      auto st = sink.Commit(c, dest, crc);
      if (!st.ok()) fail(st.error());
      return st;
    };
    cb.auth_header = [this] { return rm_.session->AuthHeader(); };
    cb.progress = [&](std::uint64_t d) {
      return !ctl.cancel && !committed_error && (!ctl.progress || ctl.progress(d + local_bytes.load()));
    };
    CS_ASSIGN_OR_RETURN(auto job, fetch::RangeFetcher(fo).Start(objs, ranges, cb, prio_));
    sink.SetSpaceCallback([j = job.get()] { j->Wake(); });
    {
      std::lock_guard lk(ctl.boost_mu);
      ctl.boost = [&plan, &range_of, j = job.get()](std::uint32_t t) {
        for (std::size_t c : plan.chunks_of_tensor[t])
          if (range_of[c] != SIZE_MAX) j->Boost(range_of[c]);
      };
      // Waits that came before the job existed.
      for (std::uint32_t t : ctl.pending_boosts) ctl.boost(t);
      ctl.pending_boosts.clear();
    }
    // Reading a chunk back (page cache to the sink's memory, then its CRC32C) costs about as
    // much as the local loader's reads, which run on several threads: so do these. One thread
    // made a warm-cache load 0.69x a local load of the same files (1 GiB); two, see RESULTS.
    std::vector<std::thread> readers;
    const unsigned reader_threads = use_cache ? std::clamp(std::thread::hardware_concurrency(), 2u, 4u) : 0;
    for (unsigned k = 0; k < reader_threads; ++k) {
      readers.emplace_back([&] {
        pthread_setname_np(pthread_self(), "cs-cache-read");
        std::unique_lock lk(local_mu);
        for (;;) {
          local_cv.wait(lk, [&] { return !local.empty() || fetch_done; });
          if (local.empty()) return;
          auto [r, dest] = local.front();
          local.pop_front();
          lk.unlock();
          const std::size_t c = which[r];
          if (committed_error || ctl.cancel) {
            sink.Release(c, dest);
          } else if (auto crc = cache_->Read(c, dest); crc.ok()) {
            crcs[c] = *crc;
            local_bytes += plan.chunks[c].length;
            if (ctl.timeline) ctl.timeline->Mark("first_byte");
            if (auto st = sink.Commit(c, dest, *crc); !st.ok()) fail(st.error());
          } else {
            sink.Release(c, dest);
            lk.lock();
            refetch.push_back(c);
            continue;
          }
          lk.lock();
        }
      });
    }
    if (ctl.timeline) ctl.timeline->Mark("io_started");
    auto st = job->Wait(&stats->fetch);
    if (!readers.empty()) {
      {
        std::lock_guard lk(local_mu);
        fetch_done = true;
      }
      local_cv.notify_all();
      for (auto& t : readers) t.join();
    }
    {
      std::lock_guard lk(ctl.boost_mu);
      ctl.boost = nullptr;
    }
    sink.SetSpaceCallback(nullptr);
    if (ctl.timeline) ctl.timeline->Set("fetch");
    {
      std::lock_guard lk(err_mu);
      if (sink_error) return *sink_error;  // the sink's own reason wins
    }
    if (!st.ok()) {
      if (ctl.cancel || st.error().code == Errc::kCancelled) return MakeError(Errc::kCancelled, "load cancelled");
      return rm_.session->Annotate(std::move(st).error());
    }
    if (ctl.cancel) return MakeError(Errc::kCancelled, "load cancelled");
    return refetch;
  }

  Status Verify(const Plan& plan, Sink& sink, SourceStats* stats, const std::vector<std::uint32_t>& crcs) {
    const ModelLayout& m = m_;
    std::vector<fetch::FetchRange> ranges;
    for (const auto& c : plan.chunks) ranges.push_back({c.file, c.offset, c.length});
    // Whole-object CRC32C where every data byte of a file was moved (no filter), combined from
    // the per-range CRCs of fetched and cached bytes alike: nothing is read twice.
    auto checked = VerifyCrc32c(rm_.files, rm_.header_bytes, m, ranges, crcs);
    if (!checked.ok() && cache_) {
      // The cached chunks may hold what a corrupted transfer delivered: none of them stays.
      for (std::uint32_t i = 0; i < m.files.size(); ++i) cache_->Invalidate(i);
    }
    CS_ASSIGN_OR_RETURN(auto verified, std::move(checked));
    bool all = true;
    for (std::size_t i = 0; i < m.files.size(); ++i) {
      if (verified[i]) continue;
      const std::byte* data = sink.HostFileData(static_cast<std::uint32_t>(i));
      const bool whole = ranges.size() > 0 && [&] {
        std::uint64_t covered = 0;
        for (const auto& r : ranges)
          if (r.object == i) covered += r.length;
        return covered == m.files[i].header.data_bytes;
      }();
      if (rm_.files[i].md5_base64.empty() || !data || !whole) {
        all = false;
        continue;
      }
      // No CRC32C to combine: MD5 over the header we hold and the data in host memory.
      Md5 md5;
      md5.Update(rm_.header_bytes[i].data(), rm_.header_bytes[i].size());
      md5.Update(data, m.files[i].header.data_bytes);
      if (md5.Base64Digest() != rm_.files[i].md5_base64)
        return MakeError(Errc::kIntegrity, rm_.files[i].object.display + ": MD5 mismatch; the data was corrupted in transit");
      ++stats->verified_md5;
    }
    stats->all_verified = all;
    return OkStatus();
  }

 private:
  const RemoteModel& rm_;
  const ModelLayout& m_;
  fetch::FetchPriority prio_;
  internal::CacheLink* cache_;
};

}  // namespace

std::unique_ptr<Source> MakeLocalSource(const ModelLayout& layout, fetch::LocalReadOptions options) {
  return std::make_unique<LocalSource>(layout, std::move(options));
}
std::unique_ptr<Source> MakeRemoteSource(const RemoteModel& model) {
  return std::make_unique<RemoteSource>(model, model.layout, fetch::FetchPriority::kNow);
}

Result<std::unique_ptr<Sink>> MakeFileSink(const ModelLayout& layout, std::vector<std::string> header_bytes,
                                           std::vector<cache::ExpectedChecksums> expected,
                                           const Plan& plan, std::string dir, bool stable_source) {
  if (header_bytes.size() != layout.files.size())
    return MakeError(Errc::kInvalidArgument, "file sink: one header per file is needed");
  auto s = std::make_unique<FileSink>(layout, plan);
  s->SetStableSource(stable_source);
  CS_RETURN_IF_ERROR(s->Open(header_bytes, std::move(expected), dir));
  return std::unique_ptr<Sink>(std::move(s));
}

std::unique_ptr<Sink> MakeTee(std::unique_ptr<Sink> primary, std::vector<std::unique_ptr<Sink>> others) {
  return std::make_unique<TeeSink>(std::move(primary), std::move(others));
}

// ---------------------------------------------------------------------------------------------
// One load: plan, sinks, source, on its own thread; the handle the caller holds.

class LoadRun final : public LoadHandle {
 public:
  LoadRun(OpenedModel model, LoadOptions o, Timeline timeline)
      : opened_(std::move(model)), o_(std::move(o)), timeline_(std::move(timeline)) {}
  ~LoadRun() override {
    Cancel();
    if (thread_.joinable()) thread_.join();
  }

  const ModelLayout& layout() const override { return host_ ? host_->layout_ : device_->layout_; }

  Status Prepare() {
    const bool remote = opened_.remote.has_value();
    const bool host = o_.device.kind == DeviceKind::kCpu;
    // The layout lives in the result model from here on; everything below refers to it.
    if (host) {
      host_ = std::make_shared<HostModel>();
      host_->layout_ = std::move(layout_mut());
    } else {
      device_ = std::make_shared<DeviceModel>();
      device_->layout_ = std::move(layout_mut());
    }
    if (host && o_.filter) {
      // The host model holds only the selected tensors (the arena keeps every file's place, but
      // only their bytes are written).
      ModelLayout& l = host_->layout_;
      std::erase_if(l.tensors, [&](const TensorEntry& t) { return !o_.filter(t.name); });
      if (l.tensors.empty()) return MakeError(Errc::kNotFound, l.source + ": no tensor matches the filter");
      l.total_bytes = 0;
      for (const auto& t : l.tensors) l.total_bytes += t.nbytes;
    }
    const ModelLayout& m = layout();
    layer_of_.resize(m.tensors.size());
    for (std::uint32_t i = 0; i < m.tensors.size(); ++i) layer_of_[i] = TensorLayer(m.tensors[i].name);
    PlanOptions po;
    if (!host) po.filter = o_.filter;
    po.order = o_.order;
    po.bf16_conversion = o_.bf16_conversion;
    if (host && o_.bf16_conversion != Conversion::kNone)
      return MakeError(Errc::kInvalidArgument, "--convert needs a device (cuda or sim); the cpu device keeps the file's dtypes");
    // With a disk cache, chunks are the cache's: cut at its chunk boundaries, one cache chunk
    // per fetch (or per read from the cache).
    const std::uint64_t cache_chunk = remote && o_.cache ? o_.cache->chunk_bytes() : 0;
    po.align_bytes = cache_chunk;
    if (host) {
      // Host arena: chunks only split the reads; the reader cuts its own requests.
      po.chunk_bytes = remote ? rm().session->options().fetch.chunk_bytes : std::max<std::uint64_t>(o_.read.chunk_bytes, 1u << 20);
      if (o_.chunk_bytes) po.chunk_bytes = o_.chunk_bytes;
      if (cache_chunk) po.chunk_bytes = cache_chunk;
      CS_ASSIGN_OR_RETURN(plan_, MakePlan(m, po));
      state_ = std::make_unique<LoadState>(m, plan_);
      std::uint64_t arena_bytes = 0;
      auto file_pos = HostModel::PlaceFiles(m, &arena_bytes);
      cache::HostArenaOptions arena = o_.arena;
      if (o_.filter) arena.resident_bytes = plan_.source_bytes;  // only the selected tensors are written
      CS_ASSIGN_OR_RETURN(host_->arena_, cache::HostArena::Allocate(arena_bytes, arena));
      file_pos_ = file_pos;
      sink_ = std::make_unique<HostArenaSink>(m, plan_, *state_, host_->arena_.data(), std::move(file_pos));
    } else {
      device_->device_ = o_.device;
      CS_ASSIGN_OR_RETURN(device_->engine_, MakeCopyEngine(o_));
      std::uint64_t chunk = o_.chunk_bytes;
      const std::uint64_t budget_auto = DefaultStagingBudget();
      const std::uint64_t budget = o_.staging_bytes ? o_.staging_bytes : budget_auto;
      if (chunk == 0) {
        if (remote) {
          // Small enough that the budget holds two per connection, 1 MiB at least (smaller
          // copies lose PCIe efficiency), the remote chunk at most.
          const auto& fo = rm().session->options().fetch;
          chunk = std::min<std::uint64_t>(fo.chunk_bytes, std::max<std::uint64_t>(1ull << 20, budget / (2ull * fo.concurrency) / kPage * kPage));
        } else {
          // 16 MiB reads unless the budget is small: then a quarter of it, so batches alternate.
          chunk = std::min<std::uint64_t>(16ull << 20, std::max<std::uint64_t>(64ull << 10, (std::max(budget / 4, 2 * kPage) - kPage) / kPage * kPage));
        }
      }
      if (cache_chunk) chunk = cache_chunk;
      po.chunk_bytes = chunk;
      CS_ASSIGN_OR_RETURN(plan_, MakePlan(m, po));
      state_ = std::make_unique<LoadState>(m, plan_);
      const std::uint64_t device_bytes = std::max<std::uint64_t>(plan_.device_bytes, 1);
      if (o_.allocator) {
        CS_ASSIGN_OR_RETURN(device_->memory_, o_.allocator(device_bytes));
        if (device_->memory_.size() < device_bytes || device_->memory_.ptr() % kDeviceAlign != 0)
          return MakeError(Errc::kInvalidArgument, "the caller's allocator returned " + std::to_string(device_->memory_.size()) +
                                                       " bytes (or an unaligned address) for " + std::to_string(device_bytes) +
                                                       " requested");
      } else {
        CS_ASSIGN_OR_RETURN(device_->memory_, device_->engine_->AllocateDevice(device_bytes));
      }
      // Slots of chunk + one page (local O_DIRECT reads land page-congruent). An explicit
      // budget is never exceeded; the automatic one grows to two chunks if memory is short.
      const std::uint64_t slot = (chunk + kPage + kPage - 1) / kPage * kPage;
      const std::uint64_t b = o_.staging_bytes ? o_.staging_bytes : std::max(budget_auto, 2 * slot);
      const std::uint64_t slots = b / slot;
      if (slots < 2)
        return MakeError(Errc::kInvalidArgument, "staging budget " + FormatBytes(static_cast<double>(b)) + " holds fewer than 2 chunks of " +
                                                     FormatBytes(static_cast<double>(slot)) +
                                                     (cache_chunk ? " (the disk cache's chunk size); raise --staging-bytes"
                                                                  : "; raise --staging-bytes or lower the chunk size"));
      const std::string key = o_.device.ToString();
      CS_ASSIGN_OR_RETURN(auto mem, StagingPool::Get().Take(key, slots * slot, *device_->engine_));
      std::size_t layers = 0;
      for (auto t : plan_.selected) layers = std::max(layers, static_cast<std::size_t>(layer_of_[t] + 1));
      layer_events_ = std::make_unique<LayerEvents>(layers);
      auto ds = std::make_unique<DeviceSink>(plan_, *state_, device_->memory_.ptr(), *device_->engine_, key, std::move(mem), slot, slots,
                                             layer_of_, layer_events_.get());
      device_sink_ = ds.get();
      sink_ = std::move(ds);
      auto& s = device_->stats_;
      s.staging_budget = slots * slot;
      s.chunk_bytes = chunk;
      s.engine = device_->engine_->Describe();
      for (auto t : plan_.selected)
        device_->tensors_.push_back({&m.tensors[t], plan_.out_dtype[t], device_->memory_.ptr() + plan_.dev_offset[t], plan_.out_bytes[t]});
      device_index_.assign(m.tensors.size(), SIZE_MAX);
      for (std::size_t k = 0; k < plan_.selected.size(); ++k) device_index_[plan_.selected[k]] = k;
    }
    if (!o_.also_write_to.empty()) {
      std::vector<std::string> headers;
      if (remote) {
        headers = rm().header_bytes;
      } else {
        for (const auto& f : m.files) {
          CS_ASSIGN_OR_RETURN(auto h, ReadPrefix(f.path, f.header.data_start()));
          headers.push_back(std::move(h));
        }
      }
      std::vector<cache::ExpectedChecksums> expected;
      if (remote)
        for (const auto& f : rm().files) expected.push_back({f.crc32c, f.md5_base64});
      // A host arena keeps every byte until the load ends: the file writes may lag behind.
      CS_ASSIGN_OR_RETURN(auto fsink, MakeFileSink(m, std::move(headers), std::move(expected), plan_, o_.also_write_to, host));
      std::vector<std::unique_ptr<Sink>> others;
      others.push_back(std::move(fsink));
      sink_ = MakeTee(std::move(sink_), std::move(others));
    }
    for (std::uint32_t i = 0; i < m.tensors.size(); ++i)
      if (plan_.dev_offset[i] != UINT64_MAX) names_.emplace(m.tensors[i].name, i);
    state_->on_tensor = [this](std::uint32_t t) {
      if (o_.on_ready && device_) o_.on_ready(device_->tensors_[device_index_[t]]);
    };
    state_->on_layer = o_.on_layer;
    if (remote) {
      if (o_.cache) {
        CS_ASSIGN_OR_RETURN(cache_link_, internal::CacheLink::Open(o_.cache, rm(), m, plan_));
      }
      source_ = std::make_unique<RemoteSource>(rm(), m, o_.priority, cache_link_.get());
    } else {
      source_ = MakeLocalSource(m, o_.read);
    }
    const std::uint64_t total = plan_.source_bytes;
    ctl_.timeline = &timeline_;
    ctl_.progress = [this, total](std::uint64_t d) {
      done_bytes_ = std::min(d, total);
      return !o_.progress || o_.progress(std::min(d, total), total);
    };
    timeline_.Mark("plan");
    return OkStatus();
  }

  void Start() {
    thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "cs-load");
      Status st = Run();
      if (st.ok()) {
        timeline_.Mark("ready");
        if (host_) host_->stats_.timeline = timeline_;
        if (device_) device_->stats_.timeline = timeline_;
        if (o_.progress) o_.progress(plan_.source_bytes, plan_.source_bytes);
      }
      if (layer_events_) layer_events_->Finish(st);
      state_->Finish(std::move(st));
    });
  }

  Status Run() {
    const auto t0 = Clock::now();
    Status st = source_->Run(plan_, *sink_, ctl_, &stats_);
    if (st.ok() && ctl_.cancel) st = MakeError(Errc::kCancelled, "load cancelled by caller");
    if (st.ok()) st = sink_->Finish();
    if (!st.ok()) {
      sink_->Abort();
      if (st.error().code == Errc::kCancelled) return MakeError(Errc::kCancelled, "load cancelled by caller");
      return st;
    }
    if (!o_.also_write_to.empty()) timeline_.Mark("disk");
    done_bytes_ = plan_.source_bytes;
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    if (host_) {
      host_->SliceTensors(file_pos_);
      host_->stats_.bytes = stats_.bytes;
      host_->stats_.seconds = secs;
      host_->stats_.read = stats_.read;
      if (opened_.remote) {
        host_->stats_.read.engine = "http";
        host_->stats_.read.requests = stats_.fetch.requests;
        host_->stats_.read.retries = stats_.fetch.retries;
        host_->stats_.read.bytes = stats_.fetch.bytes;
        host_->stats_.read.threads = rm().session->options().fetch.EffectiveThreads();
      }
    } else {
      timeline_.Set("h2d", device_sink_->last_copy());
      auto& s = device_->stats_;
      s.first_byte_seconds = stats_.fetch.first_byte_seconds > 0 ? stats_.fetch.first_byte_seconds
                                                                  : std::max(0.0, timeline_.Seconds("first_byte") - Timeline::SinceProcessStart(t0));
      s.fetch_seconds = std::max(0.0, timeline_.Seconds("fetch") - Timeline::SinceProcessStart(t0));
      s.fetch_bytes = plan_.source_bytes;
      s.h2d_bytes = device_sink_->h2d_bytes();
      s.h2d_seconds = device_sink_->copies() ? std::chrono::duration<double>(device_sink_->last_copy() - device_sink_->first_submit()).count() : 0;
      s.total_seconds = secs;
      s.peak_staging_bytes = device_sink_->peak_bytes();
      s.copies = device_sink_->copies();
      s.crc32c_verified = stats_.all_verified;
      s.cache_hit_bytes = stats_.cache_hit_bytes;
      s.cache_filled_bytes = stats_.cache_filled_bytes;
    }
    return OkStatus();
  }

  // LoadHandle
  Status WaitTensor(std::string_view name) override {
    auto t = Index(name);
    if (!t) return MakeError(Errc::kNotFound, "no tensor '" + std::string(name) + "' in this load");
    if (!state_->Ready(*t)) Boost(*t);
    return state_->WaitTensor(*t);
  }
  Status WaitLayer(int layer) override {
    {
      for (auto t : plan_.selected)
        if (layer_of_[t] == layer && !state_->Ready(t)) Boost(t);
    }
    return state_->WaitLayer(layer);
  }
  Result<std::uintptr_t> LayerEvent(int layer) override {
    if (!layer_events_)
      return MakeError(Errc::kUnavailable, "a --device cpu load has no device events (use WaitLayer)");
    for (auto t : plan_.selected)
      if (layer_of_[t] == layer && !state_->Ready(t)) Boost(t);
    return layer_events_->Wait(layer);
  }
  Status WaitEvent(std::uintptr_t event) override {
    if (!device_ || !device_->engine_)
      return MakeError(Errc::kUnavailable, "a --device cpu load has no device events");
    return device_->engine_->WaitEvent(event);
  }
  Status WaitAll() override {
    auto st = state_->WaitAll();
    if (thread_.joinable() && std::this_thread::get_id() != thread_.get_id()) {
      std::lock_guard lk(join_mu_);
      if (thread_.joinable()) thread_.join();
    }
    return st;
  }
  bool Ready(std::string_view name) const override {
    auto t = Index(name);
    return t && state_->Ready(*t);
  }
  Result<Placement> Place(std::string_view name) const override {
    auto t = Index(name);
    if (!t) return MakeError(Errc::kNotFound, "no tensor '" + std::string(name) + "' in this load");
    const TensorEntry& e = layout().tensors[*t];
    Placement p;
    p.entry = &e;
    if (host_) {
      const auto& h = layout().files[e.file].header;
      p.dtype = e.dtype;
      p.address = reinterpret_cast<std::uintptr_t>(host_->arena_.data() + file_pos_[e.file] + (e.offset - h.data_start()));
      p.nbytes = e.nbytes;
    } else {
      const DeviceTensor& d = device_->tensors_[device_index_[*t]];
      p.dtype = d.dtype;
      p.address = d.data;
      p.nbytes = d.nbytes;
      p.on_device = device_->device_.kind == DeviceKind::kCuda;
      p.device_index = device_->device_.index;
    }
    return p;
  }
  void Cancel() override { ctl_.cancel = true; }
  Progress progress() const override {
    return {done_bytes_.load(), plan_.source_bytes, state_->tensors_ready(), plan_.selected.size(), state_->Finished()};
  }
  const Timeline& timeline() const override { return timeline_; }
  std::shared_ptr<HostModel> host_model() const override { return state_->Finished() ? host_ : nullptr; }
  std::shared_ptr<DeviceModel> device_model() const override { return state_->Finished() ? device_ : nullptr; }
  const SourceStats& source_stats() const override { return stats_; }

 private:
  void Boost(std::uint32_t t) {
    std::lock_guard lk(ctl_.boost_mu);
    if (ctl_.boost) {
      ctl_.boost(t);
    } else {
      ctl_.pending_boosts.push_back(t);
    }
  }
  const RemoteModel& rm() const { return *opened_.remote; }
  ModelLayout& layout_mut() { return opened_.remote ? opened_.remote->layout : opened_.local; }
  std::optional<std::uint32_t> Index(std::string_view name) const {
    auto it = names_.find(name);
    if (it == names_.end()) return std::nullopt;
    return it->second;
  }
  static Result<std::string> ReadPrefix(const std::string& path, std::uint64_t n) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return MakeSysError(Errc::kIo, path + ": cannot open", errno);
    std::string s(n, '\0');
    auto got = ReadAt(fd, s.data(), n, 0, path);
    ::close(fd);
    if (!got.ok()) return std::move(got).error();
    if (*got != n) return MakeError(Errc::kIntegrity, path + ": file ends inside its header");
    return s;
  }

  OpenedModel opened_;
  LoadOptions o_;
  Timeline timeline_;
  Plan plan_;
  std::unique_ptr<LoadState> state_;
  std::shared_ptr<HostModel> host_;
  std::vector<std::uint64_t> file_pos_;
  std::shared_ptr<DeviceModel> device_;
  std::unique_ptr<LayerEvents> layer_events_;  // device loads; after device_: freed before its engine
  DeviceSink* device_sink_ = nullptr;
  std::vector<std::size_t> device_index_;
  std::unique_ptr<Sink> sink_;
  std::unique_ptr<internal::CacheLink> cache_link_;
  std::unique_ptr<Source> source_;
  SourceControl ctl_;
  SourceStats stats_;
  std::atomic<std::uint64_t> done_bytes_{0};
  std::map<std::string, std::uint32_t, std::less<>> names_;  // selected tensors; set in Prepare
  std::vector<int> layer_of_;
  std::mutex join_mu_;
  std::thread thread_;
};

LoadOptions ToLoadOptions(const HostLoadOptions& host) {
  LoadOptions o;
  o.device = DeviceSpec{DeviceKind::kCpu, 0};
  o.read = host.read;
  o.arena = host.arena;
  o.progress = host.progress;
  o.filter = host.filter;
  o.cache = host.cache;
  return o;
}

std::uint64_t StagingPoolReuses() { return StagingPool::Get().reused(); }

Result<std::shared_ptr<LoadHandle>> StartLoad(OpenedModel model, LoadOptions options, Timeline timeline) {
  // The marks made while opening (listing, headers) start the load's Timeline.
  if (timeline.Entries().empty()) timeline = model.remote ? model.remote->timeline : model.timeline;
  auto run = std::make_shared<LoadRun>(std::move(model), std::move(options), std::move(timeline));
  CS_RETURN_IF_ERROR(run->Prepare());
  run->Start();
  return std::shared_ptr<LoadHandle>(run);
}

}  // namespace coldstart::loader
