// Decoder-only inference in libtorch over a load in progress: Gemma 3, Gemma 2, Llama (2, 3.x)
// and Qwen2/2.5, built from config.json. The weights are the load's own memory (the host arena,
// or device memory), never a second copy of the model; on CPU in f32 each layer's BF16 weights
// are converted once, the first time the layer runs (counted in converted_bytes()).
//
// A forward pass waits for each layer just before it computes it (host readiness on CPU; on
// CUDA the compute stream waits on the layer's event), so the first prompt pass runs layer N as
// soon as layer N has arrived while later layers are still loading.
//
// This is the libtorch-facing surface: failures are exceptions (runtime::LoadError).
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "coldstart/loader/engine.h"
#include "coldstart/runtime/config.h"
#include "coldstart/runtime/state_dict.h"

namespace coldstart::runtime {

// Keys and values of every layer for one sequence, preallocated for `capacity` positions.
class KVCache {
 public:
  std::int64_t length() const { return length_; }
  std::int64_t capacity() const { return capacity_; }

 private:
  friend class Model;
  std::vector<at::Tensor> k_, v_;  // per layer: [kv_heads, capacity, head_dim]
  std::int64_t length_ = 0, capacity_ = 0;
};

class Model {
 public:
  // Builds the model over `load` (started with LoadOrder::kLayer for overlap; any order works).
  // Checks every tensor the config names exists with the right shape before returning. Throws.
  static std::unique_ptr<Model> FromLoad(std::shared_ptr<loader::LoadHandle> load, ModelConfig config,
                                         ModelOptions options = {});
  ~Model();

  const ModelConfig& config() const { return config_; }
  at::ScalarType compute_dtype() const { return dtype_; }
  at::Device device() const;
  std::string Describe() const;  // "gemma3, 18 layers, f32 on cpu"

  KVCache NewCache(std::int64_t capacity) const;
  // Runs `ids` (1-D int64, the positions after cache.length()) through the model, appends their
  // keys and values to `cache`, and returns the f32 logits of the last `logits_for` positions
  // ([logits_for, vocab]; all positions with logits_for = ids.size(0)).
  at::Tensor Forward(const at::Tensor& ids, KVCache& cache, std::int64_t logits_for = 1);
  // sqrt(hidden_size) as the Gemma embedding scale holds it, in the compute dtype (1 when the
  // family does not scale). Valid after the first Forward.
  double embed_scale() const;
  // Bytes of converted weights this model holds (f32 copies of BF16 weights on CPU).
  std::uint64_t converted_bytes() const { return converted_bytes_; }

 private:
  struct Layer;
  Model() = default;
  at::Tensor Weight(const std::string& name, std::vector<std::int64_t> shape, bool convert);
  void EnsureLayer(int i);
  void EnsureEmbeddings();
  at::Tensor Norm(const at::Tensor& x, const at::Tensor& w) const;
  at::Tensor Rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const;

  std::shared_ptr<loader::LoadHandle> load_;
  ModelConfig config_;
  ModelOptions options_;
  at::ScalarType dtype_{};
  bool on_cuda_ = false;
  int device_index_ = 0;
  std::vector<std::unique_ptr<Layer>> layers_;
  at::Tensor embed_, final_norm_, lm_head_, embed_scale_;
  bool embeddings_ready_ = false;
  std::uint64_t converted_bytes_ = 0;
  std::vector<at::Tensor> inv_freq_;  // per layer (f32)
};

}  // namespace coldstart::runtime
