// Writes the generated part of the fuzz seed corpora (the committed part is tests/fuzz/seeds/):
//   DIR/safetensors_header/  the malformed corpus (tests/loader/corpus.h), its seeded mutations
//                            and valid headers laid out by SerializeHeader, each prefixed with
//                            the u64 file size fuzz_safetensors_header.cpp expects;
//   DIR/shard_index/         valid and malformed model.safetensors.index.json texts.
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "../common/temp_dir.h"
#include "../loader/corpus.h"
#include "coldstart/loader/safetensors.h"

namespace {

using namespace coldstart::loader;
namespace fs = std::filesystem;

std::string WithSize(const std::string& file, std::uint64_t size) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((size >> (8 * i)) & 0xff);
  return out + file;
}

void Write(const fs::path& dir, const std::string& name, const std::string& bytes) {
  coldstart::testing::WriteFile(dir / name, bytes);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: write_fuzz_seeds DIR\n");
    return 2;
  }
  const fs::path st = fs::path(argv[1]) / "safetensors_header";
  const fs::path ix = fs::path(argv[1]) / "shard_index";
  fs::create_directories(st);
  fs::create_directories(ix);

  for (const auto& c : coldstart::testing::MalformedFiles()) Write(st, "malformed-" + c.name, WithSize(c.bytes, c.bytes.size()));
  const std::string valid = coldstart::testing::StFile(
      R"({"__metadata__":{"a":"b"},"w":{"dtype":"BF16","shape":[2,4],"data_offsets":[0,16]},)"
      R"("s":{"dtype":"F32","shape":[],"data_offsets":[16,20]}})",
      std::string(20, '\x07'));
  Write(st, "valid-small", WithSize(valid, valid.size()));
  int i = 0;
  for (const auto& m : coldstart::testing::Mutations(valid, 100, 20261203)) {
    char name[32];
    std::snprintf(name, sizeof name, "mutation-%03d", i++);
    Write(st, name, WithSize(m, m.size()));
  }
  // Every dtype, scalars, empty tensors and escaped names, as SerializeHeader lays them out.
  std::vector<TensorSpec> specs;
  for (auto d : kAllDTypes) specs.push_back({"model.layers.0." + std::string(DTypeName(d)), d, {3, 5}});
  specs.push_back({"scalar", DType::kF32, {}});
  specs.push_back({"empty", DType::kBF16, {0, 7}});
  specs.push_back({"quote\"back\\slash\ttab \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", DType::kU8, {1}});
  auto all = SerializeHeader(specs, {{"format", "pt"}, {"note", "\x01\x7f"}});
  if (!all.ok()) return 1;
  Write(st, "valid-all-dtypes", WithSize(all->bytes, all->bytes.size() + all->data_bytes));
  std::vector<TensorSpec> big = {{"embed", DType::kBF16, {262144, 640}}, {"norm", DType::kF32, {640}}};
  auto b = SerializeHeader(big, {});
  if (!b.ok()) return 1;
  Write(st, "valid-large-tensors", WithSize(b->bytes, b->bytes.size() + b->data_bytes));

  const std::vector<std::pair<std::string, std::string>> indexes = {
      {"valid", R"({"metadata":{"total_size":32},"weight_map":{"w1":"a.safetensors","w2":"a.safetensors","w3":"sub/b.safetensors"}})"},
      {"valid-escapes", R"({"weight_map":{"a\u00e9\"":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})"},
      {"not_json", R"({"weight_map":)"},
      {"not_object", "[]"},
      {"no_weight_map", R"({"metadata":{}})"},
      {"weight_map_array", R"({"weight_map":[]})"},
      {"weight_map_empty", R"({"weight_map":{}})"},
      {"value_not_string", R"({"weight_map":{"w1":1}})"},
      {"duplicate_key", R"({"weight_map":{"w1":"a.safetensors","w1":"a.safetensors"}})"},
      {"duplicate_top", R"({"weight_map":{"w1":"a.safetensors"},"weight_map":{}})"},
      {"dotdot", R"({"weight_map":{"w1":"sub/../../etc/x.safetensors"}})"},
      {"absolute", R"({"weight_map":{"w1":"/etc/passwd"}})"},
      {"empty_component", R"({"weight_map":{"w1":"sub//b.safetensors"}})"},
      {"backslash", R"({"weight_map":{"w1":"sub\\b.safetensors"}})"},
      {"nul", R"({"weight_map":{"w1":"a\u0000.safetensors"}})"},
      {"dot", R"({"weight_map":{"w1":"./a.safetensors"}})"},
  };
  for (const auto& [name, text] : indexes) Write(ix, name, text);
  return 0;
}
