// A model's layout: which files hold which tensors at which byte ranges. Made before a single
// data byte moves, from the safetensors headers and the sharded index (STYLE.md, principle 7).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "coldstart/loader/safetensors.h"
#include "coldstart/core/result.h"

namespace coldstart::loader {

inline constexpr std::string_view kIndexFileName = "model.safetensors.index.json";

struct ShardFile {
  std::string path;      // what to open (absolute or as given)
  std::string name;      // relative to the model folder, as the index names it
  std::uint64_t size = 0;
  SafetensorsHeader header;
  FileIdentity identity;  // local files: as when the header was read (loads refuse a change)
};

struct TensorEntry {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<std::uint64_t> shape;
  std::uint32_t file = 0;     // index into ModelLayout::files
  std::uint64_t offset = 0;   // absolute byte offset in the file
  std::uint64_t nbytes = 0;
};

struct ModelLayout {
  std::string source;               // what the user named
  std::vector<ShardFile> files;
  std::vector<TensorEntry> tensors; // file order, then offset order
  std::uint64_t total_bytes = 0;    // sum of tensor bytes
  bool has_index = false;

  const TensorEntry* Find(std::string_view name) const;
};

// Parsed model.safetensors.index.json: tensor name -> shard file name.
struct ShardIndex {
  std::map<std::string, std::string> weight_map;
  std::vector<std::string> shards;  // distinct shard names, in first-seen order of sorted names
};
// Strict: an object with an object "weight_map" of string to string, no duplicate keys, every
// shard name relative and inside the folder (no absolute path, no "..", no empty component).
Result<ShardIndex> ParseShardIndex(std::string_view json_text);
// Checks a relative name stays inside its folder.
Status CheckRelativeName(std::string_view name);

// Builds the layout of local `path`: a .safetensors file, or a folder with an index, or a
// folder whose *.safetensors files are all taken (sorted by name).
Result<ModelLayout> OpenLocalModel(const std::string& path);

// Joins per-file headers into a layout, enforcing the index rules when `index` is given:
// every mapped tensor is in its shard, every tensor of a shard is mapped to that shard.
Result<ModelLayout> BuildLayout(std::string source, std::vector<ShardFile> files, const ShardIndex* index);

}  // namespace coldstart::loader
