// libFuzzer target: the server JSON coldstart reads (GCS listing pages, object metadata, OAuth
// token answers). Never a crash or an exception; whatever parses keeps the header's promises
// (positive generation, a printable token without spaces, a page token that is a string).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "coldstart/fetch/gcs_json.h"

namespace {

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "fuzz_gcs_json: %s\n", what);
  std::abort();
}

void CheckObject(const coldstart::fetch::GcsObjectMeta& o) {
  if (o.generation <= 0) Die("a non-positive generation parsed");
  if (!o.md5_base64.empty() && o.md5_base64.size() != 24) Die("an md5Hash that is not 16 bytes of base64");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace coldstart::fetch;
  std::string_view body(reinterpret_cast<const char*>(data), size);
  if (auto page = ParseGcsListPage(body, "https://h/storage/v1/b/b/o"); page.ok()) {
    for (const auto& o : page->items) CheckObject(o);
  } else if (page.error().message.empty()) {
    Die("listing error without a message");
  }
  if (auto obj = ParseGcsObject(body, "https://h/storage/v1/b/b/o/x"); obj.ok()) CheckObject(*obj);
  if (auto tok = ParseTokenResponse(body, "https://h/token"); tok.ok()) {
    if (tok->access_token.empty()) Die("an empty token parsed");
    for (char c : tok->access_token)
      if (c <= ' ' || c > '~') Die("a token with a space or a non-printable byte parsed");
    if (!(tok->expires_in_s > 0)) Die("a non-positive lifetime parsed");
  } else if (tok.error().message.find(std::string_view("ya29")) != std::string_view::npos &&
             body.find("ya29") != std::string_view::npos) {
    Die("a token error echoes the body");
  }
  if (auto n = ParseDecimalU64(body); n && body.empty()) Die("an empty number parsed");
  return 0;
}
