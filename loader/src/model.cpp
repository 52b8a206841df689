#include "coldstart/loader/model.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_map>

#include "coldstart/core/relative_path.h"

namespace coldstart::loader {
namespace {

namespace fs = std::filesystem;
Error FormatError(std::string msg) { return MakeError(Errc::kFormat, std::move(msg)); }

Result<std::string> ReadSmallFile(const std::string& path, std::uint64_t limit) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  if (ec) return MakePathError(path + ": cannot stat", ec.value());
  if (size > limit)
    return FormatError(path + ": " + std::to_string(size) + " bytes is larger than the " +
                       std::to_string(limit) + "-byte limit for this file");
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) return MakePathError(path + ": cannot open", errno ? errno : EIO);
  std::string text(size, '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  if (static_cast<std::uint64_t>(in.gcount()) != size) return MakeError(Errc::kIo, path + ": short read");
  return text;
}

Result<ShardFile> ReadShard(std::string path, std::string name) {
  ShardFile f;
  f.path = std::move(path);
  f.name = std::move(name);
  CS_ASSIGN_OR_RETURN(f.header, ReadHeaderFile(f.path, &f.identity));
  f.size = f.header.data_start() + f.header.data_bytes;
  return f;
}

// Every std::filesystem call below takes an error_code: a symlink loop, a folder the user may
// not search or a path that vanishes is an Error naming the path, never a filesystem_error.
Error PathError(const std::string& what, const std::error_code& ec) {
  return MakePathError(what, ec.value() ? ec.value() : EIO);
}

}  // namespace

const TensorEntry* ModelLayout::Find(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

Status CheckRelativeName(std::string_view name) {
  return CheckRelativePath(name, "shard name", "the model folder");
}

Result<ShardIndex> ParseShardIndex(std::string_view json_text) {
  using json = nlohmann::json;
  // nlohmann keeps the last of duplicate keys silently; track keys per object to refuse them.
  std::vector<std::set<std::string>> seen;
  std::string dup;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    switch (ev) {
      case json::parse_event_t::object_start: seen.emplace_back(); break;
      case json::parse_event_t::object_end: if (!seen.empty()) seen.pop_back(); break;
      case json::parse_event_t::key:
        if (!seen.empty() && !seen.back().insert(parsed.get<std::string>()).second && dup.empty())
          dup = parsed.get<std::string>();
        break;
      default: break;
    }
    (void)depth;
    return true;
  };
  json j;
  try {
    j = json::parse(json_text.begin(), json_text.end(), cb);
  } catch (const json::exception& e) {
    std::string what = e.what();
    auto p = what.find("] ");
    return FormatError("not valid JSON: " + (p == std::string::npos ? what : what.substr(p + 2)));
  }
  if (!dup.empty()) return FormatError("key '" + dup + "' appears twice");
  if (!j.is_object()) return FormatError("is not a JSON object");
  auto it = j.find("weight_map");
  if (it == j.end()) return FormatError("has no \"weight_map\"");
  if (!it->is_object()) return FormatError("\"weight_map\" is not an object");
  ShardIndex idx;
  std::set<std::string> shard_set;
  for (auto& [tensor, shard] : it->items()) {
    if (!shard.is_string()) return FormatError("weight_map entry for '" + tensor + "' is not a string");
    const auto& s = shard.get_ref<const std::string&>();
    if (auto st = CheckRelativeName(s); !st.ok()) return std::move(st).error().WithContext("weight_map['" + tensor + "']");
    if (shard_set.insert(s).second) idx.shards.push_back(s);
    idx.weight_map.emplace(tensor, s);
  }
  if (idx.weight_map.empty()) return FormatError("\"weight_map\" is empty");
  return idx;
}

Result<ModelLayout> BuildLayout(std::string source, std::vector<ShardFile> files, const ShardIndex* index) {
  ModelLayout m;
  m.source = std::move(source);
  m.has_index = index != nullptr;
  std::unordered_map<std::string, std::uint32_t> owner;  // tensor -> file
  for (std::uint32_t fi = 0; fi < files.size(); ++fi) {
    const auto& f = files[fi];
    for (const auto& t : f.header.tensors) {
      auto [it, inserted] = owner.emplace(t.name, fi);
      if (!inserted)
        return FormatError("tensor '" + t.name + "' is in both " + files[it->second].name + " and " + f.name);
      if (index) {
        auto w = index->weight_map.find(t.name);
        if (w == index->weight_map.end())
          return FormatError(f.name + ": tensor '" + t.name + "' is not in " + std::string(kIndexFileName));
        if (w->second != f.name)
          return FormatError(f.name + ": tensor '" + t.name + "' is mapped to " + w->second + " by the index");
      }
      TensorEntry e;
      e.name = t.name;
      e.dtype = t.dtype;
      e.shape = t.shape;
      e.file = fi;
      e.offset = f.header.data_start() + t.begin;
      e.nbytes = t.nbytes();
      m.total_bytes += e.nbytes;
      m.tensors.push_back(std::move(e));
    }
  }
  if (index) {
    for (const auto& [tensor, shard] : index->weight_map)
      if (!owner.count(tensor))
        return FormatError(std::string(kIndexFileName) + " maps tensor '" + tensor + "' to " + shard +
                           ", which does not contain it");
  }
  m.files = std::move(files);
  return m;
}

Result<ModelLayout> OpenLocalModel(const std::string& path) {
  std::error_code ec;
  auto st = fs::status(path, ec);
  if (st.type() == fs::file_type::not_found) return MakeError(Errc::kNotFound, path + ": no such file or folder");
  if (ec) return PathError(path + ": cannot open", ec);
  std::vector<ShardFile> files;
  if (fs::is_regular_file(st)) {
    CS_ASSIGN_OR_RETURN(auto f, ReadShard(path, fs::path(path).filename().string()));
    files.push_back(std::move(f));
    return BuildLayout(path, std::move(files), nullptr);
  }
  if (!fs::is_directory(st)) return MakeError(Errc::kInvalidArgument, path + ": not a file or folder");
  const fs::path root = fs::canonical(path, ec);
  if (ec) return PathError(path + ": cannot resolve", ec);
  const fs::path index_path = root / kIndexFileName;
  auto index_st = fs::status(index_path, ec);
  if (ec && index_st.type() != fs::file_type::not_found) return PathError(index_path.string() + ": cannot open", ec);
  if (fs::exists(index_st)) {
    CS_ASSIGN_OR_RETURN(auto text, ReadSmallFile(index_path.string(), 256ull << 20));
    auto idx = ParseShardIndex(text);
    if (!idx.ok()) return std::move(idx).error().WithContext(index_path.string());
    for (const auto& name : idx->shards) {
      fs::path p = root / name;
      // Symlinks may point anywhere; the resolved file must still live under the folder.
      fs::path real = fs::weakly_canonical(p, ec);
      if (ec) return PathError(index_path.string() + ": shard '" + name + "' cannot be resolved", ec);
      auto rel = real.lexically_relative(root);
      if (rel.empty() || *rel.begin() == "..")
        return FormatError(index_path.string() + ": shard '" + name + "' resolves outside " + root.string());
      auto shard_st = fs::status(real, ec);
      if (shard_st.type() == fs::file_type::not_found)
        return MakeError(Errc::kNotFound, index_path.string() + " names shard '" + name + "', which is missing");
      if (ec) return PathError(p.string() + ": cannot open", ec);
      if (!fs::is_regular_file(shard_st))
        return MakeError(Errc::kInvalidArgument, p.string() + ": not a regular file (shard '" + name + "' of the index)");
      CS_ASSIGN_OR_RETURN(auto f, ReadShard(real.string(), name));
      files.push_back(std::move(f));
    }
    return BuildLayout(path, std::move(files), &*idx);
  }
  std::vector<std::string> names;
  fs::directory_iterator it(root, ec);
  if (ec) return PathError(path + ": cannot list", ec);
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    const fs::path& entry = it->path();
    if (entry.extension() != ".safetensors") continue;
    // Follows symlinks. A *.safetensors entry that does not lead to a regular file (a broken
    // link, a link loop, a folder) would silently drop part of the model: refuse it.
    std::error_code sec;
    auto est = it->status(sec);
    if (est.type() == fs::file_type::not_found)
      return MakeError(Errc::kNotFound, entry.string() + ": broken symbolic link");
    if (sec) return PathError(entry.string() + ": cannot open", sec);
    if (!fs::is_regular_file(est)) return MakeError(Errc::kInvalidArgument, entry.string() + ": not a regular file");
    names.push_back(entry.filename().string());
  }
  if (ec) return PathError(path + ": cannot list", ec);
  if (names.empty())
    return MakeError(Errc::kNotFound, path + ": no *.safetensors files and no " + std::string(kIndexFileName));
  std::sort(names.begin(), names.end());
  for (auto& name : names) {
    CS_ASSIGN_OR_RETURN(auto f, ReadShard((root / name).string(), name));
    files.push_back(std::move(f));
  }
  return BuildLayout(path, std::move(files), nullptr);
}

}  // namespace coldstart::loader
