#include "coldstart/runtime/model.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/version.h>

#include <cmath>

#include "coldstart/loader/copy_engine.h"

#if defined(COLDSTART_TORCH_CUDA)
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace coldstart::runtime {
namespace {

[[noreturn]] void Fail(Errc code, std::string message) { throw LoadError(MakeError(code, std::move(message))); }

std::string ShapeText(const std::vector<std::int64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// HF's inverse frequencies (f32 throughout, as transformers computes them), with linear or
// llama3 scaling.
at::Tensor InverseFrequencies(const RopeConfig& r, std::int64_t dim) {
  auto exponents = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  at::Tensor inv = 1.0 / at::pow(r.theta, exponents);
  switch (r.type) {
    case RopeConfig::Type::kDefault: break;
    case RopeConfig::Type::kLinear: inv = inv / r.factor; break;
    case RopeConfig::Type::kLlama3: {
      const double old_ctx = r.original_max_position_embeddings;
      const double low_wavelen = old_ctx / r.low_freq_factor;
      const double high_wavelen = old_ctx / r.high_freq_factor;
      at::Tensor wavelen = 2 * M_PI / inv;
      at::Tensor scaled = at::where(wavelen > low_wavelen, inv / r.factor, inv);
      at::Tensor smooth = (old_ctx / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
      at::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
      at::Tensor medium = at::logical_not(wavelen < high_wavelen).logical_and(at::logical_not(wavelen > low_wavelen));
      inv = at::where(medium, smoothed, scaled);
      break;
    }
  }
  return inv.contiguous();
}

}  // namespace

struct Model::Layer {
  bool ready = false;
  at::Tensor in_norm, q, k, v, o, qb, kb, vb, ob, q_norm, k_norm;
  at::Tensor post_attn_norm, pre_ff_norm, post_ff_norm;
  at::Tensor gate, up, down, gate_b, up_b, down_b;
};

Model::~Model() = default;

at::Device Model::device() const {
  return on_cuda_ ? at::Device(at::kCUDA, device_index_) : at::Device(at::kCPU);
}

std::string Model::Describe() const {
  return std::string(FamilyName(config_.family)) + ", " + std::to_string(config_.num_layers) + " layers, " +
         (dtype_ == at::kFloat ? "f32" : "bf16") + " on " + (on_cuda_ ? "cuda" : "cpu");
}

std::unique_ptr<Model> Model::FromLoad(std::shared_ptr<loader::LoadHandle> load, ModelConfig config, ModelOptions options) {
  if (!load) Fail(Errc::kInvalidArgument, "Model::FromLoad: no load");
  std::unique_ptr<Model> m(new Model());
  m->load_ = std::move(load);
  m->config_ = std::move(config);
  m->options_ = std::move(options);
  const auto& c = m->config_;
  // Where the weights are decides the device; CPU computes in f32 unless asked otherwise.
  auto embed = m->load_->Place(c.prefix + "embed_tokens.weight");
  if (!embed.ok()) Fail(Errc::kNotFound, "the model has no " + c.prefix + "embed_tokens.weight (is this a " +
                                             std::string(FamilyName(c.family)) + " checkpoint?)");
  m->on_cuda_ = embed->on_device;
  m->device_index_ = embed->device_index;
  if (m->on_cuda_) {
#if defined(COLDSTART_TORCH_CUDA)
    if (!at::hasCUDA()) Fail(Errc::kUnavailable, "the weights are on a GPU but this libtorch sees no CUDA device");
#else
    Fail(Errc::kUnavailable, "the weights are on a GPU but this libtorch (" + TorchVersionString() +
                                 ") was built without CUDA; build coldstart against a CUDA libtorch "
                                 "(-DCMAKE_PREFIX_PATH=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)'))");
#endif
  }
  switch (m->options_.dtype) {
    case ComputeDType::kAuto: m->dtype_ = m->on_cuda_ ? at::kBFloat16 : at::kFloat; break;
    case ComputeDType::kF32: m->dtype_ = at::kFloat; break;
    case ComputeDType::kBF16: m->dtype_ = at::kBFloat16; break;
  }
  // Every tensor the config names, with its shape, before any compute: a wrong checkpoint is an
  // error now, not a shape mismatch in layer 17.
  const std::int64_t H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  const std::int64_t q_out = c.num_heads * D, kv_out = c.num_kv_heads * D;
  auto check = [&](const std::string& name, std::vector<std::int64_t> shape) {
    auto p = m->load_->Place(name);
    if (!p.ok()) Fail(Errc::kNotFound, "the checkpoint has no tensor " + name + " that a " +
                                           std::string(FamilyName(c.family)) + " model with this config.json needs");
    std::vector<std::int64_t> got(p->entry->shape.begin(), p->entry->shape.end());
    if (got != shape)
      Fail(Errc::kFormat, name + " has shape " + ShapeText(got) + " but config.json implies " + ShapeText(shape));
    const auto dt = p->dtype;
    if (dt != loader::DType::kF32 && dt != loader::DType::kBF16 && dt != loader::DType::kF16)
      Fail(Errc::kInvalidArgument, name + " is " + std::string(loader::DTypeName(dt)) +
                                       "; coldstart run computes from F32, BF16 or F16 weights");
  };
  check(c.prefix + "embed_tokens.weight", {c.vocab_size, H});
  check(c.prefix + "norm.weight", {H});
  if (!c.lm_head.empty()) check(c.lm_head, {c.vocab_size, H});
  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = c.prefix + "layers." + std::to_string(i) + ".";
    check(p + "input_layernorm.weight", {H});
    check(p + "post_attention_layernorm.weight", {H});
    check(p + "self_attn.q_proj.weight", {q_out, H});
    check(p + "self_attn.k_proj.weight", {kv_out, H});
    check(p + "self_attn.v_proj.weight", {kv_out, H});
    check(p + "self_attn.o_proj.weight", {H, q_out});
    if (c.attention_bias) {
      check(p + "self_attn.q_proj.bias", {q_out});
      check(p + "self_attn.k_proj.bias", {kv_out});
      check(p + "self_attn.v_proj.bias", {kv_out});
    }
    if (c.o_bias) check(p + "self_attn.o_proj.bias", {H});
    if (c.qk_norm) {
      check(p + "self_attn.q_norm.weight", {D});
      check(p + "self_attn.k_norm.weight", {D});
    }
    if (c.sandwich_norm) {
      check(p + "pre_feedforward_layernorm.weight", {H});
      check(p + "post_feedforward_layernorm.weight", {H});
    }
    check(p + "mlp.gate_proj.weight", {I, H});
    check(p + "mlp.up_proj.weight", {I, H});
    check(p + "mlp.down_proj.weight", {H, I});
    if (c.mlp_bias) {
      check(p + "mlp.gate_proj.bias", {I});
      check(p + "mlp.up_proj.bias", {I});
      check(p + "mlp.down_proj.bias", {H});
    }
    m->layers_.push_back(std::make_unique<Layer>());
    m->inv_freq_.push_back(InverseFrequencies(c.rope(i), D));
  }
  return m;
}

// A weight over the load's memory (zero-copy), converted to the compute dtype when it differs
// (once: the caller keeps the result). Only called after the tensor's layer is ready.
at::Tensor Model::Weight(const std::string& name, std::vector<std::int64_t> shape, bool convert) {
  auto p = load_->Place(name);
  if (!p.ok()) throw LoadError(p.error());
  auto dtype = TorchDType(p->dtype);
  if (!dtype) Fail(Errc::kInvalidArgument, name + ": no libtorch dtype for " + std::string(loader::DTypeName(p->dtype)));
  auto opts = at::TensorOptions().dtype(*dtype);
  if (p->on_device) opts = opts.device(device());
  // The load owns the memory and the model owns the load: no deleter.
  at::Tensor t = at::from_blob(reinterpret_cast<void*>(p->address), shape, opts);
  if (convert && t.scalar_type() != dtype_) {
    const float* ready = t.scalar_type() == at::kBFloat16 && dtype_ == at::kFloat && !p->on_device && options_.f32_weights
                             ? options_.f32_weights(name)
                             : nullptr;
    if (ready) {
      // Converted by the caller; counted there too, since the model holds it.
      t = at::from_blob(const_cast<float*>(ready), shape, at::TensorOptions().dtype(at::kFloat));
    } else if (t.scalar_type() == at::kBFloat16 && dtype_ == at::kFloat && !p->on_device) {
      // libtorch 1.13 converts BF16 to f32 at ~0.25 G elements/s on one core (0.7 s for
      // gemma-3-270m's embedding); the shift-by-16 loop vectorises and runs on every core.
      at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
      const auto* src = reinterpret_cast<const std::byte*>(p->address);
      auto* dst = static_cast<std::byte*>(out.data_ptr());
      at::parallel_for(0, t.numel(), 1 << 20, [&](std::int64_t b, std::int64_t e) {
        loader::ConvertBf16ToF32(src + 2 * b, static_cast<std::uint64_t>(e - b), dst + 4 * b);
      });
      t = out;
    } else {
      t = t.to(dtype_);
    }
    converted_bytes_ += t.numel() * t.element_size();
  }
  return t;
}

void Model::EnsureEmbeddings() {
  if (embeddings_ready_) return;
  const auto& c = config_;
  const std::string embed_name = c.prefix + "embed_tokens.weight";
  if (auto st = load_->WaitTensor(embed_name); !st.ok()) throw LoadError(st.error());
  embed_ = Weight(embed_name, {c.vocab_size, c.hidden_size}, true);
  // Gemma scales embeddings by sqrt(hidden_size) rounded to the weights' dtype (in bf16,
  // sqrt(96) = 9.797... becomes 9.8125), as transformers does.
  embed_scale_ = at::full({}, std::sqrt(static_cast<double>(c.hidden_size)), at::TensorOptions().dtype(dtype_));
  if (on_cuda_) embed_scale_ = embed_scale_.to(embed_.device());
  embeddings_ready_ = true;
}

void Model::EnsureLayer(int i) {
  Layer& L = *layers_[i];
  if (L.ready) return;
  const auto& c = config_;
  if (on_cuda_) {
#if defined(COLDSTART_TORCH_CUDA)
    // The compute stream waits on the layer's join event: its copies may still be in flight.
    auto ev = load_->LayerEvent(i);
    if (!ev.ok()) throw LoadError(ev.error());
    auto stream = c10::cuda::getCurrentCUDAStream();
    if (cudaStreamWaitEvent(stream.stream(), reinterpret_cast<cudaEvent_t>(*ev), 0) != cudaSuccess)
      Fail(Errc::kInternal, "cudaStreamWaitEvent failed for layer " + std::to_string(i));
#endif
  } else {
    // Host memory (the arena, or the sim device's stand-in memory): the bytes are final once
    // the layer is ready.
    if (auto st = load_->WaitLayer(i); !st.ok()) throw LoadError(st.error());
  }
  if (options_.on_layer) options_.on_layer(i, false);
  const std::string p = c.prefix + "layers." + std::to_string(i) + ".";
  const std::int64_t H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  const std::int64_t q_out = c.num_heads * D, kv_out = c.num_kv_heads * D;
  // Norm weights are kept in f32 (Gemma: as 1 + w) for the f32 normalisation.
  auto norm = [&](const std::string& name, std::int64_t n) {
    at::Tensor w = Weight(name, {n}, false).to(at::kFloat);
    if (c.gemma_norm) return (w + 1.0).contiguous();
    return w.to(dtype_).contiguous();  // Llama: w * normed.to(input dtype), in the input dtype
  };
  L.in_norm = norm(p + "input_layernorm.weight", H);
  L.post_attn_norm = norm(p + "post_attention_layernorm.weight", H);
  L.q = Weight(p + "self_attn.q_proj.weight", {q_out, H}, true);
  L.k = Weight(p + "self_attn.k_proj.weight", {kv_out, H}, true);
  L.v = Weight(p + "self_attn.v_proj.weight", {kv_out, H}, true);
  L.o = Weight(p + "self_attn.o_proj.weight", {H, q_out}, true);
  if (c.attention_bias) {
    L.qb = Weight(p + "self_attn.q_proj.bias", {q_out}, true);
    L.kb = Weight(p + "self_attn.k_proj.bias", {kv_out}, true);
    L.vb = Weight(p + "self_attn.v_proj.bias", {kv_out}, true);
  }
  if (c.o_bias) L.ob = Weight(p + "self_attn.o_proj.bias", {H}, true);
  if (c.qk_norm) {
    L.q_norm = norm(p + "self_attn.q_norm.weight", D);
    L.k_norm = norm(p + "self_attn.k_norm.weight", D);
  }
  if (c.sandwich_norm) {
    L.pre_ff_norm = norm(p + "pre_feedforward_layernorm.weight", H);
    L.post_ff_norm = norm(p + "post_feedforward_layernorm.weight", H);
  }
  L.gate = Weight(p + "mlp.gate_proj.weight", {I, H}, true);
  L.up = Weight(p + "mlp.up_proj.weight", {I, H}, true);
  L.down = Weight(p + "mlp.down_proj.weight", {H, I}, true);
  if (c.mlp_bias) {
    L.gate_b = Weight(p + "mlp.gate_proj.bias", {I}, true);
    L.up_b = Weight(p + "mlp.up_proj.bias", {I}, true);
    L.down_b = Weight(p + "mlp.down_proj.bias", {H}, true);
  }
  if (on_cuda_) inv_freq_[i] = inv_freq_[i].to(L.q.device());
  L.ready = true;
}

// Gemma: x * rsqrt(mean(x^2) + eps) * (1 + w), all in f32, then back to x's dtype.
// Llama/Qwen2: w * (normalised in f32, cast back to x's dtype).
at::Tensor Model::Norm(const at::Tensor& x, const at::Tensor& w) const {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor n = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + config_.rms_norm_eps);
  if (config_.gemma_norm) return (n * w).to(x.scalar_type());
  return w * n.to(x.scalar_type());
}

// The half-split rotation: x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1].
at::Tensor Model::Rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
  const auto half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return x * cos + at::cat({-x2, x1}, -1) * sin;
}

double Model::embed_scale() const {
  return config_.scale_embeddings && embed_scale_.defined() ? embed_scale_.to(at::kDouble).item<double>() : 1.0;
}

KVCache Model::NewCache(std::int64_t capacity) const {
  KVCache kv;
  kv.capacity_ = capacity;
  auto opts = at::TensorOptions().dtype(dtype_);
  if (on_cuda_) opts = opts.device(device());
  for (std::int64_t i = 0; i < config_.num_layers; ++i) {
    kv.k_.push_back(at::empty({config_.num_kv_heads, capacity, config_.head_dim}, opts));
    kv.v_.push_back(at::empty({config_.num_kv_heads, capacity, config_.head_dim}, opts));
  }
  return kv;
}

at::Tensor Model::Forward(const at::Tensor& ids_in, KVCache& cache, std::int64_t logits_for) {
  const auto& c = config_;
  const std::int64_t T = ids_in.size(0);
  const std::int64_t start = cache.length_;
  if (T == 0) Fail(Errc::kInvalidArgument, "Forward: no tokens");
  if (start + T > cache.capacity_)
    Fail(Errc::kResourceExhausted, "the KV cache holds " + std::to_string(cache.capacity_) + " positions; " +
                                       std::to_string(start + T) + " needed");
  if (logits_for < 1 || logits_for > T) logits_for = T;
  c10::AutoGradMode no_grad(false);
  EnsureEmbeddings();
  at::Tensor ids = ids_in.to(at::kLong);
  if (ids.min().item<std::int64_t>() < 0 || ids.max().item<std::int64_t>() >= c.vocab_size)
    Fail(Errc::kInvalidArgument, "token ids must be in [0, " + std::to_string(c.vocab_size) + ")");
  if (on_cuda_) ids = ids.to(embed_.device());
  at::Tensor x = at::embedding(embed_, ids);  // [T, H]
  if (c.scale_embeddings) x = x * embed_scale_;

  const std::int64_t nh = c.num_heads, nkv = c.num_kv_heads, D = c.head_dim, rep = nh / nkv;
  const std::int64_t L = start + T;
  auto dev_opts = at::TensorOptions().device(x.device());
  at::Tensor pos = at::arange(start, start + T, dev_opts.dtype(at::kFloat));
  at::Tensor qpos = at::arange(start, start + T, dev_opts.dtype(at::kLong)).unsqueeze(1);
  at::Tensor kpos = at::arange(0, L, dev_opts.dtype(at::kLong)).unsqueeze(0);
  at::Tensor causal = kpos <= qpos;  // [T, L]
  at::Tensor sliding_mask;
  if (c.sliding_window > 0) sliding_mask = causal.logical_and(kpos > qpos - c.sliding_window);

  for (std::int64_t i = 0; i < c.num_layers; ++i) {
    EnsureLayer(static_cast<int>(i));
    const Layer& W = *layers_[i];
    at::Tensor residual = x;
    at::Tensor h = Norm(x, W.in_norm);
    at::Tensor q = at::linear(h, W.q, W.qb).view({T, nh, D});
    at::Tensor k = at::linear(h, W.k, W.kb).view({T, nkv, D});
    at::Tensor v = at::linear(h, W.v, W.vb).view({T, nkv, D});
    if (c.qk_norm) {
      q = Norm(q, W.q_norm);
      k = Norm(k, W.k_norm);
    }
    at::Tensor freqs = pos.unsqueeze(1) * inv_freq_[i].unsqueeze(0);  // [T, D/2], f32
    at::Tensor emb = at::cat({freqs, freqs}, -1).unsqueeze(1);        // [T, 1, D]
    at::Tensor cos = emb.cos().to(x.scalar_type()), sin = emb.sin().to(x.scalar_type());
    q = Rope(q, cos, sin).transpose(0, 1).contiguous();  // [nh, T, D]
    k = Rope(k, cos, sin).transpose(0, 1);               // [nkv, T, D]
    cache.k_[i].narrow(1, start, T).copy_(k);
    cache.v_[i].narrow(1, start, T).copy_(v.transpose(0, 1));
    at::Tensor keys = cache.k_[i].narrow(1, 0, L), values = cache.v_[i].narrow(1, 0, L);
    const at::Tensor& allowed = c.sliding[i] ? sliding_mask : causal;
    at::Tensor attn;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
    if (!c.attn_logit_softcapping) {
      // libtorch 2.1+: the fused attention (flash / memory-efficient kernels on CUDA), with the
      // family's scale; kv heads repeated for grouped-query attention. Gemma 2's softcapping
      // needs the scores, so it keeps the explicit path below.
      at::Tensor kf = rep > 1 ? keys.repeat_interleave(rep, 0) : keys;
      at::Tensor vf = rep > 1 ? values.repeat_interleave(rep, 0) : values;
      attn = at::scaled_dot_product_attention(q.unsqueeze(0), kf.unsqueeze(0), vf.unsqueeze(0), allowed, 0.0,
                                              /*is_causal=*/false, c.attention_scale)
                 .squeeze(0)
                 .transpose(0, 1)
                 .reshape({T, nh * D});
    }
#endif
    if (!attn.defined()) {
      // Grouped-query attention without repeating keys: the `rep` query heads that share a kv
      // head are stacked along the position axis. Softmax in f32, as transformers' eager path.
      at::Tensor qg = q.view({nkv, rep * T, D});
      at::Tensor scores = at::matmul(qg, keys.transpose(1, 2)) * c.attention_scale;  // [nkv, rep*T, L]
      if (c.attn_logit_softcapping) {
        const double cap = *c.attn_logit_softcapping;
        scores = at::tanh(scores / cap) * cap;
      }
      scores = scores.view({nkv, rep, T, L}).masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
      at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(x.scalar_type()).view({nkv, rep * T, L});
      attn = at::matmul(probs, values).view({nh, T, D}).transpose(0, 1).reshape({T, nh * D});
    }
    at::Tensor o = at::linear(attn, W.o, W.ob);
    if (c.sandwich_norm) {
      x = residual + Norm(o, W.post_attn_norm);
      residual = x;
      h = Norm(x, W.pre_ff_norm);
    } else {
      x = residual + o;
      residual = x;
      h = Norm(x, W.post_attn_norm);
    }
    at::Tensor gate = at::linear(h, W.gate, W.gate_b);
    gate = c.gelu_tanh_mlp ? at::gelu(gate, "tanh") : at::silu(gate);
    at::Tensor mlp = at::linear(gate * at::linear(h, W.up, W.up_b), W.down, W.down_b);
    if (c.sandwich_norm) mlp = Norm(mlp, W.post_ff_norm);
    x = residual + mlp;
    if (options_.on_layer && start == 0) options_.on_layer(static_cast<int>(i), true);
  }
  cache.length_ = L;

  if (!final_norm_.defined()) {
    // The final norm and the LM head arrive last (LoadOrder::kLayer).
    const std::string norm_name = c.prefix + "norm.weight";
    if (auto st = load_->WaitTensor(norm_name); !st.ok()) throw LoadError(st.error());
    at::Tensor w = Weight(norm_name, {c.hidden_size}, false).to(at::kFloat);
    final_norm_ = c.gemma_norm ? (w + 1.0).contiguous() : w.to(dtype_).contiguous();
    if (c.lm_head.empty()) {
      lm_head_ = embed_;
    } else {
      if (auto st = load_->WaitTensor(c.lm_head); !st.ok()) throw LoadError(st.error());
      lm_head_ = Weight(c.lm_head, {c.vocab_size, c.hidden_size}, true);
    }
  }
  at::Tensor last = Norm(x.narrow(0, T - logits_for, logits_for), final_norm_);
  at::Tensor logits = at::linear(last, lm_head_);
  if (c.final_logit_softcapping) {
    const double cap = *c.final_logit_softcapping;
    logits = at::tanh(logits / cap) * cap;
  }
  return logits.to(at::kFloat);
}

}  // namespace coldstart::runtime
