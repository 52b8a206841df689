// Internals of coldstart::text shared by the tokenizer sources: UTF-8 helpers, the matcher of
// special tokens written in text, and the configuration files around a tokenizer.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "coldstart/runtime/tokenizer.h"

namespace coldstart::runtime::detail {

// --- UTF-8 -------------------------------------------------------------------------------
// Length of the valid UTF-8 sequence at s[i] (1..4), or 0 when s[i] starts no valid sequence.
std::size_t Utf8SequenceLength(std::string_view s, std::size_t i);
// Offset of the first byte that is not part of valid UTF-8, or npos.
std::size_t FindInvalidUtf8(std::string_view s);
// Invalid sequences replaced by U+FFFD, one per maximal subpart (as Rust's from_utf8_lossy and
// Python's errors="replace").
std::string LossyUtf8(std::string_view bytes);
// Length of `bytes` without a trailing sequence that is incomplete but could still become a
// valid character with more bytes.
std::size_t CompleteUtf8Prefix(std::string_view bytes);
// The code point at s[i] (valid UTF-8 assumed) and its length.
char32_t DecodeUtf8At(std::string_view s, std::size_t i, std::size_t* length);
void AppendUtf8(char32_t cp, std::string* out);
// Unicode White_Space (Rust's char::is_whitespace).
bool IsUnicodeWhitespace(char32_t cp);

// --- special tokens written in text ----------------------------------------------------
struct AddedToken {
  std::string content;
  std::int32_t id = 0;
  bool special = false;
  bool lstrip = false;     // the match takes the whitespace before it
  bool rstrip = false;     // ... and after it
  bool single_word = false;  // only matched when no word character touches it
  bool normalized = false;   // matched in the normalized text (else in the raw text)
};

// A segment of the text: either an added token (id >= 0) or plain text to tokenize.
struct TextSegment {
  std::string_view text;
  std::int32_t token = -1;
};

// Leftmost-longest matching of a set of tokens, as tokenizers' AddedVocabulary does with its
// Aho-Corasick automaton (a byte trie here: the tokens are few and short).
class AddedTokenMatcher {
 public:
  AddedTokenMatcher() = default;
  explicit AddedTokenMatcher(std::vector<AddedToken> tokens);
  bool empty() const { return tokens_.empty(); }
  // Splits `text` into segments; plain segments may be empty only when `text` is.
  std::vector<TextSegment> Split(std::string_view text) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, std::uint32_t>> next;  // sorted by byte
    std::int32_t token = -1;  // index into tokens_ ending here
  };
  std::vector<AddedToken> tokens_;
  std::vector<Node> nodes_;
};

// --- configuration files ------------------------------------------------------------------
struct ModelConfigs {
  nlohmann::json tokenizer_config = nlohmann::json::object();
  nlohmann::json config = nlohmann::json::object();
  nlohmann::json generation_config = nlohmann::json::object();
};
// Parses the JSON files present in `files` (absent ones stay empty objects).
Result<ModelConfigs> ParseModelConfigs(const ModelTextFiles& files);
// Text of a special token in tokenizer_config.json ("bos_token": "<bos>" or {"content": ...}),
// nullopt when absent or null.
Result<std::optional<std::string>> ConfigTokenText(const ModelConfigs& configs, std::string_view key);
// The end-of-generation ids (see Tokenizer::eos_ids), validated against the vocabulary.
Result<std::vector<std::int32_t>> CollectEosIds(const ModelConfigs& configs, const Tokenizer& tokenizer,
                                                std::optional<std::int32_t> own_eos);

Result<std::unique_ptr<Tokenizer>> LoadByteLevelBpe(std::string_view tokenizer_json, const ModelConfigs& configs);
Result<std::unique_ptr<Tokenizer>> LoadSentencePiece(std::string_view model_proto, const ModelConfigs& configs);

}  // namespace coldstart::runtime::detail
