// Byte-level BPE from a Hugging Face tokenizer.json (Llama 3, Qwen2, GPT-2 style), following
// the `tokenizers` crate step by step: added tokens split out of the raw text, the normalizer
// (none or NFC, through utf8proc), the pre-tokenizer's regex splits (PCRE2 in UTF+UCP mode, JIT
// compiled), byte-level mapping, merges by rank, the post-processor's template, and the
// ByteLevel decoder. Anything else a file asks for is refused at load time.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <deque>
#include <queue>
#include <unordered_map>

#include "text_internal.h"

namespace coldstart::runtime::detail {
namespace {

using nlohmann::json;

// GPT-2's split regex, which ByteLevel applies itself when use_regex is true.
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

Error FormatError(std::string message) {
  return MakeError(Errc::kFormat, "tokenizer.json: " + std::move(message));
}
Error Unsupported(std::string message) {
  return MakeError(Errc::kInvalidArgument, "tokenizer.json: unsupported " + std::move(message));
}

// GPT-2's byte <-> printable code point map: bytes that are printable Latin-1 map to
// themselves, the others to U+0100 onwards in byte order (so every code point is below 0x144).
struct ByteMap {
  std::array<char32_t, 256> to_cp{};
  std::array<std::int16_t, 0x144> to_byte{};  // -1: not a byte-level character
  ByteMap() {
    to_byte.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++);
      to_byte[to_cp[b]] = static_cast<std::int16_t>(b);
    }
  }
};
const ByteMap& Bytes() {
  static const ByteMap map;
  return map;
}

// The ByteLevel decoder's view of a token: its characters mapped back to bytes (true), or the
// token's own UTF-8 when one of its characters is outside the map (false, as tokenizers does).
bool TokenBytes(std::string_view token, std::string* out) {
  out->clear();
  for (std::size_t i = 0; i < token.size();) {
    std::size_t len = 0;
    const char32_t cp = DecodeUtf8At(token, i, &len);
    const int byte = cp < Bytes().to_byte.size() ? Bytes().to_byte[cp] : -1;
    if (byte < 0) {
      out->assign(token);
      return false;
    }
    out->push_back(static_cast<char>(byte));
    i += len;
  }
  return true;
}

// A compiled PCRE2 pattern (move-only owner of the code).
class Regex {
 public:
  static Result<Regex> Compile(std::string_view pattern) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &err, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      return Unsupported("split regex (PCRE2 rejects it at offset " + std::to_string(offset) + ": " +
                         reinterpret_cast<const char*>(msg) + "): " + std::string(pattern));
    }
    // JIT makes matching several times faster; without it (no JIT on this CPU) it still works.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    return Regex(code);
  }
  Regex(Regex&& o) noexcept : code_(std::exchange(o.code_, nullptr)) {}
  Regex& operator=(Regex&& o) noexcept {
    std::swap(code_, o.code_);
    return *this;
  }
  Regex(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code_); }

  // Appends to `out` the pieces of `text` with each match isolated (tokenizers' Split with
  // behavior Isolated): matches and the gaps between them, empty pieces dropped.
  Status SplitIsolated(std::string_view text, std::vector<std::string_view>* out) const {
    struct MatchData {
      pcre2_match_data* p;
      ~MatchData() { pcre2_match_data_free(p); }
    } md{pcre2_match_data_create_from_pattern(code_, nullptr)};
    if (md.p == nullptr) return MakeError(Errc::kResourceExhausted, "PCRE2: no memory for match data");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    std::size_t pos = 0, gap_start = 0;
    while (pos < text.size()) {
      int rc = pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, md.p, nullptr);
      // A long whitespace run can outgrow the JIT's 32 KiB stack; the interpreter uses the heap.
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
        rc = pcre2_match(code_, subject, text.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md.p, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        return MakeError(Errc::kResourceExhausted,
                         std::string("PCRE2 match failed: ") + reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.p);
      const std::size_t start = ov[0], end = ov[1];
      if (end == start) {  // an empty match splits nothing: step over one character
        std::size_t len = 0;
        DecodeUtf8At(text, start, &len);
        pos = start + len;
        continue;
      }
      if (start > gap_start) out->push_back(text.substr(gap_start, start - gap_start));
      out->push_back(text.substr(start, end - start));
      pos = gap_start = end;
    }
    if (gap_start < text.size()) out->push_back(text.substr(gap_start));
    return OkStatus();
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
};

enum class IdKind : std::uint8_t { kNone, kModel, kAdded, kSpecial };

std::uint64_t PairKey(std::int32_t a, std::int32_t b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

class ByteLevelBpe final : public Tokenizer {
 public:
  Result<std::vector<std::int32_t>> Encode(std::string_view text, bool add_special) const override;
  Result<std::string> DecodeBytes(std::span<const std::int32_t> ids, bool skip_special) const override;
  std::optional<std::int32_t> bos_id() const override { return bos_; }
  std::vector<std::int32_t> eos_ids() const override { return eos_; }
  std::size_t vocab_size() const override { return id_bytes_.size(); }
  std::string_view kind() const override { return "bpe"; }
  std::optional<std::int32_t> TokenId(std::string_view token) const override {
    if (auto it = added_ids_.find(std::string(token)); it != added_ids_.end()) return it->second;
    if (auto it = vocab_.find(std::string(token)); it != vocab_.end()) return it->second;
    return std::nullopt;
  }

 private:
  friend Result<std::unique_ptr<Tokenizer>> detail::LoadByteLevelBpe(std::string_view, const ModelConfigs&);
  using Cache = std::unordered_map<std::string_view, std::vector<std::int32_t>>;

  Status EncodePlain(std::string_view text, Cache* cache, std::vector<std::int32_t>* ids) const;
  void EncodeWord(std::string_view word, std::vector<std::int32_t>* ids) const;

  std::unordered_map<std::string, std::int32_t> vocab_;  // raw bytes of a model token -> id
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges_;  // -> (rank, id)
  std::array<std::int32_t, 256> byte_ids_{};
  bool ignore_merges_ = false;
  bool nfc_ = false;
  std::vector<Regex> splits_;  // applied in order, each to the pieces of the one before
  AddedTokenMatcher raw_added_, normalized_added_;
  std::unordered_map<std::string, std::int32_t> added_ids_;  // content -> id
  std::vector<std::int32_t> prefix_, suffix_;  // the post-processor's template around the text
  std::vector<std::string> id_bytes_;  // what each id decodes to
  std::vector<IdKind> id_kind_;
  std::optional<std::int32_t> bos_;
  std::vector<std::int32_t> eos_;
};

Result<std::vector<std::int32_t>> ByteLevelBpe::Encode(std::string_view text, bool add_special) const {
  if (const auto bad = FindInvalidUtf8(text); bad != std::string_view::npos)
    return MakeError(Errc::kInvalidArgument, "text to encode is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  std::vector<std::int32_t> ids;
  if (add_special) ids = prefix_;
  // Words repeat: a per-call cache of word -> ids halves the time on prose. Per call, so
  // Encode stays const and thread safe without a lock.
  Cache cache;
  // Keeps the NFC strings the cache's keys point into: a deque, so adding one never moves the
  // others (a vector's reallocation moved short strings' inline bytes; ASan caught it).
  std::deque<std::string> normalized_storage;
  for (const TextSegment& seg : raw_added_.Split(text)) {
    if (seg.token >= 0) {
      ids.push_back(seg.token);
      continue;
    }
    std::string_view plain = seg.text;
    if (nfc_ && !plain.empty()) {
      utf8proc_uint8_t* out = nullptr;
      const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(plain.data()),
                                  static_cast<utf8proc_ssize_t>(plain.size()), &out,
                                  static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
      if (n < 0) {
        std::free(out);
        return MakeError(Errc::kInvalidArgument,
                         std::string("NFC normalization failed: ") + utf8proc_errmsg(n));
      }
      normalized_storage.emplace_back(reinterpret_cast<const char*>(out), static_cast<std::size_t>(n));
      std::free(out);
      plain = normalized_storage.back();
    }
    if (normalized_added_.empty()) {
      CS_RETURN_IF_ERROR(EncodePlain(plain, &cache, &ids));
      continue;
    }
    for (const TextSegment& inner : normalized_added_.Split(plain)) {
      if (inner.token >= 0) {
        ids.push_back(inner.token);
      } else {
        CS_RETURN_IF_ERROR(EncodePlain(inner.text, &cache, &ids));
      }
    }
  }
  if (add_special) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
  return ids;
}

Status ByteLevelBpe::EncodePlain(std::string_view text, Cache* cache, std::vector<std::int32_t>* ids) const {
  if (text.empty()) return OkStatus();
  std::vector<std::string_view> pieces{text};
  for (const Regex& re : splits_) {
    std::vector<std::string_view> next;
    for (const auto piece : pieces) CS_RETURN_IF_ERROR(re.SplitIsolated(piece, &next));
    pieces = std::move(next);
  }
  for (const auto piece : pieces) {
    auto [it, inserted] = cache->try_emplace(piece);
    if (inserted) EncodeWord(piece, &it->second);
    ids->insert(ids->end(), it->second.begin(), it->second.end());
  }
  return OkStatus();
}

// tokenizers' Word::merge_all: repeatedly merge the adjacent pair of lowest rank (leftmost
// first among equal ranks), with a heap and a linked list, so long words stay O(n log n).
void ByteLevelBpe::EncodeWord(std::string_view word, std::vector<std::int32_t>* ids) const {
  if (ignore_merges_) {
    if (auto it = vocab_.find(std::string(word)); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  struct Symbol {
    std::int32_t id;
    std::int32_t prev, next;  // -1 at the ends
    bool alive;
  };
  const auto n = static_cast<std::int32_t>(word.size());
  std::vector<Symbol> sym(static_cast<std::size_t>(n));
  for (std::int32_t i = 0; i < n; ++i)
    sym[i] = {byte_ids_[static_cast<unsigned char>(word[i])], i - 1, i + 1 < n ? i + 1 : -1, true};
  struct Candidate {
    std::int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  const auto push = [&](std::int32_t pos) {
    const std::int32_t next = sym[pos].next;
    if (next < 0) return;
    if (auto it = merges_.find(PairKey(sym[pos].id, sym[next].id)); it != merges_.end())
      heap.push({it->second.first, pos, it->second.second});
  };
  for (std::int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    Symbol& left = sym[top.pos];
    if (!left.alive || left.next < 0) continue;
    const std::int32_t right_pos = left.next;
    auto it = merges_.find(PairKey(left.id, sym[right_pos].id));
    if (it == merges_.end() || it->second.second != top.new_id) continue;  // stale entry
    left.id = top.new_id;
    sym[right_pos].alive = false;
    left.next = sym[right_pos].next;
    if (left.next >= 0) sym[left.next].prev = top.pos;
    if (left.prev >= 0) push(left.prev);
    push(top.pos);
  }
  for (std::int32_t i = n > 0 ? 0 : -1; i >= 0; i = sym[i].next) ids->push_back(sym[i].id);
}

Result<std::string> ByteLevelBpe::DecodeBytes(std::span<const std::int32_t> ids, bool skip_special) const {
  std::string out;
  for (const auto id : ids) {
    if (id < 0 || static_cast<std::size_t>(id) >= id_bytes_.size() || id_kind_[id] == IdKind::kNone)
      return MakeError(Errc::kInvalidArgument, "token id " + std::to_string(id) + " is not in the vocabulary (size " +
                                                   std::to_string(id_bytes_.size()) + ")");
    if (skip_special && id_kind_[id] == IdKind::kSpecial) continue;
    out += id_bytes_[id];
  }
  return out;
}

// --- loading ------------------------------------------------------------------------------------

bool IsNullOr(const json& obj, const char* key, const json& allowed) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() || *it == allowed;
}

std::string TypeOf(const json& j) {
  if (!j.is_object()) return "(not an object)";
  auto it = j.find("type");
  return it != j.end() && it->is_string() ? it->get<std::string>() : "(no type)";
}

// The steps of root[key]: none when absent or null, its own list when it is a Sequence
// (root[key][list_key]), else itself.
Result<std::vector<json>> Steps(const json& root, const char* key, const char* list_key) {
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) return std::vector<json>();
  if (TypeOf(*it) != "Sequence") return std::vector<json>{*it};
  auto inner = it->find(list_key);
  if (inner == it->end() || !inner->is_array()) return FormatError(std::string(key) + " Sequence without a list");
  return std::vector<json>(inner->begin(), inner->end());
}

Status ParseNormalizer(const json& root, bool* nfc) {
  CS_ASSIGN_OR_RETURN(auto list, Steps(root, "normalizer", "normalizers"));
  for (const auto& n : list) {
    if (TypeOf(n) != "NFC") return Unsupported("normalizer " + TypeOf(n) + " (supported: none, NFC)");
    *nfc = true;
  }
  return OkStatus();
}

Status ParsePreTokenizer(const json& root, std::vector<Regex>* splits) {
  CS_ASSIGN_OR_RETURN(auto list, Steps(root, "pre_tokenizer", "pretokenizers"));
  if (list.empty()) return Unsupported("tokenizer without a ByteLevel pre-tokenizer (not a byte-level BPE)");
  for (std::size_t i = 0; i < list.size(); ++i) {
    const json& p = list[i];
    const std::string type = TypeOf(p);
    if (type == "Split") {
      auto pattern = p.find("pattern");
      if (pattern == p.end() || !pattern->is_object() || !pattern->contains("Regex") || !(*pattern)["Regex"].is_string())
        return Unsupported("Split pre-tokenizer without a Regex pattern");
      if (!p.contains("behavior") || p["behavior"] != "Isolated")
        return Unsupported("Split behavior " + (p.contains("behavior") ? p["behavior"].dump() : "(none)") +
                           " (supported: Isolated)");
      if (!IsNullOr(p, "invert", false)) return Unsupported("Split with invert true");
      CS_ASSIGN_OR_RETURN(auto re, Regex::Compile((*pattern)["Regex"].get<std::string>()));
      splits->push_back(std::move(re));
    } else if (type == "ByteLevel") {
      if (i + 1 != list.size()) return Unsupported("pre-tokenizer after ByteLevel");
      if (!IsNullOr(p, "add_prefix_space", false)) return Unsupported("ByteLevel pre-tokenizer with add_prefix_space");
      auto use_regex = p.find("use_regex");
      if (use_regex == p.end() || use_regex->is_null() || *use_regex == true) {
        CS_ASSIGN_OR_RETURN(auto re, Regex::Compile(kGpt2Pattern));
        splits->push_back(std::move(re));
      }
    } else {
      return Unsupported("pre-tokenizer " + type + " (supported: Split with a regex, ByteLevel)");
    }
  }
  if (TypeOf(list.back()) != "ByteLevel")
    return Unsupported("pre-tokenizer without ByteLevel last (not a byte-level BPE)");
  return OkStatus();
}

Status ParseAddedTokens(const json& root, std::vector<AddedToken>* raw,
                        std::vector<AddedToken>* normalized, std::vector<AddedToken>* all) {
  auto it = root.find("added_tokens");
  if (it == root.end() || it->is_null()) return OkStatus();
  if (!it->is_array()) return FormatError("added_tokens is not a list");
  for (const auto& t : *it) {
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || !t.contains("content") ||
        !t["content"].is_string())
      return FormatError("added token without an integer id and a string content: " + t.dump());
    const auto flag = [&](const char* key, bool dflt) -> Result<bool> {
      auto f = t.find(key);
      if (f == t.end() || f->is_null()) return dflt;
      if (!f->is_boolean()) return FormatError(std::string("added token ") + key + " is not a boolean: " + t.dump());
      return f->get<bool>();
    };
    AddedToken a;
    a.content = t["content"].get<std::string>();
    const auto id = t["id"].get<std::int64_t>();
    if (id < 0 || id > (1 << 30)) return FormatError("added token id out of range: " + t.dump());
    a.id = static_cast<std::int32_t>(id);
    CS_ASSIGN_OR_RETURN(a.special, flag("special", false));
    CS_ASSIGN_OR_RETURN(a.lstrip, flag("lstrip", false));
    CS_ASSIGN_OR_RETURN(a.rstrip, flag("rstrip", false));
    CS_ASSIGN_OR_RETURN(a.single_word, flag("single_word", false));
    CS_ASSIGN_OR_RETURN(a.normalized, flag("normalized", !a.special));
    if (a.content.empty() || FindInvalidUtf8(a.content) != std::string_view::npos)
      return FormatError("added token with empty or invalid UTF-8 content: " + t.dump());
    all->push_back(a);
    (a.normalized ? normalized : raw)->push_back(std::move(a));
  }
  return OkStatus();
}

// TemplateProcessing's "single" template: special tokens before and after the sequence $A.
Status ParseTemplate(const json& p, std::vector<std::int32_t>* prefix, std::vector<std::int32_t>* suffix) {
  auto single = p.find("single");
  auto specials = p.find("special_tokens");
  if (single == p.end() || !single->is_array() || specials == p.end() || !specials->is_object())
    return FormatError("TemplateProcessing without a single template and special_tokens");
  bool seen_sequence = false;
  for (const auto& item : *single) {
    if (item.contains("Sequence")) {
      if (seen_sequence) return Unsupported("TemplateProcessing single template with two sequences");
      seen_sequence = true;
      continue;
    }
    auto special = item.find("SpecialToken");
    if (special == item.end() || !special->is_object() || !special->contains("id") || !(*special)["id"].is_string())
      return FormatError("TemplateProcessing item is neither Sequence nor SpecialToken: " + item.dump());
    const std::string name = (*special)["id"].get<std::string>();
    auto entry = specials->find(name);
    if (entry == specials->end() || !entry->contains("ids") || !(*entry)["ids"].is_array())
      return FormatError("TemplateProcessing special token " + name + " has no ids");
    for (const auto& id : (*entry)["ids"]) {
      if (!id.is_number_integer() || id.get<std::int64_t>() < 0)
        return FormatError("TemplateProcessing special token " + name + " has a bad id " + id.dump());
      (seen_sequence ? suffix : prefix)->push_back(static_cast<std::int32_t>(id.get<std::int64_t>()));
    }
  }
  if (!seen_sequence) return FormatError("TemplateProcessing single template without $A");
  return OkStatus();
}

Status ParsePostProcessor(const json& root, std::vector<std::int32_t>* prefix, std::vector<std::int32_t>* suffix) {
  CS_ASSIGN_OR_RETURN(auto list, Steps(root, "post_processor", "processors"));
  bool have_template = false;
  for (const auto& p : list) {
    const std::string type = TypeOf(p);
    if (type == "ByteLevel") continue;  // offsets only
    if (type != "TemplateProcessing")
      return Unsupported("post-processor " + type + " (supported: ByteLevel, TemplateProcessing)");
    if (have_template) return Unsupported("two TemplateProcessing post-processors");
    have_template = true;
    CS_RETURN_IF_ERROR(ParseTemplate(p, prefix, suffix));
  }
  return OkStatus();
}


// model.vocab and model.merges are most of a tokenizer.json (Llama 3's: 128k entries, 280k
// merges, 9 MB). They are taken out while parsing instead of being built into the JSON tree:
// with a 128k vocabulary this halves the parse (measured 272 -> 156 ms here).
struct VocabAndMerges {
  std::vector<std::pair<std::string, json>> vocab;  // in file order
  std::vector<json> merges;
};

json ParseTokenizerJson(std::string_view text, VocabAndMerges* out) {
  std::vector<std::string> path;  // keys from the root to the current value
  const auto in = [&](const char* field) { return path.size() >= 2 && path[0] == "model" && path[1] == field; };
  return json::parse(
      text,
      [&](int depth, json::parse_event_t event, json& parsed) {
        using E = json::parse_event_t;
        if (event == E::key) {
          path.resize(depth > 0 ? static_cast<std::size_t>(depth - 1) : 0);
          path.push_back(parsed.get<std::string>());
          if (depth == 3 && in("vocab")) {
            out->vocab.emplace_back(path.back(), json());
            return false;  // the value still comes (below), but stays out of the tree
          }
          return true;
        }
        if (depth == 3 && event == E::value && path.size() == 3 && in("vocab") && !out->vocab.empty() &&
            out->vocab.back().first == path[2]) {
          out->vocab.back().second = std::move(parsed);
          return false;
        }
        if (depth == 3 && path.size() == 2 && in("merges") && (event == E::value || event == E::array_end)) {
          out->merges.push_back(std::move(parsed));
          return false;
        }
        return true;
      },
      /*allow_exceptions=*/false);
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> LoadByteLevelBpe(std::string_view text, const ModelConfigs& configs) {
  VocabAndMerges big;
  auto root = ParseTokenizerJson(text, &big);
  if (root.is_discarded() || !root.is_object()) return FormatError("not a JSON object (truncated or malformed?)");
  auto tok = std::make_unique<ByteLevelBpe>();

  auto model_it = root.find("model");
  if (model_it == root.end() || !model_it->is_object()) return FormatError("no \"model\" object");
  const json& model = *model_it;
  if (model.contains("type") && TypeOf(model) != "BPE")
    return Unsupported("model type " + TypeOf(model) + " (supported: BPE)");
  if (!IsNullOr(model, "dropout", 0.0) && !IsNullOr(model, "dropout", 0))
    return Unsupported("BPE dropout (encoding would be random)");
  if (!IsNullOr(model, "continuing_subword_prefix", "") || !IsNullOr(model, "end_of_word_suffix", ""))
    return Unsupported("BPE with continuing_subword_prefix or end_of_word_suffix");
  auto im = model.find("ignore_merges");
  if (im != model.end() && !im->is_null()) {
    if (!im->is_boolean()) return FormatError("model.ignore_merges is not a boolean");
    tok->ignore_merges_ = im->get<bool>();
  }
  CS_RETURN_IF_ERROR(ParseNormalizer(root, &tok->nfc_));
  CS_RETURN_IF_ERROR(ParsePreTokenizer(root, &tok->splits_));
  {
    auto dec = root.find("decoder");
    if (dec == root.end() || TypeOf(*dec) != "ByteLevel")
      return Unsupported("decoder " + (dec == root.end() ? std::string("(none)") : TypeOf(*dec)) +
                         " (supported: ByteLevel)");
  }

  // Vocabulary: token text (byte-level characters) -> id; kept as the raw bytes it stands for.
  auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) return FormatError("model.vocab is not an object");
  std::int64_t max_id = -1;
  for (const auto& [token, id] : big.vocab) {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() > (1 << 30))
      return FormatError("vocab entry \"" + token + "\" has id " + id.dump());
    max_id = std::max(max_id, id.get<std::int64_t>());
  }
  std::vector<AddedToken> raw, normalized, added;
  CS_RETURN_IF_ERROR(ParseAddedTokens(root, &raw, &normalized, &added));
  for (const auto& a : added) max_id = std::max<std::int64_t>(max_id, a.id);
  tok->id_bytes_.resize(static_cast<std::size_t>(max_id + 1));
  tok->id_kind_.assign(static_cast<std::size_t>(max_id + 1), IdKind::kNone);
  tok->vocab_.reserve(big.vocab.size());
  std::string bytes;
  for (const auto& [token, id_json] : big.vocab) {
    const auto id = static_cast<std::int32_t>(id_json.get<std::int64_t>());
    const bool mapped = TokenBytes(token, &bytes);
    tok->id_bytes_[id] = bytes;
    tok->id_kind_[id] = IdKind::kModel;
    if (mapped) tok->vocab_[bytes] = id;  // a duplicate key keeps the last id, as JSON parsers do
  }
  for (int b = 0; b < 256; ++b) {
    auto it = tok->vocab_.find(std::string(1, static_cast<char>(b)));
    if (it == tok->vocab_.end())
      return Unsupported("vocabulary: byte " + std::to_string(b) +
                         " has no token, so this is not a byte-level BPE vocabulary");
    tok->byte_ids_[b] = it->second;
  }
  for (const auto& a : added) {
    TokenBytes(a.content, &tok->id_bytes_[a.id]);
    tok->id_kind_[a.id] = a.special ? IdKind::kSpecial : IdKind::kAdded;
    tok->added_ids_[a.content] = a.id;
  }
  tok->raw_added_ = AddedTokenMatcher(std::move(raw));
  tok->normalized_added_ = AddedTokenMatcher(std::move(normalized));

  // Merges, in rank order: "a b" strings (older files) or ["a", "b"] pairs.
  auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array()) return FormatError("model.merges is not a list");
  tok->merges_.reserve(big.merges.size());
  std::string a_bytes, b_bytes;
  for (std::size_t rank = 0; rank < big.merges.size(); ++rank) {
    const json& m = big.merges[rank];
    std::string_view a, b;
    if (m.is_string()) {
      const std::string_view s = m.get_ref<const std::string&>();
      const auto space = s.find(' ');
      if (space == std::string_view::npos || s.find(' ', space + 1) != std::string_view::npos)
        return FormatError("merge " + std::to_string(rank) + " is not two tokens: " + m.dump());
      a = s.substr(0, space);
      b = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get_ref<const std::string&>();
      b = m[1].get_ref<const std::string&>();
    } else {
      return FormatError("merge " + std::to_string(rank) + " is neither \"a b\" nor [\"a\", \"b\"]: " + m.dump());
    }
    const bool mapped = TokenBytes(a, &a_bytes) && TokenBytes(b, &b_bytes);
    auto ia = mapped ? tok->vocab_.find(a_bytes) : tok->vocab_.end();
    auto ib = mapped ? tok->vocab_.find(b_bytes) : tok->vocab_.end();
    auto ic = mapped ? tok->vocab_.find(a_bytes + b_bytes) : tok->vocab_.end();
    if (ia == tok->vocab_.end() || ib == tok->vocab_.end() || ic == tok->vocab_.end())
      return FormatError("merge " + std::to_string(rank) + " " + m.dump() +
                         " uses a token that is not a byte-level entry of the vocabulary");
    // A pair listed twice keeps its last rank, as tokenizers' merge map does.
    tok->merges_[PairKey(ia->second, ib->second)] = {static_cast<std::int32_t>(rank), ic->second};
  }
  CS_RETURN_IF_ERROR(ParsePostProcessor(root, &tok->prefix_, &tok->suffix_));
  for (const auto id : tok->prefix_)
    if (static_cast<std::size_t>(id) >= tok->id_bytes_.size() || tok->id_kind_[id] == IdKind::kNone)
      return FormatError("post-processor token id " + std::to_string(id) + " is not in the vocabulary");
  for (const auto id : tok->suffix_)
    if (static_cast<std::size_t>(id) >= tok->id_bytes_.size() || tok->id_kind_[id] == IdKind::kNone)
      return FormatError("post-processor token id " + std::to_string(id) + " is not in the vocabulary");

  // BOS: what the template puts first, else tokenizer_config.json's bos_token.
  if (!tok->prefix_.empty()) {
    tok->bos_ = tok->prefix_.front();
  } else {
    CS_ASSIGN_OR_RETURN(auto bos_text, ConfigTokenText(configs, "bos_token"));
    if (bos_text) tok->bos_ = tok->TokenId(*bos_text);
  }
  std::optional<std::int32_t> own_eos;
  if (!tok->suffix_.empty()) own_eos = tok->suffix_.back();
  CS_ASSIGN_OR_RETURN(tok->eos_, CollectEosIds(configs, *tok, own_eos));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace coldstart::runtime::detail
