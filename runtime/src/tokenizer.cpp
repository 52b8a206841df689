// LoadTokenizer (which tokenizer a model folder gets), chat templates and streaming decoding.
#include "coldstart/runtime/tokenizer.h"

#include <algorithm>

#include "text_internal.h"

namespace coldstart::runtime {

Result<std::string> Tokenizer::Decode(std::span<const std::int32_t> ids, bool skip_special) const {
  CS_ASSIGN_OR_RETURN(auto bytes, DecodeBytes(ids, skip_special));
  return detail::LossyUtf8(bytes);
}

// --- DecodeStream ---------------------------------------------------------------------------

DecodeStream::DecodeStream(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(&tokenizer), skip_special_(skip_special) {}

namespace {
// Tokens of context kept before the ones being decoded: one would do for SentencePiece's
// spaces; four also cover a character whose bytes span the whole window.
constexpr std::size_t kContextTokens = 4;
}  // namespace

Status DecodeStream::Prime(std::span<const std::int32_t> prompt_ids) {
  ids_.assign(prompt_ids.begin(), prompt_ids.end());
  window_start_ = ids_.size() > kContextTokens ? ids_.size() - kContextTokens : 0;
  CS_ASSIGN_OR_RETURN(auto bytes, tokenizer_->DecodeBytes(std::span(ids_).subspan(window_start_), skip_special_));
  // An incomplete character at the end of the prompt comes out with its completion.
  emitted_ = detail::CompleteUtf8Prefix(bytes);
  pending_.clear();
  return OkStatus();
}

Result<std::string> DecodeStream::Next(std::int32_t id) {
  ids_.push_back(id);
  auto window = std::span(ids_).subspan(window_start_);
  auto bytes = tokenizer_->DecodeBytes(window, skip_special_);
  if (!bytes.ok()) {
    ids_.pop_back();
    return std::move(bytes).error();
  }
  if (bytes->size() < emitted_)  // decoding more tokens never shortens the text before them
    return MakeError(Errc::kInternal, "streaming decode: the text of earlier tokens changed");
  const std::string_view fresh = std::string_view(*bytes).substr(emitted_);
  const std::size_t complete = detail::CompleteUtf8Prefix(fresh);
  std::string out = detail::LossyUtf8(fresh.substr(0, complete));
  emitted_ += complete;
  pending_.assign(fresh.substr(complete));
  if (pending_.empty() && ids_.size() - window_start_ > kContextTokens) {
    // Slide the window: keep the last tokens as context, counted as already emitted.
    window_start_ = ids_.size() - kContextTokens;
    CS_ASSIGN_OR_RETURN(auto context, tokenizer_->DecodeBytes(std::span(ids_).subspan(window_start_), skip_special_));
    emitted_ = context.size();
  }
  return out;
}

std::string DecodeStream::Finish() {
  std::string out = detail::LossyUtf8(pending_);
  emitted_ += pending_.size();
  pending_.clear();
  return out;
}

// --- chat templates -------------------------------------------------------------------------

namespace {
// Python's str.isspace, which Jinja's trim filter (str.strip) uses.
bool IsPythonSpace(char32_t cp) { return detail::IsUnicodeWhitespace(cp) || (cp >= 0x1C && cp <= 0x1F); }

std::string_view JinjaTrim(std::string_view s) {
  std::size_t begin = 0;
  while (begin < s.size()) {
    std::size_t len = 0;
    if (!IsPythonSpace(detail::DecodeUtf8At(s, begin, &len))) break;
    begin += len;
  }
  std::size_t end = s.size();
  while (end > begin) {
    std::size_t i = end - 1;
    while (i > begin && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    std::size_t len = 0;
    if (!IsPythonSpace(detail::DecodeUtf8At(s, i, &len))) break;
    end = i;
  }
  return s.substr(begin, end - begin);
}
}  // namespace

Result<std::string> ApplyChatTemplate(ChatFormat format, std::string_view user_prompt) {
  if (const auto bad = detail::FindInvalidUtf8(user_prompt); bad != std::string_view::npos)
    return MakeError(Errc::kInvalidArgument, "prompt is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  std::string out;
  switch (format) {
    case ChatFormat::kNone:
      return std::string(user_prompt);
    case ChatFormat::kGemma:
      out = "<bos><start_of_turn>user\n";
      out += JinjaTrim(user_prompt);
      out += "<end_of_turn>\n<start_of_turn>model\n";
      return out;
    case ChatFormat::kLlama3:
      out = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n";
      out += JinjaTrim(user_prompt);
      out += "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
      return out;
    case ChatFormat::kQwen2:
      out = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n";
      out += user_prompt;
      out += "<|im_end|>\n<|im_start|>assistant\n";
      return out;
  }
  return MakeError(Errc::kInvalidArgument, "unknown chat format");
}

// --- choosing a tokenizer -----------------------------------------------------------------

namespace {
std::string StringField(const nlohmann::json& obj, const char* key) {
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool IsGemma(const detail::ModelConfigs& configs) {
  return Lower(StringField(configs.config, "model_type")).find("gemma") != std::string::npos ||
         Lower(StringField(configs.tokenizer_config, "tokenizer_class")).find("gemma") != std::string::npos;
}

// Contents of the added tokens the files declare (tokenizer.json's added_tokens,
// tokenizer_config.json's added_tokens_decoder).
std::vector<std::string> DeclaredTokens(const ModelTextFiles& files, const detail::ModelConfigs& configs) {
  std::vector<std::string> out;
  if (auto it = configs.tokenizer_config.find("added_tokens_decoder");
      it != configs.tokenizer_config.end() && it->is_object())
    for (const auto& [id, tok] : it->items()) out.push_back(StringField(tok, "content"));
  if (auto file = files.find(std::string_view("tokenizer.json")); file != files.end()) {
    auto root = nlohmann::json::parse(file->second, nullptr, /*allow_exceptions=*/false);
    if (root.is_object())
      if (auto it = root.find("added_tokens"); it != root.end() && it->is_array())
        for (const auto& tok : *it) out.push_back(StringField(tok, "content"));
  }
  return out;
}
}  // namespace

Result<ChatFormat> DetectChatFormat(const ModelTextFiles& files) {
  CS_ASSIGN_OR_RETURN(auto configs, detail::ParseModelConfigs(files));
  const auto tokens = DeclaredTokens(files, configs);
  const auto has = [&](std::string_view t) { return std::find(tokens.begin(), tokens.end(), t) != tokens.end(); };
  const std::string type = Lower(StringField(configs.config, "model_type"));
  if (IsGemma(configs)) return ChatFormat::kGemma;
  if (type.rfind("qwen2", 0) == 0) return ChatFormat::kQwen2;
  if (type == "llama") return has("<|start_header_id|>") ? ChatFormat::kLlama3 : ChatFormat::kNone;
  if (!type.empty()) return ChatFormat::kNone;
  if (has("<start_of_turn>")) return ChatFormat::kGemma;
  if (has("<|start_header_id|>")) return ChatFormat::kLlama3;
  if (has("<|im_start|>")) return ChatFormat::kQwen2;
  return ChatFormat::kNone;
}

Result<std::unique_ptr<Tokenizer>> LoadTokenizer(const ModelTextFiles& files) {
  CS_ASSIGN_OR_RETURN(auto configs, detail::ParseModelConfigs(files));
  const auto sp = files.find(std::string_view("tokenizer.model"));
  const auto json = files.find(std::string_view("tokenizer.json"));
  if (sp != files.end() && (IsGemma(configs) || json == files.end())) {
    auto tok = detail::LoadSentencePiece(sp->second, configs);
    if (tok.ok() || json == files.end()) return tok;
    // A Gemma folder whose tokenizer.model this build cannot use: tokenizer.json may still do.
    auto bpe = detail::LoadByteLevelBpe(json->second, configs);
    if (bpe.ok()) return bpe;
    return MakeError(tok.error().code, tok.error().message + "; and " + bpe.error().message);
  }
  if (json != files.end()) return detail::LoadByteLevelBpe(json->second, configs);
  return MakeError(Errc::kNotFound,
                   "no tokenizer: the model has neither tokenizer.json (byte-level BPE: Llama 3, Qwen2) nor "
                   "tokenizer.model (SentencePiece: Gemma); pass token ids instead");
}

}  // namespace coldstart::runtime
