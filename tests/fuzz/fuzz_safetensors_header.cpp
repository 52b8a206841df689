// libFuzzer target: the safetensors header, as a local read (ReadHeaderFile) or a remote one
// (two ranged reads) sees it: ParseHeaderLength on the first 8 bytes, then ParseHeader on the
// next N bytes. Whatever parses must survive SerializeHeader and parse back to the same layout.
//
// Input: u64 little-endian file size | the file's first bytes (8-byte length + header; any data
// after the header is ignored). The size is separate so tensors need no data bytes in the input
// and so the fuzzer can explore size mismatches; write_fuzz_seeds.cpp prepends it to the corpus.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "coldstart/loader/safetensors.h"

namespace {

using namespace coldstart::loader;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "fuzz_safetensors_header: %s\n", what);
  std::abort();
}

std::uint64_t ReadU64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

bool SameTensor(const TensorInfo& a, const TensorInfo& b) {
  return a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.begin == b.begin && a.end == b.end;
}

void RoundTrip(const SafetensorsHeader& h) {
  std::vector<TensorSpec> specs;
  specs.reserve(h.tensors.size());
  for (const auto& t : h.tensors) specs.push_back({t.name, t.dtype, t.shape});
  auto ser = SerializeHeader(specs, h.metadata);
  if (!ser.ok()) Die("SerializeHeader refused a header that parsed");
  if (ser->data_bytes != h.data_bytes) Die("serialized data size differs");
  if (ser->offsets.size() != h.tensors.size()) Die("serialized offset count differs");
  for (std::size_t i = 0; i < specs.size(); ++i)
    if (ser->offsets[i] != h.tensors[i].begin) Die("serialized offset differs");
  if (ser->bytes.size() % 8 != 0) Die("serialized header not padded to 8 bytes");

  const auto* b = reinterpret_cast<const std::byte*>(ser->bytes.data());
  const std::uint64_t size = ser->bytes.size() + ser->data_bytes;
  auto n = ParseHeaderLength(std::span<const std::byte>(b, 8), size);
  if (!n.ok() || *n != ser->bytes.size() - 8) Die("serialized length prefix does not parse back");
  auto again = ParseHeader(std::string_view(ser->bytes).substr(8), size);
  if (!again.ok()) {
    std::fprintf(stderr, "%s\n", again.error().message.c_str());
    Die("serialized header does not parse back");
  }
  if (again->metadata != h.metadata) Die("metadata differs after the round trip");
  if (again->data_bytes != h.data_bytes) Die("data size differs after the round trip");
  if (again->tensors.size() != h.tensors.size()) Die("tensor count differs after the round trip");
  for (std::size_t i = 0; i < h.tensors.size(); ++i)
    if (!SameTensor(again->tensors[i], h.tensors[i])) Die("tensor differs after the round trip");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 8) return 0;
  const std::uint64_t file_size = ReadU64(data);
  const auto* file = reinterpret_cast<const std::byte*>(data + 8);
  const std::size_t have = size - 8;

  auto n = ParseHeaderLength(std::span<const std::byte>(file, have < 8 ? have : 8), file_size);
  if (!n.ok()) return 0;
  if (*n > kMaxHeaderBytes || *n > file_size - 8) Die("ParseHeaderLength accepted an impossible length");
  if (have < 8 || *n > have - 8) return 0;  // a reader would fetch these bytes; the input lacks them

  std::string_view header(reinterpret_cast<const char*>(file) + 8, static_cast<std::size_t>(*n));
  auto h = ParseHeader(header, file_size);
  if (!h.ok()) {
    if (h.error().message.empty()) Die("error without a message");
    return 0;
  }
  // The documented invariants of a parsed header.
  if (h->header_bytes != *n || h->data_start() + h->data_bytes != file_size) Die("sizes do not add up");
  std::uint64_t cursor = 0;
  for (const auto& t : h->tensors) {
    if (t.begin != cursor || t.end < t.begin) Die("tensors do not tile the data section");
    auto numel = CheckedNumel(t.shape);
    if (!numel.ok() || *numel * DTypeSize(t.dtype) != t.nbytes()) Die("tensor size does not match its shape");
    if (!IsValidUtf8(t.name)) Die("tensor name is not UTF-8");
    cursor = t.end;
  }
  if (cursor != h->data_bytes) Die("tensors do not cover the data section");
  RoundTrip(*h);
  return 0;
}
