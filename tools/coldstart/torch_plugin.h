// The CLI's bridge to libtorch. libtorch costs ~0.35 s and ~400 MB of mappings just to load,
// which `inspect`, `synth` and `prefetch` never need, so the tensor step of `load` lives in a
// plugin (libcoldstart_torch.so next to the executable) that is dlopen'ed only by `load`.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "coldstart/loader/host_loader.h"

namespace coldstart::cli {

struct TorchTensors {
  std::string torch_version;          // "libtorch 1.13.0 (CPU)"
  std::vector<const void*> data;      // each tensor's data_ptr(), in layout order
  std::vector<bool> raw_bytes;        // dtype missing in this libtorch: uint8 view
  std::shared_ptr<void> keep_alive;   // the StateDict
};

struct TorchPluginApi {
  int abi_version;  // kTorchPluginAbi
  // Wraps every tensor of `host` as a torch::Tensor (zero-copy). Errors come back as values.
  Result<TorchTensors> (*wrap)(std::shared_ptr<const loader::HostModel> host);
};
inline constexpr int kTorchPluginAbi = 1;

// Loads the plugin once; kUnavailable with the reason when it is missing or broken.
Result<const TorchPluginApi*> LoadTorchPlugin();

}  // namespace coldstart::cli
