// `coldstart serve`: the model behind a small OpenAI-style HTTP server, so a preloader or the
// benchmark sees the time to the first answer the way a vLLM user does.
//   GET  /health          503 while loading, 200 once every weight is in place (a failed load
//                         ends the process with the load's exit code)
//   GET  /v1/models       the one model
//   POST /v1/completions  {"prompt": text | [ids], "max_tokens", "temperature", "top_p",
//                          "top_k", "seed", "stop", "stream", "ignore_eos"}; SSE with "stream"
// The server listens before the load starts: the probe sees progress from the first second.
// One request computes at a time (the others wait their turn).
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "cancel.h"
#include "cli.h"
#include "commands.h"
#include "run_model.h"

namespace coldstart::cli {

namespace {

using json = nlohmann::ordered_json;

struct Request {
  std::vector<std::int32_t> prompt;
  runtime::GenerateOptions gen;
  std::vector<std::string> stop;
  bool stream = false;
};

std::string ErrorBody(const std::string& message, const char* type = "invalid_request_error") {
  return json{{"error", {{"message", message}, {"type", type}}}}.dump();
}

// An OpenAI completions request, every field checked (a wrong type is a 400 naming it).
Result<Request> ParseRequest(const std::string& body, const RunningModel& m, std::int64_t default_max) {
  auto j = nlohmann::json::parse(body, nullptr, false);
  auto bad = [](const std::string& what) { return MakeError(Errc::kInvalidArgument, what); };
  if (j.is_discarded() || !j.is_object()) return bad("the body must be a JSON object");
  Request r;
  auto it = j.find("prompt");
  if (it == j.end()) return bad("\"prompt\" is required");
  if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) {
    CS_ASSIGN_OR_RETURN(r.prompt, PromptIds(m, (*it)[0].get<std::string>(), "", false));
  } else if (it->is_string()) {
    CS_ASSIGN_OR_RETURN(r.prompt, PromptIds(m, it->get<std::string>(), "", false));
  } else if (it->is_array() && !it->empty()) {
    for (const auto& v : *it) {
      if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() > INT32_MAX)
        return bad("\"prompt\" must be a string or a list of token ids");
      r.prompt.push_back(static_cast<std::int32_t>(v.get<std::int64_t>()));
    }
  } else {
    return bad("\"prompt\" must be a string, a list of one string, or a list of token ids");
  }
  auto number = [&](const char* key, double def, double lo, double hi) -> Result<double> {
    auto f = j.find(key);
    if (f == j.end() || f->is_null()) return def;
    if (!f->is_number()) return bad("\"" + std::string(key) + "\" must be a number");
    const double v = f->get<double>();
    if (!(v >= lo && v <= hi)) return bad("\"" + std::string(key) + "\" must be in [" + json(lo).dump() + ", " + json(hi).dump() + "]");
    return v;
  };
  auto flag = [&](const char* key) -> Result<bool> {
    auto f = j.find(key);
    if (f == j.end() || f->is_null()) return false;
    if (!f->is_boolean()) return bad("\"" + std::string(key) + "\" must be true or false");
    return f->get<bool>();
  };
  CS_ASSIGN_OR_RETURN(double max_tokens, number("max_tokens", static_cast<double>(default_max), 1, 1 << 20));
  if (max_tokens != static_cast<std::int64_t>(max_tokens)) return bad("\"max_tokens\" must be an integer");
  r.gen.max_new_tokens = static_cast<std::int64_t>(max_tokens);
  // OpenAI's defaults: temperature 1, top_p 1; top_k -1 or 0 (vLLM) means all tokens.
  CS_ASSIGN_OR_RETURN(r.gen.sampling.temperature, number("temperature", 1.0, 0, 100));
  CS_ASSIGN_OR_RETURN(r.gen.sampling.top_p, number("top_p", 1.0, 1e-9, 1));
  CS_ASSIGN_OR_RETURN(double top_k, number("top_k", 0, -1, 1 << 30));
  r.gen.sampling.top_k = top_k < 0 ? 0 : static_cast<std::int64_t>(top_k);
  CS_ASSIGN_OR_RETURN(double seed, number("seed", 0, 0, 1e18));
  r.gen.sampling.seed = static_cast<std::uint64_t>(seed);
  CS_ASSIGN_OR_RETURN(r.stream, flag("stream"));
  CS_ASSIGN_OR_RETURN(r.gen.ignore_eos, flag("ignore_eos"));
  CS_ASSIGN_OR_RETURN(double n, number("n", 1, 1, 1 << 20));
  if (n != 1) return bad("\"n\" must be 1: one completion per request");
  if (auto s = j.find("stop"); s != j.end() && !s->is_null()) {
    if (s->is_string()) {
      r.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      for (const auto& v : *s) {
        if (!v.is_string()) return bad("\"stop\" must be a string or a list of strings");
        r.stop.push_back(v.get<std::string>());
      }
    } else {
      return bad("\"stop\" must be a string or a list of strings");
    }
    std::erase(r.stop, std::string());
    if (!r.stop.empty() && !m.tokenizer) return bad("\"stop\" needs the model's tokenizer");
  }
  r.gen.eos_ids = m.eos_ids;
  return r;
}

struct Server {
  ServeArgs args;
  httplib::Server http;
  std::atomic<int> phase{0};  // 0 loading, 1 ready, 2 failed
  std::atomic<std::uint64_t> done{0}, total{0};
  std::string failure;        // set before phase = 2
  RunningModel model;         // complete once phase == 1
  std::mutex compute_mu;      // one generation at a time
  std::atomic<std::uint64_t> next_id{1};
  std::string model_name;

  json Chunk(const std::string& id, std::int64_t created, const std::string& text, const char* finish) {
    json choice{{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", finish ? json(finish) : json(nullptr)}};
    return json{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", model_name},
                {"choices", json::array({choice})}};
  }

  void Health(const httplib::Request&, httplib::Response& res) {
    json j;
    const int p = phase.load();
    if (p == 1) {
      res.status = 200;
      j = {{"status", "ok"}, {"model", model_name}};
    } else if (p == 2) {
      res.status = 500;
      j = {{"status", "failed"}, {"error", failure}};
    } else {
      res.status = 503;
      j = {{"status", "loading"}, {"bytes_done", done.load()}, {"bytes_total", total.load()}};
    }
    res.set_header("Cache-Control", "no-store");
    res.set_content(j.dump() + "\n", "application/json");
  }

  void Completions(const httplib::Request& req, httplib::Response& res) {
    if (phase.load() != 1) {
      res.status = 503;
      res.set_content(ErrorBody(phase.load() == 2 ? "the model failed to load: " + failure : "the model is still loading",
                                "service_unavailable"),
                      "application/json");
      return;
    }
    auto parsed = ParseRequest(req.body, model, args.max_new_tokens);
    if (!parsed.ok()) {
      res.status = 400;
      res.set_content(ErrorBody(parsed.error().message), "application/json");
      return;
    }
    auto r = std::make_shared<Request>(std::move(parsed).value());
    const std::string id = "cmpl-" + std::to_string(next_id.fetch_add(1));
    const std::int64_t created = std::chrono::duration_cast<std::chrono::seconds>(
                                     std::chrono::system_clock::now().time_since_epoch()).count();
    if (!r->stream) {
      std::lock_guard lk(compute_mu);
      std::string text;
      std::optional<runtime::DecodeStream> ds;
      if (model.tokenizer) ds.emplace(*model.tokenizer);
      bool stopped_by_string = false;
      r->gen.on_token = [&](std::int32_t tok) {
        if (ds) {
          if (auto piece = ds->Next(tok); piece.ok()) text += *piece;
          if (TruncateAtStop(text, r->stop)) {
            stopped_by_string = true;
            return false;
          }
        }
        return true;
      };
      auto g = model.generator->Generate(r->prompt, r->gen);
      if (!g.ok()) {
        res.status = g.error().code == Errc::kInvalidArgument ? 400 : 500;
        res.set_content(ErrorBody(g.error().message), "application/json");
        return;
      }
      if (ds && !stopped_by_string) text += ds->Finish();
      json out = Chunk(id, created, text, FinishReason(*g, stopped_by_string));
      out["usage"] = {{"prompt_tokens", r->prompt.size()},
                      {"completion_tokens", g->output_ids.size()},
                      {"total_tokens", r->prompt.size() + g->output_ids.size()}};
      if (!model.tokenizer) out["choices"][0]["token_ids"] = g->output_ids;
      res.set_content(out.dump() + "\n", "application/json");
      return;
    }
    // Server-sent events: one chunk per token as it is generated, then the finish reason and
    // [DONE]. A client that goes away stops the generation.
    res.set_header("Cache-Control", "no-store");
    res.set_chunked_content_provider("text/event-stream", [this, r, id, created](std::size_t, httplib::DataSink& sink) {
      std::lock_guard lk(compute_mu);
      std::optional<runtime::DecodeStream> ds;
      if (model.tokenizer) ds.emplace(*model.tokenizer);
      std::string text;
      bool stopped_by_string = false, gone = false;
      auto send = [&](const json& j) {
        const std::string line = "data: " + j.dump() + "\n\n";
        if (!sink.write(line.data(), line.size())) gone = true;
        return !gone;
      };
      r->gen.on_token = [&](std::int32_t tok) {
        std::string piece;
        if (ds) {
          auto p = ds->Next(tok);
          if (p.ok()) piece = *p;
          const std::size_t before = text.size();
          text += piece;
          if (TruncateAtStop(text, r->stop)) {
            stopped_by_string = true;
            piece = text.size() > before ? text.substr(before) : "";
            if (!piece.empty()) send(Chunk(id, created, piece, nullptr));
            return false;
          }
        }
        json c = Chunk(id, created, piece, nullptr);
        if (!model.tokenizer) c["choices"][0]["token_ids"] = {tok};
        return send(c);
      };
      auto g = model.generator->Generate(r->prompt, r->gen);
      if (gone) return false;
      if (!g.ok()) {
        send(json{{"error", {{"message", g.error().message}, {"type", "server_error"}}}});
      } else {
        std::string rest = ds && !stopped_by_string ? ds->Finish() : "";
        send(Chunk(id, created, rest, FinishReason(*g, stopped_by_string)));
      }
      const std::string done_line = "data: [DONE]\n\n";
      sink.write(done_line.data(), done_line.size());
      sink.done();
      return true;
    });
  }

  static const char* FinishReason(const runtime::GenerateResult& g, bool stopped_by_string) {
    return stopped_by_string || g.stop_reason == "eos" ? "stop" : "length";
  }

  // Cuts `text` at the first stop string; true when one was found.
  static bool TruncateAtStop(std::string& text, const std::vector<std::string>& stop) {
    std::size_t cut = std::string::npos;
    for (const auto& s : stop) cut = std::min(cut, text.find(s));
    if (cut == std::string::npos) return false;
    text.resize(cut);
    return true;
  }
};

}  // namespace

int RunServe(const ServeArgs& args) {
  InstallCancelSignals();
  auto s = std::make_unique<Server>();
  s->args = args;
  s->model_name = args.model_name.empty() ? args.model.source : args.model_name;
  s->http.new_task_queue = [] { return new httplib::ThreadPool(8); };
  s->http.set_socket_options([](int sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  Server* sp = s.get();
  s->http.Get("/health", [sp](const httplib::Request& q, httplib::Response& r) { sp->Health(q, r); });
  s->http.Get("/v1/models", [sp](const httplib::Request&, httplib::Response& r) {
    json j{{"object", "list"}, {"data", json::array({json{{"id", sp->model_name}, {"object", "model"}, {"owned_by", "coldstart"}}})}};
    r.set_content(j.dump() + "\n", "application/json");
  });
  s->http.Post("/v1/completions", [sp](const httplib::Request& q, httplib::Response& r) { sp->Completions(q, r); });
  errno = 0;
  int port = args.port;
  if (port == 0) {
    port = s->http.bind_to_any_port(args.host);
  } else if (!s->http.bind_to_port(args.host, port)) {
    port = -1;
  }
  if (port <= 0) {
    const int err = errno;
    const std::string what = "serve: cannot listen on " + args.host + ":" + std::to_string(args.port);
    return ReportError(err ? MakeSysError(Errc::kIo, what, err) : MakeError(Errc::kIo, what));
  }
  std::thread listener([sp] {
    pthread_setname_np(pthread_self(), "cs-serve");
    sp->http.listen_after_bind();
  });
  for (int i = 0; i < 5000 && !s->http.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::fprintf(stderr, "coldstart serve: listening on http://%s:%d (loading %s)\n", args.host.c_str(), port,
               args.model.source.c_str());
  OnCancelSignal([sp] { sp->http.stop(); });

  // A model that cannot load ends the process (exit code as for `load`): the platform restarts
  // it or reports it, instead of a server that answers 500 forever.
  auto fail = [&](const Error& e) {
    sp->failure = e.message;
    sp->phase = 2;
    sp->http.stop();
    listener.join();
    OnCancelSignal({});
    if (CancelRequested()) return ReportCancelled("serve");
    return ReportError(e);
  };
  auto m = StartModel(args.model, [sp](std::uint64_t done, std::uint64_t total) {
    sp->done = done;
    sp->total = total;
    return !CancelRequested();
  });
  if (!m.ok()) return fail(m.error());
  sp->model = std::move(m).value();
  Status st = FinishModel(sp->model, args.model);
  if (st.ok()) st = sp->model.load->WaitAll();
  if (!st.ok()) return fail(st.error());
  sp->phase = 1;
  std::fprintf(stderr, "coldstart serve: ready at %.2f s since start [%s]\n", Timeline::SinceProcessStart(),
               sp->model.generator->Describe().c_str());
  listener.join();
  OnCancelSignal({});
  // SIGTERM is how a server is asked to end: exit 0.
  std::fprintf(stderr, "coldstart serve: stopped\n");
  return 0;
}

}  // namespace coldstart::cli
