// Deterministic synthetic models shaped like Hugging Face Gemma-3 text checkpoints: config.json,
// BF16 shards named model-0000N-of-0000M.safetensors, and model.safetensors.index.json.
// The same (preset, size, seed) gives the same bytes whatever the shard count, so digests can
// be compared across layouts.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "coldstart/core/result.h"

namespace coldstart::loader {

struct SynthOptions {
  std::string preset = "tiny";   // tiny (~1 MB), gemma-3-270m, gemma-3-1b, gemma-3-4b
  std::uint64_t size_bytes = 0;  // 0: the preset's own size; else layers are added or removed
                                 // (and the vocabulary shrunk for small sizes) to come close
  unsigned shards = 0;           // 0: HF's rule, a new shard past 2 GiB; 1: model.safetensors
  std::uint64_t seed = 0;
};

struct SynthReport {
  std::vector<std::string> files;  // relative names written
  std::uint64_t tensor_bytes = 0;
  std::uint64_t tensors = 0;
  unsigned layers = 0;
};

struct SynthPreset {
  std::string name;
  unsigned hidden, intermediate, layers, heads, kv_heads, head_dim, vocab;
};
const std::vector<SynthPreset>& SynthPresets();

// Writes into `out_dir` (created if missing; existing files of the same names are replaced
// atomically). progress(bytes_written, bytes_total) may be empty.
Result<SynthReport> SynthesizeModel(const std::string& out_dir, const SynthOptions& options,
                                    const std::function<void(std::uint64_t, std::uint64_t)>& progress = {});

}  // namespace coldstart::loader
