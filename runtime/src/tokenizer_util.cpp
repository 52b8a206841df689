// UTF-8 helpers, the special-token matcher and the configuration files of a tokenizer.
#include <utf8proc.h>

#include <algorithm>

#include "text_internal.h"

namespace coldstart::runtime::detail {

std::size_t Utf8SequenceLength(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  std::size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < len; ++k)
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  return len;
}

std::size_t FindInvalidUtf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t len = Utf8SequenceLength(s, i);
    if (len == 0) return i;
    i += len;
  }
  return std::string_view::npos;
}

namespace {
// How many bytes from s[i] form the longest prefix of some valid sequence (at least 1): the
// "maximal subpart" that one U+FFFD replaces.
std::size_t MaximalSubpart(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  std::size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 1;
  }
  std::size_t k = 1;
  for (; k < len && i + k < s.size(); ++k) {
    const unsigned char x = b(i + k);
    const bool ok = k == 1 ? (x >= lo && x <= hi) : (x >= 0x80 && x <= 0xBF);
    if (!ok) break;
  }
  return k;
}
}  // namespace

std::string LossyUtf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t i = 0; i < bytes.size();) {
    const std::size_t len = Utf8SequenceLength(bytes, i);
    if (len > 0) {
      out.append(bytes.substr(i, len));
      i += len;
    } else {
      out.append("\xEF\xBF\xBD");
      i += MaximalSubpart(bytes, i);
    }
  }
  return out;
}

std::size_t CompleteUtf8Prefix(std::string_view bytes) {
  // A held-back tail is at most 3 bytes: a lead byte and up to 2 continuations.
  const std::size_t n = bytes.size();
  for (std::size_t back = 1; back <= 3 && back <= n; ++back) {
    const std::size_t i = n - back;
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (c >= 0x80 && c <= 0xBF) continue;  // a continuation byte: look further back
    if (c < 0xC2 || c > 0xF4) return n;    // ASCII or never a lead byte: nothing to wait for
    // A lead byte: incomplete when its valid prefix runs to the end but is shorter than needed.
    const std::size_t need = c <= 0xDF ? 2 : c <= 0xEF ? 3 : 4;
    return back < need && MaximalSubpart(bytes, i) == back ? i : n;
  }
  return n;
}

char32_t DecodeUtf8At(std::string_view s, std::size_t i, std::size_t* length) {
  const auto b = [&](std::size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[k])); };
  const char32_t c = b(i);
  if (c < 0x80) {
    *length = 1;
    return c;
  }
  if (c < 0xE0) {
    *length = 2;
    return ((c & 0x1F) << 6) | (b(i + 1) & 0x3F);
  }
  if (c < 0xF0) {
    *length = 3;
    return ((c & 0x0F) << 12) | ((b(i + 1) & 0x3F) << 6) | (b(i + 2) & 0x3F);
  }
  *length = 4;
  return ((c & 0x07) << 18) | ((b(i + 1) & 0x3F) << 12) | ((b(i + 2) & 0x3F) << 6) | (b(i + 3) & 0x3F);
}

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool IsUnicodeWhitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

// --- AddedTokenMatcher -------------------------------------------------------------------

AddedTokenMatcher::AddedTokenMatcher(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  nodes_.emplace_back();
  for (std::size_t t = 0; t < tokens_.size(); ++t) {
    std::uint32_t node = 0;
    for (const char ch : tokens_[t].content) {
      const auto byte = static_cast<unsigned char>(ch);
      auto& next = nodes_[node].next;
      auto it = std::lower_bound(next.begin(), next.end(), byte,
                                 [](const auto& e, unsigned char v) { return e.first < v; });
      if (it != next.end() && it->first == byte) {
        node = it->second;
      } else {
        const auto child = static_cast<std::uint32_t>(nodes_.size());
        next.insert(it, {byte, child});
        nodes_.emplace_back();  // invalidates `next`; not used again below
        node = child;
      }
    }
    // The same content twice: the later entry wins, as in tokenizers' vocabulary maps.
    if (!tokens_[t].content.empty()) nodes_[node].token = static_cast<std::int32_t>(t);
  }
}

namespace {
bool IsWordChar(char32_t cp) {
  if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
  // Rust's char::is_alphanumeric, which tokenizers' single_word test uses: letters and numbers.
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}
// The code point that ends at s[end) (valid UTF-8 assumed).
char32_t LastCodePoint(std::string_view s, std::size_t end) {
  std::size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  std::size_t len = 0;
  return DecodeUtf8At(s, i, &len);
}
}  // namespace

std::vector<TextSegment> AddedTokenMatcher::Split(std::string_view text) const {
  std::vector<TextSegment> out;
  std::size_t plain_start = 0;  // start of the plain text not yet emitted
  std::size_t i = 0;
  while (i < text.size()) {
    // Longest token starting at i.
    std::uint32_t node = 0;
    std::int32_t best = -1;
    std::size_t best_end = 0;
    for (std::size_t k = i; k < text.size(); ++k) {
      const auto& next = nodes_[node].next;
      const auto byte = static_cast<unsigned char>(text[k]);
      auto it = std::lower_bound(next.begin(), next.end(), byte,
                                 [](const auto& e, unsigned char v) { return e.first < v; });
      if (it == next.end() || it->first != byte) break;
      node = it->second;
      if (nodes_[node].token >= 0) {
        best = nodes_[node].token;
        best_end = k + 1;
      }
    }
    if (best < 0) {
      ++i;
      continue;
    }
    const AddedToken& tok = tokens_[static_cast<std::size_t>(best)];
    std::size_t start = i, stop = best_end;
    if (tok.single_word) {
      std::size_t len = 0;
      const bool word_before = start > 0 && IsWordChar(LastCodePoint(text, start));
      const bool word_after = stop < text.size() && IsWordChar(DecodeUtf8At(text, stop, &len));
      if (word_before || word_after) {
        i = best_end;  // as the automaton's non-overlapping iteration: go on after the match
        continue;
      }
    }
    if (tok.lstrip) {
      while (start > plain_start && IsUnicodeWhitespace(LastCodePoint(text, start))) {
        std::size_t j = start - 1;
        while (j > 0 && (static_cast<unsigned char>(text[j]) & 0xC0) == 0x80) --j;
        start = j;
      }
    }
    if (tok.rstrip) {
      std::size_t len = 0;
      while (stop < text.size() && IsUnicodeWhitespace(DecodeUtf8At(text, stop, &len))) stop += len;
    }
    if (start > plain_start) out.push_back({text.substr(plain_start, start - plain_start), -1});
    out.push_back({text.substr(start, stop - start), tok.id});
    plain_start = i = stop;
  }
  if (plain_start < text.size() || out.empty()) out.push_back({text.substr(plain_start), -1});
  return out;
}

// --- configuration files --------------------------------------------------------------------

Result<ModelConfigs> ParseModelConfigs(const ModelTextFiles& files) {
  ModelConfigs configs;
  const std::pair<const char*, nlohmann::json*> wanted[] = {
      {"tokenizer_config.json", &configs.tokenizer_config},
      {"config.json", &configs.config},
      {"generation_config.json", &configs.generation_config}};
  for (const auto& [name, json] : wanted) {
    auto it = files.find(std::string_view(name));
    if (it == files.end()) continue;
    auto parsed = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded() || !parsed.is_object())
      return MakeError(Errc::kFormat, std::string(name) + ": not a JSON object");
    *json = std::move(parsed);
  }
  return configs;
}

Result<std::optional<std::string>> ConfigTokenText(const ModelConfigs& configs, std::string_view key) {
  auto it = configs.tokenizer_config.find(key);
  if (it == configs.tokenizer_config.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string()) return std::optional<std::string>(it->get<std::string>());
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) return std::optional<std::string>(content->get<std::string>());
  }
  return MakeError(Errc::kFormat, "tokenizer_config.json: \"" + std::string(key) +
                                      "\" is neither a string nor an object with a string \"content\"");
}

namespace {
Status AddConfigIds(const nlohmann::json& json, const char* file, const Tokenizer& tokenizer,
                    std::vector<std::int32_t>* ids) {
  auto it = json.find("eos_token_id");
  if (it == json.end() || it->is_null()) return OkStatus();
  std::vector<nlohmann::json> values;
  if (it->is_array()) {
    values.assign(it->begin(), it->end());
  } else {
    values.push_back(*it);
  }
  for (const auto& v : values) {
    if (!v.is_number_integer() || v.get<std::int64_t>() < 0 ||
        v.get<std::int64_t>() >= static_cast<std::int64_t>(tokenizer.vocab_size()))
      return MakeError(Errc::kFormat, std::string(file) + ": eos_token_id " + v.dump() +
                                          " is not a token id below the vocabulary size " +
                                          std::to_string(tokenizer.vocab_size()));
    ids->push_back(static_cast<std::int32_t>(v.get<std::int64_t>()));
  }
  return OkStatus();
}
}  // namespace

Result<std::vector<std::int32_t>> CollectEosIds(const ModelConfigs& configs, const Tokenizer& tokenizer,
                                                std::optional<std::int32_t> own_eos) {
  std::vector<std::int32_t> ids;
  CS_RETURN_IF_ERROR(AddConfigIds(configs.generation_config, "generation_config.json", tokenizer, &ids));
  CS_RETURN_IF_ERROR(AddConfigIds(configs.config, "config.json", tokenizer, &ids));
  CS_ASSIGN_OR_RETURN(auto eos_text, ConfigTokenText(configs, "eos_token"));
  if (eos_text) {
    auto id = tokenizer.TokenId(*eos_text);
    if (!id)
      return MakeError(Errc::kFormat, "tokenizer_config.json: eos_token \"" + *eos_text + "\" is not in the vocabulary");
    ids.push_back(*id);
  }
  if (own_eos) ids.push_back(*own_eos);
  for (const char* turn_end : {"<end_of_turn>", "<|eot_id|>", "<|im_end|>"})
    if (auto id = tokenizer.TokenId(turn_end)) ids.push_back(*id);
  std::vector<std::int32_t> unique;
  for (const auto id : ids)
    if (std::find(unique.begin(), unique.end(), id) == unique.end()) unique.push_back(id);
  return unique;
}

}  // namespace coldstart::runtime::detail
