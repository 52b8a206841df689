// The safetensors format (https://github.com/huggingface/safetensors), parsed strictly.
//
// File = u64 little-endian header length N | N bytes of UTF-8 JSON | data section.
// Rules (at least those of the reference implementation, plus a few it lacks):
//  - N <= kMaxHeaderBytes (100 MB) and 8 + N <= file size;
//  - the header is valid UTF-8, starts with '{', and is one JSON object, optionally followed
//    by whitespace (writers pad with spaces to an 8-byte boundary);
//  - keys are tensor names or "__metadata__" (an object of string to string); no key appears
//    twice at any level (the reference's HashMap would keep one silently; we refuse);
//  - each tensor is exactly {"dtype": known dtype, "shape": [u64...], "data_offsets": [b, e]}
//    with integer values only (no floats, negatives or unknown fields);
//  - element count x dtype size == e - b, computed with overflow checks;
//  - sorted by offset, the tensors tile the data section from 0 to its end with no gap,
//    overlap or trailing byte.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "coldstart/core/file_identity.h"
#include "coldstart/core/result.h"

namespace coldstart::loader {

inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

enum class DType : std::uint8_t {
  kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU64, kU32, kU16, kU8, kBool, kF8E4M3, kF8E5M2,
};
inline constexpr std::array kAllDTypes = {
    DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kI64,
    DType::kI32, DType::kI16, DType::kI8,  DType::kU64,  DType::kU32,
    DType::kU16, DType::kU8,  DType::kBool, DType::kF8E4M3, DType::kF8E5M2,
};

std::string_view DTypeName(DType d);        // "BF16", as in the file
Result<DType> ParseDType(std::string_view name);
std::size_t DTypeSize(DType d);             // bytes per element

struct TensorInfo {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0;  // relative to the data section
  std::uint64_t end = 0;
  std::uint64_t nbytes() const { return end - begin; }
};

struct SafetensorsHeader {
  std::uint64_t header_bytes = 0;  // N
  std::uint64_t data_bytes = 0;    // file size - 8 - N
  std::vector<TensorInfo> tensors; // sorted by begin (file order)
  std::map<std::string, std::string> metadata;
  std::uint64_t data_start() const { return 8 + header_bytes; }
};

// Validates the 8-byte prefix against the file size and returns N.
Result<std::uint64_t> ParseHeaderLength(std::span<const std::byte> prefix8, std::uint64_t file_size);
// Parses the N header bytes of a file of file_size bytes. Errors do not name the file: the
// caller adds it as context.
Result<SafetensorsHeader> ParseHeader(std::string_view header_json, std::uint64_t file_size);
// Reads and parses a local file's header; errors are prefixed with the path.
// `identity` (optional) receives the file's identity as it was when the header was read.
Result<SafetensorsHeader> ReadHeaderFile(const std::string& path, FileIdentity* identity = nullptr);

// True when `text` is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF).
bool IsValidUtf8(std::string_view text);

// What a writer needs to lay out a file.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kU8;
  std::vector<std::uint64_t> shape;
};
struct SerializedHeader {
  std::string bytes;                     // 8-byte length + JSON padded with spaces to 8 bytes
  std::vector<std::uint64_t> offsets;    // begin of each spec's data, relative to data start
  std::uint64_t data_bytes = 0;
};
// Lays the tensors out in the given order. Fails on overflow or a duplicate name.
Result<SerializedHeader> SerializeHeader(std::span<const TensorSpec> tensors,
                                         const std::map<std::string, std::string>& metadata);

// Element count with overflow check.
Result<std::uint64_t> CheckedNumel(std::span<const std::uint64_t> shape);

}  // namespace coldstart::loader
