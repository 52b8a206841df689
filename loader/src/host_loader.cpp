#include "coldstart/loader/host_loader.h"

#include <chrono>

namespace coldstart::loader {
void LinkEnvLoader();  // loader_env.cpp
}  // namespace coldstart::loader


namespace coldstart::loader {

Status HostLoadOptions::ApplyEnv(const Env& env) {
  LinkEnvLoader();
  CS_RETURN_IF_ERROR(read.ApplyEnv(env));
  CS_ASSIGN_OR_RETURN(auto huge, env.GetBool("COLDSTART_HUGE_PAGES"));
  if (huge) arena.huge_pages = *huge;
  return OkStatus();
}

std::vector<std::uint64_t> HostModel::PlaceFiles(const ModelLayout& m, std::uint64_t* total) {
  constexpr std::uint64_t A = fetch::kDirectAlign;
  std::vector<std::uint64_t> file_pos(m.files.size());
  std::uint64_t cursor = 0;
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    const auto& h = m.files[i].header;
    file_pos[i] = (cursor + A - 1) / A * A + h.data_start() % A;
    cursor = file_pos[i] + h.data_bytes;
  }
  *total = cursor;
  return file_pos;
}

void HostModel::SliceTensors(const std::vector<std::uint64_t>& file_pos) {
  tensors_.clear();
  tensors_.reserve(layout_.tensors.size());
  for (const auto& t : layout_.tensors) {
    const auto& h = layout_.files[t.file].header;
    tensors_.push_back({&t, arena_.data() + file_pos[t.file] + (t.offset - h.data_start())});
  }
}

const HostTensor* HostModel::Find(std::string_view name) const {
  for (const auto& t : tensors_)
    if (t.entry->name == name) return &t;
  return nullptr;
}

Result<std::shared_ptr<HostModel>> LoadToHost(ModelLayout layout, const HostLoadOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  auto model = std::make_shared<HostModel>();
  model->layout_ = std::move(layout);
  if (options.filter) {
    auto& ts = model->layout_.tensors;
    std::erase_if(ts, [&](const TensorEntry& t) { return !options.filter(t.name); });
    if (ts.empty()) return MakeError(Errc::kNotFound, model->layout_.source + ": no tensor matches the filter");
    model->layout_.total_bytes = 0;
    for (const auto& t : ts) model->layout_.total_bytes += t.nbytes;
  }
  const ModelLayout& m = model->layout_;

  std::uint64_t arena_bytes = 0;
  const std::vector<std::uint64_t> file_pos = HostModel::PlaceFiles(m, &arena_bytes);
  cache::HostArenaOptions arena = options.arena;
  if (options.filter) arena.resident_bytes = m.total_bytes;  // only the selected tensors are written
  CS_ASSIGN_OR_RETURN(model->arena_, cache::HostArena::Allocate(arena_bytes, arena));

  std::vector<std::string> paths;
  std::vector<FileIdentity> seen;  // when the headers were read
  std::vector<fetch::ReadRange> ranges;
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    paths.push_back(m.files[i].path);
    seen.push_back(m.files[i].identity);
    const auto& h = m.files[i].header;
    if (!options.filter)
      ranges.push_back({static_cast<std::uint32_t>(i), h.data_start(), h.data_bytes,
                        model->arena_.data() + file_pos[i]});
  }
  // Filtered: one range per run of adjacent selected tensors, at their places in the arena.
  for (const auto& t : options.filter ? m.tensors : std::vector<TensorEntry>{}) {
    if (t.nbytes == 0) continue;
    if (!ranges.empty() && ranges.back().file == t.file && ranges.back().offset + ranges.back().length == t.offset) {
      ranges.back().length += t.nbytes;
      continue;
    }
    ranges.push_back({t.file, t.offset, t.nbytes,
                      model->arena_.data() + file_pos[t.file] + (t.offset - m.files[t.file].header.data_start())});
  }
  CS_ASSIGN_OR_RETURN(auto files, fetch::LocalFileSet::Open(paths, options.read.direct, seen));
  // The layout was made from headers read earlier; a file that changed size since would
  // put bytes in the wrong places.
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    if (files.file(i).size != m.files[i].size)
      return MakeError(Errc::kIntegrity, m.files[i].path + ": file is " + std::to_string(files.file(i).size) +
                                             " bytes now but its header described " +
                                             std::to_string(m.files[i].size) + " (changed while loading?)");
  }
  CS_ASSIGN_OR_RETURN(auto reader, fetch::LocalReader::Create(options.read));
  fetch::ReadProgressFn progress;
  if (options.progress) {
    const std::uint64_t total = m.total_bytes;
    progress = [&options, total](std::uint64_t done) { return options.progress(std::min(done, total), total); };
  }
  CS_RETURN_IF_ERROR(reader->Read(files, ranges, progress, &model->stats_.read));
  CS_RETURN_IF_ERROR(files.CheckUnchanged());  // a rewrite during the reads mixes old and new bytes

  model->SliceTensors(file_pos);
  model->stats_.bytes = model->stats_.read.bytes;
  model->stats_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return model;
}

}  // namespace coldstart::loader
