// Loads a local model into one host arena: every file's data section is read (io_uring or
// pread, O_DIRECT where it pays) straight to its final place; tensors are slices of the arena.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "coldstart/cache/disk_cache.h"
#include "coldstart/cache/host_arena.h"
#include "coldstart/core/env.h"
#include "coldstart/core/timeline.h"
#include "coldstart/fetch/local_reader.h"
#include "coldstart/loader/model.h"
#include "coldstart/core/result.h"

namespace coldstart::loader {

// bytes_done of bytes_total landed; return false to cancel the load.
using LoadProgressFn = std::function<bool(std::uint64_t bytes_done, std::uint64_t bytes_total)>;

struct HostLoadOptions {
  fetch::LocalReadOptions read;
  cache::HostArenaOptions arena;
  LoadProgressFn progress;  // optional; called on the loading thread about every 100 ms
  // Optional: load only the tensors it accepts (by name); only their bytes are read. None
  // accepted is Errc::kNotFound. Local sources (LoadToHost) only.
  std::function<bool(const std::string& name)> filter;
  // Remote sources: serve what this disk cache holds, write what is fetched into it.
  std::shared_ptr<cache::DiskCache> cache;

  // COLDSTART_IO_ENGINE, COLDSTART_DIRECT_IO, COLDSTART_READ_*, COLDSTART_HUGE_PAGES.
  Status ApplyEnv(const Env& env);
};

struct HostTensor {
  const TensorEntry* entry = nullptr;  // owned by the model's layout
  std::byte* data = nullptr;
  std::span<const std::byte> bytes() const { return {data, entry->nbytes}; }
};

struct HostLoadStats {
  Timeline timeline;           // phases since process start ("first_byte", "fetch", "ready", ...)
  double seconds = 0;          // data phase (allocation + reads)
  std::uint64_t bytes = 0;
  fetch::LocalReadStats read;
};

// The loaded model. Tensors stay valid while the HostModel lives; runtime/ shares ownership
// with every torch::Tensor it hands out.
class HostModel {
 public:
  const ModelLayout& layout() const { return layout_; }
  std::span<const HostTensor> tensors() const { return tensors_; }
  const HostTensor* Find(std::string_view name) const;
  const HostLoadStats& stats() const { return stats_; }
  const cache::HostArena& arena() const { return arena_; }

 private:
  friend class LoadRun;  // engine.cpp
  friend Result<std::shared_ptr<HostModel>> LoadToHost(ModelLayout layout, const HostLoadOptions& options);
  friend Result<std::shared_ptr<HostModel>> LoadRemoteToHost(struct RemoteModel model, const HostLoadOptions& options,
                                                             struct RemoteLoadStats* stats);
  // Where each file's data section starts in the arena: congruent to its file offset modulo
  // the O_DIRECT alignment, so local reads can bypass the page cache. Sets *total.
  static std::vector<std::uint64_t> PlaceFiles(const ModelLayout& layout, std::uint64_t* total);
  // Fills tensors_ with slices of the arena placed by PlaceFiles.
  void SliceTensors(const std::vector<std::uint64_t>& file_pos);

  ModelLayout layout_;
  cache::HostArena arena_;
  std::vector<HostTensor> tensors_;
  HostLoadStats stats_;
};

Result<std::shared_ptr<HostModel>> LoadToHost(ModelLayout layout, const HostLoadOptions& options);

}  // namespace coldstart::loader
