#pragma once

#include <cstdint>
#include <string>

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

struct InspectArgs {
  std::string source;
  bool json = false;
};

struct LoadArgs {
  std::string source;
  std::string device = "cpu";
  std::string digest;  // "" or "sha256"
  bool json = false;
  bool torch = true;   // wrap as torch::Tensors through the libtorch plugin
  ReadFlags read;
};

struct SynthArgs {
  std::string out;
  std::string preset = "tiny";
  std::string size;  // size text; empty = preset's own
  unsigned shards = 0;
  std::uint64_t seed = 0;
  bool json = false;
};

int RunInspect(const InspectArgs& args);
int RunLoad(const LoadArgs& args);
int RunSynth(const SynthArgs& args);
int RunEnv();

}  // namespace coldstart::cli
