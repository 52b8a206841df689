// `coldstart load --device cuda[:N]|sim`: the streaming pipeline (loader/device_loader.h).
#include <fnmatch.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "cancel.h"
#include "cli.h"
#include "coldstart/core/hash.h"
#include "coldstart/loader/device_loader.h"
#include "commands.h"
#include "options.h"
#include "torch_plugin.h"

namespace coldstart::cli {

std::function<bool(const std::string&)> OnlyFilter(const std::vector<std::string>& globs);

namespace {

Result<loader::DeviceLoadOptions> MakeDeviceOptions(const LoadArgs& args, const loader::DeviceSpec& device) {
  loader::DeviceLoadOptions o;
  const Env env = Env::FromProcess();
  CS_RETURN_IF_ERROR(env.Validate());
  CS_RETURN_IF_ERROR(o.ApplyEnv(env));
  CS_ASSIGN_OR_RETURN(auto host, MakeHostLoadOptions(args.read));
  o.read = host.read;
  o.device = device;
  if (!args.staging_bytes.empty()) {
    auto b = ParseBytes(args.staging_bytes);
    if (!b.ok()) return std::move(b).error().WithContext("--staging-bytes");
    o.staging_bytes = *b;
  }
  if (!args.sim_bandwidth.empty()) {
    auto b = ParseBytes(args.sim_bandwidth);
    if (!b.ok() || *b == 0) return MakeError(Errc::kInvalidArgument, "--sim-bandwidth: '" + args.sim_bandwidth + "' is not a positive rate in bytes/s");
    o.sim.bytes_per_second = static_cast<double>(*b);
  }
  o.sim.keep_bytes = !args.sim_discard;
  if (args.sim_discard && device.kind != loader::DeviceKind::kSim)
    return MakeError(Errc::kInvalidArgument, "--sim-discard only applies to --device sim");
  if (!args.sim_bandwidth.empty() && device.kind != loader::DeviceKind::kSim)
    return MakeError(Errc::kInvalidArgument, "--sim-bandwidth only applies to --device sim");
  if (!args.order.empty()) {
    auto order = loader::ParseLoadOrder(args.order);
    if (!order.ok()) return std::move(order).error().WithContext("--order");
    o.order = *order;
  }
  if (args.convert == "f16") o.bf16_conversion = loader::Conversion::kBf16ToF16;
  else if (args.convert == "f32") o.bf16_conversion = loader::Conversion::kBf16ToF32;
  else if (!args.convert.empty() && args.convert != "none")
    return MakeError(Errc::kInvalidArgument, "--convert '" + args.convert + "' is not one of none, f16, f32");
  if (!args.only.empty()) o.filter = OnlyFilter(args.only);
  return o;
}

}  // namespace

std::function<bool(const std::string&)> OnlyFilter(const std::vector<std::string>& globs) {
  return [globs](const std::string& name) {
    for (const auto& g : globs)
      if (::fnmatch(g.c_str(), name.c_str(), 0) == 0) return true;
    return false;
  };
}

Status CheckOnlyMatches(const loader::ModelLayout& layout, const std::vector<std::string>& globs) {
  if (globs.empty()) return OkStatus();
  auto keep = OnlyFilter(globs);
  for (const auto& t : layout.tensors)
    if (keep(t.name)) return OkStatus();
  std::string list;
  for (const auto& g : globs) list += (list.empty() ? "'" : ", '") + g + "'";
  return MakeError(Errc::kNotFound, layout.source + ": no tensor matches --only " + list);
}

Status CheckCpuLoadFlags(const LoadArgs& args, const loader::DeviceSpec& device) {
  // Invalid values are usage errors on every device; then the flags a host load cannot honour
  // are refused rather than ignored.
  CS_RETURN_IF_ERROR(MakeDeviceOptions(args, device));
  auto refuse = [](const std::string& why) { return MakeError(Errc::kInvalidArgument, why); };
  if (!args.order.empty() && args.order != "file")
    return refuse("--order " + args.order + " needs --device cuda or sim (a cpu load reads every file in one pass, in file order)");
  if (!args.convert.empty() && args.convert != "none")
    return refuse("--convert needs --device cuda or sim (a cpu load keeps the file's dtypes)");
  if (!args.staging_bytes.empty())
    return refuse("--staging-bytes needs --device cuda or sim (a cpu load reads straight into its arena, with no staging)");
  return OkStatus();
}

Result<std::shared_ptr<cache::DiskCache>> LoadCache(const LoadArgs& args);  // cmd_load.cpp
std::string CacheSummary(const cache::DiskCache* c, std::uint64_t hit, std::uint64_t filled);

int RunDeviceLoad(const LoadArgs& args, const loader::DeviceSpec& device) {
  const auto t0 = std::chrono::steady_clock::now();
  auto opts = MakeDeviceOptions(args, device);
  if (!opts.ok()) return ReportError(opts.error());
  if (!args.digest.empty() && args.sim_discard)
    return ReportError(MakeError(Errc::kInvalidArgument, "--digest needs the bytes: drop --sim-discard"));
  auto mode = ParseProgressMode(args.read.progress);
  if (!mode.ok()) return ReportError(mode.error());
  ProgressPrinter bar(*mode, "load " + device.ToString());
  opts->progress = [&bar](std::uint64_t done, std::uint64_t total) {
    bar.Update(done, total);
    return !CancelRequested();  // RunLoad installed the signal thread
  };
  std::atomic<std::uint64_t> ready{0};
  opts->on_ready = [&ready](const loader::DeviceTensor&) { ready.fetch_add(1); };
  auto disk_cache = LoadCache(args);
  if (!disk_cache.ok()) return ReportError(disk_cache.error());
  auto opened = OpenModel(args.source, args.remote, disk_cache->get());
  if (CancelRequested()) return ReportCancelled("load " + device.ToString());
  if (!opened.ok()) return ReportError(opened.error());
  if (auto st = CheckOnlyMatches(opened->layout(), args.only); !st.ok()) return ReportError(st.error());
  opts->cache = *disk_cache;
  auto model = opened->remote ? loader::LoadRemoteToDevice(std::move(*opened->remote), *opts)
                              : loader::LoadLocalToDevice(std::move(opened->local), *opts);
  bar.Finish();
  if (CancelRequested()) return ReportCancelled("load " + device.ToString());
  if (!model.ok()) return ReportError(model.error());
  const auto& m = **model;
  const auto& s = m.stats();
  const double total = SecondsSince(t0);
  std::vector<std::string> digests;
  if (!args.digest.empty()) {
    std::vector<std::uint64_t> sizes;
    for (const auto& t : m.tensors()) sizes.push_back(t.nbytes);
    // Read back from device memory, then hashed on the host.
    auto d = ParallelSha256(sizes, [&](std::size_t i, std::vector<std::byte>& buf) -> Result<const std::byte*> {
      buf.resize(m.tensors()[i].nbytes);
      CS_RETURN_IF_ERROR(m.ReadBack(m.tensors()[i], buf.data()));
      return static_cast<const std::byte*>(buf.data());
    });
    if (!d.ok()) return ReportError(d.error());
    digests = std::move(d).value();
  }
  if (CancelRequested()) return ReportCancelled("load " + device.ToString());
  auto rate = [](double bytes, double secs) { return secs > 0 ? bytes / secs / 1e9 : 0.0; };
  if (args.json) {
    nlohmann::ordered_json j;
    j["source"] = args.source;
    j["device"] = device.ToString();
    j["engine"] = s.engine;
    j["bytes"] = s.fetch_bytes;
    j["seconds"] = total;
    j["gb_per_s"] = rate(static_cast<double>(s.fetch_bytes), total);
    j["phases"] = {{"first_byte_seconds", s.first_byte_seconds},
                   {"fetch_seconds", s.fetch_seconds},
                   {"fetch_bytes", s.fetch_bytes},
                   {"fetch_gb_per_s", rate(static_cast<double>(s.fetch_bytes), s.fetch_seconds)},
                   {"h2d_seconds", s.h2d_seconds},
                   {"h2d_bytes", s.h2d_bytes},
                   {"h2d_gb_per_s", rate(static_cast<double>(s.h2d_bytes), s.h2d_seconds)},
                   {"total_seconds", s.total_seconds}};
    j["staging"] = {{"budget_bytes", s.staging_budget}, {"peak_bytes", s.peak_staging_bytes},
                    {"chunk_bytes", s.chunk_bytes}, {"copies", s.copies}};
    j["crc32c_verified"] = s.crc32c_verified;
    if (*disk_cache)
      j["cache"] = {{"dir", (*disk_cache)->dir()}, {"hit_bytes", s.cache_hit_bytes}, {"filled_bytes", s.cache_filled_bytes}};
    j["tensors_ready"] = ready.load();
    {
      auto& tl = j["timeline"] = nlohmann::ordered_json::object();
      for (const auto& [phase, secs] : s.timeline.Entries()) tl[phase] = secs;
    }
    auto& arr = j["tensors"] = nlohmann::ordered_json::array();
    for (std::size_t i = 0; i < m.tensors().size(); ++i) {
      const auto& t = m.tensors()[i];
      nlohmann::ordered_json row{{"name", t.entry->name}, {"dtype", loader::DTypeName(t.dtype)}, {"shape", t.entry->shape}};
      if (t.dtype != t.entry->dtype) row["source_dtype"] = loader::DTypeName(t.entry->dtype);
      if (!digests.empty()) row["sha256"] = digests[i];
      arr.push_back(std::move(row));
    }
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  for (std::size_t i = 0; i < digests.size(); ++i)
    std::printf("%s  %s\n", digests[i].c_str(), m.tensors()[i].entry->name.c_str());
  std::printf("loaded %zu tensors (%s) to %s in %.3f s: fetch %.2f GB/s, host-to-device %.2f GB/s, first byte after %.3f s, "
              "peak staging %s of %s [%s]%s\n",
              m.tensors().size(), FormatBytes(static_cast<double>(s.fetch_bytes)).c_str(), device.ToString().c_str(), total,
              rate(static_cast<double>(s.fetch_bytes), s.fetch_seconds), rate(static_cast<double>(s.h2d_bytes), s.h2d_seconds),
              s.first_byte_seconds, FormatBytes(static_cast<double>(s.peak_staging_bytes)).c_str(),
              FormatBytes(static_cast<double>(s.staging_budget)).c_str(), s.engine.c_str(),
              CacheSummary(disk_cache->get(), s.cache_hit_bytes, s.cache_filled_bytes).c_str());
  return 0;
}

}  // namespace coldstart::cli
