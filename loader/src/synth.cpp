#include "coldstart/loader/synth.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "coldstart/loader/model.h"
#include "coldstart/loader/safetensors.h"

namespace coldstart::loader {
namespace {

namespace fs = std::filesystem;

struct Tensor {
  TensorSpec spec;
  std::uint64_t nbytes;
  bool norm;  // RMSNorm weights: values near 1 instead of small noise
};

std::uint64_t SplitMix(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::uint64_t HashName(std::string_view s, std::uint64_t seed) {
  std::uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Fills BF16 values straight from random bits: sign, an exponent in [2^-8, 2^-5) and a random
// mantissa, i.e. |w| in ~[0.004, 0.03] like an initialised projection; norms are ~1.
void FillBf16(std::byte* out, std::size_t nbytes, std::uint64_t& state, bool norm) {
  std::size_t i = 0;
  auto* p = reinterpret_cast<std::uint16_t*>(out);
  std::size_t n = nbytes / 2;
  while (i < n) {
    std::uint64_t r = SplitMix(state);
    for (int k = 0; k < 4 && i < n; ++k, ++i) {
      std::uint16_t bits = static_cast<std::uint16_t>(r >> (16 * k));
      std::uint16_t sign = norm ? 0 : (bits & 0x8000);
      std::uint16_t exp = norm ? 127 : static_cast<std::uint16_t>(119 + ((bits >> 7) & 3));
      p[i] = static_cast<std::uint16_t>(sign | (exp << 7) | (bits & 0x7F));
    }
  }
}

Status WriteAll(int fd, const void* data, std::size_t len, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeSysError(errno == ENOSPC ? Errc::kResourceExhausted : Errc::kIo, path + ": write failed", errno);
    }
    p += n;
    len -= static_cast<std::size_t>(n);
  }
  return OkStatus();
}

// Writes `path` through a temporary name so a crash never leaves a half file under the name.
Status WriteFileAtomic(const std::string& path, const std::function<Status(int fd)>& body) {
  std::string tmp = path + ".tmp-synth";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return MakeSysError(Errc::kIo, tmp + ": cannot create", errno);
  Status st = body(fd);
  if (::close(fd) != 0 && st.ok()) st = MakeSysError(Errc::kIo, tmp + ": close failed", errno);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = MakeSysError(Errc::kIo, path + ": rename failed", errno);
  if (!st.ok()) ::unlink(tmp.c_str());
  return st;
}

std::vector<Tensor> MakeTensors(const SynthPreset& p, unsigned layers) {
  std::vector<Tensor> ts;
  auto add = [&](std::string name, std::vector<std::uint64_t> shape, bool norm) {
    std::uint64_t n = 2;
    for (auto d : shape) n *= d;
    ts.push_back({TensorSpec{std::move(name), DType::kBF16, std::move(shape)}, n, norm});
  };
  const std::uint64_t H = p.hidden, I = p.intermediate, D = p.head_dim;
  add("model.embed_tokens.weight", {p.vocab, H}, false);
  for (unsigned l = 0; l < layers; ++l) {
    std::string pre = "model.layers." + std::to_string(l) + ".";
    add(pre + "input_layernorm.weight", {H}, true);
    add(pre + "mlp.down_proj.weight", {H, I}, false);
    add(pre + "mlp.gate_proj.weight", {I, H}, false);
    add(pre + "mlp.up_proj.weight", {I, H}, false);
    add(pre + "post_attention_layernorm.weight", {H}, true);
    add(pre + "post_feedforward_layernorm.weight", {H}, true);
    add(pre + "pre_feedforward_layernorm.weight", {H}, true);
    add(pre + "self_attn.k_norm.weight", {D}, true);
    add(pre + "self_attn.k_proj.weight", {p.kv_heads * D, H}, false);
    add(pre + "self_attn.o_proj.weight", {H, p.heads * D}, false);
    add(pre + "self_attn.q_norm.weight", {D}, true);
    add(pre + "self_attn.q_proj.weight", {p.heads * D, H}, false);
    add(pre + "self_attn.v_proj.weight", {p.kv_heads * D, H}, false);
  }
  add("model.norm.weight", {H}, true);
  return ts;
}

std::uint64_t Sum(const std::vector<Tensor>& ts) {
  std::uint64_t s = 0;
  for (const auto& t : ts) s += t.nbytes;
  return s;
}

std::string ConfigJson(const SynthPreset& p, unsigned layers) {
  nlohmann::ordered_json c;
  c["architectures"] = {"Gemma3ForCausalLM"};
  c["model_type"] = "gemma3_text";
  c["hidden_size"] = p.hidden;
  c["intermediate_size"] = p.intermediate;
  c["num_hidden_layers"] = layers;
  c["num_attention_heads"] = p.heads;
  c["num_key_value_heads"] = p.kv_heads;
  c["head_dim"] = p.head_dim;
  c["vocab_size"] = p.vocab;
  c["hidden_activation"] = "gelu_pytorch_tanh";
  c["max_position_embeddings"] = 32768;
  c["rms_norm_eps"] = 1e-6;
  c["rope_theta"] = 1000000.0;
  c["rope_local_base_freq"] = 10000.0;
  c["sliding_window"] = 512;
  c["query_pre_attn_scalar"] = p.head_dim;
  c["bos_token_id"] = 2;
  c["eos_token_id"] = 1;
  c["pad_token_id"] = 0;
  c["tie_word_embeddings"] = true;
  c["torch_dtype"] = "bfloat16";
  c["transformers_version"] = "4.50.0";
  c["_coldstart_synthetic"] = true;
  return c.dump(2) + "\n";
}

}  // namespace

const std::vector<SynthPreset>& SynthPresets() {
  static const std::vector<SynthPreset> kPresets = {
      {"tiny", 64, 256, 2, 4, 1, 16, 4096},
      {"gemma-3-270m", 640, 2048, 18, 4, 1, 256, 262144},
      {"gemma-3-1b", 1152, 6912, 26, 4, 1, 256, 262144},
      {"gemma-3-4b", 2560, 10240, 34, 8, 4, 256, 262208},
  };
  return kPresets;
}

Result<SynthReport> SynthesizeModel(const std::string& out_dir, const SynthOptions& options,
                                    const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  const SynthPreset* preset = nullptr;
  std::string names;
  for (const auto& p : SynthPresets()) {
    if (p.name == options.preset) preset = &p;
    names += (names.empty() ? "" : ", ") + p.name;
  }
  if (!preset)
    return MakeError(Errc::kInvalidArgument, "unknown preset '" + options.preset + "' (presets: " + names + ")");
  SynthPreset p = *preset;
  unsigned layers = p.layers;
  if (options.size_bytes > 0) {
    const std::uint64_t target = options.size_bytes;
    const std::uint64_t per_layer = Sum(MakeTensors(p, 1)) - Sum(MakeTensors(p, 0));
    std::uint64_t base = Sum(MakeTensors(p, 0));
    if (base + per_layer > target) {
      // Too small for even one layer at full vocabulary: shrink the vocabulary to a quarter
      // of the budget (at least 256 tokens).
      std::uint64_t row = 2ull * p.hidden;
      p.vocab = static_cast<unsigned>(std::max<std::uint64_t>(256, target / 4 / row));
      base = Sum(MakeTensors(p, 0));
    }
    layers = static_cast<unsigned>(std::max<std::uint64_t>(1, target > base ? (target - base + per_layer / 2) / per_layer : 1));
  }
  auto tensors = MakeTensors(p, layers);
  const std::uint64_t total = Sum(tensors);

  // Shard assignment: consecutive runs of tensors (file order == layer order).
  unsigned shards = options.shards;
  constexpr std::uint64_t kMaxShard = 2ull << 30;
  if (shards == 0) shards = static_cast<unsigned>(std::max<std::uint64_t>(1, (total + kMaxShard - 1) / kMaxShard));
  if (shards > tensors.size())
    return MakeError(Errc::kInvalidArgument, std::to_string(shards) + " shards requested but the model has only " +
                                                 std::to_string(tensors.size()) + " tensors");
  std::vector<unsigned> shard_of(tensors.size());
  {
    std::uint64_t acc = 0;
    unsigned s = 0;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      // Leave at least one tensor for every remaining shard.
      std::size_t left = tensors.size() - i;
      if (s + 1 < shards && (acc >= (s + 1) * (total / shards) || left <= shards - 1 - s)) ++s;
      shard_of[i] = s;
      acc += tensors[i].nbytes;
    }
    // Make sure the last shards are not empty (only possible with tiny models).
    for (unsigned k = 0; k < shards; ++k)
      if (std::find(shard_of.begin(), shard_of.end(), k) == shard_of.end())
        return MakeError(Errc::kInvalidArgument, "cannot split this model into " + std::to_string(shards) + " shards");
  }

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return MakePathError(out_dir + ": cannot create folder", ec.value());

  SynthReport report;
  report.layers = layers;
  report.tensors = tensors.size();
  report.tensor_bytes = total;
  auto shard_name = [&](unsigned s) {
    if (shards == 1) return std::string("model.safetensors");
    char buf[64];
    std::snprintf(buf, sizeof buf, "model-%05u-of-%05u.safetensors", s + 1, shards);
    return std::string(buf);
  };
  std::vector<char> buffer(8u << 20);
  std::uint64_t written = 0;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (unsigned s = 0; s < shards; ++s) {
    std::vector<TensorSpec> specs;
    std::vector<const Tensor*> members;
    for (std::size_t i = 0; i < tensors.size(); ++i)
      if (shard_of[i] == s) {
        specs.push_back(tensors[i].spec);
        members.push_back(&tensors[i]);
      }
    CS_ASSIGN_OR_RETURN(auto header, SerializeHeader(specs, {{"format", "pt"}}));
    const std::string name = shard_name(s);
    CS_RETURN_IF_ERROR(WriteFileAtomic((fs::path(out_dir) / name).string(), [&](int fd) -> Status {
      const std::string path = (fs::path(out_dir) / name).string();
      CS_RETURN_IF_ERROR(WriteAll(fd, header.bytes.data(), header.bytes.size(), path));
      for (const Tensor* t : members) {
        std::uint64_t state = HashName(t->spec.name, options.seed);
        std::uint64_t left = t->nbytes;
        while (left > 0) {
          std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, buffer.size()));
          FillBf16(reinterpret_cast<std::byte*>(buffer.data()), n, state, t->norm);
          CS_RETURN_IF_ERROR(WriteAll(fd, buffer.data(), n, path));
          left -= n;
          written += n;
          if (progress) progress(written, total);
        }
      }
      return OkStatus();
    }));
    for (const auto& spec : specs) weight_map[spec.name] = name;
    report.files.push_back(name);
  }
  CS_RETURN_IF_ERROR(WriteFileAtomic((fs::path(out_dir) / "config.json").string(), [&](int fd) {
    std::string c = ConfigJson(p, layers);
    return WriteAll(fd, c.data(), c.size(), "config.json");
  }));
  report.files.push_back("config.json");
  const std::string index_path = (fs::path(out_dir) / kIndexFileName).string();
  if (shards > 1) {
    nlohmann::ordered_json idx;
    idx["metadata"] = {{"total_size", total}};
    // HF writes the weight map sorted by tensor name.
    nlohmann::json sorted = weight_map;
    idx["weight_map"] = sorted;
    CS_RETURN_IF_ERROR(WriteFileAtomic(index_path, [&](int fd) {
      std::string text = idx.dump(2) + "\n";
      return WriteAll(fd, text.data(), text.size(), index_path);
    }));
    report.files.push_back(std::string(kIndexFileName));
  } else {
    fs::remove(index_path, ec);  // a stale index from an earlier run would point elsewhere
  }
  // Shards of an earlier synth with another shard count would otherwise be taken as part of
  // this model (a folder without an index loads every *.safetensors file).
  // increment(ec), not ++: a listing error must not throw filesystem_error.
  fs::directory_iterator it(out_dir, ec);
  if (ec) return MakePathError(out_dir + ": cannot list", ec.value());
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    const auto& e = *it;
    const std::string name = e.path().filename().string();
    const bool ours = name == "model.safetensors" ||
                      (name.rfind("model-", 0) == 0 && name.find("-of-") != std::string::npos &&
                       name.size() > 12 && name.substr(name.size() - 12) == ".safetensors");
    std::error_code rec;  // best effort: a stale shard we cannot remove is left, as before
    if (ours && std::find(report.files.begin(), report.files.end(), name) == report.files.end())
      fs::remove(e.path(), rec);
  }
  if (ec) return MakePathError(out_dir + ": cannot list", ec.value());
  return report;
}

}  // namespace coldstart::loader
