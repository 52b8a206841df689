#include "coldstart/loader/host_loader.h"

#include <chrono>

#include "coldstart/loader/engine.h"

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
  OpenedModel m;
  m.local = std::move(layout);
  CS_ASSIGN_OR_RETURN(auto handle, StartLoad(std::move(m), ToLoadOptions(options)));
  CS_RETURN_IF_ERROR(handle->WaitAll());
  return handle->host_model();
}

}  // namespace coldstart::loader
