// Built into libcoldstart_torch.so: the only code of the CLI that sees libtorch.
#include "torch_plugin.h"

#include <ATen/Parallel.h>

#include "coldstart/core/timeline.h"
#include "coldstart/runtime/generator.h"
#include "coldstart/runtime/state_dict.h"

namespace {

coldstart::Result<coldstart::cli::TorchTensors> Wrap(std::shared_ptr<const coldstart::loader::HostModel> host) {
  using namespace coldstart;
  try {
    auto sd = std::make_shared<runtime::StateDict>(runtime::ToStateDict(std::move(host)));
    cli::TorchTensors out;
    out.torch_version = runtime::TorchVersionString();
    for (const auto& t : sd->tensors()) {
      out.data.push_back(t.tensor.data_ptr());
      out.raw_bytes.push_back(t.raw_bytes);
    }
    out.keep_alive = sd;
    return out;
  } catch (const runtime::LoadError& e) {
    return e.error();
  } catch (const std::exception& e) {
    return MakeError(Errc::kInternal, std::string("libtorch: ") + e.what());
  }
}

std::string Version() { return coldstart::runtime::TorchVersionString(); }

void SetThreads(int n) {
  if (n > 0) at::set_num_threads(n);
}

void SetProcessStart(std::chrono::steady_clock::time_point t) { coldstart::Timeline::SetProcessStart(t); }

const coldstart::cli::TorchPluginApi kApi{coldstart::cli::kTorchPluginAbi, &Wrap, &coldstart::runtime::MakeGenerator,
                                          &Version, &SetThreads, &SetProcessStart};

}  // namespace

extern "C" __attribute__((visibility("default"))) const coldstart::cli::TorchPluginApi* coldstart_torch_plugin() {
  return &kApi;
}
