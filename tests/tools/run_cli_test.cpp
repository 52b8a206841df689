// `coldstart run` and `coldstart serve` as a user meets them, on the transformers fixtures
// (tests/runtime/fixtures/models): the tokens transformers chose, the JSON and its Timeline, the
// same from gs:// through the fake GCS server and its disk cache, the HTTP API, and the errors.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "../common/exec.h"
#include "../common/temp_dir.h"
#include "coldstart/fake_gcs/server.h"
#include "coldstart/runtime/tokenizer.h"

namespace {

using coldstart::testing::TempDir;
using json = nlohmann::json;
namespace fs = std::filesystem;

const std::string kModels = std::string(COLDSTART_SOURCE_DIR) + "/tests/runtime/fixtures/models";
const std::string kTokenizers = std::string(COLDSTART_SOURCE_DIR) + "/tests/runtime/fixtures/tokenizers";

using coldstart::testing::ReadFile;

using coldstart::testing::Exec;
using coldstart::testing::Run;

std::string IdList(const json& ids) {
  std::string s;
  for (const auto& v : ids) s += (s.empty() ? "" : ",") + std::to_string(v.get<int>());
  return s;
}

// A copy of a fixture model (symlinks resolved) plus, optionally, a tokenizer's files.
void CopyModel(const std::string& from, const std::string& to, const std::string& tokenizer = "") {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from))
    if (e.path().filename() != "expected.json") fs::copy_file(fs::canonical(e.path()), fs::path(to) / e.path().filename());
  if (!tokenizer.empty())
    for (const auto& e : fs::directory_iterator(tokenizer))
      if (e.path().filename() != "config.json" && e.path().filename() != "generation_config.json")
        fs::copy_file(e.path(), fs::path(to) / e.path().filename(), fs::copy_options::overwrite_existing);
}

TEST(RunCli, GreedyTokensAndJsonMatchTransformers) {
  for (const std::string name : {"gemma3", "gemma2", "llama3", "qwen2", "gemma3_mm"}) {
    SCOPED_TRACE(name);
    const auto expected = json::parse(ReadFile(kModels + "/" + name + "/expected.json"));
    for (const std::string dtype : {"f32", "bf16"}) {
      auto r = Exec("run " + kModels + "/" + name + " --prompt-ids " + IdList(expected["prompt_ids"]) +
                    " --max-new-tokens 8 --ignore-eos --json --dtype " + dtype);
      ASSERT_EQ(r.code, 0) << r.err;
      auto j = json::parse(r.out);
      EXPECT_EQ(j["output_ids"], expected[dtype]["greedy_ids"]) << dtype;
      EXPECT_EQ(j["prompt_ids"], expected["prompt_ids"]);
      ASSERT_EQ(j["top_logits"].size(), 10u);
      const int top = j["top_logits"][0][0].get<int>();
      EXPECT_EQ(top, expected[dtype]["greedy_ids"][0].get<int>());
      EXPECT_NEAR(j["top_logits"][0][1].get<double>(), expected[dtype]["step_logits"][0][top].get<double>(),
                  dtype == "f32" ? 2e-4 : 0.5);
      EXPECT_TRUE(j["text"].is_null()) << "the fixtures have no tokenizer";
      // The Timeline runs from process start: each layer is computed after it arrived, the
      // first token after every layer, the last after the first.
      const auto& t = j["timeline"];
      ASSERT_EQ(t["layers"].size(), 3u);
      double prev_computed = 0;
      for (const auto& l : t["layers"]) {
        EXPECT_GT(l["ready"].get<double>(), 0);
        EXPECT_GE(l["computed"].get<double>(), l["ready"].get<double>());
        EXPECT_GE(l["computed"].get<double>(), prev_computed);
        prev_computed = l["computed"].get<double>();
      }
      EXPECT_GE(t["first_token"].get<double>(), prev_computed);
      EXPECT_GE(t["last_token"].get<double>(), t["first_token"].get<double>());
      EXPECT_GT(t["libtorch_loaded"].get<double>(), 0);
      EXPECT_GT(t["first_byte"].get<double>(), 0);
      EXPECT_GT(j["tokens_per_s"].get<double>(), 0);
      EXPECT_EQ(j["stop_reason"], "length");
    }
  }
}

TEST(RunCli, PromptTextGoesThroughTheModelsTokenizerAndStreamsText) {
  TempDir d;
  CopyModel(kModels + "/gemma3", d / "m", kTokenizers + "/gemma");
  // A prompt whose ids fit the tiny model's 512-token vocabulary.
  coldstart::runtime::ModelTextFiles files;
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "config.json"}) files[f] = ReadFile(d / "m" + "/" + f);
  auto tok = coldstart::runtime::LoadTokenizer(files);
  ASSERT_TRUE(tok.ok()) << tok.error().ToString();
  std::string prompt;
  std::vector<std::int32_t> ids;
  for (const char* candidate : {"in b c e", "in b c", "in"}) {
    auto e = (*tok)->Encode(candidate, true);
    ASSERT_TRUE(e.ok());
    if (std::all_of(e->begin(), e->end(), [](std::int32_t id) { return id < 512; })) {
      prompt = candidate;
      ids = *e;
      break;
    }
  }
  ASSERT_FALSE(prompt.empty()) << "no candidate prompt fits the vocabulary";
  auto r = Exec("run " + (d / "m") + " --prompt '" + prompt + "' --max-new-tokens 6 --ignore-eos --json");
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = json::parse(r.out);
  EXPECT_EQ(j["prompt_ids"].get<std::vector<std::int32_t>>(), ids);
  ASSERT_TRUE(j["text"].is_string());
  auto output = j["output_ids"].get<std::vector<std::int32_t>>();
  std::vector<std::int32_t> known;
  for (auto id : output)
    if (static_cast<std::size_t>(id) < (*tok)->vocab_size()) known.push_back(id);
  EXPECT_EQ(j["text"].get<std::string>(), *(*tok)->Decode(known));
  // Without --json the text is what is printed (streamed), with a summary on stderr.
  auto plain = Exec("run " + (d / "m") + " --prompt '" + prompt + "' --max-new-tokens 6 --ignore-eos");
  ASSERT_EQ(plain.code, 0) << plain.err;
  EXPECT_EQ(plain.out, j["text"].get<std::string>() + "\n");
  EXPECT_NE(plain.err.find("first token"), std::string::npos) << plain.err;
  // The chat template goes in front of the prompt.
  auto chat = Exec("run " + (d / "m") + " --prompt '" + prompt + "' --chat --max-new-tokens 2 --json");
  if (chat.code == 0) {
    auto cj = json::parse(chat.out);
    EXPECT_GT(cj["prompt_ids"].size(), ids.size());
  } else {
    // The template's turn markers may lie outside the tiny model's vocabulary: a clear error.
    EXPECT_NE(chat.err.find("outside the vocabulary"), std::string::npos) << chat.err;
  }
}

TEST(RunCli, SamplingIsReproducibleWithASeed) {
  const std::string m = kModels + "/llama3";
  const std::string args = "run " + m + " --prompt-ids 1,5,9 --max-new-tokens 12 --ignore-eos --json --temperature 1.5 --top-k 50 --top-p 0.95";
  auto a = Exec(args + " --seed 7"), b = Exec(args + " --seed 7"), c = Exec(args + " --seed 8");
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_EQ(json::parse(a.out)["output_ids"], json::parse(b.out)["output_ids"]);
  EXPECT_NE(json::parse(a.out)["output_ids"], json::parse(c.out)["output_ids"]);
}

TEST(RunCli, ErrorsAreOneLineWithTheRightExitCode) {
  TempDir d;
  // No config.json.
  CopyModel(kModels + "/llama2", d / "noconf");
  fs::remove(d / "noconf" + "/config.json");
  auto r = Exec("run " + (d / "noconf") + " --prompt-ids 1,2");
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_NE(r.err.find("no config.json"), std::string::npos) << r.err;
  // An architecture we do not run.
  CopyModel(kModels + "/llama2", d / "mistral");
  auto cfg = json::parse(ReadFile(d / "mistral" + "/config.json"));
  cfg["model_type"] = "mistral";
  cfg["architectures"] = {"MistralForCausalLM"};
  coldstart::testing::WriteFile(d / "mistral" + "/config.json", cfg.dump());
  r = Exec("run " + (d / "mistral") + " --prompt-ids 1,2");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("supported: gemma3_text"), std::string::npos) << r.err;
  // --prompt without a tokenizer; both or neither prompt flag; bad ids.
  r = Exec("run " + kModels + "/llama2 --prompt hello");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("tokenizer"), std::string::npos) << r.err;
  EXPECT_EQ(Exec("run " + kModels + "/llama2").code, 2);
  EXPECT_EQ(Exec("run " + kModels + "/llama2 --prompt x --prompt-ids 1").code, 2);
  r = Exec("run " + kModels + "/llama2 --prompt-ids 1,x");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("'x' is not a token id"), std::string::npos) << r.err;
  r = Exec("run " + kModels + "/llama2 --prompt-ids 1,100000");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("outside the vocabulary"), std::string::npos) << r.err;
  r = Exec("run " + kModels + "/llama2 --prompt-ids 1 --dtype f16");
  EXPECT_EQ(r.code, 2);
  // No GPU here: a clear error, not a crash.
  r = Exec("run " + kModels + "/llama2 --prompt-ids 1 --device cuda");
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  // A shape that does not match config.json.
  CopyModel(kModels + "/llama2", d / "wrong");
  cfg = json::parse(ReadFile(d / "wrong" + "/config.json"));
  cfg["intermediate_size"] = cfg["intermediate_size"].get<int>() + 1;
  coldstart::testing::WriteFile(d / "wrong" + "/config.json", cfg.dump());
  r = Exec("run " + (d / "wrong") + " --prompt-ids 1,2");
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_NE(r.err.find("has shape"), std::string::npos) << r.err;
}

TEST(RunCli, RemoteSourceThroughTheDiskCache) {
  TempDir root, cache;
  CopyModel(kModels + "/qwen2", root / "bkt/qwen2");
  coldstart::fakegcs::ServerOptions o;
  o.root = root.path();
  auto server = coldstart::fakegcs::Server::Start(o);
  ASSERT_TRUE(server.ok()) << server.error().message;
  const std::string env = "STORAGE_EMULATOR_HOST=" + (*server)->endpoint() + " COLDSTART_METADATA=off";
  const auto expected = json::parse(ReadFile(kModels + "/qwen2/expected.json"));
  for (int pass = 0; pass < 2; ++pass) {
    auto r = Exec("run gs://bkt/qwen2 --cache-dir " + cache.path() + " --prompt-ids " + IdList(expected["prompt_ids"]) +
                      " --max-new-tokens 8 --ignore-eos --json",
                  env);
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(json::parse(r.out)["output_ids"], expected["f32"]["greedy_ids"]) << "pass " << pass;
  }
  // The second run took the weights from the cache: one fetch of the shard in all.
  EXPECT_EQ((*server)->stats().media_requests_per_object["bkt/qwen2/model.safetensors"], 1u);
}

// ---- serve ----

class Served {
 public:
  explicit Served(const std::string& args, const std::string& env = "") {
    err_path_ = dir_ / "err";
    pid_ = ::fork();
    if (pid_ == 0) {
      const std::string cmd = "exec env " + env + " " + COLDSTART_BIN + " serve " + args + " --port 0 2>" + err_path_;
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), nullptr);
      ::_exit(127);
    }
    for (int i = 0; i < 3000 && port_ == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      const std::string err = ReadFile(err_path_);
      const auto p = err.find("listening on http://127.0.0.1:");
      if (p != std::string::npos) port_ = std::atoi(err.c_str() + p + 30);
    }
  }
  ~Served() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  int port() const { return port_; }
  std::string err() const { return ReadFile(err_path_); }
  int Stop() {
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  int Wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    reaped_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  // Polls /health until 200; returns the statuses seen.
  std::vector<int> WaitHealthy() {
    std::vector<int> seen;
    httplib::Client c("127.0.0.1", port_);
    for (int i = 0; i < 2000; ++i) {
      auto r = c.Get("/health");
      if (r && (seen.empty() || seen.back() != r->status)) seen.push_back(r->status);
      if (r && r->status == 200) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return seen;
  }

 private:
  TempDir dir_;
  std::string err_path_;
  pid_t pid_ = -1;
  int port_ = 0;
  bool reaped_ = false;
};

TEST(ServeCli, HealthIs503WhileLoadingThenCompletionsMatchRun) {
  // A slow origin (40 KB/s per connection) keeps the model loading for a few seconds.
  TempDir root;
  CopyModel(kModels + "/gemma2", root / "bkt/g2");
  coldstart::fakegcs::ServerOptions o;
  o.root = root.path();
  o.rate_limit_bytes_per_s = 150e3;
  auto server = coldstart::fakegcs::Server::Start(o);
  ASSERT_TRUE(server.ok());
  Served s("gs://bkt/g2 --served-model-name g2", "STORAGE_EMULATOR_HOST=" + (*server)->endpoint() + " COLDSTART_METADATA=off");
  ASSERT_GT(s.port(), 0) << s.err();
  httplib::Client c("127.0.0.1", s.port());
  auto early = c.Post("/v1/completions", R"({"prompt": [2, 3]})", "application/json");
  ASSERT_TRUE(early);
  EXPECT_EQ(early->status, 503);
  auto seen = s.WaitHealthy();
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.front(), 503) << "health answered before the load started";
  EXPECT_EQ(seen.back(), 200) << s.err();

  const auto expected = json::parse(ReadFile(kModels + "/gemma2/expected.json"));
  json req{{"prompt", expected["prompt_ids"]}, {"max_tokens", 8}, {"temperature", 0}, {"ignore_eos", true}};
  auto r = c.Post("/v1/completions", req.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  auto j = json::parse(r->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["model"], "g2");
  EXPECT_EQ(j["choices"][0]["token_ids"], expected["f32"]["greedy_ids"]);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["completion_tokens"], 8);
  EXPECT_EQ(j["usage"]["prompt_tokens"], expected["prompt_ids"].size());

  // SSE: one event per token, then the finish reason, then [DONE].
  req["stream"] = true;
  auto st = c.Post("/v1/completions", req.dump(), "application/json");
  ASSERT_TRUE(st);
  ASSERT_EQ(st->status, 200);
  EXPECT_NE(st->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  std::vector<int> tokens;
  std::vector<json> events;
  std::istringstream lines(st->body);
  std::string line;
  bool done = false;
  while (std::getline(lines, line)) {
    if (line.rfind("data: ", 0) != 0) continue;
    if (line == "data: [DONE]") {
      done = true;
      continue;
    }
    events.push_back(json::parse(line.substr(6)));
    for (const auto& t : events.back()["choices"][0].value("token_ids", json::array())) tokens.push_back(t.get<int>());
  }
  EXPECT_TRUE(done);
  EXPECT_EQ(json(tokens), expected["f32"]["greedy_ids"]);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["choices"][0]["finish_reason"], "length");

  // Bad requests are 400 with a reason; the models list names the model.
  for (const char* bad : {"{", R"({"max_tokens": 3})", R"({"prompt": [1, "x"]})", R"({"prompt": [1], "temperature": "hot"})",
                          R"({"prompt": [1], "n": 2})", R"({"prompt": [1, 99999]})", R"({"prompt": "hi"})"}) {
    auto b = c.Post("/v1/completions", bad, "application/json");
    ASSERT_TRUE(b);
    EXPECT_EQ(b->status, 400) << bad << " -> " << b->body;
    EXPECT_TRUE(json::parse(b->body)["error"]["message"].is_string()) << b->body;
  }
  auto models = c.Get("/v1/models");
  ASSERT_TRUE(models);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "g2");
  EXPECT_EQ(s.Stop(), 0) << s.err();
}

TEST(ServeCli, AModelThatCannotLoadEndsTheProcessWithItsExitCode) {
  TempDir d;
  CopyModel(kModels + "/llama2", d / "m");
  fs::remove(d / "m" + "/config.json");
  Served s(d / "m");
  // The process ends by itself (Wait reaps it without signalling) with kNotFound's code.
  EXPECT_EQ(s.Wait(), 3) << s.err();
  EXPECT_NE(s.err().find("no config.json"), std::string::npos) << s.err();
}

}  // namespace
