// libFuzzer target: model.safetensors.index.json (ParseShardIndex). Whatever parses must keep the
// promises model.h makes (every shard name stays inside the folder, `shards` is the distinct
// values of weight_map) and must parse back to the same map when written out again.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>

#include "coldstart/loader/model.h"

namespace {

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "fuzz_shard_index: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace coldstart::loader;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto idx = ParseShardIndex(text);
  if (!idx.ok()) {
    if (idx.error().message.empty()) Die("error without a message");
    return 0;
  }
  if (idx->weight_map.empty() || idx->shards.empty()) Die("an empty weight_map parsed");
  std::set<std::string> values, listed(idx->shards.begin(), idx->shards.end());
  if (listed.size() != idx->shards.size()) Die("a shard is listed twice");
  for (const auto& [tensor, shard] : idx->weight_map) {
    if (!CheckRelativeName(shard).ok()) Die("a shard name escapes the folder");
    values.insert(shard);
  }
  if (values != listed) Die("shards is not the set of weight_map values");

  nlohmann::json j;
  j["weight_map"] = idx->weight_map;
  auto again = ParseShardIndex(j.dump());
  if (!again.ok()) Die("a written-out index does not parse back");
  if (again->weight_map != idx->weight_map || again->shards != idx->shards) Die("index differs after the round trip");
  return 0;
}
