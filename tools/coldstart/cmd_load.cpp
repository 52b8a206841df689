// `coldstart load`: loads into the host arena, then hands the tensors to libtorch through the
// plugin (torch_plugin.h), unless --no-torch.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "cancel.h"
#include "cli.h"
#include "coldstart/core/hash.h"
#include "torch_plugin.h"
#include "commands.h"
#include "coldstart/loader/copy_engine.h"
#include "coldstart/loader/remote_loader.h"
#include "options.h"
#include "run_model.h"

namespace coldstart::cli {

std::string ShapeText(const std::vector<std::uint64_t>& shape);
int RunDeviceLoad(const LoadArgs& args, const loader::DeviceSpec& device);
// cmd_load_device.cpp: --only globs as a tensor-name filter; kNotFound naming the globs when none
// matches; the device-only flags' values checked, and refused when set on --device cpu.
std::function<bool(const std::string&)> OnlyFilter(const std::vector<std::string>& globs);
Status CheckOnlyMatches(const loader::ModelLayout& layout, const std::vector<std::string>& globs);
Status CheckCpuLoadFlags(const LoadArgs& args, const loader::DeviceSpec& device);


Result<std::shared_ptr<cache::DiskCache>> LoadCache(const LoadArgs& args) { return SourceCache(args.source, args.cache); }

// " [cache DIR: X served, Y written]" for the summary line.
std::string CacheSummary(const cache::DiskCache* c, std::uint64_t hit, std::uint64_t filled) {
  if (!c) return "";
  return " [cache " + c->dir() + ": " + FormatBytes(static_cast<double>(hit)) + " served, " +
         FormatBytes(static_cast<double>(filled)) + " written]";
}

int RunLoad(const LoadArgs& args) {
  InstallCancelSignals();  // before any thread starts (the plugin's loader below is one)
  const auto t0 = std::chrono::steady_clock::now();
  auto device = loader::ParseDevice(args.device);
  if (!device.ok()) return ReportError(device.error());
  if (device->kind != loader::DeviceKind::kCpu) return RunDeviceLoad(args, *device);
  if (auto st = CheckCpuLoadFlags(args, *device); !st.ok()) return ReportError(st.error());
  auto opts = MakeHostLoadOptions(args.read);
  if (!opts.ok()) return ReportError(opts.error());
  if (!args.only.empty()) opts->filter = OnlyFilter(args.only);
  auto mode = ParseProgressMode(args.read.progress);
  if (!mode.ok()) return ReportError(mode.error());

  std::shared_future<Result<const TorchPluginApi*>> plugin_future;
  std::thread prefetch;
  if (args.torch) prefetch = std::thread(PrefetchTorchLibraries);
  struct Join {
    std::thread& t;
    ~Join() {
      if (t.joinable()) t.join();
    }
  } join{prefetch};
  ProgressPrinter bar(*mode, "load");
  opts->progress = [&bar](std::uint64_t done, std::uint64_t total) {
    bar.Update(done, total);
    return !CancelRequested();
  };
  Result<std::shared_ptr<loader::HostModel>> host = MakeError(Errc::kInternal, "unset");
  loader::RemoteLoadStats remote_stats;
  auto disk_cache = LoadCache(args);
  if (!disk_cache.ok()) return ReportError(disk_cache.error());
  auto opened = OpenModel(args.source, args.remote, disk_cache->get());
  if (CancelRequested()) return ReportCancelled("load");
  if (!opened.ok()) return ReportError(opened.error());
  const double plan_seconds = SecondsSince(t0);
  const bool remote = opened->remote.has_value();
  if (auto st = CheckOnlyMatches(opened->layout(), args.only); !st.ok()) return ReportError(st.error());
  if (remote && !args.only.empty())
    return ReportError(MakeError(Errc::kInvalidArgument,
                                 "--only with --device cpu reads local models only; for gs:// and http(s):// "
                                 "sources use --device sim or cuda"));
  opts->cache = *disk_cache;
  {
    // The load starts first, then libtorch: its dlopen would hold up the load's threads
    // (StartTorchAfter says why).
    loader::OpenedModel om = std::move(opened).value();
    auto handle = loader::StartLoad(std::move(om), loader::ToLoadOptions(*opts));
    if (!handle.ok()) {
      host = std::move(handle).error();
    } else {
      if (args.torch) plugin_future = StartTorchAfter(handle->get(), &prefetch);
      auto st = (*handle)->WaitAll();
      remote_stats = loader::RemoteStatsOf(**handle);
      if (st.ok()) {
        host = (*handle)->host_model();
      } else {
        host = std::move(st).error();
      }
    }
  }
  bar.Finish();
  if (CancelRequested()) return ReportCancelled("load");
  if (!host.ok()) return ReportError(host.error());
  std::shared_ptr<const loader::HostModel> model = std::move(host).value();
  TorchTensors torch;
  const auto torch0 = std::chrono::steady_clock::now();
  if (args.torch) {
    auto plugin = plugin_future.get();
    if (!plugin.ok()) return ReportError(MakeError(plugin.error().code, plugin.error().message + "; use --no-torch"));
    auto wrapped = (*plugin)->wrap(model);
    if (!wrapped.ok()) return ReportError(wrapped.error());
    torch = std::move(wrapped).value();
  } else {
    for (const auto& t : model->tensors()) {
      torch.data.push_back(t.data);
      torch.raw_bytes.push_back(false);
    }
  }
  const double torch_seconds = SecondsSince(torch0);
  const double seconds = SecondsSince(t0);
  const auto& names = model->tensors();
  const auto& st = model->stats();
  std::vector<std::string> digests;
  double digest_seconds = 0;
  if (!args.digest.empty()) {
    auto d0 = std::chrono::steady_clock::now();
    std::vector<std::uint64_t> sizes;
    for (const auto& t : model->tensors()) sizes.push_back(t.entry->nbytes);
    // The bytes as libtorch sees them (data_ptr()), or the arena's with --no-torch.
    auto d = ParallelSha256(sizes, [&](std::size_t i, std::vector<std::byte>&) -> Result<const std::byte*> {
      return static_cast<const std::byte*>(torch.data[i]);
    });
    if (!d.ok()) return ReportError(d.error());
    digests = std::move(d).value();
    digest_seconds = SecondsSince(d0);
  }
  if (CancelRequested()) return ReportCancelled("load");
  const double bytes = static_cast<double>(st.bytes);
  if (args.json) {
    nlohmann::ordered_json j;
    j["source"] = args.source;
    j["device"] = args.device;
    j["bytes"] = st.bytes;
    j["seconds"] = seconds;
    j["gb_per_s"] = seconds > 0 ? bytes / seconds / 1e9 : 0.0;
    j["phases"] = {{"plan_seconds", plan_seconds}, {"read_seconds", st.seconds},
                   {"torch_wait_seconds", torch_seconds}};
    if (remote) {
      j["network"] = {{"first_byte_seconds", remote_stats.fetch.first_byte_seconds},
                      {"fetch_seconds", remote_stats.fetch.seconds},
                      {"requests", remote_stats.fetch.requests},
                      {"retries", remote_stats.fetch.retries},
                      {"resumed_bytes", remote_stats.fetch.resumed_bytes},
                      {"crc32c_verified", remote_stats.verified_crc32c}};
    }
    if (*disk_cache)
      j["cache"] = {{"dir", (*disk_cache)->dir()}, {"hit_bytes", remote_stats.cache_hit_bytes},
                    {"filled_bytes", remote_stats.cache_filled_bytes}};
    j["io"] = {{"engine", st.read.engine},         {"threads", st.read.threads},
               {"direct_bytes", st.read.direct_bytes}, {"requests", st.read.requests},
               {"short_reads", st.read.short_reads},   {"retries", st.read.retries}};
    if (!digests.empty()) j["digest_seconds"] = digest_seconds;
    j["tensor_library"] = args.torch ? torch.torch_version : "none (--no-torch)";
    {
      auto& tl = j["timeline"] = nlohmann::ordered_json::object();
      for (const auto& [phase, secs] : st.timeline.Entries()) tl[phase] = secs;
    }
    // ordered_json stores keys in a vector: take this reference only after the last new key.
    auto& arr = j["tensors"] = nlohmann::ordered_json::array();
    for (std::size_t i = 0; i < names.size(); ++i) {
      const auto& t = *names[i].entry;
      nlohmann::ordered_json row{{"name", t.name}, {"dtype", loader::DTypeName(t.dtype)}, {"shape", t.shape}};
      if (torch.raw_bytes[i]) row["torch_dtype"] = "uint8 (raw bytes: this libtorch has no such dtype)";
      if (!digests.empty()) row["sha256"] = digests[i];
      arr.push_back(std::move(row));
    }
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  if (!digests.empty())
    for (std::size_t i = 0; i < names.size(); ++i)
      std::printf("%s  %s\n", digests[i].c_str(), names[i].entry->name.c_str());
  std::size_t raw = 0;
  for (bool r : torch.raw_bytes) raw += r;
  std::string how;
  if (remote) {
    how = "http: " + std::to_string(remote_stats.fetch.requests) + " ranged GETs, " +
          std::to_string(remote_stats.fetch.retries) + " retries, " +
          (remote_stats.verified_crc32c ? "CRC32C verified" : "no CRC32C on the server");
  } else {
    char buf[96];
    std::snprintf(buf, sizeof buf, "%s x%u, %.0f%% O_DIRECT", st.read.engine.c_str(), st.read.threads,
                  bytes > 0 ? 100.0 * static_cast<double>(st.read.direct_bytes) / bytes : 0.0);
    how = buf;
  }
  how += CacheSummary(disk_cache->get(), remote_stats.cache_hit_bytes, remote_stats.cache_filled_bytes);
  std::printf("loaded %zu tensors (%s) from %zu file%s to %s in %.3f s: %s [%s]%s\n", names.size(),
              FormatBytes(bytes).c_str(), model->layout().files.size(), model->layout().files.size() == 1 ? "" : "s",
              args.device.c_str(), seconds, FormatRate(seconds > 0 ? bytes / seconds : 0).c_str(), how.c_str(),
              raw ? (" (" + std::to_string(raw) + " tensors as raw bytes: dtype missing in " + torch.torch_version + ")").c_str()
                  : "");
  return 0;
}

}  // namespace coldstart::cli
