// Parsers for the response headers the range engine relies on, strict and without exceptions
// (RFC 9110 Content-Range; GCS's x-goog-generation). A value they refuse is treated by the
// engine as an answer it cannot place, never as offset 0.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace coldstart::fetch {

struct ContentRange {
  bool unsatisfied = false;           // "bytes */SIZE" (a 416's answer): no first/last
  std::uint64_t first = 0;            // "bytes FIRST-LAST/SIZE", inclusive
  std::uint64_t last = 0;
  std::optional<std::uint64_t> size;  // nullopt for "/*" (size unknown)
};

// "bytes 100-199/1000", "bytes 100-199/*", "bytes */1000" (unit case-insensitive, surrounding
// spaces ignored). nullopt for anything else: other units, last < first, last >= size,
// signs, digits that overflow 64 bits, trailing garbage.
std::optional<ContentRange> ParseContentRange(std::string_view value);

// x-goog-generation: a positive decimal int64, nothing else.
std::optional<std::int64_t> ParseGeneration(std::string_view value);

}  // namespace coldstart::fetch
