#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace coldstart::cli {

// Flags shared by every subcommand that reads a model.
struct ReadFlags {
  std::string io_engine;   // empty: options/env default
  std::string direct_io;
  std::string chunk;       // size text, e.g. 8MiB
  unsigned threads = 0;
  unsigned queue_depth = 0;
  std::string progress = "auto";
};

// Flags of every subcommand that reads gs:// or http(s):// sources.
struct RemoteFlags {
  std::string endpoint;               // --endpoint
  std::string access_token;           // --access-token
  bool anonymous = false;             // --anonymous
  std::vector<std::string> headers;   // --header 'K: V'
  unsigned concurrency = 0;           // --concurrency
  std::string chunk;                  // --chunk (remote)
  bool http2 = false;                 // --http2
  std::string cacert;                 // --cacert
};

// The disk cache: used when --cache-dir or --cache is given, or COLDSTART_CACHE_DIR is set.
struct CacheFlags {
  bool use = false;         // --cache: the default folder ($XDG_CACHE_HOME/coldstart)
  std::string dir;          // --cache-dir
  std::string max_bytes;    // --cache-max-bytes (size text)
};

struct InspectArgs {
  std::string source;
  bool json = false;
  RemoteFlags remote;
};

struct LoadArgs {
  std::string source;
  std::string device = "cpu";
  std::string digest;  // "" or "sha256"
  bool json = false;
  bool torch = true;   // wrap as torch::Tensors through the libtorch plugin
  ReadFlags read;
  RemoteFlags remote;
  // Device streaming (--device cuda[:N] | sim).
  std::string staging_bytes;          // --staging-bytes
  std::string sim_bandwidth;          // --sim-bandwidth (bytes per second, e.g. 12GB)
  bool sim_discard = false;           // --sim-discard
  std::vector<std::string> only;      // --only GLOB (tensor names)
  std::string order;                  // --order file|largest|layer ("" = file)
  std::string convert;                // --convert none|f16|f32 (BF16 tensors; "" = none)
  CacheFlags cache;
};

struct SynthArgs {
  std::string out;
  std::string preset = "tiny";
  std::string size;  // size text; empty = preset's own
  unsigned shards = 0;
  std::uint64_t seed = 0;
  bool json = false;
};

struct PrefetchArgs {
  std::string source, dest;
  std::vector<std::string> include, exclude;
  bool json = false;
  bool fsync = false;
  std::string progress = "auto";
  RemoteFlags remote;
  CacheFlags cache;
};

struct PreloadArgs {
  std::string source;
  std::string to, mount;               // exactly one
  int probe_port = -1;                 // -1: no probe server; 0: any free port (printed)
  std::string probe_host = "0.0.0.0";
  std::string ready_url;               // CMD's health URL; the probe needs its 200 too
  std::string cache_dir;               // --mount: the disk cache
  std::string progress = "auto";       // auto: a bar on a TTY, JSON lines otherwise
  double progress_interval = 5;        // seconds between JSON progress lines
  std::vector<std::string> include, exclude;
  bool fsync = false;
  RemoteFlags remote;
  std::vector<std::string> cmd;        // CMD ARGS... (after --)
};

struct MountArgs {
  std::string source, mountpoint;
  std::string cache_dir;        // --cache-dir; else COLDSTART_CACHE_DIR, else the default
  std::string cache_max_bytes;  // --cache-max-bytes (size text)
  std::string read_ahead = "all";
  std::string memory;           // --memory (size text): chunk buffers
  double read_deadline_s = 0;   // --read-deadline; 0 = MountOptions' default
  bool allow_other = false;
  std::string progress = "auto";
  RemoteFlags remote;
};

struct AuthArgs {
  std::string source;  // empty: GCS credentials (they do not depend on the bucket)
  RemoteFlags remote;
};

// `coldstart cache ls|verify|evict|clear`.
struct CacheArgs {
  std::string action;     // ls | verify | evict | clear
  std::string cache_dir;  // --cache-dir ("" = COLDSTART_CACHE_DIR, else the XDG default)
  std::string max_bytes;  // evict --max-bytes (size text; "" = COLDSTART_CACHE_MAX_BYTES)
  bool json = false;
};

// What `run` and `serve` share: the model, where it computes, and how it is read.
struct ModelRunFlags {
  std::string source;
  std::string device = "cpu";   // cpu | cuda[:N] | sim
  std::string dtype = "auto";   // auto | f32 | bf16
  unsigned threads = 0;         // libtorch compute threads; 0 = one per core
  std::string staging_bytes;    // device loads
  ReadFlags read;
  RemoteFlags remote;
  CacheFlags cache;
};

struct RunArgs {
  ModelRunFlags model;
  std::string prompt;           // --prompt TEXT (needs the model's tokenizer)
  std::string prompt_ids;       // --prompt-ids 2,17,200
  bool chat = false;            // wrap --prompt in the model's chat template
  std::int64_t max_new_tokens = 32;
  bool ignore_eos = false;
  double temperature = 0;       // 0: greedy
  std::int64_t top_k = 0;
  double top_p = 1.0;
  std::uint64_t seed = 0;
  bool json = false;
};

struct ServeArgs {
  ModelRunFlags model;
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string model_name;       // "model" in responses; default: the source
  std::int64_t max_new_tokens = 16;   // max_tokens of a request that gives none (OpenAI: 16)
};

// `coldstart bench` (bench/include/coldstart/bench/runner.h says what each field does).
struct BenchArgs {
  std::string source;
  std::vector<std::string> scenarios;   // --scenario (repeatable); none: the defaults
  int runs = 1;
  bool cold = false;
  std::string json, html;               // --json FILE, --html FILE
  std::string cap_per_connection;       // rate text, e.g. 50MB
  std::string cap_link;
  int replicas = 1;
  std::vector<std::string> compare;     // --compare OLD.json NEW.json
  std::string server_cmd, ready_url, request_file, request_url;  // scenario server
  std::string device = "sim";           // scenario device
  std::string work_dir;
  double timeout_s = 3600;
  std::string command_line;             // recorded in the report
};

int RunBench(const BenchArgs& args);
int RunRun(const RunArgs& args);
int RunServe(const ServeArgs& args);
int RunPrefetch(const PrefetchArgs& args);
int RunPreload(const PreloadArgs& args);
int RunCache(const CacheArgs& args);
int RunAuth(const AuthArgs& args);
int RunMount(const MountArgs& args);
int RunInspect(const InspectArgs& args);
int RunLoad(const LoadArgs& args);
int RunSynth(const SynthArgs& args);
int RunEnv();

}  // namespace coldstart::cli
