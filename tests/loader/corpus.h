// The malformed-safetensors corpus, shared by the GoogleTest suites and the corpus writer used
// by the cross-check against the reference implementation (tests/python/).
// Every case is built deterministically; `Mutations` adds seeded random byte flips.
#pragma once

#include <cstdint>
#include <ostream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace coldstart::testing {

// 8-byte little-endian length + header + data.
inline std::string StFile(std::string_view header, std::string_view data = {}, std::uint64_t forced_len = UINT64_MAX) {
  std::uint64_t n = forced_len == UINT64_MAX ? header.size() : forced_len;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  out.append(header);
  out.append(data);
  return out;
}

struct CorpusCase {
  std::string name;
  std::string bytes;
  std::string expect;  // substring of the error message
  // Malformed input is kFormat (exit 4); a well-formed file cut short is kIntegrity (exit 5).
  bool truncated = false;
  friend void PrintTo(const CorpusCase& c, std::ostream* os) { *os << c.name; }
};

inline std::vector<CorpusCase> MalformedFiles() {
  const std::string d16(16, 'x');
  const std::string ok_t = R"("t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]})";
  std::vector<CorpusCase> c = {
      {"empty_file", "", "too short"},
      {"seven_bytes", std::string(7, '\0'), "too short"},
      {"header_len_over_100MB", StFile("{}", "", 100'000'001), "100 MB"},
      {"header_len_u64_max", StFile("{}", "", UINT64_MAX - 1), "100 MB"},
      {"header_len_past_eof", StFile("{}", "", 1000), "past the end", true},
      {"header_len_zero", StFile(""), "does not start with '{'"},
      {"header_is_array", StFile("[]"), "does not start with '{'"},
      {"leading_space", StFile(" {}"), "does not start with '{'"},
      {"invalid_utf8_byte", StFile("{\"\xff\":{}}"), "UTF-8"},
      {"overlong_utf8", StFile("{\"\xc0\x80\":{}}"), "UTF-8"},
      {"surrogate_utf8", StFile("{\"\xed\xa0\x80\":{}}"), "UTF-8"},
      {"truncated_json", StFile("{\"t\":"), "not valid JSON"},
      {"trailing_garbage", StFile("{}x"), "not valid JSON"},
      {"two_objects", StFile("{} {}"), "not valid JSON"},
      {"json_comment", StFile("{/*c*/}"), "not valid JSON"},
      {"nul_after_object", StFile(std::string("{}\0", 3)), "not valid JSON"},
      {"tensor_is_number", StFile(R"({"t":5})"), "is a number, not an object"},
      {"tensor_is_array", StFile(R"({"t":[1]})"), "is an array, not an object"},
      {"missing_dtype", StFile(R"({"t":{"shape":[2,2],"data_offsets":[0,16]}})", d16), "no \"dtype\""},
      {"missing_shape", StFile(R"({"t":{"dtype":"F32","data_offsets":[0,16]}})", d16), "no \"shape\""},
      {"missing_offsets", StFile(R"({"t":{"dtype":"F32","shape":[2,2]}})", d16), "no \"data_offsets\""},
      {"unknown_dtype", StFile(R"({"t":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", d16), "unknown dtype"},
      {"lowercase_dtype", StFile(R"({"t":{"dtype":"f32","shape":[2,2],"data_offsets":[0,16]}})", d16), "unknown dtype"},
      {"dtype_not_string", StFile(R"({"t":{"dtype":4,"shape":[2,2],"data_offsets":[0,16]}})", d16), "is a number"},
      {"negative_dim", StFile(R"({"t":{"dtype":"F32","shape":[-2,2],"data_offsets":[0,16]}})", d16), "negative"},
      {"float_dim", StFile(R"({"t":{"dtype":"F32","shape":[2.0,2],"data_offsets":[0,16]}})", d16), "not an unsigned 64-bit integer"},
      {"dim_over_u64", StFile(R"({"t":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,16]}})", d16), "not an unsigned 64-bit integer"},
      {"shape_not_array", StFile(R"({"t":{"dtype":"F32","shape":4,"data_offsets":[0,16]}})", d16), "is a number"},
      {"offsets_three", StFile(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8,16]}})", d16), "more than 2"},
      {"offsets_one", StFile(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[16]}})", d16), "exactly 2"},
      {"offsets_string", StFile(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":["0",16]}})", d16), "a string, not an unsigned"},
      {"offsets_reversed", StFile(R"({"t":{"dtype":"U8","shape":[0],"data_offsets":[16,0]}})", d16), "end before they begin"},
      {"size_mismatch", StFile(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}})", d16.substr(0, 8)), "needs 16 bytes"},
      {"numel_overflow", StFile(R"({"t":{"dtype":"U8","shape":[4294967296,4294967296,2],"data_offsets":[0,16]}})", d16), "overflows"},
      {"nbytes_overflow", StFile(R"({"t":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,16]}})", d16), "overflows"},
      {"gap_between", StFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}})", std::string(12, 'x')), "gap of 4 bytes"},
      {"not_from_zero", StFile(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", std::string(8, 'x')), "gap of 4 bytes"},
      {"overlap", StFile(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", std::string(8, 'x')), "overlaps"},
      {"trailing_bytes", StFile("{" + ok_t + "}", d16 + "zz"), "trailing bytes"},
      {"truncated_data", StFile("{" + ok_t + "}", d16.substr(0, 10)), "truncated?", true},
      {"duplicate_tensor", StFile(R"({"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"t":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})", std::string(8, 'x')), "duplicate tensor name"},
      {"duplicate_field", StFile(R"({"t":{"dtype":"U8","dtype":"U8","shape":[4],"data_offsets":[0,4]}})", std::string(4, 'x')), "twice"},
      {"unknown_field", StFile(R"({"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"extra":1}})", std::string(4, 'x')), "unknown field"},
      {"metadata_not_object", StFile(R"({"__metadata__":"x"})"), "not an object"},
      {"metadata_non_string", StFile(R"({"__metadata__":{"k":1}})"), "not a string"},
      {"metadata_nested", StFile(R"({"__metadata__":{"k":{"a":"b"}}})"), "not a string"},
      {"metadata_twice", StFile(R"({"__metadata__":{},"__metadata__":{}})"), "appears twice"},
      {"metadata_dup_key", StFile(R"({"__metadata__":{"k":"a","k":"b"}})"), "twice"},
      {"deep_nesting", StFile("{\"t\":{\"dtype\":" + std::string(10000, '[') + std::string(10000, ']') + "}}"), "is an array"},
      {"null_tensor", StFile(R"({"t":null})"), "is null, not an object"},
  };
  return c;
}

// Seeded byte flips of a valid file: each result must either parse or fail cleanly.
inline std::vector<std::string> Mutations(const std::string& valid, unsigned count, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> out;
  out.reserve(count);
  for (unsigned i = 0; i < count; ++i) {
    std::string m = valid;
    unsigned flips = 1 + static_cast<unsigned>(rng() % 4);
    for (unsigned f = 0; f < flips; ++f) {
      std::size_t pos = static_cast<std::size_t>(rng() % m.size());
      switch (rng() % 4) {
        case 0: m[pos] = static_cast<char>(rng()); break;               // random byte
        case 1: m[pos] = "{}[]\",:0123456789-.e"[rng() % 20]; break;     // JSON-ish byte
        case 2: m.resize(pos); break;                                     // truncate
        case 3: m.insert(pos, 1, static_cast<char>(rng())); break;      // insert
      }
      if (m.empty()) break;
    }
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace coldstart::testing
