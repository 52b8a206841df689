#include "coldstart/loader/host_loader.h"

#include <chrono>

namespace coldstart::loader {

Status HostLoadOptions::ApplyEnv(const Env& env) {
  CS_RETURN_IF_ERROR(read.ApplyEnv(env));
  CS_ASSIGN_OR_RETURN(auto huge, env.GetBool("COLDSTART_HUGE_PAGES"));
  if (huge) arena.huge_pages = *huge;
  return OkStatus();
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
  const ModelLayout& m = model->layout_;

  // Each file's data section lands at an arena position congruent to its file offset modulo
  // the O_DIRECT alignment, so the aligned middle of every read can bypass the page cache.
  constexpr std::uint64_t A = fetch::kDirectAlign;
  std::vector<std::uint64_t> file_pos(m.files.size());
  std::uint64_t cursor = 0;
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    const auto& h = m.files[i].header;
    std::uint64_t pos = (cursor + A - 1) / A * A + h.data_start() % A;
    file_pos[i] = pos;
    cursor = pos + h.data_bytes;
  }
  CS_ASSIGN_OR_RETURN(model->arena_, cache::HostArena::Allocate(cursor, options.arena));

  std::vector<std::string> paths;
  std::vector<fetch::ReadRange> ranges;
  for (std::size_t i = 0; i < m.files.size(); ++i) {
    paths.push_back(m.files[i].path);
    const auto& h = m.files[i].header;
    ranges.push_back({static_cast<std::uint32_t>(i), h.data_start(), h.data_bytes,
                      model->arena_.data() + file_pos[i]});
  }
  CS_ASSIGN_OR_RETURN(auto files, fetch::LocalFileSet::Open(paths, options.read.direct));
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

  model->tensors_.reserve(m.tensors.size());
  for (const auto& t : m.tensors) {
    const auto& h = m.files[t.file].header;
    model->tensors_.push_back({&t, model->arena_.data() + file_pos[t.file] + (t.offset - h.data_start())});
  }
  model->stats_.bytes = model->stats_.read.bytes;
  model->stats_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return model;
}

}  // namespace coldstart::loader
