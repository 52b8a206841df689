// Text generation over a runtime::Model: a KV cache per request, greedy decoding or sampling
// (temperature, top-k, top-p, a seed), stop at EOS unless asked not to. No libtorch in this
// header: the CLI drives a Generator made inside the libtorch plugin through this interface.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "coldstart/core/result.h"
#include "coldstart/runtime/config.h"

namespace coldstart::loader {
class LoadHandle;
}

namespace coldstart::runtime {

struct SamplingOptions {
  double temperature = 0;  // 0: greedy (argmax; ties go to the lowest id, as torch.argmax)
  std::int64_t top_k = 0;  // 0: off
  double top_p = 1.0;      // 1: off; keeps the smallest set whose probability reaches top_p
  std::uint64_t seed = 0;  // the same seed, prompt and options give the same tokens
};
// Checks ranges: temperature >= 0, top_k >= 0, 0 < top_p <= 1.
Status Validate(const SamplingOptions& s);

struct GenerateOptions {
  std::int64_t max_new_tokens = 32;
  bool ignore_eos = false;
  std::vector<std::int64_t> eos_ids;  // empty: config.json's eos_token_id
  SamplingOptions sampling;
  int top_logits = 10;  // how many (id, logit) pairs of the first generated position to keep
  // Each generated token as soon as it exists (the first one is the first token); false stops.
  std::function<bool(std::int32_t token)> on_token;
};

struct GenerateResult {
  std::vector<std::int32_t> output_ids;  // generated tokens (an EOS that stopped it included)
  std::vector<std::pair<std::int32_t, float>> top_logits;  // first generated position, largest first
  std::string stop_reason;  // "eos" | "length" | "stopped" (on_token returned false)
  double prefill_seconds = 0;  // prompt pass (includes waiting for layers still loading)
  double decode_seconds = 0;   // every step after the first token
  double first_token_s = 0, last_token_s = 0;  // seconds since process start
  double tokens_per_s = 0;     // decode steps per second (0 with one token)
};

class Generator {
 public:
  virtual ~Generator() = default;
  // One request: runs the prompt, then decodes. Thread-compatible: one request at a time.
  virtual Result<GenerateResult> Generate(std::span<const std::int32_t> prompt, const GenerateOptions& options) = 0;
  virtual const ModelConfig& config() const = 0;
  virtual std::string Describe() const = 0;         // "gemma3, 18 layers, f32 on cpu"
  virtual std::uint64_t converted_bytes() const = 0; // weight copies made for the compute dtype
};

// Builds the model over `load` (runtime::Model::FromLoad) behind a Generator. Errors are values.
Result<std::unique_ptr<Generator>> MakeGenerator(std::shared_ptr<loader::LoadHandle> load, ModelConfig config,
                                                 ModelOptions options = {});

}  // namespace coldstart::runtime
