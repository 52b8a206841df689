#include "coldstart/runtime/generator.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <chrono>

#include "coldstart/core/timeline.h"
#include "coldstart/runtime/model.h"
#include "coldstart/runtime/sampling.h"

namespace coldstart::runtime {

std::int64_t SampleToken(const at::Tensor& logits_in, const SamplingOptions& s, at::Generator& gen) {
  at::Tensor logits = logits_in.to(at::kFloat).flatten();
  if (s.temperature <= 0) return logits.argmax().item<std::int64_t>();
  logits = logits / s.temperature;
  const std::int64_t V = logits.size(0);
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (s.top_k > 0 && s.top_k < V) {
    at::Tensor kth = std::get<0>(logits.topk(s.top_k)).select(0, s.top_k - 1);
    logits = logits.masked_fill(logits < kth, neg_inf);
  }
  if (s.top_p < 1.0) {
    auto [sorted, order] = logits.sort(/*dim=*/0, /*descending=*/true);
    at::Tensor probs = at::softmax(sorted, 0);
    // Drop a token when the tokens before it already reach top_p (the first always stays).
    at::Tensor drop = (probs.cumsum(0) - probs) >= s.top_p;
    logits = logits.index_fill(0, order.masked_select(drop), neg_inf);
  }
  at::Tensor probs = at::softmax(logits, 0);
  return at::multinomial(probs, 1, /*replacement=*/false, gen).item<std::int64_t>();
}

namespace {

class TorchGenerator final : public Generator {
 public:
  explicit TorchGenerator(std::unique_ptr<Model> m) : model_(std::move(m)) {}

  Result<GenerateResult> Generate(std::span<const std::int32_t> prompt, const GenerateOptions& o) override {
    CS_RETURN_IF_ERROR(Validate(o.sampling));
    if (prompt.empty()) return MakeError(Errc::kInvalidArgument, "the prompt has no tokens");
    if (o.max_new_tokens < 1) return MakeError(Errc::kInvalidArgument, "--max-new-tokens must be at least 1");
    const auto& c = model_->config();
    const std::int64_t capacity = static_cast<std::int64_t>(prompt.size()) + o.max_new_tokens;
    if (capacity > c.max_position_embeddings)
      return MakeError(Errc::kInvalidArgument, "prompt (" + std::to_string(prompt.size()) + " tokens) plus --max-new-tokens " +
                                                   std::to_string(o.max_new_tokens) + " exceed the model's " +
                                                   std::to_string(c.max_position_embeddings) + " positions");
    for (auto id : prompt)
      if (id < 0 || id >= c.vocab_size)
        return MakeError(Errc::kInvalidArgument, "prompt token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                                                     std::to_string(c.vocab_size) + ")");
    const auto& eos = o.eos_ids.empty() ? c.eos_token_ids : o.eos_ids;
    try {
      GenerateResult r;
      at::Generator gen = at::detail::createCPUGenerator(o.sampling.seed);
      KVCache cache = model_->NewCache(capacity);
      std::vector<std::int64_t> ids(prompt.begin(), prompt.end());
      const auto t0 = std::chrono::steady_clock::now();
      at::Tensor logits = model_->Forward(at::tensor(ids, at::kLong), cache, 1).select(0, 0).to(at::kCPU);
      const auto t1 = std::chrono::steady_clock::now();
      r.prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
      if (o.top_logits > 0) {
        auto [vals, idx] = logits.topk(std::min<std::int64_t>(o.top_logits, logits.size(0)));
        for (std::int64_t k = 0; k < vals.size(0); ++k)
          r.top_logits.emplace_back(static_cast<std::int32_t>(idx[k].item<std::int64_t>()), vals[k].item<float>());
      }
      r.stop_reason = "length";
      for (std::int64_t step = 0; step < o.max_new_tokens; ++step) {
        const std::int64_t tok = SampleToken(logits, o.sampling, gen);
        const double now = Timeline::SinceProcessStart();
        if (step == 0) r.first_token_s = now;
        r.last_token_s = now;
        r.output_ids.push_back(static_cast<std::int32_t>(tok));
        if (o.on_token && !o.on_token(static_cast<std::int32_t>(tok))) {
          r.stop_reason = "stopped";
          break;
        }
        if (!o.ignore_eos && std::find(eos.begin(), eos.end(), tok) != eos.end()) {
          r.stop_reason = "eos";
          break;
        }
        if (step + 1 == o.max_new_tokens) break;
        logits = model_->Forward(at::tensor(std::vector<std::int64_t>{tok}, at::kLong), cache, 1).select(0, 0).to(at::kCPU);
      }
      r.decode_seconds = std::max(0.0, r.last_token_s - r.first_token_s);
      if (r.output_ids.size() > 1 && r.decode_seconds > 0)
        r.tokens_per_s = static_cast<double>(r.output_ids.size() - 1) / r.decode_seconds;
      return r;
    } catch (const LoadError& e) {
      return e.error();
    } catch (const std::exception& e) {
      return MakeError(Errc::kInternal, std::string("libtorch: ") + e.what());
    }
  }
  const ModelConfig& config() const override { return model_->config(); }
  std::string Describe() const override { return model_->Describe(); }
  std::uint64_t converted_bytes() const override { return model_->converted_bytes(); }

 private:
  std::unique_ptr<Model> model_;
};

}  // namespace

Result<std::unique_ptr<Generator>> MakeGenerator(std::shared_ptr<loader::LoadHandle> load, ModelConfig config,
                                                 ModelOptions options) {
  try {
    return std::unique_ptr<Generator>(new TorchGenerator(Model::FromLoad(std::move(load), std::move(config), std::move(options))));
  } catch (const LoadError& e) {
    return e.error();
  } catch (const std::exception& e) {
    return MakeError(Errc::kInternal, std::string("libtorch: ") + e.what());
  }
}

}  // namespace coldstart::runtime
