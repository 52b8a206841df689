// config.json of every supported family in both forms, and malformed configs: errors name the
// field, unsupported architectures list the supported ones. No libtorch.
#include "coldstart/runtime/config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

namespace coldstart::runtime {
namespace {

using json = nlohmann::json;

json Gemma3Current() {
  return json::parse(R"({
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "hidden_size": 640,
    "intermediate_size": 2048, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 1,
    "head_dim": 256, "vocab_size": 262144, "query_pre_attn_scalar": 256, "sliding_window": 512,
    "layer_types": ["sliding_attention","sliding_attention","sliding_attention","sliding_attention","sliding_attention","full_attention"],
    "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
    "eos_token_id": [1, 106], "bos_token_id": 2, "dtype": "bfloat16"})");
}

TEST(ModelConfig, Gemma3CurrentForm) {
  auto c = ParseModelConfig(Gemma3Current().dump());
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  EXPECT_EQ(c->family, Family::kGemma3);
  EXPECT_TRUE(c->gemma_norm && c->qk_norm && c->sandwich_norm && c->scale_embeddings && c->gelu_tanh_mlp);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_TRUE(c->lm_head.empty());
  EXPECT_EQ(c->prefix, "model.");
  EXPECT_FALSE(c->attn_logit_softcapping);
  EXPECT_EQ(c->sliding, (std::vector<bool>{true, true, true, true, true, false}));
  EXPECT_EQ(c->sliding_window, 512);
  EXPECT_EQ(c->rope_global.type, RopeConfig::Type::kLinear);
  EXPECT_DOUBLE_EQ(c->rope_global.factor, 8.0);
  EXPECT_DOUBLE_EQ(c->rope_global.theta, 1e6);
  EXPECT_EQ(c->rope_local.type, RopeConfig::Type::kDefault);
  EXPECT_DOUBLE_EQ(c->rope_local.theta, 1e4);
  EXPECT_DOUBLE_EQ(c->attention_scale, 1.0 / 16);
  EXPECT_EQ(c->eos_token_ids, (std::vector<std::int64_t>{1, 106}));
  EXPECT_EQ(c->torch_dtype, "bfloat16");
}

TEST(ModelConfig, Gemma3OlderFormGivesTheSameModel) {
  json j = Gemma3Current();
  j.erase("layer_types");
  j.erase("rope_parameters");
  j.erase("dtype");
  j["sliding_window_pattern"] = 6;
  j["rope_theta"] = 1000000.0;
  j["rope_local_base_freq"] = 10000.0;
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 8.0}};
  j["torch_dtype"] = "bfloat16";
  auto c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  EXPECT_EQ(c->sliding, (std::vector<bool>{true, true, true, true, true, false}));
  // Linear scaling applies to the global layers only.
  EXPECT_EQ(c->rope_global.type, RopeConfig::Type::kLinear);
  EXPECT_EQ(c->rope_local.type, RopeConfig::Type::kDefault);
  EXPECT_DOUBLE_EQ(c->rope_local.theta, 1e4);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
}

TEST(ModelConfig, Gemma3MultimodalUsesTextConfigDefaultsAndPrefixes) {
  // As google/gemma-3-4b-it ships it: the text_config leaves heads, head_dim, vocab and the rope
  // bases to Gemma3TextConfig's defaults.
  json j = json::parse(R"({"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024}, "eos_token_id": [1, 106]})");
  auto c = ParseModelConfig(j.dump(), {"language_model.model.embed_tokens.weight", "vision_tower.x"});
  ASSERT_TRUE(c.ok()) << c.error().ToString();
  EXPECT_EQ(c->num_heads, 8);
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_EQ(c->head_dim, 256);
  EXPECT_EQ(c->vocab_size, 262208);
  EXPECT_DOUBLE_EQ(c->rope_global.theta, 1e6);
  EXPECT_DOUBLE_EQ(c->rope_local.theta, 1e4);
  EXPECT_EQ(c->prefix, "language_model.model.");
  EXPECT_TRUE(IsDecoderTensor(*c, "language_model.model.layers.3.mlp.up_proj.weight"));
  EXPECT_FALSE(IsDecoderTensor(*c, "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"));
  EXPECT_FALSE(IsDecoderTensor(*c, "multi_modal_projector.mm_input_projection_weight"));
  EXPECT_EQ(c->sliding[5], false);
  EXPECT_EQ(c->sliding[4], true);
  auto v5 = ParseModelConfig(j.dump(), {"model.language_model.embed_tokens.weight"});
  ASSERT_TRUE(v5.ok());
  EXPECT_EQ(v5->prefix, "model.language_model.");
}

TEST(ModelConfig, Gemma2Llama3AndQwen2) {
  auto g2 = ParseModelConfig(R"({"model_type": "gemma2", "hidden_size": 64, "num_hidden_layers": 4,
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 100,
    "intermediate_size": 128, "query_pre_attn_scalar": 32, "sliding_window": 8,
    "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0})");
  ASSERT_TRUE(g2.ok()) << g2.error().ToString();
  EXPECT_EQ(g2->sliding, (std::vector<bool>{true, false, true, false}));
  EXPECT_FALSE(g2->qk_norm);
  EXPECT_DOUBLE_EQ(*g2->attn_logit_softcapping, 50.0);
  EXPECT_DOUBLE_EQ(*g2->final_logit_softcapping, 30.0);
  // Gemma 3 ignores attn_logit_softcapping.
  json g3 = Gemma3Current();
  g3["attn_logit_softcapping"] = 50.0;
  EXPECT_FALSE(ParseModelConfig(g3.dump())->attn_logit_softcapping);

  const char* llama = R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "intermediate_size": 128,
    "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, "tie_word_embeddings": false})";
  auto l = ParseModelConfig(llama);
  ASSERT_TRUE(l.ok()) << l.error().ToString();
  EXPECT_EQ(l->head_dim, 16);
  EXPECT_EQ(l->rope_global.type, RopeConfig::Type::kLlama3);
  EXPECT_DOUBLE_EQ(l->rope_global.theta, 500000.0);
  EXPECT_EQ(l->lm_head, "lm_head.weight");
  EXPECT_FALSE(l->gemma_norm || l->scale_embeddings || l->gelu_tanh_mlp || l->attention_bias);
  EXPECT_DOUBLE_EQ(l->attention_scale, 0.25);

  auto q = ParseModelConfig(R"({"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "intermediate_size": 128,
    "tie_word_embeddings": true, "use_sliding_window": false, "sliding_window": 4096})");
  ASSERT_TRUE(q.ok()) << q.error().ToString();
  EXPECT_TRUE(q->attention_bias);
  EXPECT_FALSE(q->o_bias);
  EXPECT_EQ(q->sliding, (std::vector<bool>{false, false}));
  EXPECT_EQ(q->sliding_window, 0);
}

TEST(ModelConfig, UnsupportedArchitectureListsTheSupportedOnes) {
  auto c = ParseModelConfig(R"({"model_type": "mistral", "architectures": ["MistralForCausalLM"]})");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, Errc::kInvalidArgument);
  for (const char* s : {"mistral", "gemma3_text", "gemma2", "llama", "qwen2"})
    EXPECT_NE(c.error().message.find(s), std::string::npos) << c.error().message;
  auto yarn = ParseModelConfig(R"({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "vocab_size": 100, "intermediate_size": 128,
    "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})");
  ASSERT_FALSE(yarn.ok());
  EXPECT_NE(yarn.error().message.find("yarn"), std::string::npos);
}

TEST(ModelConfig, MalformedFieldsAreNamed) {
  struct Case {
    const char* key;
    json value;
  };
  const std::vector<Case> cases = {
      {"hidden_size", "640"},  {"hidden_size", -1},        {"num_key_value_heads", 3},
      {"head_dim", 255},       {"layer_types", json::array({"full_attention"})},
      {"rms_norm_eps", 0},     {"tie_word_embeddings", 1}, {"eos_token_id", "x"},
      {"query_pre_attn_scalar", -2},
  };
  for (const auto& k : cases) {
    json j = Gemma3Current();
    j[k.key] = k.value;
    auto c = ParseModelConfig(j.dump());
    ASSERT_FALSE(c.ok()) << k.key << " = " << k.value.dump();
    EXPECT_NE(c.error().message.find(k.key), std::string::npos) << c.error().message;
  }
  EXPECT_EQ(ParseModelConfig("{").error().code, Errc::kFormat);
  EXPECT_EQ(ParseModelConfig("[]").error().code, Errc::kFormat);
  json missing = json::parse(R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128})");
  EXPECT_NE(ParseModelConfig(missing.dump()).error().message.find("num_hidden_layers"), std::string::npos);
}

// Random mutations of a valid config from a fixed seed: parsed or refused, never a crash.
TEST(ModelConfig, MutatedConfigsNeverCrash) {
  std::mt19937 rng(20261203);
  const std::string base = Gemma3Current().dump();
  for (int i = 0; i < 3000; ++i) {
    std::string s = base;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const std::size_t pos = rng() % s.size();
      switch (rng() % 3) {
        case 0: s[pos] = static_cast<char>(rng() % 128); break;
        case 1: s.erase(pos, 1 + rng() % 8); break;
        default: s.insert(pos, 1, "0123456789-.e\"[]{},:"[rng() % 20]); break;
      }
    }
    auto c = ParseModelConfig(s);
    if (c.ok()) {
      EXPECT_GT(c->num_layers, 0);
      EXPECT_EQ(static_cast<std::int64_t>(c->sliding.size()), c->num_layers);
      EXPECT_EQ(c->num_heads % c->num_kv_heads, 0);
    }
  }
}

TEST(ModelConfig, ComputeDType) {
  EXPECT_EQ(*ParseComputeDType("auto"), ComputeDType::kAuto);
  EXPECT_EQ(*ParseComputeDType("f32"), ComputeDType::kF32);
  EXPECT_EQ(*ParseComputeDType("bf16"), ComputeDType::kBF16);
  EXPECT_EQ(ParseComputeDType("fp8").error().code, Errc::kInvalidArgument);
}

}  // namespace
}  // namespace coldstart::runtime
