// Pure parsers for the JSON that servers send to fetch/: GCS listing pages and object metadata
// (JSON API), and OAuth token responses (token endpoint and metadata server). No network, no
// exceptions: every field is checked for type and range, and a bad body is one Errc::kFormat
// error that starts with `what` (the caller passes a redacted URL or gs:// name, never a
// query string or a secret). Exposed so tests and fuzzers can feed them arbitrary bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "coldstart/core/result.h"

namespace coldstart::fetch {

// One object of a listing or a metadata answer. GCS sends "size" and "generation" as decimal
// strings (int64/uint64 do not fit a JSON double); a JSON number is accepted too when it is a
// non-negative integer, since emulators differ.
struct GcsObjectMeta {
  std::string name;
  std::uint64_t size = 0;
  std::int64_t generation = 0;        // > 0
  std::optional<std::uint32_t> crc32c;  // "crc32c": base64 of 4 big-endian bytes
  std::string md5_base64;             // "md5Hash": base64 of 16 bytes, or "" when absent
};

struct GcsListPage {
  std::vector<GcsObjectMeta> items;  // absent "items" = an empty page
  std::string next_page_token;       // "" = last page
};

// {"items": [{"name", "size", "generation", "crc32c"?, "md5Hash"?}...], "nextPageToken"?}
Result<GcsListPage> ParseGcsListPage(std::string_view body, std::string_view what);
// {"name"?, "size", "generation", "crc32c"?, "md5Hash"?} (name is optional: the caller asked
// for a known object; when present it must be a string).
Result<GcsObjectMeta> ParseGcsObject(std::string_view body, std::string_view what);

// {"access_token": "...", "expires_in": 3599, "token_type": "Bearer"}.
struct TokenResponse {
  std::string access_token;  // printable ASCII, no spaces
  double expires_in_s = 3600;  // absent = one hour (Google's tokens' lifetime)
};
// Never echoes the body or the token in an error; the caller wipes `body` afterwards.
Result<TokenResponse> ParseTokenResponse(std::string_view body, std::string_view what);

// A decimal string of digits ("0".."18446744073709551615"): no sign, no spaces, no suffix.
std::optional<std::uint64_t> ParseDecimalU64(std::string_view s);

}  // namespace coldstart::fetch
