// The decoder models against transformers' own outputs on tiny random checkpoints
// (tests/runtime/fixtures/models, made by make_model_fixtures.py with transformers 5.24.0 and
// torch 2.15.0, eager attention): prompt logits, greedy tokens and each step's logits, in f32
// and bf16, for every family and both config forms; KV-cache decoding against recompute; the
// same through the stand-in device; and each known trap shown to change the logits.
#include "coldstart/runtime/model.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../common/temp_dir.h"
#include "coldstart/loader/remote_loader.h"
#include "coldstart/runtime/generator.h"
#include "coldstart/runtime/sampling.h"

namespace coldstart::runtime {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

const std::string kModels = std::string(COLDSTART_SOURCE_DIR) + "/tests/runtime/fixtures/models";

using coldstart::testing::ReadFile;

std::vector<std::string> FixtureNames() {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(kModels))
    if (e.is_directory() && fs::exists(e.path() / "expected.json")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::shared_ptr<loader::LoadHandle> StartLoad(const std::string& dir, loader::DeviceSpec device = {}) {
  auto layout = loader::OpenLocalModel(dir);
  EXPECT_TRUE(layout.ok()) << layout.error().ToString();
  loader::OpenedModel om;
  om.local = std::move(layout).value();
  loader::LoadOptions o;
  o.device = device;
  o.order = loader::LoadOrder::kLayer;
  auto h = loader::StartLoad(std::move(om), std::move(o));
  EXPECT_TRUE(h.ok()) << h.error().ToString();
  return h.ok() ? *h : nullptr;
}

ModelConfig ParseConfigOf(const std::string& dir, const loader::LoadHandle& h, json patch = json::object()) {
  json c = json::parse(ReadFile(dir + "/config.json"));
  c.merge_patch(patch);
  std::vector<std::string> names;
  for (const auto& t : h.layout().tensors) names.push_back(t.name);
  auto cfg = ParseModelConfig(c.dump(), names);
  EXPECT_TRUE(cfg.ok()) << cfg.error().ToString();
  return cfg.ok() ? *cfg : ModelConfig{};
}

at::Tensor Rows(const json& rows) {
  std::vector<float> flat;
  for (const auto& r : rows)
    for (const auto& v : r) flat.push_back(v.get<float>());
  return at::tensor(flat).view({static_cast<std::int64_t>(rows.size()), -1});
}

double MaxDiff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

struct Case {
  std::string name;
  bool bf16;
};

class FixtureTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    dir_ = kModels + "/" + GetParam().name;
    expected_ = json::parse(ReadFile(dir_ + "/expected.json"));
    ref_ = expected_[GetParam().bf16 ? "bf16" : "f32"];
    // f32: transformers and libtorch sum in different orders (about 1e-6 relative); bf16: one
    // rounding of 2^-8 relative per op, compounded over the layers.
    tol_ = GetParam().bf16 ? 0.5 : 2e-4;
  }
  std::unique_ptr<Model> Make(json patch = json::object(), loader::DeviceSpec device = {}) {
    load_ = StartLoad(dir_, device);
    ModelOptions mo;
    mo.dtype = GetParam().bf16 ? ComputeDType::kBF16 : ComputeDType::kF32;
    return Model::FromLoad(load_, ParseConfigOf(dir_, *load_, std::move(patch)), mo);
  }
  std::vector<std::int64_t> Prompt() const { return expected_["prompt_ids"].get<std::vector<std::int64_t>>(); }

  std::string dir_;
  json expected_, ref_;
  double tol_ = 0;
  std::shared_ptr<loader::LoadHandle> load_;
};

TEST_P(FixtureTest, PromptLogitsMatchTransformers) {
  auto m = Make();
  const auto prompt = Prompt();
  KVCache cache = m->NewCache(64);
  at::Tensor logits = m->Forward(at::tensor(prompt), cache, static_cast<std::int64_t>(prompt.size()));
  at::Tensor want = Rows(ref_["prompt_logits"]);
  ASSERT_EQ(logits.sizes(), want.sizes());
  EXPECT_LT(MaxDiff(logits, want), tol_) << m->Describe();
  EXPECT_EQ(cache.length(), static_cast<std::int64_t>(prompt.size()));
}

// Gemma scales embeddings by sqrt(hidden_size) rounded to the dtype: in bf16 sqrt(80) = 8.944
// is 8.9375, a difference the logits' bf16 tolerance alone would not catch.
TEST_P(FixtureTest, EmbeddingScaleIsRoundedLikeTransformers) {
  auto m = Make();
  KVCache cache = m->NewCache(8);
  m->Forward(at::tensor(std::vector<std::int64_t>{2}), cache, 1);
  if (!expected_.contains("embed_scale")) {
    EXPECT_EQ(m->embed_scale(), 1.0) << "Llama and Qwen2 do not scale embeddings";
    return;
  }
  EXPECT_DOUBLE_EQ(m->embed_scale(), expected_["embed_scale"][GetParam().bf16 ? "bf16" : "f32"].get<double>());
}

TEST_P(FixtureTest, GreedyDecodingWithKVCacheMatchesTransformers) {
  auto m = Make();
  auto ids = Prompt();
  KVCache cache = m->NewCache(64);
  at::Tensor logits = m->Forward(at::tensor(ids), cache, 1);
  const auto want_ids = ref_["greedy_ids"].get<std::vector<std::int64_t>>();
  at::Tensor want_steps = Rows(ref_["step_logits"]);
  std::vector<std::int64_t> got;
  for (std::size_t step = 0; step < want_ids.size(); ++step) {
    EXPECT_LT(MaxDiff(logits[0], want_steps[step]), tol_) << "step " << step;
    const std::int64_t tok = logits[0].argmax().item<std::int64_t>();
    got.push_back(tok);
    ids.push_back(tok);
    if (step + 1 < want_ids.size()) logits = m->Forward(at::tensor(std::vector<std::int64_t>{tok}), cache, 1);
  }
  EXPECT_EQ(got, want_ids);
  if (GetParam().bf16) return;
  // The cache gives what a full recompute of the whole sequence gives.
  KVCache fresh = m->NewCache(64);
  ids.pop_back();
  at::Tensor full = m->Forward(at::tensor(ids), fresh, static_cast<std::int64_t>(ids.size()));
  EXPECT_LT(MaxDiff(full[full.size(0) - 1], logits[0]), 1e-4);
}

std::vector<Case> AllCases() {
  std::vector<Case> v;
  for (const auto& n : FixtureNames()) {
    v.push_back({n, false});
    v.push_back({n, true});
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureTest, ::testing::ValuesIn(AllCases()),
                         [](const auto& info) { return info.param.name + (info.param.bf16 ? "_bf16" : "_f32"); });

// The stand-in device (a device load whose memory the host can read): the model waits on the
// load's per-layer readiness of device copies and gives the same logits.
TEST(ModelDevice, SimDeviceGivesTheSameLogits) {
  const std::string dir = kModels + "/gemma3";
  auto expected = json::parse(ReadFile(dir + "/expected.json"));
  auto load = StartLoad(dir, loader::DeviceSpec{loader::DeviceKind::kSim, 0});
  ASSERT_TRUE(load);
  ModelOptions mo;
  mo.dtype = ComputeDType::kF32;
  std::vector<int> ready, computed;
  mo.on_layer = [&](int layer, bool done) { (done ? computed : ready).push_back(layer); };
  auto m = Model::FromLoad(load, ParseConfigOf(dir, *load), mo);
  auto prompt = expected["prompt_ids"].get<std::vector<std::int64_t>>();
  KVCache cache = m->NewCache(32);
  at::Tensor logits = m->Forward(at::tensor(prompt), cache, static_cast<std::int64_t>(prompt.size()));
  EXPECT_LT(MaxDiff(logits, Rows(expected["f32"]["prompt_logits"])), 2e-4);
  // Each layer is waited for, then computed, in order, once.
  EXPECT_EQ(ready, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(computed, (std::vector<int>{0, 1, 2}));
}

// Each known trap, undone through the config, moves the logits well beyond the tolerance: the
// fixtures would catch an implementation that got it wrong.
struct Trap {
  const char* fixture;
  const char* what;
  json patch;
};

TEST(ModelTraps, EachTrapChangesTheLogits) {
  const std::vector<Trap> traps = {
      {"gemma3", "sliding window ignored", json{{"sliding_window", 4096}}},
      {"gemma3", "query_pre_attn_scalar taken as head_dim", json{{"query_pre_attn_scalar", 24}}},
      {"gemma3", "linear rope scaling of global layers ignored",
       json{{"rope_parameters", {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1000000.0}}}}}}},
      {"gemma3", "one rope theta for every layer type",
       json{{"rope_parameters", {{"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 1000000.0}}}}}}},
      {"gemma2", "attention logit softcapping ignored", json{{"attn_logit_softcapping", nullptr}}},
      {"gemma2", "final logit softcapping ignored", json{{"final_logit_softcapping", nullptr}}},
      {"llama3", "llama3 rope scaling ignored",
       json{{"rope_parameters", {{"rope_type", "default"}}}, {"rope_scaling", nullptr}}},
  };
  for (const auto& t : traps) {
    SCOPED_TRACE(std::string(t.fixture) + ": " + t.what);
    const std::string dir = kModels + "/" + t.fixture;
    auto expected = json::parse(ReadFile(dir + "/expected.json"));
    auto load = StartLoad(dir);
    ModelOptions mo;
    mo.dtype = ComputeDType::kF32;
    auto m = Model::FromLoad(load, ParseConfigOf(dir, *load, t.patch), mo);
    auto prompt = expected["prompt_ids"].get<std::vector<std::int64_t>>();
    KVCache cache = m->NewCache(32);
    // All positions and the greedy continuation (the sliding window only bites past 4 tokens).
    auto ids = prompt;
    for (auto id : expected["f32"]["greedy_ids"]) ids.push_back(id.get<std::int64_t>());
    ids.pop_back();
    at::Tensor logits = m->Forward(at::tensor(ids), cache, static_cast<std::int64_t>(ids.size()));
    at::Tensor want = at::cat({Rows(expected["f32"]["prompt_logits"]), Rows(expected["f32"]["step_logits"]).narrow(0, 1, ids.size() - prompt.size())});
    EXPECT_GT(MaxDiff(logits, want), 1e-2);
  }
}

TEST(ModelChecks, AWrongCheckpointIsAnErrorBeforeAnyCompute) {
  const std::string dir = kModels + "/llama2";
  auto load = StartLoad(dir);
  ModelConfig c = ParseConfigOf(dir, *load);
  c.intermediate_size += 1;
  try {
    Model::FromLoad(load, c);
    FAIL() << "no error";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.error().code, Errc::kFormat);
    EXPECT_NE(std::string(e.what()).find("mlp.gate_proj.weight has shape"), std::string::npos) << e.what();
  }
  ModelConfig q = ParseConfigOf(dir, *load);
  q.prefix = "transformer.";
  try {
    Model::FromLoad(load, q);
    FAIL() << "no error";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.error().code, Errc::kNotFound);
  }
}

TEST(Generator, GreedyGenerationStopsAtEosUnlessIgnored) {
  const std::string dir = kModels + "/qwen2";
  auto expected = json::parse(ReadFile(dir + "/expected.json"));
  const auto want = expected["f32"]["greedy_ids"].get<std::vector<std::int32_t>>();
  auto prompt = expected["prompt_ids"].get<std::vector<std::int32_t>>();
  auto load = StartLoad(dir);
  auto gen = MakeGenerator(load, ParseConfigOf(dir, *load), ModelOptions{ComputeDType::kF32, {}, {}});
  ASSERT_TRUE(gen.ok()) << gen.error().ToString();
  GenerateOptions o;
  o.max_new_tokens = static_cast<std::int64_t>(want.size());
  o.eos_ids = {want[2]};  // pretend the third greedy token ends the sequence
  auto r = (*gen)->Generate(prompt, o);
  ASSERT_TRUE(r.ok()) << r.error().ToString();
  EXPECT_EQ(r->stop_reason, "eos");
  EXPECT_EQ(r->output_ids, std::vector<std::int32_t>(want.begin(), want.begin() + 3));
  o.ignore_eos = true;
  std::vector<std::int32_t> streamed;
  o.on_token = [&](std::int32_t id) {
    streamed.push_back(id);
    return true;
  };
  r = (*gen)->Generate(prompt, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stop_reason, "length");
  EXPECT_EQ(r->output_ids, want);
  EXPECT_EQ(streamed, want);
  ASSERT_EQ(r->top_logits.size(), 10u);
  EXPECT_EQ(r->top_logits[0].first, want[0]);
  EXPECT_NEAR(r->top_logits[0].second, expected["f32"]["step_logits"][0][want[0]].get<double>(), 2e-4);
  for (std::size_t i = 1; i < r->top_logits.size(); ++i) EXPECT_GE(r->top_logits[i - 1].second, r->top_logits[i].second);
  // on_token false stops at once.
  o.on_token = [](std::int32_t) { return false; };
  r = (*gen)->Generate(prompt, o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stop_reason, "stopped");
  EXPECT_EQ(r->output_ids.size(), 1u);
  // Bad requests are errors, not crashes.
  std::vector<std::int32_t> bad = {1, 999999};
  EXPECT_EQ((*gen)->Generate(bad, o).error().code, Errc::kInvalidArgument);
  EXPECT_EQ((*gen)->Generate({}, o).error().code, Errc::kInvalidArgument);
  GenerateOptions too_long = o;
  too_long.max_new_tokens = 1 << 20;
  EXPECT_EQ((*gen)->Generate(prompt, too_long).error().code, Errc::kInvalidArgument);
}

TEST(Sampling, GreedyTopKAndTopPBehave) {
  at::Tensor logits = at::tensor(std::vector<float>{1.0f, 3.0f, 2.9f, -1.0f, 0.5f});
  at::Generator gen = at::detail::createCPUGenerator(7);
  SamplingOptions greedy;
  EXPECT_EQ(SampleToken(logits, greedy, gen), 1);
  SamplingOptions top1{1.0, 1, 1.0, 0};
  for (int i = 0; i < 20; ++i) EXPECT_EQ(SampleToken(logits, top1, gen), 1);
  // top_k 2: only ids 1 and 2, both drawn.
  SamplingOptions top2{1.0, 2, 1.0, 0};
  std::vector<int> counts(5);
  for (int i = 0; i < 400; ++i) ++counts[SampleToken(logits, top2, gen)];
  EXPECT_EQ(counts[0] + counts[3] + counts[4], 0);
  EXPECT_GT(counts[1], 100);
  EXPECT_GT(counts[2], 100);
  // top_p 0.5: id 1 alone holds ~0.45 of the mass, so ids 1 and 2 make the nucleus.
  SamplingOptions nucleus{1.0, 0, 0.5, 0};
  counts.assign(5, 0);
  for (int i = 0; i < 400; ++i) ++counts[SampleToken(logits, nucleus, gen)];
  EXPECT_EQ(counts[0] + counts[3] + counts[4], 0);
  EXPECT_GT(counts[2], 100);
  // Temperature 1 over everything: frequencies follow softmax (chi-square-free check: within
  // 5 standard deviations of the expected count for 4000 draws).
  SamplingOptions plain{1.0, 0, 1.0, 0};
  counts.assign(5, 0);
  const int n = 4000;
  for (int i = 0; i < n; ++i) ++counts[SampleToken(logits, plain, gen)];
  at::Tensor p = at::softmax(logits, 0);
  for (int k = 0; k < 5; ++k) {
    const double e = n * p[k].item<double>();
    EXPECT_NEAR(counts[k], e, 5 * std::sqrt(e * (1 - p[k].item<double>())) + 1) << "id " << k;
  }
  // The same seed gives the same draws.
  at::Generator a = at::detail::createCPUGenerator(42), b = at::detail::createCPUGenerator(42);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(SampleToken(logits, plain, a), SampleToken(logits, plain, b));
}

}  // namespace
}  // namespace coldstart::runtime
