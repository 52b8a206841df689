#include "coldstart/runtime/config.h"

#include "coldstart/runtime/generator.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

namespace coldstart::runtime {
namespace {

using json = nlohmann::json;

Error Bad(std::string_view field, std::string_view what) {
  return MakeError(Errc::kFormat, "config.json: \"" + std::string(field) + "\" " + std::string(what));
}

// A number field: absent or null -> `def` (nullopt when there is no default).
Result<std::optional<double>> Number(const json& j, const char* key, std::optional<double> def = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_number()) return Bad(key, "must be a number, not " + std::string(it->type_name()));
  const double v = it->get<double>();
  if (!std::isfinite(v)) return Bad(key, "must be finite");
  return std::optional<double>(v);
}

// A positive integer field, required unless `def` is given.
Result<std::int64_t> Count(const json& j, const char* key, std::optional<std::int64_t> def = std::nullopt,
                           std::int64_t max = std::int64_t(1) << 40) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (def) return *def;
    return Bad(key, "is missing");
  }
  if (!it->is_number_integer()) return Bad(key, "must be an integer, not " + std::string(it->type_name()));
  const auto v = it->get<std::int64_t>();
  if (v <= 0 || v > max) return Bad(key, "must be between 1 and " + std::to_string(max) + ", not " + std::to_string(v));
  return v;
}

Result<bool> Bool(const json& j, const char* key, bool def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_boolean()) return Bad(key, "must be true or false");
  return it->get<bool>();
}

Result<std::string> String(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::string();
  if (!it->is_string()) return Bad(key, "must be a string");
  return it->get<std::string>();
}

// One rope dict: {"rope_type"|"type": default|linear|llama3, "rope_theta", "factor", ...}.
// `theta` is the layer type's base when the dict has none (older configs keep it outside).
Result<RopeConfig> ParseRope(const json& r, std::string_view where, double theta) {
  RopeConfig c;
  c.theta = theta;
  if (r.is_null()) return c;
  if (!r.is_object()) return Bad(where, "must be an object");
  std::string type = "default";
  for (const char* k : {"rope_type", "type"}) {
    if (auto it = r.find(k); it != r.end() && !it->is_null()) {
      if (!it->is_string()) return Bad(std::string(where) + "." + k, "must be a string");
      type = it->get<std::string>();
      break;
    }
  }
  CS_ASSIGN_OR_RETURN(auto t, Number(r, "rope_theta", theta));
  c.theta = *t;
  if (c.theta <= 0) return Bad(std::string(where) + ".rope_theta", "must be positive");
  if (type == "default") {
    c.type = RopeConfig::Type::kDefault;
    return c;
  }
  CS_ASSIGN_OR_RETURN(auto factor, Number(r, "factor"));
  if (!factor || *factor <= 0) return Bad(std::string(where) + ".factor", "must be a positive number for rope type " + type);
  c.factor = *factor;
  if (type == "linear") {
    c.type = RopeConfig::Type::kLinear;
    return c;
  }
  if (type == "llama3") {
    c.type = RopeConfig::Type::kLlama3;
    CS_ASSIGN_OR_RETURN(auto lo, Number(r, "low_freq_factor"));
    CS_ASSIGN_OR_RETURN(auto hi, Number(r, "high_freq_factor"));
    CS_ASSIGN_OR_RETURN(auto orig, Number(r, "original_max_position_embeddings"));
    if (!lo || !hi || !orig || *lo <= 0 || *hi <= *lo || *orig <= 0)
      return Bad(where, "rope type llama3 needs low_freq_factor > 0, high_freq_factor > low_freq_factor and "
                        "original_max_position_embeddings > 0");
    c.low_freq_factor = *lo;
    c.high_freq_factor = *hi;
    c.original_max_position_embeddings = *orig;
    return c;
  }
  return MakeError(Errc::kInvalidArgument, "config.json: rope type \"" + type + "\" (" + std::string(where) +
                                               ") is not supported; supported: default, linear, llama3");
}

struct FamilyInfo {
  Family family;
  const char* model_type;
  const char* architecture;
};
constexpr FamilyInfo kFamilies[] = {
    {Family::kGemma3, "gemma3_text", "Gemma3ForCausalLM"},
    {Family::kGemma3, "gemma3", "Gemma3ForConditionalGeneration"},
    {Family::kGemma2, "gemma2", "Gemma2ForCausalLM"},
    {Family::kLlama, "llama", "LlamaForCausalLM"},
    {Family::kQwen2, "qwen2", "Qwen2ForCausalLM"},
};

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

}  // namespace

std::string_view FamilyName(Family f) {
  switch (f) {
    case Family::kGemma3: return "gemma3";
    case Family::kGemma2: return "gemma2";
    case Family::kLlama: return "llama";
    case Family::kQwen2: return "qwen2";
  }
  return "?";
}

std::string SupportedArchitectures() {
  std::string s;
  for (const auto& f : kFamilies) {
    if (!s.empty()) s += ", ";
    s += std::string(f.model_type) + " (" + f.architecture + (f.family == Family::kGemma3 && std::string_view(f.model_type) == "gemma3" ? ", text only)" : ")");
  }
  return s;
}

Result<ModelConfig> ParseModelConfig(std::string_view text, const std::vector<std::string>& tensor_names) {
  json top = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (top.is_discarded()) return MakeError(Errc::kFormat, "config.json: not valid JSON");
  if (!top.is_object()) return MakeError(Errc::kFormat, "config.json: not a JSON object");
  ModelConfig c;
  CS_ASSIGN_OR_RETURN(c.model_type, String(top, "model_type"));
  if (auto it = top.find("architectures"); it != top.end() && it->is_array() && !it->empty() && (*it)[0].is_string())
    c.architecture = (*it)[0].get<std::string>();
  const FamilyInfo* fam = nullptr;
  for (const auto& f : kFamilies)
    if (c.model_type == f.model_type || (c.model_type.empty() && c.architecture == f.architecture)) fam = &f;
  if (!fam) {
    const std::string what = c.model_type.empty() ? (c.architecture.empty() ? std::string("no model_type")
                                                                              : "architecture " + c.architecture)
                                                  : "model_type \"" + c.model_type + "\"";
    return MakeError(Errc::kInvalidArgument, "config.json: " + what + " is not supported by coldstart run; supported: " +
                                                 SupportedArchitectures());
  }
  c.family = fam->family;
  const bool multimodal = std::string_view(fam->model_type) == "gemma3";
  // Gemma 3 4b-27b: the decoder's config is nested, with Gemma3TextConfig's defaults for what
  // it leaves out (the hub files omit heads, head_dim, vocab and rope bases).
  const json* jp = &top;
  if (multimodal) {
    auto it = top.find("text_config");
    if (it == top.end() || !it->is_object()) return Bad("text_config", "is missing (model_type gemma3)");
    jp = &*it;
  }
  const json& j = *jp;
  const bool gemma = c.family == Family::kGemma3 || c.family == Family::kGemma2;
  // Defaults are transformers' (Gemma3TextConfig / Gemma2Config); Llama and Qwen2 configs always
  // carry their shape, so there the shape is required.
  auto gdef = [&](std::int64_t v) { return gemma ? std::optional<std::int64_t>(v) : std::nullopt; };
  const bool g3 = c.family == Family::kGemma3;
  CS_ASSIGN_OR_RETURN(c.hidden_size, Count(j, "hidden_size", gdef(2304)));
  CS_ASSIGN_OR_RETURN(c.intermediate_size, Count(j, "intermediate_size", gdef(9216)));
  CS_ASSIGN_OR_RETURN(c.num_layers, Count(j, "num_hidden_layers", gdef(26), 100000));
  CS_ASSIGN_OR_RETURN(c.num_heads, Count(j, "num_attention_heads", gdef(8), 100000));
  CS_ASSIGN_OR_RETURN(c.num_kv_heads, Count(j, "num_key_value_heads", gemma ? std::optional<std::int64_t>(4) : c.num_heads, 100000));
  CS_ASSIGN_OR_RETURN(c.vocab_size, Count(j, "vocab_size", gdef(g3 ? 262208 : 256000)));
  if (c.num_heads % c.num_kv_heads != 0)
    return Bad("num_key_value_heads", "(" + std::to_string(c.num_kv_heads) + ") must divide num_attention_heads (" +
                                          std::to_string(c.num_heads) + ")");
  CS_ASSIGN_OR_RETURN(c.head_dim, Count(j, "head_dim", gemma ? 256 : c.hidden_size / c.num_heads, 100000));
  if (c.head_dim % 2 != 0) return Bad("head_dim", "must be even (rotary embeddings rotate pairs)");
  if (!gemma && !j.contains("head_dim") && c.hidden_size % c.num_heads != 0)
    return Bad("hidden_size", "must be a multiple of num_attention_heads when head_dim is absent");
  CS_ASSIGN_OR_RETURN(c.max_position_embeddings, Count(j, "max_position_embeddings", gemma ? (g3 ? 131072 : 8192) : 2048));
  CS_ASSIGN_OR_RETURN(auto eps, Number(j, "rms_norm_eps", 1e-6));
  if (*eps <= 0) return Bad("rms_norm_eps", "must be positive");
  c.rms_norm_eps = *eps;
  // Gemma 3 multimodal configs keep tie_word_embeddings at the top (or nowhere: tied).
  CS_ASSIGN_OR_RETURN(c.tie_word_embeddings, Bool(multimodal && !j.contains("tie_word_embeddings") ? top : j,
                                                  "tie_word_embeddings", gemma));

  std::string act;
  for (const char* k : {"hidden_activation", "hidden_act"}) {
    CS_ASSIGN_OR_RETURN(act, String(j, k));
    if (!act.empty()) break;
  }
  if (act.empty()) act = gemma ? "gelu_pytorch_tanh" : "silu";
  if (act == "gelu_pytorch_tanh" || act == "gelu_tanh" || act == "gelu_new") {
    c.gelu_tanh_mlp = true;
  } else if (act != "silu") {
    return MakeError(Errc::kInvalidArgument, "config.json: activation \"" + act + "\" is not supported (gelu_pytorch_tanh, silu)");
  }

  c.gemma_norm = gemma;
  c.scale_embeddings = gemma;
  c.sandwich_norm = gemma;
  c.qk_norm = g3;
  CS_ASSIGN_OR_RETURN(bool attn_bias, Bool(j, "attention_bias", false));
  CS_ASSIGN_OR_RETURN(c.mlp_bias, Bool(j, "mlp_bias", false));
  if (c.family == Family::kQwen2) {
    c.attention_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias
  } else {
    c.attention_bias = attn_bias;
    c.o_bias = attn_bias;
  }
  if (gemma) {
    CS_ASSIGN_OR_RETURN(auto qpas, Number(j, "query_pre_attn_scalar", 256.0));
    if (*qpas <= 0) return Bad("query_pre_attn_scalar", "must be positive");
    c.attention_scale = 1.0 / std::sqrt(*qpas);
  } else {
    c.attention_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  }
  for (auto [key, out, def] : {std::tuple{"attn_logit_softcapping", &c.attn_logit_softcapping, c.family == Family::kGemma2 && !j.contains("attn_logit_softcapping") ? std::optional<double>(50.0) : std::nullopt},
                               std::tuple{"final_logit_softcapping", &c.final_logit_softcapping, c.family == Family::kGemma2 && !j.contains("final_logit_softcapping") ? std::optional<double>(30.0) : std::nullopt}}) {
    CS_ASSIGN_OR_RETURN(auto v, Number(j, key, def));
    if (v && *v <= 0) return Bad(key, "must be positive or null");
    *out = v;
  }
  c.attn_logit_softcapping = c.family == Family::kGemma2 ? c.attn_logit_softcapping : std::nullopt;

  // Which layers slide: explicit layer_types, else the family's older rule.
  c.sliding.assign(c.num_layers, false);
  if (auto it = j.find("layer_types"); it != j.end() && !it->is_null()) {
    if (!it->is_array() || static_cast<std::int64_t>(it->size()) != c.num_layers)
      return Bad("layer_types", "must be a list of num_hidden_layers (" + std::to_string(c.num_layers) + ") strings");
    for (std::int64_t i = 0; i < c.num_layers; ++i) {
      const auto& v = (*it)[i];
      if (!v.is_string()) return Bad("layer_types", "must hold strings");
      const auto s = v.get<std::string>();
      if (s == "sliding_attention") {
        c.sliding[i] = true;
      } else if (s != "full_attention") {
        return MakeError(Errc::kInvalidArgument, "config.json: layer type \"" + s + "\" is not supported (sliding_attention, full_attention)");
      }
    }
  } else if (g3) {
    CS_ASSIGN_OR_RETURN(auto pattern, Count(j, "sliding_window_pattern", 6, 100000));
    for (std::int64_t i = 0; i < c.num_layers; ++i) c.sliding[i] = (i + 1) % pattern != 0;
  } else if (c.family == Family::kGemma2) {
    for (std::int64_t i = 0; i < c.num_layers; ++i) c.sliding[i] = (i + 1) % 2 != 0;
  } else if (c.family == Family::kQwen2) {
    CS_ASSIGN_OR_RETURN(bool use_sw, Bool(j, "use_sliding_window", false));
    if (use_sw) {
      CS_ASSIGN_OR_RETURN(auto mwl, Count(j, "max_window_layers", c.num_layers, 100000));
      for (std::int64_t i = 0; i < c.num_layers; ++i) c.sliding[i] = i >= mwl;
    }
  }
  const bool any_sliding = std::find(c.sliding.begin(), c.sliding.end(), true) != c.sliding.end();
  if (any_sliding) {
    CS_ASSIGN_OR_RETURN(c.sliding_window, Count(j, "sliding_window", gemma ? std::optional<std::int64_t>(4096) : std::nullopt));
  }

  // RoPE: rope_parameters (per layer type, or one dict for all), else the older keys.
  CS_ASSIGN_OR_RETURN(auto theta, Number(j, "rope_theta", g3 ? 1000000.0 : 10000.0));
  CS_ASSIGN_OR_RETURN(auto local_theta, Number(j, "rope_local_base_freq", g3 ? 10000.0 : *theta));
  if (auto it = j.find("rope_parameters"); it != j.end() && !it->is_null()) {
    if (!it->is_object()) return Bad("rope_parameters", "must be an object");
    if (it->contains("full_attention") || it->contains("sliding_attention")) {
      const json& full = it->contains("full_attention") ? (*it)["full_attention"] : json();
      const json& slide = it->contains("sliding_attention") ? (*it)["sliding_attention"] : full;
      CS_ASSIGN_OR_RETURN(c.rope_global, ParseRope(full, "rope_parameters.full_attention", *theta));
      CS_ASSIGN_OR_RETURN(c.rope_local, ParseRope(slide, "rope_parameters.sliding_attention", *local_theta));
    } else {
      CS_ASSIGN_OR_RETURN(c.rope_global, ParseRope(*it, "rope_parameters", *theta));
      c.rope_local = c.rope_global;
    }
  } else {
    const json scaling = j.contains("rope_scaling") ? j["rope_scaling"] : json();
    CS_ASSIGN_OR_RETURN(c.rope_global, ParseRope(scaling, "rope_scaling", *theta));
    if (g3) {
      // Older Gemma 3 configs: rope_scaling (linear, factor 8 on 4b-27b) is for global layers only.
      c.rope_local = RopeConfig{};
      c.rope_local.theta = *local_theta;
    } else {
      c.rope_local = c.rope_global;
    }
  }

  for (const json* src : std::initializer_list<const json*>{&j, &top}) {
    if (!c.torch_dtype.empty()) break;
    for (const char* k : {"dtype", "torch_dtype"}) {
      if (auto it = src->find(k); it != src->end() && it->is_string()) {
        c.torch_dtype = it->get<std::string>();
        break;
      }
    }
  }
  for (const json* src : std::initializer_list<const json*>{&j, &top}) {
    if (!c.eos_token_ids.empty()) break;
    if (auto it = src->find("eos_token_id"); it != src->end() && !it->is_null()) {
      if (it->is_number_integer()) {
        c.eos_token_ids.push_back(it->get<std::int64_t>());
      } else if (it->is_array()) {
        for (const auto& v : *it) {
          if (!v.is_number_integer()) return Bad("eos_token_id", "must be an integer or a list of integers");
          c.eos_token_ids.push_back(v.get<std::int64_t>());
        }
      } else {
        return Bad("eos_token_id", "must be an integer or a list of integers");
      }
    }
  }
  for (const json* src : std::initializer_list<const json*>{&j, &top}) {
    if (auto it = src->find("bos_token_id"); it != src->end() && it->is_number_integer()) {
      c.bos_token_id = it->get<std::int64_t>();
      break;
    }
  }

  // Tensor names: multimodal Gemma 3 checkpoints nest the decoder.
  auto has_prefix = [&](std::string_view p) {
    return std::any_of(tensor_names.begin(), tensor_names.end(), [&](const std::string& n) { return StartsWith(n, p); });
  };
  if (has_prefix("model.language_model.")) {
    c.prefix = "model.language_model.";
  } else if (has_prefix("language_model.model.")) {
    c.prefix = "language_model.model.";
    c.lm_head = "language_model.lm_head.weight";
  }
  if (c.tie_word_embeddings) c.lm_head.clear();
  return c;
}

Result<ComputeDType> ParseComputeDType(std::string_view text) {
  if (text == "auto" || text.empty()) return ComputeDType::kAuto;
  if (text == "f32" || text == "float32") return ComputeDType::kF32;
  if (text == "bf16" || text == "bfloat16") return ComputeDType::kBF16;
  return MakeError(Errc::kInvalidArgument, "--dtype must be auto, f32 or bf16, not '" + std::string(text) + "'");
}

Status Validate(const SamplingOptions& s) {
  if (!(s.temperature >= 0)) return MakeError(Errc::kInvalidArgument, "--temperature must be 0 (greedy) or more");
  if (s.top_k < 0) return MakeError(Errc::kInvalidArgument, "--top-k must be 0 (off) or more");
  if (!(s.top_p > 0 && s.top_p <= 1)) return MakeError(Errc::kInvalidArgument, "--top-p must be in (0, 1]");
  return OkStatus();
}

bool IsDecoderTensor(const ModelConfig& c, std::string_view name) {
  return StartsWith(name, c.prefix) || (!c.lm_head.empty() && name == c.lm_head);
}

}  // namespace coldstart::runtime
