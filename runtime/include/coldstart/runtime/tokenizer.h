// Tokenizers of the runtime, without libtorch (target coldstart::text): SentencePiece from
// `tokenizer.model` for Gemma (through Debian's libsentencepiece), and byte-level BPE from
// `tokenizer.json` for Llama 3 and Qwen2, written here (no Debian library reads tokenizer.json)
// and checked against PyPI's `tokenizers` and `sentencepiece` on fixtures
// (tests/runtime/make_tokenizer_fixtures.py).
//
// What a file asks for and this code does not implement (another model type, normalizer,
// pre-tokenizer, decoder, dropout...) is an error at load time, never a silent wrong encoding.
// Tokenizers are immutable after loading: Encode/Decode may be called from several threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "coldstart/core/result.h"

namespace coldstart::runtime {

enum class ChatFormat { kNone, kGemma, kLlama3, kQwen2 };

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Token ids of `text` (valid UTF-8, else kInvalidArgument). add_special: what the model's
  // tokenizer adds by default (Gemma, Llama 3: BOS first; Qwen2: nothing). Special and added
  // tokens written in the text ("<start_of_turn>", "<|im_start|>") become their ids.
  virtual Result<std::vector<std::int32_t>> Encode(std::string_view text, bool add_special = true) const = 0;
  // The bytes the ids stand for, which need not be valid UTF-8 (a byte-fallback or byte-level
  // token can hold part of a character). Special tokens are skipped when skip_special, else
  // written as their text. An id outside the vocabulary is kInvalidArgument.
  virtual Result<std::string> DecodeBytes(std::span<const std::int32_t> ids, bool skip_special = true) const = 0;
  // DecodeBytes as text: each invalid or incomplete UTF-8 sequence becomes U+FFFD, as the
  // reference libraries do (the maximal-subpart rule of Rust's from_utf8_lossy and Python).
  Result<std::string> Decode(std::span<const std::int32_t> ids, bool skip_special = true) const;
  virtual std::optional<std::int32_t> bos_id() const = 0;
  // Ids that end generation: generation_config.json's and config.json's eos_token_id (int or
  // list), tokenizer_config.json's eos_token, the tokenizer's own end of sequence, then the
  // chat end-of-turn token of the family where the vocabulary has it (<end_of_turn>,
  // <|eot_id|>, <|im_end|>), so a chat prompt stops at the end of the answer. No duplicates.
  virtual std::vector<std::int32_t> eos_ids() const = 0;
  // One past the largest id (vocabulary and added tokens).
  virtual std::size_t vocab_size() const = 0;
  virtual std::string_view kind() const = 0;  // "sentencepiece" | "bpe"
  // The id of a token given by its text (a special token, a vocabulary entry), if any. The
  // text is what the token stands for ("<|eot_id|>", " the"), not tokenizer.json's byte-level
  // spelling of it ("Ġthe").
  virtual std::optional<std::int32_t> TokenId(std::string_view token) const = 0;
};

// Streaming output: feed generated ids one at a time, get the text each one completes. A
// character whose bytes are split over several tokens (byte fallback, byte-level BPE) is held
// back until it is complete, so the concatenation of all Next() results and Finish() equals
// Decode() of all ids. A window of the last few tokens is decoded each time (SentencePiece's
// word-boundary spaces depend on the token before), so each call costs O(1) tokens.
// Not thread safe; the tokenizer must outlive it.
class DecodeStream {
 public:
  explicit DecodeStream(const Tokenizer& tokenizer, bool skip_special = true);
  // Context before the first generated token (the prompt): nothing of it is returned, except
  // the bytes of a character the prompt leaves incomplete, which come with its completion.
  Status Prime(std::span<const std::int32_t> prompt_ids);
  // The text that `id` adds (possibly empty, while a character is incomplete).
  Result<std::string> Next(std::int32_t id);
  // Whatever is still held back, as U+FFFD: call at the end of generation.
  std::string Finish();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::vector<std::int32_t> ids_;
  std::size_t window_start_ = 0;  // ids_[window_start_..] are decoded on each Next()
  std::size_t emitted_ = 0;       // bytes of that window's decoding already returned
  std::string pending_;           // bytes held back (an incomplete character)
};

// Wraps one user prompt in the model's chat template, as the real tokenizer_config.json
// templates render it for [{"role": "user", "content": prompt}] with add_generation_prompt:
//   kGemma  (Gemma 2 and 3): "<bos><start_of_turn>user\n{trim(p)}<end_of_turn>\n<start_of_turn>model\n"
//   kLlama3 (Llama 3 Instruct): "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{trim(p)}"
//            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
//   kQwen2  (Qwen2 Instruct): "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
//            "<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n"
// (trim: Jinja's, which strips Unicode whitespace at both ends). Encode the result with
// add_special=false: the template already holds the BOS. kNone returns the prompt unchanged
// (encode that with add_special=true).
Result<std::string> ApplyChatTemplate(ChatFormat format, std::string_view user_prompt);

// Files of a model folder as bytes, by name ("tokenizer.json", "tokenizer.model",
// "tokenizer_config.json", "generation_config.json", "config.json"); missing ones absent.
using ModelTextFiles = std::map<std::string, std::string, std::less<>>;

// The chat format of the model: from config.json's model_type (gemma*, llama, qwen2*), else
// from the special tokens of tokenizer.json; kNone when neither tells (a base model without
// chat tokens), an error only for unreadable JSON.
Result<ChatFormat> DetectChatFormat(const ModelTextFiles& files);

// SentencePiece from tokenizer.model when present and the model is Gemma-family (config.json's
// model_type starts with "gemma", or tokenizer_config.json's tokenizer_class does), or when
// there is no tokenizer.json; else byte-level BPE from tokenizer.json. A clear error naming the
// files when neither works.
Result<std::unique_ptr<Tokenizer>> LoadTokenizer(const ModelTextFiles& files);

}  // namespace coldstart::runtime
