// The CLI's bridge to libtorch. libtorch costs ~0.35 s and ~400 MB of mappings just to load,
// which `inspect`, `synth` and `prefetch` never need, so the tensor step of `load` and the model
// runtime of `run` and `serve` live in a plugin (libcoldstart_torch.so next to the executable),
// dlopen'ed on a thread at the start of those subcommands while the weights stream in.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "coldstart/loader/engine.h"
#include "coldstart/loader/host_loader.h"
#include "coldstart/runtime/generator.h"

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
  // runtime::MakeGenerator: the model over a load in progress (`run`, `serve`).
  Result<std::unique_ptr<runtime::Generator>> (*make_generator)(std::shared_ptr<loader::LoadHandle> load,
                                                                runtime::ModelConfig config, runtime::ModelOptions options);
  std::string (*torch_version)();  // "libtorch 1.13.0 (CPU)"
  void (*set_threads)(int threads);  // libtorch's intra-op threads; 0 leaves its default
  // The executable's process start, for the plugin's own copy of core's Timeline.
  void (*set_process_start)(std::chrono::steady_clock::time_point start);
};
inline constexpr int kTorchPluginAbi = 2;

// Asks the kernel to read libtorch's shared libraries ahead (the list the build wrote next to
// the plugin, libcoldstart_torch.deps), so a later LoadTorchPlugin finds them in the page cache.
// Cheap (one fadvise per file, ~15 ms for 290 files); nothing happens when the list is missing.
void PrefetchTorchLibraries();

// Loads the plugin once; kUnavailable with the reason when it is missing or broken.
Result<const TorchPluginApi*> LoadTorchPlugin();
// Whether LoadTorchPlugin succeeded in this process.
bool TorchPluginLoaded();

}  // namespace coldstart::cli
