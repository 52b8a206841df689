#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <mutex>
#include <string>

#include "coldstart/core/timeline.h"
#include "torch_plugin.h"

namespace coldstart::cli {

Result<const TorchPluginApi*> LoadTorchPlugin() {
  static std::once_flag once;
  static Result<const TorchPluginApi*> result = MakeError(Errc::kInternal, "not loaded");
  std::call_once(once, [] {
    char exe[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
    std::string dir = n > 0 ? std::string(exe, static_cast<std::size_t>(n)) : std::string();
    dir = dir.substr(0, dir.rfind('/') + 1);
    const std::string path = dir + "libcoldstart_torch.so";
    // RTLD_DEEPBIND: libtorch and its protobuf bind to their own symbols first. Without it,
    // libtorch's protobuf descriptors bind to the copies of protobuf internals that
    // libsentencepiece (the tokenizer, linked into this executable) exports, and crash in
    // their static initialisers.
    void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (h == nullptr) {
      const char* why = ::dlerror();
      result = MakeError(Errc::kUnavailable, "libtorch support is not available (" + std::string(why ? why : path) +
                                                 "); this coldstart was built without libtorch or the plugin is missing");
      return;
    }
    using Fn = const TorchPluginApi* (*)();
    auto fn = reinterpret_cast<Fn>(::dlsym(h, "coldstart_torch_plugin"));
    const TorchPluginApi* api = fn ? fn() : nullptr;
    if (api == nullptr || api->abi_version != kTorchPluginAbi) {
      result = MakeError(Errc::kUnavailable, path + " is from another coldstart build (ABI mismatch)");
      return;
    }
    api->set_process_start(Timeline::ProcessStart());
    result = api;  // the handle stays open for the life of the process on purpose
  });
  return result;
}

}  // namespace coldstart::cli
