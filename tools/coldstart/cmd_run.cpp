// `coldstart run`: from a model source to generated tokens, computing layer N of the prompt as
// soon as layer N has arrived. --json prints the Timeline from process start.
#include <cstdio>
#include <optional>
#include <nlohmann/json.hpp>

#include "cancel.h"
#include "cli.h"
#include "commands.h"
#include "run_model.h"

namespace coldstart::cli {
int RunRun(const RunArgs& args) {
  InstallCancelSignals();
  if (args.prompt.empty() == args.prompt_ids.empty())
    return ReportError(MakeError(Errc::kInvalidArgument, "give exactly one of --prompt TEXT and --prompt-ids IDS"));
  if (args.chat && args.prompt.empty())
    return ReportError(MakeError(Errc::kInvalidArgument, "--chat applies the chat template to --prompt TEXT"));
  runtime::SamplingOptions sampling{args.temperature, args.top_k, args.top_p, args.seed};
  if (auto st = runtime::Validate(sampling); !st.ok()) return ReportError(st.error());
  if (args.max_new_tokens < 1) return ReportError(MakeError(Errc::kInvalidArgument, "--max-new-tokens must be at least 1"));
  auto mode = ParseProgressMode(args.model.read.progress);
  if (!mode.ok()) return ReportError(mode.error());
  ProgressPrinter bar(*mode, "load");
  auto m = StartModel(args.model, [&bar](std::uint64_t done, std::uint64_t total) {
    bar.Update(done, total);
    return !CancelRequested();
  });
  if (CancelRequested()) return ReportCancelled("run");
  if (!m.ok()) return ReportError(m.error());
  auto prompt = PromptIds(*m, args.prompt, args.prompt_ids, args.chat);
  if (!prompt.ok()) return ReportError(prompt.error());
  if (auto st = FinishModel(*m, args.model); !st.ok()) return ReportError(st.error());
  runtime::GenerateOptions go;
  go.max_new_tokens = args.max_new_tokens;
  go.ignore_eos = args.ignore_eos;
  go.eos_ids = m->eos_ids;
  go.sampling = sampling;
  // Text as it is generated (not with --json); a character split over tokens waits for its end.
  std::optional<runtime::DecodeStream> stream;
  if (m->tokenizer && !args.json) {
    stream.emplace(*m->tokenizer);
    if (auto st = stream->Prime(*prompt); !st.ok()) return ReportError(st.error());
  }
  bool bar_done = false;
  go.on_token = [&](std::int32_t id) {
    if (!bar_done) {
      bar.Finish();
      bar_done = true;
    }
    if (stream) {
      if (auto piece = stream->Next(id); piece.ok() && !piece->empty()) {
        std::fwrite(piece->data(), 1, piece->size(), stdout);
        std::fflush(stdout);
      }
    }
    return !CancelRequested();
  };
  auto r = m->generator->Generate(*prompt, go);
  if (!bar_done) bar.Finish();
  if (CancelRequested()) return ReportCancelled("run");
  if (!r.ok()) return ReportError(r.error());
  // The load may still be verifying the last object: its errors count.
  if (auto st = m->load->WaitAll(); !st.ok()) return ReportError(st.error());
  const auto& lt = m->load->timeline();
  if (args.json) {
    nlohmann::ordered_json j;
    j["source"] = args.model.source;
    j["model"] = m->generator->Describe();
    j["libtorch"] = m->torch_version;
    j["prompt_ids"] = *prompt;
    j["output_ids"] = r->output_ids;
    j["text"] = nullptr;
    if (m->tokenizer) {
      auto text = m->tokenizer->Decode(r->output_ids);
      if (!text.ok()) return ReportError(text.error());
      j["text"] = std::move(*text);
    }
    auto& tl = j["top_logits"] = nlohmann::ordered_json::array();
    for (const auto& [id, logit] : r->top_logits) tl.push_back({id, logit});
    j["stop_reason"] = r->stop_reason;
    nlohmann::ordered_json t;
    t["libtorch_loaded"] = m->marks.Seconds("libtorch");
    for (const auto& [phase, secs] : lt.Entries()) t[phase == "ready" ? "load_ready" : phase] = secs;
    t["config"] = m->marks.Seconds("config");
    t["generator"] = m->marks.Seconds("generator");
    auto& layers = t["layers"] = nlohmann::ordered_json::array();
    for (std::size_t i = 0; i < m->layers->ready.size(); ++i)
      layers.push_back({{"layer", i}, {"ready", m->layers->ready[i].load()}, {"computed", m->layers->computed[i].load()}});
    t["first_token"] = r->first_token_s;
    t["last_token"] = r->last_token_s;
    j["timeline"] = std::move(t);
    j["prefill_seconds"] = r->prefill_seconds;
    j["tokens_per_s"] = r->tokens_per_s;
    j["converted_weight_bytes"] = m->generator->converted_bytes();
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  if (stream) {
    const std::string rest = stream->Finish();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
  } else {
    for (std::size_t i = 0; i < r->output_ids.size(); ++i) std::printf("%s%d", i ? "," : "", r->output_ids[i]);
  }
  std::printf("\n");
  std::fflush(stdout);
  std::fprintf(stderr, "coldstart run: %zu tokens (%s); load ready %.2f s, first token %.2f s, %.1f tokens/s after it [%s]\n",
               r->output_ids.size(), r->stop_reason.c_str(), lt.Seconds("ready"), r->first_token_s, r->tokens_per_s,
               m->generator->Describe().c_str());
  return 0;
}

}  // namespace coldstart::cli
