// CRC32C (Castagnoli), the checksum GCS keeps for every object. SSE4.2 crc32 instructions when
// the CPU has them (checked once at run time), a slice-by-8 table otherwise. Crc32cCombine joins
// the CRCs of adjacent pieces, so parallel ranged downloads verify a whole object without a
// second pass over its bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "coldstart/core/result.h"

namespace coldstart {

// CRC of `data` continuing from `crc` (0 for a fresh start).
std::uint32_t Crc32cExtend(std::uint32_t crc, const void* data, std::size_t size);
inline std::uint32_t Crc32c(const void* data, std::size_t size) { return Crc32cExtend(0, data, size); }
inline std::uint32_t Crc32c(std::string_view s) { return Crc32cExtend(0, s.data(), s.size()); }
// CRC of A||B from crc(A), crc(B) and B's length.
std::uint32_t Crc32cCombine(std::uint32_t crc_a, std::uint32_t crc_b, std::uint64_t len_b);
bool Crc32cHardware();

// GCS encodes checksums as base64 of the big-endian bytes ("crc32c" in JSON metadata and
// x-goog-hash: crc32c=...).
std::string Crc32cToBase64(std::uint32_t crc);
Result<std::uint32_t> Crc32cFromBase64(std::string_view b64);

std::string Base64Encode(std::string_view bytes);
Result<std::string> Base64Decode(std::string_view text);          // standard alphabet, padding optional
std::string Base64UrlEncode(std::string_view bytes);              // RFC 4648 §5, no padding (JWT)
Result<std::string> Base64UrlDecode(std::string_view text);

}  // namespace coldstart
