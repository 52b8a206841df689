// `coldstart load`: the only subcommand that touches libtorch.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli.h"
#include "coldstart/fetch/hash.h"
#include "coldstart/runtime/state_dict.h"
#include "commands.h"
#include "options.h"

namespace coldstart::cli {

std::string ShapeText(const std::vector<std::uint64_t>& shape);

namespace {

// SHA-256 of every tensor, spread over the cores (one tensor per task, largest first).
std::vector<std::string> DigestAll(const runtime::StateDict& sd) {
  const auto& ts = sd.tensors();
  std::vector<std::string> out(ts.size());
  std::vector<std::size_t> order(ts.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return ts[a].tensor.nbytes() > ts[b].tensor.nbytes();
  });
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t k; (k = next.fetch_add(1)) < order.size();) {
      const auto& t = ts[order[k]].tensor;
      fetch::Sha256 h;
      h.Update(t.data_ptr(), t.nbytes());
      out[order[k]] = h.HexDigest();
    }
  };
  unsigned n = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
  std::vector<std::thread> threads;
  for (unsigned i = 1; i < n; ++i) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  return out;
}

}  // namespace

int RunLoad(const LoadArgs& args) {
  const auto t0 = std::chrono::steady_clock::now();
  if (args.device != "cpu") {
    return ReportError(MakeError(Errc::kInvalidArgument,
                                 "--device " + args.device + " is not supported yet; use --device cpu"));
  }
  auto opts = MakeHostLoadOptions(args.read);
  if (!opts.ok()) return ReportError(opts.error());
  auto mode = ParseProgressMode(args.read.progress);
  if (!mode.ok()) return ReportError(mode.error());

  auto layout = loader::OpenLocalModel(args.source);
  if (!layout.ok()) return ReportError(layout.error());
  const double plan_seconds = SecondsSince(t0);

  ProgressPrinter bar(*mode, "load");
  opts->progress = [&bar](std::uint64_t done, std::uint64_t total) {
    bar.Update(done, total);
    return true;
  };
  auto host = loader::LoadToHost(std::move(layout).value(), *opts);
  bar.Finish();
  if (!host.ok()) return ReportError(host.error());
  std::shared_ptr<const loader::HostModel> model = std::move(host).value();
  runtime::StateDict sd;
  try {
    sd = runtime::ToStateDict(model);
  } catch (const runtime::LoadError& e) {
    return ReportError(e.error());
  }
  const double seconds = SecondsSince(t0);
  const auto& st = model->stats();
  std::vector<std::string> digests;
  double digest_seconds = 0;
  if (!args.digest.empty()) {
    auto d0 = std::chrono::steady_clock::now();
    digests = DigestAll(sd);
    digest_seconds = SecondsSince(d0);
  }
  const double bytes = static_cast<double>(st.bytes);
  if (args.json) {
    nlohmann::ordered_json j;
    j["source"] = args.source;
    j["device"] = args.device;
    j["bytes"] = st.bytes;
    j["seconds"] = seconds;
    j["gb_per_s"] = seconds > 0 ? bytes / seconds / 1e9 : 0.0;
    j["phases"] = {{"plan_seconds", plan_seconds}, {"read_seconds", st.seconds}};
    j["io"] = {{"engine", st.read.engine},         {"threads", st.read.threads},
               {"direct_bytes", st.read.direct_bytes}, {"requests", st.read.requests},
               {"short_reads", st.read.short_reads},   {"retries", st.read.retries}};
    if (!digests.empty()) j["digest_seconds"] = digest_seconds;
    auto& arr = j["tensors"] = nlohmann::ordered_json::array();
    for (std::size_t i = 0; i < sd.tensors().size(); ++i) {
      const auto& t = sd.tensors()[i];
      nlohmann::ordered_json row{{"name", t.name}, {"dtype", loader::DTypeName(t.dtype)}, {"shape", t.shape}};
      if (t.raw_bytes) row["torch_dtype"] = "uint8 (raw bytes: this libtorch has no such dtype)";
      if (!digests.empty()) row["sha256"] = digests[i];
      arr.push_back(std::move(row));
    }
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  if (!digests.empty())
    for (std::size_t i = 0; i < sd.tensors().size(); ++i)
      std::printf("%s  %s\n", digests[i].c_str(), sd.tensors()[i].name.c_str());
  std::size_t raw = 0;
  for (const auto& t : sd.tensors()) raw += t.raw_bytes;
  std::printf("loaded %zu tensors (%s) from %zu file%s to %s in %.3f s: %s [%s x%u, %.0f%% O_DIRECT]%s\n",
              sd.tensors().size(), FormatBytes(bytes).c_str(), model->layout().files.size(),
              model->layout().files.size() == 1 ? "" : "s", args.device.c_str(), seconds,
              FormatRate(seconds > 0 ? bytes / seconds : 0).c_str(), st.read.engine.c_str(), st.read.threads,
              bytes > 0 ? 100.0 * static_cast<double>(st.read.direct_bytes) / bytes : 0.0,
              raw ? (" (" + std::to_string(raw) + " tensors as raw bytes: dtype missing in " +
                     runtime::TorchVersionString() + ")").c_str()
                  : "");
  return 0;
}

}  // namespace coldstart::cli
