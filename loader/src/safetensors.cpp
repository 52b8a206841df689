#include "coldstart/loader/safetensors.h"

#include "coldstart/core/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

namespace coldstart::loader {
namespace {

struct DTypeRow {
  DType dtype;
  std::string_view name;
  std::size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::kF64, "F64", 8},   {DType::kF32, "F32", 4},       {DType::kF16, "F16", 2},
    {DType::kBF16, "BF16", 2}, {DType::kI64, "I64", 8},       {DType::kI32, "I32", 4},
    {DType::kI16, "I16", 2},   {DType::kI8, "I8", 1},         {DType::kU64, "U64", 8},
    {DType::kU32, "U32", 4},   {DType::kU16, "U16", 2},       {DType::kU8, "U8", 1},
    {DType::kBool, "BOOL", 1}, {DType::kF8E4M3, "F8_E4M3", 1}, {DType::kF8E5M2, "F8_E5M2", 1},
};

Error FormatError(std::string msg) { return MakeError(Errc::kFormat, std::move(msg)); }

std::string Quote(std::string_view s) {
  // Names come from untrusted files: keep them printable and bounded in messages.
  std::string out = "'";
  std::size_t n = 0;
  for (unsigned char c : s) {
    if (++n > 200) {
      out += "...";
      break;
    }
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "'";
}

// SAX handler: builds the header directly and stops at the first rule broken, so a hostile
// 100 MB header costs one pass and no DOM.
class HeaderSax {
 public:
  using json = nlohmann::json;
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  SafetensorsHeader* out;
  std::string error;

  explicit HeaderSax(SafetensorsHeader* h) : out(h) {}

  bool null() { return Scalar("null"); }
  bool boolean(bool) { return Scalar("a boolean"); }
  bool number_integer(number_integer_t v) {
    if (ctx_ == Ctx::kShape || ctx_ == Ctx::kOffsets)
      return Fail(Where() + " has a negative number (" + std::to_string(v) + ")");
    return Scalar("a number");
  }
  bool number_unsigned(number_unsigned_t v) {
    if (ctx_ == Ctx::kShape) {
      cur_.shape.push_back(v);
      return true;
    }
    if (ctx_ == Ctx::kOffsets) {
      if (offsets_seen_ >= 2) return Fail(Where() + " has more than 2 entries");
      (offsets_seen_ == 0 ? cur_.begin : cur_.end) = v;
      ++offsets_seen_;
      return true;
    }
    return Scalar("a number");
  }
  bool number_float(number_float_t, const string_t& text) {
    if (ctx_ == Ctx::kShape || ctx_ == Ctx::kOffsets)
      return Fail(Where() + " has " + text + ", which is not an unsigned 64-bit integer");
    return Scalar("a number");
  }
  bool string(string_t& s) {
    if (ctx_ == Ctx::kMetadata) {
      out->metadata.emplace(key_, std::move(s));
      return true;
    }
    if (ctx_ == Ctx::kTensor && key_ == "dtype") {
      auto d = ParseDType(s);
      if (!d.ok()) return Fail("tensor " + Quote(cur_.name) + ": unknown dtype " + Quote(s));
      cur_.dtype = *d;
      has_dtype_ = true;
      return true;
    }
    return Scalar("a string");
  }
  bool binary(binary_t&) { return Scalar("binary data"); }

  bool start_object(std::size_t) {
    switch (ctx_) {
      case Ctx::kStart:
        ctx_ = Ctx::kTop;
        return true;
      case Ctx::kTop:
        if (key_ == "__metadata__") {
          ctx_ = Ctx::kMetadata;
        } else {
          ctx_ = Ctx::kTensor;
          cur_ = TensorInfo{};
          cur_.name = key_;
          has_dtype_ = has_shape_ = has_offsets_ = false;
          tensor_keys_.clear();
        }
        return true;
      default:
        return Scalar("an object");
    }
  }
  bool end_object() {
    switch (ctx_) {
      case Ctx::kTop:
        ctx_ = Ctx::kDone;
        return true;
      case Ctx::kMetadata:
        ctx_ = Ctx::kTop;
        return true;
      case Ctx::kTensor: {
        const char* missing = !has_dtype_ ? "dtype" : !has_shape_ ? "shape" : !has_offsets_ ? "data_offsets" : nullptr;
        if (missing) return Fail("tensor " + Quote(cur_.name) + " has no \"" + missing + "\"");
        out->tensors.push_back(std::move(cur_));
        ctx_ = Ctx::kTop;
        return true;
      }
      default:
        return Fail("unbalanced object");
    }
  }
  bool start_array(std::size_t) {
    if (ctx_ == Ctx::kTensor && key_ == "shape") {
      ctx_ = Ctx::kShape;
      has_shape_ = true;
      return true;
    }
    if (ctx_ == Ctx::kTensor && key_ == "data_offsets") {
      ctx_ = Ctx::kOffsets;
      has_offsets_ = true;
      offsets_seen_ = 0;
      return true;
    }
    return Scalar("an array");
  }
  bool end_array() {
    if (ctx_ == Ctx::kShape) {
      ctx_ = Ctx::kTensor;
      return true;
    }
    if (ctx_ == Ctx::kOffsets) {
      if (offsets_seen_ != 2) return Fail(Where() + " must have exactly 2 entries");
      ctx_ = Ctx::kTensor;
      return true;
    }
    return Fail("unbalanced array");
  }
  bool key(string_t& k) {
    if (ctx_ == Ctx::kTop) {
      if (!top_keys_.insert(k).second)
        return Fail(k == "__metadata__" ? "\"__metadata__\" appears twice"
                                        : "duplicate tensor name " + Quote(k));
    } else if (ctx_ == Ctx::kMetadata) {
      if (out->metadata.count(k)) return Fail("__metadata__ has the key " + Quote(k) + " twice");
    } else if (ctx_ == Ctx::kTensor) {
      if (k != "dtype" && k != "shape" && k != "data_offsets")
        return Fail("tensor " + Quote(cur_.name) + " has an unknown field " + Quote(k));
      if (!tensor_keys_.insert(k).second)
        return Fail("tensor " + Quote(cur_.name) + " has the field " + Quote(k) + " twice");
    }
    key_ = std::move(k);
    return true;
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) {
    if (error.empty()) {
      std::string what = ex.what();
      // "[json.exception.parse_error.101] parse error at line 1, column 5: syntax error ..."
      auto p = what.find("] ");
      error = "header is not valid JSON (byte " + std::to_string(position) + "): " +
              (p == std::string::npos ? what : what.substr(p + 2));
    }
    return false;
  }

 private:
  enum class Ctx { kStart, kTop, kMetadata, kTensor, kShape, kOffsets, kDone };

  bool Fail(std::string msg) {
    if (error.empty()) error = std::move(msg);
    return false;
  }
  std::string Where() const {
    return "tensor " + Quote(cur_.name) + " field \"" + (ctx_ == Ctx::kShape ? "shape" : "data_offsets") + "\"";
  }
  bool Scalar(const char* what) {
    switch (ctx_) {
      case Ctx::kStart: return Fail("header is not a JSON object");
      case Ctx::kTop:
        if (key_ == "__metadata__") return Fail("\"__metadata__\" is " + std::string(what) + ", not an object");
        return Fail("tensor " + Quote(key_) + " is " + std::string(what) + ", not an object");
      case Ctx::kMetadata:
        return Fail("__metadata__ value for " + Quote(key_) + " is " + what + ", not a string");
      case Ctx::kTensor:
        return Fail("tensor " + Quote(cur_.name) + " field " + Quote(key_) + " is " + what);
      case Ctx::kShape:
      case Ctx::kOffsets:
        return Fail(Where() + " contains " + what + ", not an unsigned integer");
      case Ctx::kDone: return Fail("data after the header object");
    }
    return Fail("unexpected JSON");
  }

  Ctx ctx_ = Ctx::kStart;
  std::string key_;
  TensorInfo cur_;
  bool has_dtype_ = false, has_shape_ = false, has_offsets_ = false;
  int offsets_seen_ = 0;
  std::set<std::string, std::less<>> top_keys_;
  std::set<std::string, std::less<>> tensor_keys_;
};

bool MulOverflows(std::uint64_t a, std::uint64_t b, std::uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

}  // namespace

std::string_view DTypeName(DType d) {
  for (const auto& r : kDTypes)
    if (r.dtype == d) return r.name;
  return "?";
}

Result<DType> ParseDType(std::string_view name) {
  for (const auto& r : kDTypes)
    if (r.name == name) return r.dtype;
  return FormatError("unknown dtype " + Quote(name));
}

std::size_t DTypeSize(DType d) {
  for (const auto& r : kDTypes)
    if (r.dtype == d) return r.size;
  return 0;
}

Result<std::uint64_t> CheckedNumel(std::span<const std::uint64_t> shape) {
  std::uint64_t n = 1;
  for (auto dim : shape)
    if (MulOverflows(n, dim, &n)) return FormatError("element count overflows 64 bits");
  return n;
}

bool IsValidUtf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  std::size_t n = text.size(), i = 0;
  while (i < n) {
    unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    std::uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
      cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;  // continuation byte, overlong lead (C0/C1) or > F4
    }
    if (i + len > n) return false;
    for (std::size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += len;
  }
  return true;
}

Result<std::uint64_t> ParseHeaderLength(std::span<const std::byte> prefix8, std::uint64_t file_size) {
  if (file_size < 8 || prefix8.size() < 8)
    return FormatError("file is " + std::to_string(file_size) +
                       " bytes, too short for the 8-byte header length");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<std::uint8_t>(prefix8[static_cast<std::size_t>(i)]);
  if (n > kMaxHeaderBytes)
    return FormatError("header length " + std::to_string(n) + " exceeds the 100 MB limit (not a safetensors file?)");
  // A length within the limit but past the end is a cut-short file, not a foreign one: text and
  // random bytes read as a length above 100 MB. Truncation is an integrity error (exit 5).
  if (n > file_size - 8)
    return MakeError(Errc::kIntegrity, "header length " + std::to_string(n) + " runs past the end of the " +
                       std::to_string(file_size) + "-byte file (truncated?)");
  return n;
}

Result<SafetensorsHeader> ParseHeader(std::string_view header_json, std::uint64_t file_size) {
  SafetensorsHeader h;
  h.header_bytes = header_json.size();
  if (file_size < 8 + h.header_bytes)
    return MakeError(Errc::kIntegrity, "header runs past the end of the file (truncated?)");
  h.data_bytes = file_size - 8 - h.header_bytes;
  if (header_json.empty() || header_json.front() != '{')
    return FormatError("header does not start with '{' (not a safetensors file?)");
  if (!IsValidUtf8(header_json)) return FormatError("header is not valid UTF-8");
  // JSON text never holds a raw NUL (strings must escape it); nlohmann would stop at one.
  if (auto nul = header_json.find('\0'); nul != std::string_view::npos)
    return FormatError("header is not valid JSON (NUL byte at " + std::to_string(nul) + ")");

  HeaderSax sax(&h);
  bool ok = nlohmann::json::sax_parse(header_json, &sax, nlohmann::json::input_format_t::json,
                                      /*strict=*/true, /*ignore_comments=*/false);
  if (!ok || !sax.error.empty())
    return FormatError(sax.error.empty() ? std::string("header is not valid JSON") : sax.error);

  for (const auto& t : h.tensors) {
    if (t.begin > t.end)
      return FormatError("tensor " + Quote(t.name) + ": data_offsets [" + std::to_string(t.begin) + ", " +
                         std::to_string(t.end) + "] end before they begin");
    std::uint64_t numel = 0, nbytes = 0;
    auto n = CheckedNumel(t.shape);
    if (!n.ok() || MulOverflows(*n, DTypeSize(t.dtype), &nbytes))
      return FormatError("tensor " + Quote(t.name) + ": size of shape overflows 64 bits");
    numel = *n;
    (void)numel;
    if (nbytes != t.end - t.begin)
      return FormatError("tensor " + Quote(t.name) + ": " + std::string(DTypeName(t.dtype)) + " shape needs " +
                         std::to_string(nbytes) + " bytes but data_offsets span " +
                         std::to_string(t.end - t.begin));
  }
  std::stable_sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t cursor = 0;
  for (const auto& t : h.tensors) {
    if (t.begin != cursor) {
      if (t.begin < cursor)
        return FormatError("tensor " + Quote(t.name) + " overlaps the previous tensor (starts at " +
                           std::to_string(t.begin) + ", previous ends at " + std::to_string(cursor) + ")");
      return FormatError("gap of " + std::to_string(t.begin - cursor) + " bytes before tensor " + Quote(t.name) +
                         " (data offsets must be contiguous)");
    }
    cursor = t.end;
  }
  if (cursor != h.data_bytes) {
    // A well-formed header over a data section cut short: truncated, not malformed.
    if (cursor > h.data_bytes)
      return MakeError(Errc::kIntegrity, "tensors need " + std::to_string(cursor) + " data bytes but the file holds " +
                         std::to_string(h.data_bytes) + " (truncated?)");
    return FormatError("data section has " + std::to_string(h.data_bytes - cursor) +
                       " trailing bytes not covered by any tensor");
  }
  return h;
}

Result<SafetensorsHeader> ReadHeaderFile(const std::string& path, FileIdentity* identity) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return MakePathError(path + ": cannot open", err);
  }
  std::unique_ptr<int, void (*)(int*)> guard(&fd, [](int* p) { ::close(*p); });
  struct stat st {};
  if (::fstat(fd, &st) != 0) return MakePathError(path + ": cannot stat", errno);
  if (!S_ISREG(st.st_mode)) return MakeError(Errc::kInvalidArgument, path + ": not a regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (identity) *identity = FileIdentity::FromStat(st);
  auto read_exact = [&](void* buf, std::size_t len, off_t off) -> Status {
    CS_ASSIGN_OR_RETURN(std::size_t got, ReadAt(fd, buf, len, static_cast<std::uint64_t>(off), path + " (header)"));
    if (got != len) return MakeError(Errc::kIntegrity, path + ": file ended inside the header (truncated while reading?)");
    return OkStatus();
  };
  std::array<std::byte, 8> prefix{};
  if (size >= 8) CS_RETURN_IF_ERROR(read_exact(prefix.data(), 8, 0));
  auto n = ParseHeaderLength(prefix, size);
  if (!n.ok()) return std::move(n).error().WithContext(path);
  std::string json(*n, '\0');
  CS_RETURN_IF_ERROR(read_exact(json.data(), json.size(), 8));
  auto h = ParseHeader(json, size);
  if (!h.ok()) return std::move(h).error().WithContext(path);
  return h;
}

Result<SerializedHeader> SerializeHeader(std::span<const TensorSpec> tensors,
                                         const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) j["__metadata__"] = metadata;
  SerializedHeader out;
  std::set<std::string_view> names;
  std::uint64_t cursor = 0;
  for (const auto& t : tensors) {
    if (t.name == "__metadata__" || !names.insert(t.name).second)
      return MakeError(Errc::kInvalidArgument, "tensor name " + Quote(t.name) + " used twice or reserved");
    CS_ASSIGN_OR_RETURN(auto numel, CheckedNumel(t.shape));
    std::uint64_t nbytes = 0, end = 0;
    if (MulOverflows(numel, DTypeSize(t.dtype), &nbytes) || __builtin_add_overflow(cursor, nbytes, &end))
      return MakeError(Errc::kInvalidArgument, "tensor " + Quote(t.name) + " is too large");
    j[t.name] = {{"dtype", DTypeName(t.dtype)}, {"shape", t.shape}, {"data_offsets", {cursor, end}}};
    out.offsets.push_back(cursor);
    cursor = end;
  }
  out.data_bytes = cursor;
  std::string text = j.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  out.bytes.resize(8);
  std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out.bytes[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  out.bytes += text;
  return out;
}

}  // namespace coldstart::loader
