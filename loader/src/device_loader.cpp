#include "coldstart/loader/device_loader.h"

#include "coldstart/loader/engine.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <regex>

#include "coldstart/core/crc32c.h"
#include "coldstart/fetch/range_fetcher.h"

namespace coldstart::loader {
void LinkEnvLoader();  // loader_env.cpp
}  // namespace coldstart::loader


namespace coldstart::loader {
namespace {

// The synchronous entry points are a load handle waited on at once.
Result<std::shared_ptr<DeviceModel>> LoadToDevice(OpenedModel model, const DeviceLoadOptions& options) {
  if (options.device.kind == DeviceKind::kCpu)
    return MakeError(Errc::kInvalidArgument, "the cpu device loads through LoadToHost, not a copy engine");
  LoadOptions o;
  static_cast<DeviceLoadOptions&>(o) = options;
  CS_ASSIGN_OR_RETURN(auto handle, StartLoad(std::move(model), std::move(o)));
  CS_RETURN_IF_ERROR(handle->WaitAll());
  return handle->device_model();
}

}  // namespace

Result<LoadOrder> ParseLoadOrder(std::string_view text) {
  if (text == "file") return LoadOrder::kFile;
  if (text == "largest") return LoadOrder::kLargestFirst;
  if (text == "layer") return LoadOrder::kLayer;
  return MakeError(Errc::kInvalidArgument, "load order '" + std::string(text) + "' is not one of file, largest, layer");
}

Status DeviceLoadOptions::ApplyEnv(const Env& env) {
  LinkEnvLoader();
  CS_RETURN_IF_ERROR(read.ApplyEnv(env));
  CS_ASSIGN_OR_RETURN(auto b, env.GetBytes("COLDSTART_STAGING_BYTES"));
  if (b) staging_bytes = *b;
  CS_ASSIGN_OR_RETURN(auto bw, env.GetBytes("COLDSTART_SIM_BANDWIDTH"));
  if (bw) {
    if (*bw == 0) return MakeError(Errc::kInvalidArgument, "COLDSTART_SIM_BANDWIDTH must be positive");
    sim.bytes_per_second = static_cast<double>(*bw);
  }
  CS_ASSIGN_OR_RETURN(auto streams, env.GetUint("COLDSTART_CUDA_STREAMS"));
  if (streams) cuda.streams = static_cast<unsigned>(std::clamp<std::uint64_t>(*streams, 1, 64));
  return OkStatus();
}

const DeviceTensor* DeviceModel::Find(std::string_view name) const {
  for (const auto& t : tensors_)
    if (t.entry->name == name) return &t;
  return nullptr;
}

Result<std::unique_ptr<CopyEngine>> MakeCopyEngine(const DeviceLoadOptions& o) {
  switch (o.device.kind) {
    case DeviceKind::kSim: return MakeSimCopyEngine(o.sim);
    case DeviceKind::kCuda: {
      CudaEngineOptions c = o.cuda;
      c.device = o.device.index;
      return MakeCudaCopyEngine(c);
    }
    case DeviceKind::kCpu: break;
  }
  return MakeError(Errc::kInvalidArgument, "the cpu device loads through LoadToHost, not a copy engine");
}

Result<std::shared_ptr<DeviceModel>> LoadLocalToDevice(ModelLayout layout, const DeviceLoadOptions& options) {
  OpenedModel m;
  m.local = std::move(layout);
  return LoadToDevice(std::move(m), options);
}

Result<std::shared_ptr<DeviceModel>> Loader::Load(const Env& env) const {
  CS_ASSIGN_OR_RETURN(auto opened, OpenModel(source_, remote_, env));
  if (opened.remote) return LoadRemoteToDevice(std::move(*opened.remote), options_);
  return LoadLocalToDevice(std::move(opened.local), options_);
}

Result<std::shared_ptr<DeviceModel>> LoadRemoteToDevice(RemoteModel rm, const DeviceLoadOptions& options) {
  OpenedModel m;
  m.remote = std::move(rm);
  return LoadToDevice(std::move(m), options);
}

}  // namespace coldstart::loader
