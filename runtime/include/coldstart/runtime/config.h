// A decoder-only model's shape and numerics, read from its config.json (no libtorch here, so the
// CLI can read it while libtorch is still loading). Both forms found on the hubs are read: the
// current one (transformers 5: `rope_parameters` per layer type, explicit `layer_types`) and the
// older one (`rope_theta`, `rope_local_base_freq`, `rope_scaling`, `sliding_window_pattern`,
// `torch_dtype`). Every field is checked; a wrong type or range is an error naming the field.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "coldstart/core/result.h"

namespace coldstart::runtime {

enum class Family { kGemma3, kGemma2, kLlama, kQwen2 };
std::string_view FamilyName(Family f);
// "gemma3_text (Gemma3ForCausalLM), gemma3 (Gemma3ForConditionalGeneration, text only), ..."
std::string SupportedArchitectures();

// Rotary position embedding of one layer type.
struct RopeConfig {
  enum class Type { kDefault, kLinear, kLlama3 };
  Type type = Type::kDefault;
  double theta = 10000.0;
  double factor = 1.0;                          // linear, llama3
  double low_freq_factor = 1.0;                 // llama3
  double high_freq_factor = 4.0;                // llama3
  double original_max_position_embeddings = 8192;  // llama3
};

struct ModelConfig {
  Family family = Family::kLlama;
  std::string model_type;    // as written ("gemma3_text", "llama", ...)
  std::string architecture;  // architectures[0], "" when absent
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t num_layers = 0;
  std::int64_t num_heads = 0;
  std::int64_t num_kv_heads = 0;
  std::int64_t head_dim = 0;  // heads * head_dim may differ from hidden_size (Gemma)
  std::int64_t vocab_size = 0;
  std::int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  // Gemma: RMSNorm scales by (1 + w) in f32, embeddings are scaled by sqrt(hidden_size), the MLP
  // is gelu_tanh; Llama/Qwen2: scale by w, SiLU.
  bool gemma_norm = false;
  bool scale_embeddings = false;
  bool gelu_tanh_mlp = false;
  bool qk_norm = false;        // Gemma 3: RMSNorm over head_dim on q and k before RoPE
  bool sandwich_norm = false;  // Gemma 2/3: post-attention and pre/post-feedforward norms
  bool attention_bias = false; // q/k/v biases (Qwen2; Llama's attention_bias)
  bool o_bias = false;         // o_proj bias (Llama's attention_bias)
  bool mlp_bias = false;       // Llama's mlp_bias
  double attention_scale = 0;  // query_pre_attn_scalar ** -0.5 (Gemma), else head_dim ** -0.5
  std::optional<double> attn_logit_softcapping;   // Gemma 2 only (Gemma 3 ignores it)
  std::optional<double> final_logit_softcapping;  // tanh(x / c) * c
  std::int64_t sliding_window = 0;                // 0: none
  std::vector<bool> sliding;                      // per layer
  RopeConfig rope_global, rope_local;             // full-attention and sliding layers
  std::string torch_dtype;                        // "bfloat16", "" when absent
  std::vector<std::int64_t> eos_token_ids;
  std::optional<std::int64_t> bos_token_id;
  // Where the decoder's tensors are ("model." or, for Gemma 3 multimodal checkpoints,
  // "language_model.model." / "model.language_model."), and the LM head ("" = tied).
  std::string prefix = "model.";
  std::string lm_head = "lm_head.weight";

  const RopeConfig& rope(std::int64_t layer) const { return sliding[layer] ? rope_local : rope_global; }
};

// Parses config.json's text. `tensor_names`, when given, picks the weight prefix of multimodal
// checkpoints; kInvalidArgument for an unsupported architecture (listing the supported ones),
// kFormat for a malformed or inconsistent config.
Result<ModelConfig> ParseModelConfig(std::string_view config_json, const std::vector<std::string>& tensor_names = {});

enum class ComputeDType { kAuto, kF32, kBF16 };
Result<ComputeDType> ParseComputeDType(std::string_view text);  // auto | f32 | bf16

struct ModelOptions {
  // auto: BF16 on CUDA, f32 on CPU (each layer's weights converted once, memory counted).
  ComputeDType dtype = ComputeDType::kAuto;
  // Called on the computing thread when layer N's weights became usable (`computed` false) and
  // when the first pass finished computing it (true): the Timeline's per-layer marks.
  std::function<void(int layer, bool computed)> on_layer;
  // Weights someone already converted from BF16 to f32 (the CLI does it on another core while
  // libtorch loads): the f32 copy of tensor `name` (waiting for it if need be), or nullptr to
  // let the model convert it. The memory must outlive the model.
  std::function<const float*(const std::string& name)> f32_weights;
};

// The tensors a text decoder of `config` reads (vision towers and projectors are left out).
bool IsDecoderTensor(const ModelConfig& config, std::string_view name);

}  // namespace coldstart::runtime
