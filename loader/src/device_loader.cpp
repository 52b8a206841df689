#include "coldstart/loader/device_loader.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <regex>

#include "coldstart/cache/memory.h"
#include "coldstart/core/crc32c.h"
#include "coldstart/fetch/range_fetcher.h"

namespace coldstart::loader {
void LinkEnvLoader();  // loader_env.cpp
}  // namespace coldstart::loader


namespace coldstart::loader {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint64_t kDeviceAlign = 256;  // cudaMalloc's alignment, and enough for any dtype
constexpr std::uint64_t kPage = 4096;

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::uint64_t AvailableMemory() { return cache::AvailableMemoryBytes(); }  // the cgroup limit in a container

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

struct Plan {
  std::vector<std::uint32_t> selected;          // load order
  std::vector<std::uint64_t> dev_offset;        // per layout tensor
  std::vector<std::uint64_t> out_bytes;         // per layout tensor
  std::vector<DType> out_dtype;
  std::vector<Conversion> conversion;
  std::uint64_t device_bytes = 0;
  std::uint64_t source_bytes = 0;
  std::vector<Chunk> chunks;
};

int LayerOf(const std::string& name) {
  auto p = name.find("layers.");
  if (p == std::string::npos) return -1;
  return std::atoi(name.c_str() + p + 7);
}

Result<Plan> MakePlan(const ModelLayout& m, const DeviceLoadOptions& o, std::uint64_t chunk_bytes) {
  Plan p;
  const auto n = m.tensors.size();
  p.dev_offset.assign(n, UINT64_MAX);
  p.out_bytes.assign(n, 0);
  p.out_dtype.resize(n);
  p.conversion.assign(n, Conversion::kNone);
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
          int layer = LayerOf(m.tensors[t].name);
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
  // Runs: tensors consecutive in load order and adjacent in one file are fetched together, so
  // small tensors (norms) never become tiny requests.
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
      std::uint64_t cut = std::min(end, pos + chunk_bytes);
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
  return p;
}

std::uint64_t StagingBudget(const DeviceLoadOptions& o) {
  return o.staging_bytes ? o.staging_bytes : std::min<std::uint64_t>(2ull << 30, AvailableMemory() / 8);
}

// Fixed-size staging buffers carved from one allocation; Acquire blocks while all are in use.
class StagingRing {
 public:
  StagingRing(StagingMemory mem, std::uint64_t slot_bytes) : mem_(std::move(mem)), slot_(slot_bytes) {
    for (std::uint64_t off = 0; off + slot_ <= mem_.size(); off += slot_) free_.push_back(mem_.data() + off);
    slots_ = free_.size();
  }
  std::byte* Acquire(const std::atomic<bool>& stop) {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return !free_.empty() || stop.load(); });
    if (stop) return nullptr;
    return Take();
  }
  std::byte* TryAcquire() {
    std::lock_guard lk(mu_);
    return free_.empty() ? nullptr : Take();
  }
  void Release(std::byte* p) {
    {
      std::lock_guard lk(mu_);
      free_.push_back(p);
    }
    cv_.notify_all();
  }
  void Wake() {
    // Taking the lock orders this wake-up after a waiter's check of `stop`: without it a
    // waiter could test the flag, miss the notify, and sleep.
    { std::lock_guard lk(mu_); }
    cv_.notify_all();
  }
  std::size_t slots() const { return slots_; }
  std::uint64_t peak_bytes() const {
    std::lock_guard lk(mu_);
    return peak_ * slot_;
  }

 private:
  std::byte* Take() {
    std::byte* p = free_.back();
    free_.pop_back();
    peak_ = std::max(peak_, slots_ - free_.size());
    return p;
  }
  StagingMemory mem_;
  std::uint64_t slot_;
  std::size_t slots_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::byte*> free_;
  std::size_t peak_ = 0;
};

}  // namespace

// Drives one load: plan, ring, producer (local reads or ranged GETs), copies, readiness.
class DevicePipeline {
 public:
  DevicePipeline(const DeviceLoadOptions& o, std::shared_ptr<DeviceModel> model) : o_(o), model_(std::move(model)) {}

  Status Prepare(std::uint64_t chunk_bytes) {
    t0_ = Clock::now();
    const ModelLayout& m = model_->layout_;
    CS_ASSIGN_OR_RETURN(model_->engine_, MakeCopyEngine(o_));
    CS_ASSIGN_OR_RETURN(plan_, MakePlan(m, o_, chunk_bytes));
    const std::uint64_t device_bytes = std::max<std::uint64_t>(plan_.device_bytes, 1);
    if (o_.allocator) {
      CS_ASSIGN_OR_RETURN(model_->memory_, o_.allocator(device_bytes));
      if (model_->memory_.size() < device_bytes || model_->memory_.ptr() % kDeviceAlign != 0)
        return MakeError(Errc::kInvalidArgument, "the caller's allocator returned " +
                                                     std::to_string(model_->memory_.size()) + " bytes (or an unaligned address) for " +
                                                     std::to_string(device_bytes) + " requested");
    } else {
      CS_ASSIGN_OR_RETURN(model_->memory_, model_->engine_->AllocateDevice(device_bytes));
    }
    if (chunk_bytes < kPage)
      return MakeError(Errc::kInvalidArgument, "chunk size " + std::to_string(chunk_bytes) + " is below 4 KiB");
    // Budget: slots of chunk + one page (local O_DIRECT reads land page-congruent). An explicit
    // budget is never exceeded; the automatic one grows to two chunks if memory is that short.
    slot_bytes_ = (chunk_bytes + kPage + kPage - 1) / kPage * kPage;
    std::uint64_t budget = o_.staging_bytes ? o_.staging_bytes : std::max(StagingBudget(o_), 2 * slot_bytes_);
    std::uint64_t slots = budget / slot_bytes_;
    if (slots < 2)
      return MakeError(Errc::kInvalidArgument, "staging budget " + FormatBytes(static_cast<double>(budget)) +
                                                   " holds fewer than 2 chunks of " + FormatBytes(static_cast<double>(slot_bytes_)) +
                                                   "; raise --staging-bytes or lower the chunk size");
    CS_ASSIGN_OR_RETURN(auto mem, model_->engine_->AllocateStaging(slots * slot_bytes_));
    ring_ = std::make_unique<StagingRing>(std::move(mem), slot_bytes_);
    model_->stats_.staging_budget = slots * slot_bytes_;
    model_->stats_.chunk_bytes = chunk_bytes;
    model_->stats_.engine = model_->engine_->Describe();
    remaining_ = std::vector<std::atomic<std::uint64_t>>(m.tensors.size());
    for (auto t : plan_.selected) remaining_[t] = m.tensors[t].nbytes;
    position_.assign(m.tensors.size(), 0);
    for (auto t : plan_.selected) {
      position_[t] = model_->tensors_.size();
      model_->tensors_.push_back({&m.tensors[t], plan_.out_dtype[t], model_->memory_.ptr() + plan_.dev_offset[t], plan_.out_bytes[t]});
    }
    return OkStatus();
  }

  // Hands a filled chunk to the copy engine; the slot returns to the ring when its last copy is done.
  void Dispatch(std::size_t ci, std::byte* data, std::byte* slot) {
    const Chunk& c = plan_.chunks[ci];
    if (first_submit_ns_ == 0)
      first_submit_ns_ = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0_).count();
    auto refs = std::make_shared<std::atomic<std::size_t>>(c.pieces.size());
    if (c.pieces.empty()) {
      if (slot) ring_->Release(slot);
      return;
    }
    for (const Piece& pc : c.pieces) {
      if (pc.len == 0) {  // zero-size tensor: ready at once
        TensorBytesDone(pc.tensor, 0);
        if (refs->fetch_sub(1) == 1 && slot) ring_->Release(slot);
        continue;
      }
      const Conversion conv = plan_.conversion[pc.tensor];
      const std::uint64_t scale = conv == Conversion::kBf16ToF32 ? 2 : 1;
      CopyRequest r{data + pc.chunk_off, pc.len, model_->memory_.ptr() + plan_.dev_offset[pc.tensor] + pc.tensor_off * scale, conv};
      auto st = model_->engine_->Submit(r, [this, pc, refs, slot](Status s) {
        if (!s.ok()) Fail(std::move(s).error());
        h2d_bytes_ += pc.len * (plan_.conversion[pc.tensor] == Conversion::kBf16ToF32 ? 2 : 1);
        last_copy_ns_ = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0_).count();
        TensorBytesDone(pc.tensor, pc.len);
        if (refs->fetch_sub(1) == 1 && slot) ring_->Release(slot);
      });
      ++copies_;
      if (!st.ok()) {
        Fail(std::move(st).error());
        if (refs->fetch_sub(1) == 1 && slot) ring_->Release(slot);
      }
    }
  }

  void TensorBytesDone(std::uint32_t t, std::uint64_t len) {
    if (remaining_[t].fetch_sub(len) == len && !stop_) {
      if (o_.on_ready) o_.on_ready(model_->tensors_[position_[t]]);
    }
  }

  bool HasError() {
    std::lock_guard lk(mu_);
    return error_.has_value();
  }

  void Fail(Error e) {
    std::lock_guard lk(mu_);
    if (!error_) error_ = std::move(e);
    stop_ = true;
    ring_->Wake();
  }

  bool Progress(std::uint64_t done) {
    if (stop_) return false;
    if (o_.progress && !o_.progress(std::min(done, plan_.source_bytes), plan_.source_bytes)) {
      cancelled_ = true;
      stop_ = true;
      ring_->Wake();
      return false;
    }
    return true;
  }

  Status RunLocal() {
    const ModelLayout& m = model_->layout_;
    std::vector<std::string> paths;
    std::vector<FileIdentity> seen;  // when the headers were read
    for (const auto& f : m.files) paths.push_back(f.path), seen.push_back(f.identity);
    CS_ASSIGN_OR_RETURN(auto files, fetch::LocalFileSet::Open(paths, o_.read.direct, seen));
    for (std::size_t i = 0; i < m.files.size(); ++i)
      if (files.file(i).size != m.files[i].size)
        return MakeError(Errc::kIntegrity, m.files[i].path + ": file changed size since its header was read");
    CS_ASSIGN_OR_RETURN(auto reader, fetch::LocalReader::Create(o_.read));
    // Batches of up to half the ring (at most 8 chunks, so the first copies start early): while
    // the engine copies one batch, the disk fills the next.
    const std::size_t batch_max = std::clamp<std::size_t>(ring_->slots() / 2, 1, 8);
    std::uint64_t done_bytes = 0;
    std::size_t next = 0;
    while (next < plan_.chunks.size() && !stop_) {
      std::vector<std::pair<std::size_t, std::byte*>> batch;
      std::byte* s = ring_->Acquire(stop_);
      if (!s) break;
      batch.push_back({next++, s});
      while (batch.size() < batch_max && next < plan_.chunks.size() && (s = ring_->TryAcquire()))
        batch.push_back({next++, s});
      std::vector<fetch::ReadRange> ranges;
      for (auto& [ci, slot] : batch) {
        const Chunk& c = plan_.chunks[ci];
        ranges.push_back({c.file, c.offset, c.length, slot + c.offset % kPage});
      }
      const std::uint64_t base = done_bytes;
      auto st = reader->Read(files, ranges, [&](std::uint64_t d) { return Progress(base + d); });
      if (!st.ok()) {
        for (auto& [ci, slot] : batch) ring_->Release(slot);
        if (st.error().code == Errc::kCancelled && cancelled_) break;
        return st;
      }
      if (first_byte_ns_ == 0) first_byte_ns_ = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0_).count();
      for (auto& [ci, slot] : batch) {
        done_bytes += plan_.chunks[ci].length;
        Dispatch(ci, slot + plan_.chunks[ci].offset % kPage, slot);
      }
      if (!Progress(done_bytes)) break;
    }
    if (stop_) return OkStatus();
    return files.CheckUnchanged();  // a rewrite during the reads mixes old and new bytes
  }

  Status RunRemote(RemoteModel& rm) {
    const ModelLayout& m = model_->layout_;
    fetch::FetchOptions fo = rm.session->options().fetch;
    // Every in-flight GET holds a slot. At most half the slots fetch, so filled chunks can queue
    // for the copy engine while the next ones arrive: with GETs holding all but one slot, the
    // copy engine starved (1.57 GB/s of a 2 GB/s stand-in vs 1.98 GB/s with half, 4 GiB run).
    fo.concurrency = static_cast<unsigned>(std::max<std::size_t>(1, std::min<std::size_t>(fo.concurrency, ring_->slots() / 2)));
    std::vector<fetch::RemoteObject> objs;
    for (const auto& f : rm.files) objs.push_back(f.object);
    std::vector<fetch::FetchRange> ranges;
    for (const auto& c : plan_.chunks) ranges.push_back({c.file, c.offset, c.length});
    std::vector<std::uint32_t> crcs(ranges.size());
    std::vector<std::byte*> slot_of(ranges.size());
    fetch::FetchCallbacks cb;
    cb.acquire = [&](std::size_t i) -> std::byte* {
      slot_of[i] = ring_->Acquire(stop_);
      return slot_of[i];
    };
    cb.done = [&](std::size_t i, std::byte* dest, std::uint32_t crc) {
      crcs[i] = crc;
      Dispatch(i, dest, slot_of[i]);
      return OkStatus();
    };
    cb.auth_header = [&rm] { return rm.session->AuthHeader(); };
    cb.progress = [&](std::uint64_t d) { return Progress(d); };
    fetch::FetchStats fs;
    auto st = fetch::RangeFetcher(fo).Fetch(objs, ranges, cb, &fs);
    first_byte_ns_ = static_cast<std::int64_t>(fs.first_byte_seconds * 1e9);
    if (!st.ok()) {
      if (cancelled_ || HasError()) return OkStatus();  // the pipeline's own reason wins
      return rm.session->Annotate(std::move(st).error());
    }
    // Whole-object CRC32C, when every data byte of every file was fetched (no filter).
    CS_ASSIGN_OR_RETURN(auto verified, VerifyCrc32c(rm.files, rm.header_bytes, m, ranges, crcs));
    model_->stats_.crc32c_verified = std::all_of(verified.begin(), verified.end(), [](bool v) { return v; });
    return OkStatus();
  }

  Status Finish(Status produced) {
    const double fetch_s = Since(t0_);
    auto drained = model_->engine_->Drain();
    {
      // The first failure anywhere in the pipeline explains the others (a failed copy stops
      // the reads, which then report themselves cancelled).
      std::lock_guard lk(mu_);
      if (error_) return *error_;
    }
    if (cancelled_) return MakeError(Errc::kCancelled, "load cancelled by caller");
    if (!produced.ok()) return produced;
    CS_RETURN_IF_ERROR(drained);
    auto& s = model_->stats_;
    s.first_byte_seconds = static_cast<double>(first_byte_ns_) / 1e9;
    s.fetch_seconds = fetch_s;
    s.fetch_bytes = plan_.source_bytes;
    s.h2d_bytes = h2d_bytes_;
    s.h2d_seconds = static_cast<double>(last_copy_ns_ - first_submit_ns_) / 1e9;
    s.total_seconds = Since(t0_);
    s.peak_staging_bytes = ring_->peak_bytes();
    s.copies = copies_;
    if (o_.progress) o_.progress(plan_.source_bytes, plan_.source_bytes);
    return OkStatus();
  }

 private:
  const DeviceLoadOptions& o_;
  std::shared_ptr<DeviceModel> model_;
  Plan plan_;
  std::uint64_t slot_bytes_ = 0;
  std::unique_ptr<StagingRing> ring_;
  std::vector<std::atomic<std::uint64_t>> remaining_;
  std::vector<std::size_t> position_;  // layout index -> index in model_->tensors_
  Clock::time_point t0_;
  std::atomic<std::int64_t> first_byte_ns_{0}, first_submit_ns_{0}, last_copy_ns_{0};
  std::atomic<std::uint64_t> h2d_bytes_{0}, copies_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> cancelled_{false};
  std::mutex mu_;
  std::optional<Error> error_;
};

Result<LoadOrder> ParseLoadOrder(std::string_view text) {
  if (text == "file") return LoadOrder::kFile;
  if (text == "largest") return LoadOrder::kLargestFirst;
  if (text == "layer") return LoadOrder::kLayer;
  return MakeError(Errc::kInvalidArgument, "load order '" + std::string(text) + "' is not one of file, largest, layer");
}

Status DeviceLoadOptions::ApplyEnv(const Env& env) {
  LinkEnvLoader();
  CS_RETURN_IF_ERROR(read.ApplyEnv(env));
  CS_ASSIGN_OR_RETURN(auto b, env.GetBytes("COLDSTART_STAGING_BYTES"));
  if (b) staging_bytes = *b;
  CS_ASSIGN_OR_RETURN(auto bw, env.GetBytes("COLDSTART_SIM_BANDWIDTH"));
  if (bw) {
    if (*bw == 0) return MakeError(Errc::kInvalidArgument, "COLDSTART_SIM_BANDWIDTH must be positive");
    sim.bytes_per_second = static_cast<double>(*bw);
  }
  CS_ASSIGN_OR_RETURN(auto streams, env.GetUint("COLDSTART_CUDA_STREAMS"));
  if (streams) cuda.streams = static_cast<unsigned>(std::clamp<std::uint64_t>(*streams, 1, 64));
  return OkStatus();
}

const DeviceTensor* DeviceModel::Find(std::string_view name) const {
  for (const auto& t : tensors_)
    if (t.entry->name == name) return &t;
  return nullptr;
}

Result<std::unique_ptr<CopyEngine>> MakeCopyEngine(const DeviceLoadOptions& o) {
  switch (o.device.kind) {
    case DeviceKind::kSim: return MakeSimCopyEngine(o.sim);
    case DeviceKind::kCuda: {
      CudaEngineOptions c = o.cuda;
      c.device = o.device.index;
      return MakeCudaCopyEngine(c);
    }
    case DeviceKind::kCpu: break;
  }
  return MakeError(Errc::kInvalidArgument, "the cpu device loads through LoadToHost, not a copy engine");
}

Result<std::shared_ptr<DeviceModel>> LoadLocalToDevice(ModelLayout layout, const DeviceLoadOptions& options) {
  auto model = std::make_shared<DeviceModel>();
  model->layout_ = std::move(layout);
  model->device_ = options.device;
  DevicePipeline p(options, model);
  // 16 MiB reads unless the budget is small: then a quarter of it, so batches can alternate.
  std::uint64_t chunk = options.chunk_bytes;
  if (chunk == 0)
    chunk = std::min<std::uint64_t>(16ull << 20, std::max<std::uint64_t>(64ull << 10, (std::max(StagingBudget(options) / 4, 2 * kPage) - kPage) / kPage * kPage));
  CS_RETURN_IF_ERROR(p.Prepare(chunk));
  Status produced = p.RunLocal();
  CS_RETURN_IF_ERROR(p.Finish(std::move(produced)));
  return model;
}

Result<std::shared_ptr<DeviceModel>> Loader::Load(const Env& env) const {
  CS_ASSIGN_OR_RETURN(auto opened, OpenModel(source_, remote_, env));
  if (opened.remote) return LoadRemoteToDevice(std::move(*opened.remote), options_);
  return LoadLocalToDevice(std::move(opened.local), options_);
}

Result<std::shared_ptr<DeviceModel>> LoadRemoteToDevice(RemoteModel rm, const DeviceLoadOptions& options) {
  auto model = std::make_shared<DeviceModel>();
  model->layout_ = std::move(rm.layout);
  model->device_ = options.device;
  rm.layout = ModelLayout{};
  DevicePipeline p(options, model);
  // Chunks small enough that the budget holds two per connection (see RunRemote), 1 MiB at
  // least (smaller copies lose PCIe efficiency), the remote chunk at most.
  std::uint64_t chunk = options.chunk_bytes;
  if (chunk == 0) {
    const auto& fo = rm.session->options().fetch;
    chunk = std::min<std::uint64_t>(
        fo.chunk_bytes, std::max<std::uint64_t>(1ull << 20, StagingBudget(options) / (2ull * fo.concurrency) / kPage * kPage));
  }
  CS_RETURN_IF_ERROR(p.Prepare(chunk));
  Status produced = p.RunRemote(rm);
  CS_RETURN_IF_ERROR(p.Finish(std::move(produced)));
  return model;
}

}  // namespace coldstart::loader
