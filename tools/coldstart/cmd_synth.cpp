#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli.h"
#include "coldstart/core/env.h"
#include "coldstart/loader/synth.h"
#include "commands.h"

namespace coldstart::cli {

int RunSynth(const SynthArgs& args) {
  loader::SynthOptions o;
  o.preset = args.preset;
  o.shards = args.shards;
  o.seed = args.seed;
  if (!args.size.empty()) {
    auto s = ParseBytes(args.size);
    if (!s.ok()) return ReportError(std::move(s).error().WithContext("--size"));
    if (*s < 4096) return ReportError(MakeError(Errc::kInvalidArgument, "--size must be at least 4 KiB"));
    o.size_bytes = *s;
  }
  auto t0 = std::chrono::steady_clock::now();
  ProgressPrinter bar(ProgressMode::kAuto, "synth");
  auto r = loader::SynthesizeModel(args.out, o, [&](std::uint64_t d, std::uint64_t t) { bar.Update(d, t); });
  bar.Finish();
  if (!r.ok()) return ReportError(r.error());
  double secs = SecondsSince(t0);
  if (args.json) {
    nlohmann::ordered_json j{{"out", args.out},           {"preset", o.preset},   {"layers", r->layers},
                             {"tensors", r->tensors},     {"bytes", r->tensor_bytes},
                             {"files", r->files},         {"seconds", secs}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("wrote %s: %llu tensors, %u layers, %s in %zu files (%.2f s)\n", args.out.c_str(),
                static_cast<unsigned long long>(r->tensors), r->layers,
                FormatBytes(static_cast<double>(r->tensor_bytes)).c_str(), r->files.size(), secs);
  }
  return 0;
}

int RunEnv() {
  const Env env = Env::FromProcess();
  for (const auto& v : KnownEnvVars()) {
    // Secrets (tokens) and URL passwords are never printed: env output lands in build logs.
    auto cur = env.Get(v.name);
    std::string shown = cur ? " = " + RedactEnvValue(v.name, *cur) : "";
    std::printf("%s (default %s)%s\n    %s\n", std::string(v.name).c_str(), std::string(v.default_value).c_str(),
                shown.c_str(), std::string(v.doc).c_str());
  }
  if (auto st = env.Validate(); !st.ok()) return ReportError(st.error());
  return 0;
}

}  // namespace coldstart::cli
