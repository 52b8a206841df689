// coldstart: fast cold starts for LLM containers. See README.md for every subcommand.
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "cli.h"
#include "coldstart/core/log.h"
#include "coldstart/core/env.h"
#include "commands.h"
#include "torch_plugin.h"

namespace {

void AddReadFlags(CLI::App* cmd, coldstart::cli::ReadFlags* f) {
  cmd->add_option("--io-engine", f->io_engine, "Local read engine: auto|uring|pread (default auto; env COLDSTART_IO_ENGINE)");
  cmd->add_option("--direct-io", f->direct_io, "O_DIRECT for local reads: auto|on|off (default auto; env COLDSTART_DIRECT_IO)");
  cmd->add_option("--chunk", f->chunk, "Bytes per local read request, e.g. 8MiB (env COLDSTART_READ_CHUNK)");
  cmd->add_option("--threads", f->threads, "I/O threads, 0 = one per core (env COLDSTART_READ_THREADS)")
      ->check(CLI::Range(0u, 256u));
  cmd->add_option("--queue-depth", f->queue_depth, "Reads in flight per I/O thread (env COLDSTART_READ_QUEUE_DEPTH)")
      ->check(CLI::Range(1u, 4096u));
  cmd->add_option("--progress", f->progress, "auto|bar|json|off: a bar on a TTY by default, JSON lines on stderr with json");
}

void AddRemoteFlags(CLI::App* cmd, coldstart::cli::RemoteFlags* f) {
  cmd->add_option("--endpoint", f->endpoint, "GCS endpoint (default https://storage.googleapis.com; env STORAGE_EMULATOR_HOST, COLDSTART_ENDPOINT)");
  cmd->add_option("--access-token", f->access_token, "OAuth2 access token (env COLDSTART_ACCESS_TOKEN); never printed");
  cmd->add_flag("--anonymous", f->anonymous, "Send no credentials (public buckets)");
  cmd->add_option("--header", f->headers, "Extra request header 'Name: value' on every request (repeatable, like curl -H)");
  cmd->add_option("--concurrency", f->concurrency, "Ranged GETs in flight (default 32; env COLDSTART_CONCURRENCY)")
      ->check(CLI::Range(1u, 1024u));
  cmd->add_option("--remote-chunk", f->chunk, "Bytes per ranged GET, e.g. 16MiB (env COLDSTART_CHUNK)");
  cmd->add_option("--cacert", f->cacert, "PEM file of CA certificates to trust instead of the system's (private endpoints)")->check(CLI::ExistingFile);
  cmd->add_flag("--http2", f->http2, "Use HTTP/2 (env COLDSTART_HTTP2); HTTP/1.1 connections are faster under per-connection caps");
}

// The name within edit distance 2 of `word` (or having it as a prefix), "" if none.
std::string ClosestName(const std::string& word, const std::vector<std::string>& names) {
  std::string best;
  std::size_t best_d = 3;
  for (const auto& n : names) {
    // Optimal string alignment distance: an adjacent transposition ("laod") is one edit.
    std::vector<std::vector<std::size_t>> d(word.size() + 1, std::vector<std::size_t>(n.size() + 1));
    for (std::size_t i = 0; i <= word.size(); ++i) d[i][0] = i;
    for (std::size_t j = 0; j <= n.size(); ++j) d[0][j] = j;
    for (std::size_t i = 1; i <= word.size(); ++i)
      for (std::size_t j = 1; j <= n.size(); ++j) {
        d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (word[i - 1] == n[j - 1] ? 0 : 1)});
        if (i > 1 && j > 1 && word[i - 1] == n[j - 2] && word[i - 2] == n[j - 1])
          d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    const std::size_t dist = n.rfind(word, 0) == 0 && !word.empty() ? 1 : d[word.size()][n.size()];
    if (dist < best_d) best_d = dist, best = n;
  }
  return best;
}

void AddModelRunFlags(CLI::App* cmd, coldstart::cli::ModelRunFlags* f) {
  cmd->add_option("source", f->source, "A model folder, gs://BUCKET/PREFIX or an http(s) URL of one (config.json next to the weights)")->required();
  cmd->add_option("--device", f->device, "Where to compute: cpu, cuda, cuda:N (sim: host compute over the stand-in device)")->capture_default_str();
  cmd->add_option("--dtype", f->dtype, "Compute dtype: auto (bf16 on CUDA, f32 on CPU), f32, bf16")->capture_default_str()
      ->check(CLI::IsMember({"auto", "f32", "bf16"}));
  cmd->add_option("--compute-threads", f->threads, "libtorch threads (0 = one per core)")->check(CLI::Range(0u, 1024u));
  cmd->add_option("--staging-bytes", f->staging_bytes, "Staging budget for device loads, e.g. 1GiB (env COLDSTART_STAGING_BYTES)");
  cmd->add_flag("--cache", f->cache.use, "Keep fetched objects in the disk cache and serve them from it");
  cmd->add_option("--cache-dir", f->cache.dir, "Disk cache folder (implies --cache; env COLDSTART_CACHE_DIR)");
  cmd->add_option("--cache-max-bytes", f->cache.max_bytes, "Cap the disk cache, e.g. 40GiB (env COLDSTART_CACHE_MAX_BYTES)");
  AddReadFlags(cmd, &f->read);
  AddRemoteFlags(cmd, &f->remote);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace coldstart::cli;
  CLI::App app{"coldstart: load safetensors models fast from GCS, HTTP(S) or local disk", "coldstart"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("coldstart ") + COLDSTART_VERSION);

  InspectArgs inspect;
  auto* ci = app.add_subcommand("inspect", "List a model's tensors (name, dtype, shape, bytes, file) from the headers only");
  ci->add_option("source", inspect.source, "A .safetensors file, a model folder, gs://BUCKET/PREFIX or an http(s) URL (headers only)")->required();
  ci->add_flag("--json", inspect.json, "Print {\"tensors\": [{name, dtype, shape, file, data_offsets}, ...]}");
  AddRemoteFlags(ci, &inspect.remote);

  LoadArgs load;
  auto* cl = app.add_subcommand("load", "Load every tensor into memory and report bytes, seconds and GB/s");
  cl->add_option("source", load.source, "A .safetensors file, a model folder, gs://BUCKET/PREFIX or an http(s) URL")->required();
  cl->add_option("--device", load.device, "Where tensors go: cpu, cuda, cuda:N, or sim (the stand-in device)")->capture_default_str();
  cl->add_option("--staging-bytes", load.staging_bytes, "Staging budget for device loads, e.g. 1GiB (default: 1/8 of free memory, at most 2 GiB; env COLDSTART_STAGING_BYTES)");
  cl->add_option("--sim-bandwidth", load.sim_bandwidth, "Copy bandwidth of --device sim in bytes/s, e.g. 12GB (default 25 GB/s; env COLDSTART_SIM_BANDWIDTH)");
  cl->add_flag("--sim-discard", load.sim_discard, "--device sim checksums and discards bytes (models larger than RAM)");
  cl->add_option("--only", load.only, "Load only tensors whose name matches this glob (repeatable)");
  cl->add_option("--order", load.order, "Fetch order for device loads: file | largest | layer (default file)");
  cl->add_option("--convert", load.convert, "Convert BF16 tensors on the device: none | f16 | f32 (default none)");
  cl->add_option("--digest", load.digest, "Also print each tensor's digest: sha256")->check(CLI::IsMember({"sha256"}));
  cl->add_flag("--json", load.json, "Print {bytes, seconds, tensors: [{name, dtype, shape, sha256}, ...]}");
  cl->add_flag("!--no-torch", load.torch, "Stop at host memory: do not load libtorch or make torch::Tensors");
  cl->add_flag("--cache", load.cache.use, "Keep fetched objects in the disk cache and serve them from it ($XDG_CACHE_HOME/coldstart unless --cache-dir or COLDSTART_CACHE_DIR)");
  cl->add_option("--cache-dir", load.cache.dir, "Disk cache folder (implies --cache; env COLDSTART_CACHE_DIR)");
  cl->add_option("--cache-max-bytes", load.cache.max_bytes, "Cap the disk cache, e.g. 40GiB: least recently used objects not in use are evicted (env COLDSTART_CACHE_MAX_BYTES)");
  AddReadFlags(cl, &load.read);
  AddRemoteFlags(cl, &load.remote);

  RunArgs run;
  auto* cr = app.add_subcommand("run", "Generate tokens from a model (Gemma 3, Gemma 2, Llama, Qwen2), computing while the weights arrive");
  AddModelRunFlags(cr, &run.model);
  cr->add_option("--prompt", run.prompt, "Prompt text (encoded with the model's tokenizer)");
  cr->add_option("--prompt-ids", run.prompt_ids, "Prompt as token ids, e.g. 2,17,200 (no tokenizer needed)");
  cr->add_flag("--chat", run.chat, "Wrap --prompt in the model's chat template (Gemma, Llama 3, Qwen2)");
  cr->add_option("--max-new-tokens", run.max_new_tokens, "Tokens to generate at most")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cr->add_flag("--ignore-eos", run.ignore_eos, "Do not stop at the end-of-sequence token");
  cr->add_option("--temperature", run.temperature, "0 = greedy (default); above 0 samples")->check(CLI::Range(0.0, 100.0));
  cr->add_option("--top-k", run.top_k, "Sample among the k most likely tokens (0 = all)")->check(CLI::Range(0, 1 << 30));
  cr->add_option("--top-p", run.top_p, "Sample within the smallest set of tokens whose probability reaches p (1 = all)")->check(CLI::Range(0.0, 1.0));
  cr->add_option("--seed", run.seed, "Sampling seed (the same seed gives the same tokens)");
  cr->add_flag("--json", run.json, "Print {prompt_ids, output_ids, text, top_logits, timeline, tokens_per_s}");

  ServeArgs serve;
  auto* csv = app.add_subcommand("serve", "Serve a model over HTTP: /health (503 while loading) and OpenAI-style /v1/completions");
  AddModelRunFlags(csv, &serve.model);
  csv->add_option("--host", serve.host, "Address to listen on (0.0.0.0 in a container)")->capture_default_str();
  csv->add_option("--port", serve.port, "Port (0: one the kernel picks, printed)")->capture_default_str()->check(CLI::Range(0, 65535));
  csv->add_option("--served-model-name", serve.model_name, "\"model\" in responses (default: the source)");
  csv->add_option("--max-new-tokens", serve.max_new_tokens, "max_tokens of a request that gives none")->capture_default_str()->check(CLI::Range(1, 1 << 20));

  PrefetchArgs prefetch;
  auto* cp = app.add_subcommand("prefetch", "Copy a model folder from gs:// or http(s):// to local disk, verified, as fast as the network allows");
  cp->add_option("source", prefetch.source, "gs://BUCKET/PREFIX, gs://BUCKET/OBJECT or an http(s) URL")->required();
  cp->add_option("dest", prefetch.dest, "Local folder")->required();
  cp->add_option("--include", prefetch.include, "Only names matching this glob (repeatable)");
  cp->add_option("--exclude", prefetch.exclude, "Skip names matching this glob (repeatable)");
  cp->add_flag("--json", prefetch.json, "Print a JSON summary {files, skipped, bytes, seconds, gb_per_s, retries}");
  cp->add_flag("--fsync", prefetch.fsync, "Flush each file before renaming it, to survive a power loss (env COLDSTART_PREFETCH_FSYNC)");
  cp->add_option("--progress", prefetch.progress, "auto|bar|json|off");
  cp->add_flag("--cache", prefetch.cache.use, "Copy what the disk cache holds instead of fetching it, and put what is fetched into it ($XDG_CACHE_HOME/coldstart unless --cache-dir or COLDSTART_CACHE_DIR)");
  cp->add_option("--cache-dir", prefetch.cache.dir, "Disk cache folder (implies --cache; env COLDSTART_CACHE_DIR)");
  cp->add_option("--cache-max-bytes", prefetch.cache.max_bytes, "Cap the disk cache, e.g. 40GiB (env COLDSTART_CACHE_MAX_BYTES)");
  AddRemoteFlags(cp, &prefetch.remote);

  PreloadArgs preload;
  auto* cpl = app.add_subcommand("preload", "Container entrypoint: fetch a model (or mount it) while answering a startup probe, then run CMD");
  cpl->add_option("source", preload.source, "gs://BUCKET/PREFIX or an http(s) folder URL")->required();
  auto* to = cpl->add_option("--to", preload.to, "Prefetch into this folder (verified), then start CMD");
  auto* mnt = cpl->add_option("--mount", preload.mount, "Mount the source here (FUSE, disk cache below), start CMD at once");
  to->excludes(mnt);
  cpl->add_option("--probe-port", preload.probe_port, "Serve the startup probe on this port (any path; 0 = a free port, printed)")
      ->check(CLI::Range(0, 65535));
  cpl->add_option("--probe-host", preload.probe_host, "Address the probe listens on")->capture_default_str();
  cpl->add_option("--ready-url", preload.ready_url, "CMD's health URL: the probe answers 200 only once it does too");
  cpl->add_option("--cache-dir", preload.cache_dir, "Disk cache for --mount (env COLDSTART_CACHE_DIR; default $XDG_CACHE_HOME/coldstart)");
  cpl->add_option("--progress", preload.progress, "auto|bar|json|off: a bar on a TTY, JSON lines on stderr otherwise");
  cpl->add_option("--progress-interval", preload.progress_interval, "Seconds between JSON progress lines")
      ->capture_default_str()->check(CLI::Range(0.1, 3600.0));
  cpl->add_option("--include", preload.include, "Only objects whose relative name matches this glob (repeatable)");
  cpl->add_option("--exclude", preload.exclude, "Skip objects whose relative name matches this glob (repeatable)");
  cpl->add_flag("--fsync", preload.fsync, "--to: flush each file before its rename (env COLDSTART_PREFETCH_FSYNC)");
  AddRemoteFlags(cpl, &preload.remote);
  cpl->add_option("cmd", preload.cmd, "-- CMD ARGS...: the server to run, with COLDSTART_MODEL_DIR set");

  MountArgs mount;
  auto* cm = app.add_subcommand("mount", "Mount a model read-only (FUSE) with a disk cache below; runs until SIGTERM, SIGINT or fusermount3 -u");
  cm->add_option("source", mount.source, "gs://BUCKET/PREFIX, an http(s) folder URL or a local folder")->required();
  cm->add_option("mountpoint", mount.mountpoint, "An empty folder to mount on")->required();
  cm->add_option("--cache-dir", mount.cache_dir, "Disk cache folder (default: env COLDSTART_CACHE_DIR, else $XDG_CACHE_HOME/coldstart or ~/.cache/coldstart)");
  cm->add_option("--cache-max-bytes", mount.cache_max_bytes, "Cap on the cache's size, e.g. 20GiB; least recently used objects not in use are evicted (env COLDSTART_CACHE_MAX_BYTES)");
  cm->add_option("--read-ahead", mount.read_ahead, "all: fetch every file at once (default); open: a file once opened; none: only what read() asks for")
      ->check(CLI::IsMember({"all", "open", "none"}));
  cm->add_option("--memory", mount.memory, "Memory for chunk buffers (read-ahead in flight and recently read chunks), e.g. 256MiB (default 256 MiB)");
  cm->add_option("--read-deadline", mount.read_deadline_s, "Seconds a read() may wait for its bytes before failing with EIO (default 120)")
      ->check(CLI::PositiveNumber);
  cm->add_flag("--allow-other", mount.allow_other, "Let other users read the mount (needs user_allow_other in /etc/fuse.conf unless root)");
  cm->add_option("--progress", mount.progress, "auto|bar|json|off: read-ahead progress on stderr");
  AddRemoteFlags(cm, &mount.remote);

  AuthArgs auth;
  auto* ca = app.add_subcommand("auth", "Say which credential source and identity coldstart would use");
  ca->add_option("source", auth.source, "A gs:// or http(s) source (default gs://)");
  AddRemoteFlags(ca, &auth.remote);

  SynthArgs synth;
  auto* cs = app.add_subcommand("synth", "Write a deterministic synthetic Gemma-3-style model folder (BF16 shards, index, config)");
  cs->add_option("out", synth.out, "Folder to write")->required();
  cs->add_option("--preset", synth.preset, "tiny | gemma-3-270m | gemma-3-1b | gemma-3-4b")->capture_default_str();
  cs->add_option("--size", synth.size, "Approximate total tensor bytes, e.g. 2GiB (layers are added or removed)");
  cs->add_option("--shards", synth.shards, "Number of shard files (default: one per 2 GiB)");
  cs->add_option("--seed", synth.seed, "Seed for the weights")->capture_default_str();
  cs->add_flag("--json", synth.json, "Print a JSON summary");

  CacheArgs cache_args;
  auto* cc = app.add_subcommand("cache", "Look at and maintain the disk cache: ls, verify, evict, clear");
  cc->require_subcommand(1);
  std::vector<CLI::App*> cache_actions;
  for (const auto& [name, what] : std::vector<std::pair<std::string, std::string>>{
           {"ls", "One line per cached object (origin, name, version, cached/size, last use, in use) and a total"},
           {"verify", "Read every cached chunk back and check its CRC32C; corrupt ones are cleared (exit 5)"},
           {"evict", "Remove least recently used objects not in use until the cache fits --max-bytes"},
           {"clear", "Remove every object not in use, and the saved listings"}}) {
    auto* a = cc->add_subcommand(name, what);
    a->add_option("--cache-dir", cache_args.cache_dir, "Cache folder (env COLDSTART_CACHE_DIR; default $XDG_CACHE_HOME/coldstart or ~/.cache/coldstart)");
    a->add_flag("--json", cache_args.json, "Print JSON");
    if (name == "evict")
      a->add_option("--max-bytes", cache_args.max_bytes, "Size to evict down to, e.g. 20GiB (default COLDSTART_CACHE_MAX_BYTES)");
    cache_actions.push_back(a);
  }

  BenchArgs bench;
  auto* cb = app.add_subcommand("bench", "Time a cold start the usual ways and coldstart's, side by side: phases, a table, --json, --html");
  cb->add_option("source", bench.source, "A model folder (served by a fake GCS server on loopback), gs://BUCKET/PREFIX or an http(s) URL");
  cb->add_option("--scenario", bench.scenarios,
                 "copy-then-load, parallel-copy-then-load, prefetch-then-load, load, load-cache-cold, load-cache-warm, "
                 "device, first-token, server (repeatable; default all but device and server)");
  cb->add_option("--runs", bench.runs, "Runs of each scenario (min, median, max)")->capture_default_str()->check(CLI::Range(1, 1000));
  cb->add_flag("--cold", bench.cold, "Drop the model's pages from the page cache before each run (says how)");
  cb->add_option("--json", bench.json, "Write one row per scenario, peer, run and replica here (README: coldstart bench)");
  cb->add_option("--html", bench.html, "Write a self-contained HTML report here");
  cb->add_option("--cap-per-connection", bench.cap_per_connection, "Per-connection rate of the fake server, e.g. 50MB (= 50 MB/s)");
  cb->add_option("--cap-link", bench.cap_link, "Rate of all the fake server's connections together, e.g. 1GB");
  cb->add_option("--replicas", bench.replicas, "Start each scenario this many times at once against one origin")
      ->capture_default_str()->check(CLI::Range(1, 256));
  cb->add_option("--compare", bench.compare, "OLD.json NEW.json: the medians' changes; exit 1 when one is >10% slower")->expected(2);
  cb->add_option("--cmd", bench.server_cmd, "Scenario server: the command ({src}: the model's URL, {coldstart}: this executable)");
  cb->add_option("--ready-url", bench.ready_url, "Scenario server: ready when this URL answers 200");
  cb->add_option("--request", bench.request_file, "Scenario server: POST this JSON file once ready, and time its answer")->check(CLI::ExistingFile);
  cb->add_option("--request-url", bench.request_url, "Scenario server: where --request goes (default: the ready URL's origin + /v1/completions)");
  cb->add_option("--device", bench.device, "Scenario device: sim or cuda[:N]")->capture_default_str();
  cb->add_option("--work-dir", bench.work_dir, "Folder for copies and caches (default $TMPDIR or /tmp)");
  cb->add_option("--timeout", bench.timeout_s, "Seconds one child process may take")->capture_default_str()->check(CLI::PositiveNumber);

  auto* ce = app.add_subcommand("env", "List the COLDSTART_* environment variables, their defaults and values");

  // CLI11 reads an unknown first word as a stray positional and says "A subcommand is required".
  if (argc > 1 && argv[1][0] != '-') {
    std::vector<std::string> names;
    for (const auto* sub : app.get_subcommands({})) names.push_back(sub->get_name());
    if (std::find(names.begin(), names.end(), argv[1]) == names.end()) {
      std::string hint = ClosestName(argv[1], names);
      if (hint.empty()) {
        hint = "not one of";
        for (const auto& n : names) hint += (n == names.front() ? " " : ", ") + n;
      } else {
        hint = "did you mean '" + hint + "'?";
      }
      std::fprintf(stderr, "coldstart: error: unknown subcommand '%s' (%s)\n", argv[1], hint.c_str());
      return 2;
    }
  }
  // The same for `cache ACTION`.
  if (argc > 2 && std::string(argv[1]) == "cache" && argv[2][0] != '-') {
    const std::string action = argv[2];
    if (std::none_of(cache_actions.begin(), cache_actions.end(), [&](CLI::App* a) { return a->get_name() == action; })) {
      std::fprintf(stderr, "coldstart: error: unknown cache action '%s' (one of ls, verify, evict, clear)\n", argv[2]);
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    // One line on stderr for usage errors too.
    std::fprintf(stderr, "coldstart: error: %s (see coldstart %s--help)\n", e.what(),
                 app.get_subcommands().empty() ? "" : (app.get_subcommands()[0]->get_name() + " ").c_str());
    return 2;
  }
  if (auto v = coldstart::Env::FromProcess().Get("COLDSTART_PROGRESS")) {
    if (auto m = ParseProgressMode(*v); !m.ok()) return ReportError(std::move(m).error().WithContext("COLDSTART_PROGRESS"));
  }
  if (auto st = coldstart::ConfigureLogging(coldstart::Env::FromProcess()); !st.ok()) return ReportError(st.error());
  auto dispatch = [&]() -> int {
    if (cb->parsed()) {
      for (int i = 0; i < argc; ++i) bench.command_line += (i ? " " : "") + std::string(argv[i]);
      return RunBench(bench);
    }
    if (ci->parsed()) return RunInspect(inspect);
    if (cl->parsed()) return RunLoad(load);
    if (cr->parsed()) return RunRun(run);
    if (csv->parsed()) return RunServe(serve);
    if (cs->parsed()) return RunSynth(synth);
    if (ce->parsed()) return RunEnv();
    if (cp->parsed()) return RunPrefetch(prefetch);
    if (cpl->parsed()) return RunPreload(preload);
    if (ca->parsed()) return RunAuth(auth);
    if (cm->parsed()) return RunMount(mount);
    for (auto* a : cache_actions)
      if (a->parsed()) {
        cache_args.action = a->get_name();
        return RunCache(cache_args);
      }
    return 2;
  };
  const int rc = dispatch();
  if (TorchPluginLoaded()) {
    // libtorch's static destructors deregister its ~2,000 operators one by one (0.1-0.2 s of a
    // warm 2 GiB `load`'s exit); nothing of ours is left to run once the command has returned
    // (its threads are joined, its files closed), so the process ends without them.
    std::fflush(nullptr);
    ::_exit(rc);
  }
  return rc;
}
