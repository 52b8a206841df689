#include "run_model.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

#include "cancel.h"
#include "cli.h"
#include "coldstart/core/file_io.h"
#include "coldstart/fetch/url.h"
#include "coldstart/loader/copy_engine.h"
#include "coldstart/loader/remote_loader.h"
#include "options.h"

namespace coldstart::cli {
namespace {

std::vector<std::int64_t> EosIds(const RunningModel& m);

// Text files a model folder carries next to its shards (never large: tokenizer.json is at most
// tens of MB; Gemma's tokenizer.model is read instead of its 33 MB tokenizer.json).
constexpr std::uint64_t kMaxTextFile = 64ull << 20;

Result<std::string> ReadLocalText(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return MakePathError(path + ": cannot open", errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size > static_cast<off_t>(kMaxTextFile)) {
    ::close(fd);
    return MakeError(Errc::kFormat, path + ": not a readable file under 64 MiB");
  }
  std::string s(static_cast<std::size_t>(st.st_size), '\0');
  auto got = ReadAt(fd, s.data(), s.size(), 0, path);
  ::close(fd);
  if (!got.ok()) return std::move(got).error();
  s.resize(*got);
  return s;
}

// Reads `name` next to the model (local folder, or the remote folder): nullopt when absent.
Result<std::optional<std::string>> ReadSideFile(const fetch::Source& src, fetch::RemoteSession* session,
                                                const std::string& name) {
  if (session) {
    auto f = session->Stat(name);
    if (!f.ok()) {
      if (f.error().code == Errc::kNotFound) return std::optional<std::string>();
      return std::move(f).error();
    }
    CS_ASSIGN_OR_RETURN(auto body, session->GetSmall(*f, kMaxTextFile));
    return std::optional<std::string>(std::move(body));
  }
  std::string dir = src.path;
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
    const auto slash = dir.rfind('/');
    dir = slash == std::string::npos ? "." : dir.substr(0, slash);
  }
  const std::string path = dir + "/" + name;
  if (::access(path.c_str(), F_OK) != 0) return std::optional<std::string>();
  CS_ASSIGN_OR_RETURN(auto text, ReadLocalText(path));
  return std::optional<std::string>(std::move(text));
}

}  // namespace

F32Weights::F32Weights(std::shared_ptr<loader::LoadHandle> load, const runtime::ModelConfig& config)
    : load_(std::move(load)) {
  // The load's order (LoadOrder::kLayer): embeddings, each layer, then the rest.
  const auto& layout = load_->layout();
  std::vector<std::string> embed, rest;
  std::map<int, std::vector<std::string>> layers;
  for (const auto& t : layout.tensors) {
    auto p = load_->Place(t.name);
    if (!p.ok() || p->dtype != loader::DType::kBF16 || p->on_device || !runtime::IsDecoderTensor(config, t.name)) continue;
    if (t.name.ends_with("norm.weight")) continue;  // the model makes its own f32 (1 + w) of these
    wanted_.insert(t.name);
    const int layer = loader::TensorLayer(t.name);
    if (layer >= 0) {
      layers[layer].push_back(t.name);
    } else if (t.name.find("embed") != std::string::npos) {
      embed.push_back(t.name);
    } else {
      rest.push_back(t.name);
    }
  }
  groups_.push_back(std::move(embed));
  for (auto& [layer, names] : layers) groups_.push_back(std::move(names));
  groups_.push_back(std::move(rest));
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "cs-f32");
    Run();
  });
}

F32Weights::~F32Weights() {
  stop_ = true;
  load_->Cancel();  // only reached when the run ends: a wait below must not outlive it
  if (thread_.joinable()) thread_.join();
}

void F32Weights::Run() {
  for (const auto& group : groups_) {
    for (const auto& name : group) {
      if (stop_ || !load_->WaitTensor(name).ok()) {
        std::lock_guard lk(mu_);
        finished_ = true;
        cv_.notify_all();
        return;
      }
      auto p = load_->Place(name);
      const std::uint64_t n = p->nbytes / 2;
      std::unique_ptr<float[]> out(new float[n]);
      loader::ConvertBf16ToF32(reinterpret_cast<const std::byte*>(p->address), n, reinterpret_cast<std::byte*>(out.get()));
      std::lock_guard lk(mu_);
      done_.emplace(name, std::move(out));
      cv_.notify_all();
    }
  }
  std::lock_guard lk(mu_);
  finished_ = true;
  cv_.notify_all();
}

const float* F32Weights::Get(const std::string& name) {
  if (!wanted_.contains(name)) return nullptr;
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return finished_ || done_.contains(name); });
  auto it = done_.find(name);
  return it == done_.end() ? nullptr : it->second.get();
}

std::shared_future<Result<const TorchPluginApi*>> StartTorchAfter(const loader::LoadHandle* load,
                                                                  std::thread* prefetch) {
  if (prefetch && prefetch->joinable()) prefetch->join();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (load && std::chrono::steady_clock::now() < deadline) {
    const auto& t = load->timeline();
    if (t.Has("io_started") || t.Has("first_byte") || load->progress().finished) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  // At the normal CPU priority: the dlopen (~0.4 s of one core: symbol lookups and libtorch's
  // operator registration) is on the critical path of every command that needs tensors. At
  // nice 19 it got almost no CPU while the readers ran and then ran alone on one core (a warm
  // 2 GiB `load`: median 1.09 s at nice 19, 0.98 s without, 5 runs each). The thread ends after
  // the dlopen; libtorch starts no thread while loading.
  return std::async(std::launch::async, [] { return LoadTorchPlugin(); }).share();
}

Result<std::vector<std::int32_t>> ParseIdList(const std::string& text) {
  std::vector<std::int32_t> ids;
  std::size_t i = 0;
  while (i < text.size()) {
    std::size_t j = text.find(',', i);
    if (j == std::string::npos) j = text.size();
    std::string item = text.substr(i, j - i);
    while (!item.empty() && item.front() == ' ') item.erase(0, 1);
    while (!item.empty() && item.back() == ' ') item.pop_back();
    char* end = nullptr;
    errno = 0;
    const long v = item.empty() ? -1 : std::strtol(item.c_str(), &end, 10);
    if (item.empty() || errno != 0 || *end != '\0' || v < 0 || v > INT32_MAX)
      return MakeError(Errc::kInvalidArgument, "--prompt-ids: '" + item + "' is not a token id (a comma-separated list like 2,17,200)");
    ids.push_back(static_cast<std::int32_t>(v));
    i = j + 1;
  }
  if (ids.empty()) return MakeError(Errc::kInvalidArgument, "--prompt-ids is empty");
  return ids;
}

Result<RunningModel> StartModel(const ModelRunFlags& flags, std::function<bool(std::uint64_t, std::uint64_t)> progress) {
  RunningModel m;
  // libtorch's libraries are read ahead while the model opens (cold page cache: half the dlopen).
  std::thread prefetch(PrefetchTorchLibraries);
  struct Join {
    std::thread& t;
    ~Join() {
      if (t.joinable()) t.join();
    }
  } join{prefetch};
  CS_ASSIGN_OR_RETURN(m.device, loader::ParseDevice(flags.device));
  CS_ASSIGN_OR_RETURN(auto dtype, runtime::ParseComputeDType(flags.dtype));
  CS_ASSIGN_OR_RETURN(auto src, fetch::ParseSource(flags.source));
  CS_ASSIGN_OR_RETURN(auto disk_cache, SourceCache(flags.source, flags.cache));
  CS_ASSIGN_OR_RETURN(auto opened, OpenModel(flags.source, flags.remote, disk_cache.get()));
  std::shared_ptr<fetch::RemoteSession> session = opened.remote ? opened.remote->session : nullptr;
  CS_ASSIGN_OR_RETURN(auto config_text, ReadSideFile(src, session.get(), "config.json"));
  if (!config_text)
    return MakeError(Errc::kNotFound, flags.source + ": no config.json next to the weights; coldstart run needs it to "
                                                      "know the architecture");
  std::vector<std::string> names;
  for (const auto& t : opened.layout().tensors) names.push_back(t.name);
  CS_ASSIGN_OR_RETURN(m.config, runtime::ParseModelConfig(*config_text, names));
  m.files["config.json"] = std::move(*config_text);
  m.marks.Mark("config");

  // The load: layer order (embeddings, layer 0, 1, ..., then the final norm and LM head), only
  // the decoder's tensors (a multimodal Gemma 3 checkpoint's vision tower is left out).
  loader::LoadOptions o;
  {
    const Env env = Env::FromProcess();
    CS_RETURN_IF_ERROR(env.Validate());
    CS_RETURN_IF_ERROR(o.ApplyEnv(env));
  }
  CS_ASSIGN_OR_RETURN(auto host, MakeHostLoadOptions(flags.read));
  o.read = host.read;
  o.arena = host.arena;
  o.device = m.device;
  o.order = loader::LoadOrder::kLayer;
  if (!flags.staging_bytes.empty()) {
    auto b = ParseBytes(flags.staging_bytes);
    if (!b.ok()) return std::move(b).error().WithContext("--staging-bytes");
    o.staging_bytes = *b;
  }
  bool all_decoder = true;
  for (const auto& n : names) all_decoder = all_decoder && runtime::IsDecoderTensor(m.config, n);
  if (!all_decoder) {
    auto config = m.config;
    o.filter = [config](const std::string& name) { return runtime::IsDecoderTensor(config, name); };
  }
  o.cache = disk_cache;
  o.progress = std::move(progress);
  m.layers = std::make_shared<LayerTimes>(static_cast<std::size_t>(m.config.num_layers));
  o.on_layer = [layers = m.layers](int layer) {
    if (layer >= 0 && static_cast<std::size_t>(layer) < layers->ready.size())
      layers->ready[layer] = Timeline::SinceProcessStart();
  };
  CS_ASSIGN_OR_RETURN(m.load, loader::StartLoad(std::move(opened), std::move(o)));
  if (m.device.kind != loader::DeviceKind::kCuda && dtype != runtime::ComputeDType::kBF16)
    m.f32 = std::make_shared<F32Weights>(m.load, m.config);
  m.torch = StartTorchAfter(m.load.get(), &prefetch);

  // While the weights stream: the tokenizer's files. Gemma's tokenizer.model makes its 33 MB
  // tokenizer.json unnecessary.
  std::vector<std::string> wanted = {"generation_config.json", "tokenizer_config.json", "tokenizer.model"};
  for (const auto& name : wanted) {
    CS_ASSIGN_OR_RETURN(auto text, ReadSideFile(src, session.get(), name));
    if (text) m.files[name] = std::move(*text);
  }
  if (!m.files.contains("tokenizer.model")) {
    CS_ASSIGN_OR_RETURN(auto text, ReadSideFile(src, session.get(), "tokenizer.json"));
    if (text) m.files["tokenizer.json"] = std::move(*text);
  }
  if (m.files.contains("tokenizer.model") || m.files.contains("tokenizer.json")) {
    auto tok = runtime::LoadTokenizer(m.files);
    if (tok.ok()) {
      m.tokenizer = std::move(tok).value();
    } else {
      m.tokenizer_error = std::move(tok).error();
    }
  } else {
    m.tokenizer_error = MakeError(Errc::kNotFound, flags.source + " has no tokenizer.model or tokenizer.json");
  }
  m.eos_ids = EosIds(m);
  return m;
}

Status FinishModel(RunningModel& m, const ModelRunFlags& flags) {
  const auto& plugin = m.torch.get();
  if (!plugin.ok()) return plugin.error();
  m.marks.Mark("libtorch");
  const TorchPluginApi* api = *plugin;
  m.torch_version = api->torch_version();
  api->set_threads(static_cast<int>(flags.threads));
  CS_ASSIGN_OR_RETURN(auto dtype, runtime::ParseComputeDType(flags.dtype));
  runtime::ModelOptions mo;
  mo.dtype = dtype;
  mo.on_layer = [layers = m.layers](int layer, bool computed) {
    if (computed && layer >= 0 && static_cast<std::size_t>(layer) < layers->computed.size())
      layers->computed[layer] = Timeline::SinceProcessStart();
  };
  if (m.f32) mo.f32_weights = [f32 = m.f32](const std::string& name) { return f32->Get(name); };
  CS_ASSIGN_OR_RETURN(m.generator, api->make_generator(m.load, m.config, std::move(mo)));
  m.marks.Mark("generator");
  return OkStatus();
}

namespace {

runtime::ChatFormat ChatFormatOf(runtime::Family f) {
  switch (f) {
    case runtime::Family::kGemma3:
    case runtime::Family::kGemma2: return runtime::ChatFormat::kGemma;
    case runtime::Family::kLlama: return runtime::ChatFormat::kLlama3;
    case runtime::Family::kQwen2: return runtime::ChatFormat::kQwen2;
  }
  return runtime::ChatFormat::kNone;
}

}  // namespace

// The prompt's ids: --prompt-ids as given, or --prompt through the model's tokenizer (and its
// chat template with --chat).
Result<std::vector<std::int32_t>> PromptIds(const RunningModel& m, const std::string& prompt, const std::string& ids, bool chat) {
  if (!ids.empty()) return ParseIdList(ids);
  if (!m.tokenizer) return Error(m.tokenizer_error).WithContext("--prompt needs the model's tokenizer (or use --prompt-ids)");
  if (chat) {
    CS_ASSIGN_OR_RETURN(auto text, runtime::ApplyChatTemplate(ChatFormatOf(m.config.family), prompt));
    return m.tokenizer->Encode(text, /*add_special=*/false);
  }
  return m.tokenizer->Encode(prompt, /*add_special=*/true);
}

namespace {

// config.json's, generation_config.json's and the tokenizer's end-of-sequence ids, once.
std::vector<std::int64_t> EosIds(const RunningModel& m) {
  std::vector<std::int64_t> ids = m.config.eos_token_ids;
  auto add = [&](std::int64_t id) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  };
  if (auto it = m.files.find("generation_config.json"); it != m.files.end()) {
    auto j = nlohmann::json::parse(it->second, nullptr, false);
    if (j.is_object() && j.contains("eos_token_id")) {
      const auto& e = j["eos_token_id"];
      if (e.is_number_integer()) add(e.get<std::int64_t>());
      if (e.is_array())
        for (const auto& v : e)
          if (v.is_number_integer()) add(v.get<std::int64_t>());
    }
  }
  if (m.tokenizer)
    for (auto id : m.tokenizer->eos_ids()) add(id);
  return ids;
}

}  // namespace

}  // namespace coldstart::cli
