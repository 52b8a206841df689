// What `coldstart run` and `coldstart serve` share: start libtorch at the first instant (on a
// thread, off the critical path), open the model, read config.json and the tokenizer while the
// weights stream in layer order, then build the Generator over the load in progress.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "coldstart/core/timeline.h"
#include "coldstart/loader/engine.h"
#include "coldstart/runtime/config.h"
#include "coldstart/runtime/generator.h"
#include "coldstart/runtime/tokenizer.h"
#include "commands.h"
#include "torch_plugin.h"

namespace coldstart::cli {

// Seconds since process start when each layer arrived and when the first pass computed it.
struct LayerTimes {
  explicit LayerTimes(std::size_t n) : ready(n), computed(n) {
    for (auto& v : ready) v = -1;
    for (auto& v : computed) v = -1;
  }
  std::vector<std::atomic<double>> ready, computed;
};

// BF16 weights converted to f32 on a thread of its own as their layers arrive, for CPU f32
// compute: the conversion (and the first touch of its memory, which costs this VM more than the
// conversion) runs on one core while libtorch's dlopen runs on another, instead of after it.
class F32Weights {
 public:
  // Starts the thread (before libtorch's dlopen: see StartTorchAfter).
  F32Weights(std::shared_ptr<loader::LoadHandle> load, const runtime::ModelConfig& config);
  ~F32Weights();  // stops and joins the thread
  // The f32 copy of `name`, once converted (waits for it); nullptr when it is not a BF16 weight
  // of this load or the load failed.
  const float* Get(const std::string& name);

 private:
  void Run();
  std::shared_ptr<loader::LoadHandle> load_;
  std::vector<std::vector<std::string>> groups_;  // in load order: embeddings, layer 0.., rest
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::unique_ptr<float[]>> done_;  // GUARDED_BY(mu_)
  std::set<std::string> wanted_;
  bool finished_ = false;  // GUARDED_BY(mu_)
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

struct RunningModel {
  std::shared_ptr<loader::LoadHandle> load;
  std::shared_ptr<F32Weights> f32;  // CPU f32 compute only; outlives the generator below
  runtime::ModelConfig config;
  runtime::ModelTextFiles files;  // config.json, generation_config.json, tokenizer files
  std::unique_ptr<runtime::Tokenizer> tokenizer;  // null when the model folder has none
  Error tokenizer_error;                          // why it is null
  std::unique_ptr<runtime::Generator> generator;  // after Finish()
  // config.json's, generation_config.json's and the tokenizer's end-of-sequence ids (with the
  // chat end-of-turn), read once.
  std::vector<std::int64_t> eos_ids;
  std::shared_ptr<LayerTimes> layers;
  Timeline marks;  // "libtorch" (plugin loaded), "config", "generator"
  loader::DeviceSpec device;
  std::string torch_version;
  std::shared_future<Result<const TorchPluginApi*>> torch;  // libtorch loading (StartModel)
};

// Loads libtorch (the plugin) on a thread, once `load` has its threads running.
//
// Why not at the very first instant: while dlopen maps and relocates libtorch's ~290 libraries
// (about 0.3 s warm), glibc holds the loader lock that pthread_create needs, so a load whose
// reader or fetch threads start in that window waits for it (measured: a run's first byte moved
// from 3 ms to 0.37 s on a local 360 KB model, and from 0.06 s to 0.6-1.1 s from gs://). So this
// waits for the load's "io_started" mark (its threads exist; a few ms after StartLoad), at most
// 0.5 s.
// `prefetch`, when given, is PrefetchTorchLibraries' thread: joined first (no thread may be
// started while dlopen runs, and the read-ahead must be asked for before it).
std::shared_future<Result<const TorchPluginApi*>> StartTorchAfter(const loader::LoadHandle* load,
                                                                  std::thread* prefetch = nullptr);

// Opens the model and starts its load (layer order, decoder tensors only), then libtorch
// (StartTorchAfter); reads the text files and the tokenizer while both proceed. `progress` is
// the load's progress callback (false cancels).
Result<RunningModel> StartModel(const ModelRunFlags& flags, std::function<bool(std::uint64_t, std::uint64_t)> progress);

// Waits for libtorch, then builds the Generator over the load (returns while later layers
// still arrive).
Status FinishModel(RunningModel& m, const ModelRunFlags& flags);

// "2,17,200" -> ids.
Result<std::vector<std::int32_t>> ParseIdList(const std::string& text);

// The prompt's ids: `ids` ("2,17,200") as given, or `prompt` through the model's tokenizer (and
// its chat template with `chat`).
Result<std::vector<std::int32_t>> PromptIds(const RunningModel& m, const std::string& prompt, const std::string& ids,
                                            bool chat);

}  // namespace coldstart::cli
