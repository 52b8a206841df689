#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "coldstart/core/timeline.h"
#include "torch_plugin.h"

namespace coldstart::cli {
namespace {

std::atomic<bool> g_torch_loaded{false};

std::string ExecutableDir() {
  char exe[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  std::string dir = n > 0 ? std::string(exe, static_cast<std::size_t>(n)) : std::string();
  return dir.substr(0, dir.rfind('/') + 1);
}

}  // namespace

void PrefetchTorchLibraries() {
  std::ifstream deps(ExecutableDir() + "libcoldstart_torch.deps");
  std::vector<std::string> paths = {ExecutableDir() + "libcoldstart_torch.so"};
  for (std::string line; std::getline(deps, line);)
    if (!line.empty() && line[0] == '/') paths.push_back(line);
  for (const auto& path : paths) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;  // a library moved since the build: dlopen will say so if it matters
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
    ::close(fd);
  }
}

bool TorchPluginLoaded() { return g_torch_loaded.load(); }

Result<const TorchPluginApi*> LoadTorchPlugin() {
  static std::once_flag once;
  static Result<const TorchPluginApi*> result = MakeError(Errc::kInternal, "not loaded");
  std::call_once(once, [] {
    const std::string path = ExecutableDir() + "libcoldstart_torch.so";
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
    g_torch_loaded = true;
  });
  return result;
}

}  // namespace coldstart::cli
