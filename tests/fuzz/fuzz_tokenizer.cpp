// libFuzzer target: the tokenizers (runtime/src/tokenizer*.cpp, bpe_tokenizer.cpp). The first
// byte says what the rest of the input is:
//   < 0x80: text for the three fixture tokenizers (tests/runtime/fixtures/tokenizers). Invalid
//           UTF-8 is refused; valid text encodes, decodes back exactly where the tokenizer has no
//           normalizer, and streams to what Decode gives. The input's bytes also read as token
//           ids: in range they decode, and DecodeStream's pieces add up to Decode's text.
//   >= 0x80: a tokenizer.json, which loads or fails with a message; loaded, it round-trips a
//           fixed text.
// Never a crash, an exception or a sanitizer report.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "coldstart/runtime/tokenizer.h"

namespace {

using namespace coldstart::runtime;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "fuzz_tokenizer: %s\n", what);
  std::abort();
}

struct Fixture {
  std::unique_ptr<Tokenizer> tok;
  bool normalizes;  // NFC: encode/decode need not give back the input
};

// SentencePiece writes both ' ' and its own space symbol U+2581 as U+2581, which decodes to ' '.
constexpr std::string_view kSentencePieceSpace = "\xE2\x96\x81";

std::vector<Fixture> LoadFixtures() {
  std::vector<Fixture> out;
  for (const char* name : {"llama3", "qwen2", "gemma"}) {
    ModelTextFiles files;
    for (const auto& e : std::filesystem::directory_iterator(std::filesystem::path(COLDSTART_TOKENIZER_FIXTURES) / name)) {
      std::ifstream in(e.path(), std::ios::binary);
      std::ostringstream ss;
      ss << in.rdbuf();
      files[e.path().filename().string()] = ss.str();
    }
    auto tok = LoadTokenizer(files);
    if (!tok.ok()) Die("a fixture does not load");
    out.push_back({std::move(tok).value(), std::string_view(name) == "qwen2"});
  }
  return out;
}

bool ValidUtf8(std::string_view s) {
  // Independent of the code under test: decode with the standard ranges.
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    const auto c1 = static_cast<unsigned char>(s[i + 1 < s.size() ? i + 1 : i]);
    if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 > 0x9F) || (c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 > 0x8F))
      return false;
    i += n;
  }
  return true;
}

void CheckStream(const Tokenizer& tok, const std::vector<std::int32_t>& ids, bool skip_special) {
  auto full = tok.Decode(ids, skip_special);
  if (!full.ok()) Die("decoding valid ids failed");
  DecodeStream stream(tok, skip_special);
  std::string text;
  for (const auto id : ids) {
    auto piece = stream.Next(id);
    if (!piece.ok()) Die("streaming a valid id failed");
    text += *piece;
  }
  text += stream.Finish();
  if (text != *full) Die("the stream's pieces differ from Decode");
}

void Text(std::string_view text, const std::vector<Fixture>& fixtures) {
  const bool valid = ValidUtf8(text);
  for (const auto& f : fixtures) {
    auto ids = f.tok->Encode(text, false);
    if (ids.ok() != valid) Die(valid ? "valid UTF-8 did not encode" : "invalid UTF-8 encoded");
    if (ids.ok()) {
      auto back = f.tok->Decode(*ids, false);
      if (!back.ok()) Die("decoding encoded ids failed");
      const bool exact = !f.normalizes && !(f.tok->kind() == "sentencepiece" && text.find(kSentencePieceSpace) != text.npos);
      if (exact && *back != text) Die("encode/decode did not give the text back");
      CheckStream(*f.tok, *ids, false);
      CheckStream(*f.tok, *ids, true);
    }
    // The bytes as ids (two bytes each), some out of range.
    std::vector<std::int32_t> raw;
    bool in_range = true;
    for (std::size_t i = 0; i + 1 < text.size(); i += 2) {
      const auto id = static_cast<std::int32_t>(static_cast<unsigned char>(text[i]) << 8 | static_cast<unsigned char>(text[i + 1])) %
                      static_cast<std::int32_t>(f.tok->vocab_size() + 3);
      in_range = in_range && static_cast<std::size_t>(id) < f.tok->vocab_size();
      raw.push_back(id);
    }
    auto decoded = f.tok->Decode(raw, true);
    if (decoded.ok() != in_range) Die(in_range ? "ids in range did not decode" : "an id out of range decoded");
    if (decoded.ok()) CheckStream(*f.tok, raw, true);
  }
}

void TokenizerJson(std::string_view json) {
  ModelTextFiles files{{"tokenizer.json", std::string(json)}};
  auto tok = LoadTokenizer(files);
  if (!tok.ok()) {
    if (tok.error().message.empty()) Die("error without a message");
    return;
  }
  const std::string sample = "Hello, world! I'm 12345 caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\xA6\x99\n\n";
  auto ids = (*tok)->Encode(sample);
  if (!ids.ok()) return;  // e.g. a regex that runs out of match budget: an error, not a crash
  auto back = (*tok)->Decode(*ids);
  if (!back.ok()) Die("decoding a loaded tokenizer's own ids failed");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::vector<Fixture> fixtures = LoadFixtures();
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] < 0x80) {
    Text(rest, fixtures);
  } else {
    TokenizerJson(rest);
  }
  return 0;
}
