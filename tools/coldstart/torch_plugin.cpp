// Built into libcoldstart_torch.so: the only code of the CLI that sees libtorch.
#include "torch_plugin.h"

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

const coldstart::cli::TorchPluginApi kApi{coldstart::cli::kTorchPluginAbi, &Wrap};

}  // namespace

extern "C" __attribute__((visibility("default"))) const coldstart::cli::TorchPluginApi* coldstart_torch_plugin() {
  return &kApi;
}
