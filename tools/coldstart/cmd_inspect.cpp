#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "coldstart/core/env.h"
#include "coldstart/loader/model.h"
#include "coldstart/loader/remote_loader.h"
#include "options.h"
#include "commands.h"

namespace coldstart::cli {

std::string ShapeText(const std::vector<std::uint64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int RunInspect(const InspectArgs& args) {
  if (auto st = Env::FromProcess().Validate(); !st.ok()) return ReportError(st.error());
  auto opened = OpenModel(args.source, args.remote);
  if (!opened.ok()) return ReportError(opened.error());
  const auto& m = opened->layout();
  if (args.json) {
    nlohmann::ordered_json j;
    j["source"] = m.source;
    j["total_bytes"] = m.total_bytes;
    auto& files = j["files"] = nlohmann::ordered_json::array();
    for (const auto& f : m.files)
      files.push_back({{"name", f.name}, {"bytes", f.size}, {"header_bytes", f.header.header_bytes},
                       {"tensors", f.header.tensors.size()}, {"metadata", f.header.metadata}});
    auto& ts = j["tensors"] = nlohmann::ordered_json::array();
    for (const auto& t : m.tensors) {
      const auto& h = m.files[t.file].header;
      std::uint64_t begin = t.offset - h.data_start();
      ts.push_back({{"name", t.name}, {"dtype", loader::DTypeName(t.dtype)}, {"shape", t.shape},
                    {"file", m.files[t.file].name}, {"data_offsets", {begin, begin + t.nbytes}}});
    }
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::size_t wname = 4;
  for (const auto& t : m.tensors) wname = std::max(wname, t.name.size());
  std::printf("%-*s  %-7s  %-22s  %14s  %s\n", static_cast<int>(wname), "name", "dtype", "shape", "bytes", "file");
  for (const auto& t : m.tensors) {
    std::printf("%-*s  %-7s  %-22s  %14llu  %s\n", static_cast<int>(wname), t.name.c_str(),
                std::string(loader::DTypeName(t.dtype)).c_str(), ShapeText(t.shape).c_str(),
                static_cast<unsigned long long>(t.nbytes), m.files[t.file].name.c_str());
  }
  std::printf("%zu tensors, %s (%llu bytes) in %zu file%s%s\n", m.tensors.size(),
              FormatBytes(static_cast<double>(m.total_bytes)).c_str(),
              static_cast<unsigned long long>(m.total_bytes), m.files.size(), m.files.size() == 1 ? "" : "s",
              m.has_index ? " (sharded, with index)" : "");
  return 0;
}

}  // namespace coldstart::cli
