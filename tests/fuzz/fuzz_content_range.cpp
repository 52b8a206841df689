// libFuzzer target: Content-Range and x-goog-generation header values, as the ranged-read
// engine parses every response. Whatever parses is a consistent range.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "coldstart/fetch/content_range.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace coldstart::fetch;
  std::string_view v(reinterpret_cast<const char*>(data), size);
  if (auto cr = ParseContentRange(v)) {
    if (cr->unsatisfied && !cr->size) {
      std::fprintf(stderr, "fuzz_content_range: 'bytes */*' parsed\n");
      std::abort();
    }
    if (!cr->unsatisfied && (cr->last < cr->first || (cr->size && cr->last >= *cr->size))) {
      std::fprintf(stderr, "fuzz_content_range: an inconsistent range parsed\n");
      std::abort();
    }
  }
  if (auto g = ParseGeneration(v); g && *g <= 0) {
    std::fprintf(stderr, "fuzz_content_range: a non-positive generation parsed\n");
    std::abort();
  }
  return 0;
}
