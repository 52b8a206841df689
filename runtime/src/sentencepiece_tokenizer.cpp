// SentencePiece (Gemma's tokenizer.model) through Debian's libsentencepiece for encoding. The
// piece types and normalizer flags are read from the serialized ModelProto here (Debian ships
// no generated protobuf header), which also lets decoding produce raw bytes: the library's own
// decoder replaces a byte-fallback character split over tokens by U+FFFD, which a streaming
// decoder must not do.
#include <sentencepiece_processor.h>

#include <cstring>
#include <set>

#include "text_internal.h"

namespace coldstart::runtime::detail {
namespace {

Error ModelError(std::string message) {
  return MakeError(Errc::kFormat, "tokenizer.model: " + std::move(message));
}

// sentencepiece_model.proto, the fields read here.
enum PieceType : std::uint8_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

struct ProtoInfo {
  std::vector<std::pair<std::string, PieceType>> pieces;  // ModelProto.pieces (field 1)
  bool add_dummy_prefix = true;           // NormalizerSpec (field 3).add_dummy_prefix (3), proto default
  bool remove_extra_whitespaces = true;   // NormalizerSpec.remove_extra_whitespaces (4)
};

// Minimal protobuf wire-format reader over a byte range; every read is bounds-checked.
class WireReader {
 public:
  explicit WireReader(std::string_view data) : data_(data) {}
  bool done() const { return pos_ >= data_.size(); }
  bool Varint(std::uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64 && pos_ < data_.size(); shift += 7) {
      const auto byte = static_cast<unsigned char>(data_[pos_++]);
      *v |= static_cast<std::uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;
  }
  // Reads a key; for length-delimited fields also the payload.
  bool Field(std::uint32_t* number, std::uint32_t* wire, std::uint64_t* value, std::string_view* payload) {
    std::uint64_t key = 0;
    if (!Varint(&key)) return false;
    *number = static_cast<std::uint32_t>(key >> 3);
    *wire = static_cast<std::uint32_t>(key & 7);
    switch (*wire) {
      case 0: return Varint(value);
      case 1: return Skip(8);
      case 5: return Skip(4);
      case 2: {
        std::uint64_t len = 0;
        if (!Varint(&len) || len > data_.size() - pos_) return false;
        *payload = data_.substr(pos_, len);
        pos_ += len;
        return true;
      }
      default: return false;  // groups (3, 4) do not occur in this proto
    }
  }

 private:
  bool Skip(std::size_t n) {
    if (n > data_.size() - pos_) return false;
    pos_ += n;
    return true;
  }
  std::string_view data_;
  std::size_t pos_ = 0;
};

// Calls on_field(number, wire type, varint value, payload) for each field of a message; false
// when the message is malformed or on_field returns false.
template <typename OnField>
bool ForEachField(std::string_view message, OnField&& on_field) {
  WireReader reader(message);
  while (!reader.done()) {
    std::uint32_t number = 0, wire = 0;
    std::uint64_t value = 0;
    std::string_view payload;
    if (!reader.Field(&number, &wire, &value, &payload) || !on_field(number, wire, value, payload)) return false;
  }
  return true;
}

Result<ProtoInfo> ReadProto(std::string_view bytes) {
  ProtoInfo info;
  std::string bad_piece;  // why a piece was refused
  const bool ok = ForEachField(bytes, [&](std::uint32_t number, std::uint32_t wire, std::uint64_t, std::string_view payload) {
    if (number == 1 && wire == 2) {
      std::string piece;
      PieceType type = kNormal;
      const bool piece_ok = ForEachField(payload, [&](std::uint32_t n, std::uint32_t w, std::uint64_t v, std::string_view p) {
        if (n == 1 && w == 2) piece = std::string(p);
        if (n == 3 && w == 0) {
          if (v < kNormal || v > kByte) return false;
          type = static_cast<PieceType>(v);
        }
        return true;
      });
      if (!piece_ok) {
        bad_piece = "piece " + std::to_string(info.pieces.size()) + " is malformed or has an unknown type";
        return false;
      }
      info.pieces.emplace_back(std::move(piece), type);
    } else if (number == 3 && wire == 2) {
      return ForEachField(payload, [&](std::uint32_t n, std::uint32_t w, std::uint64_t v, std::string_view) {
        if (n == 3 && w == 0) info.add_dummy_prefix = v != 0;
        if (n == 4 && w == 0) info.remove_extra_whitespaces = v != 0;
        return true;
      });
    }
    return true;
  });
  if (!ok) return ModelError(bad_piece.empty() ? "truncated or not a SentencePiece model" : bad_piece);
  if (info.pieces.empty()) return ModelError("no pieces (truncated or not a SentencePiece model)");
  return info;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  Result<std::vector<std::int32_t>> Encode(std::string_view text, bool add_special) const override {
    if (const auto bad = FindInvalidUtf8(text); bad != std::string_view::npos)
      return MakeError(Errc::kInvalidArgument, "text to encode is not valid UTF-8 (byte " + std::to_string(bad) + ")");
    std::vector<std::int32_t> ids;
    if (add_special && add_bos_ && bos_) ids.push_back(*bos_);
    // Special pieces written in the text are matched first, as the Hugging Face Gemma
    // tokenizer does (sentencepiece itself only matches user-defined ones, never "<bos>").
    std::vector<int> piece_ids;
    for (const TextSegment& seg : specials_.Split(text)) {
      if (seg.token >= 0) {
        ids.push_back(seg.token);
        continue;
      }
      if (seg.text.empty()) continue;
      const auto status = sp_.Encode(seg.text, &piece_ids);
      if (!status.ok())
        return MakeError(Errc::kInternal, std::string("sentencepiece Encode failed: ") + status.ToString());
      ids.insert(ids.end(), piece_ids.begin(), piece_ids.end());
    }
    if (add_special && add_eos_ && sp_.eos_id() >= 0) ids.push_back(sp_.eos_id());
    return ids;
  }

  Result<std::string> DecodeBytes(std::span<const std::int32_t> ids, bool skip_special) const override {
    std::string out;
    for (const auto id : ids) {
      if (id < 0 || static_cast<std::size_t>(id) >= bytes_.size())
        return MakeError(Errc::kInvalidArgument, "token id " + std::to_string(id) + " is not in the vocabulary (size " +
                                                     std::to_string(bytes_.size()) + ")");
      if (special_[id]) {
        if (!skip_special) out += info_.pieces[id].first;
        continue;
      }
      out += bytes_[id];
    }
    return out;
  }

  std::optional<std::int32_t> bos_id() const override { return bos_; }
  std::vector<std::int32_t> eos_ids() const override { return eos_; }
  std::size_t vocab_size() const override { return bytes_.size(); }
  std::string_view kind() const override { return "sentencepiece"; }
  std::optional<std::int32_t> TokenId(std::string_view token) const override {
    const int id = sp_.PieceToId(token);
    // PieceToId answers unk_id for unknown pieces; only "<unk>" itself really is that id.
    if (id < 0 || (id == sp_.unk_id() && token != info_.pieces[id].first)) return std::nullopt;
    return id;
  }

 private:
  friend Result<std::unique_ptr<Tokenizer>> detail::LoadSentencePiece(std::string_view, const ModelConfigs&);

  sentencepiece::SentencePieceProcessor sp_;
  ProtoInfo info_;
  std::vector<std::string> bytes_;  // what each id decodes to
  std::vector<bool> special_;       // control, unknown and the special user-defined pieces
  AddedTokenMatcher specials_;
  bool add_bos_ = true, add_eos_ = false;
  std::optional<std::int32_t> bos_;
  std::vector<std::int32_t> eos_;
};

Result<bool> ConfigFlag(const ModelConfigs& configs, const char* key, bool dflt) {
  auto it = configs.tokenizer_config.find(key);
  if (it == configs.tokenizer_config.end() || it->is_null()) return dflt;
  if (!it->is_boolean()) return MakeError(Errc::kFormat, std::string("tokenizer_config.json: ") + key + " is not a boolean");
  return it->get<bool>();
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadSentencePiece(std::string_view model_proto, const ModelConfigs& configs) {
  auto tok = std::make_unique<SentencePieceTokenizer>();
  CS_ASSIGN_OR_RETURN(tok->info_, ReadProto(model_proto));
  if (tok->info_.add_dummy_prefix || tok->info_.remove_extra_whitespaces)
    return MakeError(Errc::kInvalidArgument,
                     "tokenizer.model: unsupported normalizer (add_dummy_prefix or remove_extra_whitespaces is on; "
                     "Gemma's tokenizers have neither)");
  const auto status = tok->sp_.LoadFromSerializedProto(model_proto);
  if (!status.ok()) return ModelError(std::string("sentencepiece rejects it: ") + status.ToString());
  const auto& pieces = tok->info_.pieces;
  if (static_cast<std::size_t>(tok->sp_.GetPieceSize()) != pieces.size())
    return ModelError("sentencepiece and the proto disagree on the number of pieces");

  // Which user-defined pieces are special (skipped by Decode(skip_special)): those
  // tokenizer_config.json's added_tokens_decoder marks so. Gemma's vocabulary also has
  // user-defined pieces that are plain text ("<table>", whitespace runs). Without that list,
  // only the turn markers.
  std::set<std::string, std::less<>> special_user_pieces = {"<start_of_turn>", "<end_of_turn>"};
  if (auto decoder = configs.tokenizer_config.find("added_tokens_decoder");
      decoder != configs.tokenizer_config.end() && !decoder->is_null()) {
    if (!decoder->is_object()) return MakeError(Errc::kFormat, "tokenizer_config.json: added_tokens_decoder is not an object");
    special_user_pieces.clear();
    for (const auto& [id, entry] : decoder->items()) {
      auto content = entry.find("content");
      auto special = entry.find("special");
      if (!entry.is_object() || content == entry.end() || !content->is_string() ||
          (special != entry.end() && !special->is_boolean()))
        return MakeError(Errc::kFormat, "tokenizer_config.json: added_tokens_decoder entry " + id +
                                            " has no string content or a non-boolean special");
      if (special != entry.end() && special->get<bool>()) special_user_pieces.insert(content->get<std::string>());
    }
  }

  static constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's space
  std::vector<AddedToken> specials;  // matched in the text before sentencepiece sees it
  tok->bytes_.resize(pieces.size());
  tok->special_.assign(pieces.size(), false);
  for (std::size_t id = 0; id < pieces.size(); ++id) {
    const auto& [piece, type] = pieces[id];
    if (type == kByte) {
      const int hi = piece.size() == 6 ? HexDigit(piece[3]) : -1, lo = piece.size() == 6 ? HexDigit(piece[4]) : -1;
      if (piece.compare(0, 3, "<0x") != 0 || hi < 0 || lo < 0 || piece[5] != '>')
        return ModelError("byte piece " + std::to_string(id) + " is not <0xXX>: " + piece);
      tok->bytes_[id] = std::string(1, static_cast<char>(hi * 16 + lo));
      continue;
    }
    if (type == kControl || type == kUnknown || type == kUserDefined) {
      tok->special_[id] = type != kUserDefined || special_user_pieces.contains(piece);
      if (!piece.empty()) specials.push_back({piece, static_cast<std::int32_t>(id), tok->special_[id]});
      if (tok->special_[id]) continue;
    }
    // Normal, unused and plain-text user-defined pieces: SentencePiece's space becomes ' '.
    std::string text;
    for (std::size_t i = 0; i < piece.size();) {
      if (piece.compare(i, kSpace.size(), kSpace) == 0) {
        text.push_back(' ');
        i += kSpace.size();
      } else {
        text.push_back(piece[i++]);
      }
    }
    tok->bytes_[id] = std::move(text);
  }
  tok->specials_ = AddedTokenMatcher(std::move(specials));
  CS_ASSIGN_OR_RETURN(tok->add_bos_, ConfigFlag(configs, "add_bos_token", true));
  CS_ASSIGN_OR_RETURN(tok->add_eos_, ConfigFlag(configs, "add_eos_token", false));
  CS_ASSIGN_OR_RETURN(auto bos_text, ConfigTokenText(configs, "bos_token"));
  if (bos_text) {
    tok->bos_ = tok->TokenId(*bos_text);
    if (!tok->bos_)
      return MakeError(Errc::kFormat, "tokenizer_config.json: bos_token \"" + *bos_text + "\" is not in tokenizer.model");
  } else if (tok->sp_.bos_id() >= 0) {
    tok->bos_ = tok->sp_.bos_id();
  }
  std::optional<std::int32_t> own_eos;
  if (tok->sp_.eos_id() >= 0) own_eos = tok->sp_.eos_id();
  CS_ASSIGN_OR_RETURN(tok->eos_, CollectEosIds(configs, *tok, own_eos));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace coldstart::runtime::detail
