#include "coldstart/fetch/gcs_json.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "coldstart/core/crc32c.h"

namespace coldstart::fetch {
namespace {

using json = nlohmann::json;

// A token lifetime longer than this is not one a real server issues (Google's are 1 h, at
// most 12 h); refusing it also keeps the expiry arithmetic far from overflow.
constexpr double kMaxTokenLifetimeS = 7 * 24 * 3600.0;

Error Bad(std::string_view what, std::string_view why) {
  return MakeError(Errc::kFormat, std::string(what) + ": " + std::string(why));
}

// "size" / "generation": a decimal string (GCS) or a non-negative JSON integer (emulators).
std::optional<std::uint64_t> U64Field(const json& v) {
  if (v.is_string()) return ParseDecimalU64(v.get_ref<const std::string&>());
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer()) {
    auto x = v.get<std::int64_t>();
    if (x >= 0) return static_cast<std::uint64_t>(x);
  }
  return std::nullopt;
}

// Fields of one object, `where` saying which ("object", "items[3]") for messages.
Result<GcsObjectMeta> ObjectFromJson(const json& j, std::string_view what, const std::string& where,
                                     bool name_required) {
  if (!j.is_object()) return Bad(what, where + " is not a JSON object");
  GcsObjectMeta m;
  auto name = j.find("name");
  if (name == j.end()) {
    if (name_required) return Bad(what, where + " has no \"name\"");
  } else {
    if (!name->is_string()) return Bad(what, where + ": \"name\" is not a string");
    m.name = name->get<std::string>();
    if (m.name.empty()) return Bad(what, where + ": \"name\" is empty");
  }
  const std::string label = m.name.empty() ? where : where + " (" + m.name + ")";
  auto size = j.find("size");
  if (size == j.end()) return Bad(what, label + " has no \"size\"");
  auto sz = U64Field(*size);
  if (!sz) return Bad(what, label + ": \"size\" is not a non-negative 64-bit integer (" + size->dump().substr(0, 40) + ")");
  m.size = *sz;
  auto gen = j.find("generation");
  if (gen == j.end()) return Bad(what, label + " has no \"generation\"");
  auto g = U64Field(*gen);
  if (!g || *g == 0 || *g > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    return Bad(what, label + ": \"generation\" is not a positive 64-bit integer (" + gen->dump().substr(0, 40) + ")");
  m.generation = static_cast<std::int64_t>(*g);
  if (auto crc = j.find("crc32c"); crc != j.end()) {
    if (!crc->is_string()) return Bad(what, label + ": \"crc32c\" is not a string");
    auto v = Crc32cFromBase64(crc->get_ref<const std::string&>());
    if (!v.ok()) return Bad(what, label + ": \"crc32c\" is not 4 base64-encoded bytes");
    m.crc32c = *v;
  }
  if (auto md5 = j.find("md5Hash"); md5 != j.end()) {
    if (!md5->is_string()) return Bad(what, label + ": \"md5Hash\" is not a string");
    auto raw = Base64Decode(md5->get_ref<const std::string&>());
    if (!raw.ok() || raw->size() != 16) return Bad(what, label + ": \"md5Hash\" is not 16 base64-encoded bytes");
    m.md5_base64 = md5->get<std::string>();
  }
  return m;
}

json ParseObject(std::string_view body) { return json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false); }

}  // namespace

std::optional<std::uint64_t> ParseDecimalU64(std::string_view s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    auto d = static_cast<std::uint64_t>(c - '0');
    if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

Result<GcsListPage> ParseGcsListPage(std::string_view body, std::string_view what) {
  json j = ParseObject(body);
  if (j.is_discarded()) return Bad(what, "listing response is not JSON");
  if (!j.is_object()) return Bad(what, "listing response is not a JSON object");
  GcsListPage page;
  if (auto items = j.find("items"); items != j.end()) {
    if (!items->is_array()) return Bad(what, "listing response: \"items\" is not an array");
    page.items.reserve(items->size());
    std::size_t i = 0;
    for (const auto& it : *items) {
      CS_ASSIGN_OR_RETURN(auto m, ObjectFromJson(it, what, "items[" + std::to_string(i) + "]", true));
      page.items.push_back(std::move(m));
      ++i;
    }
  }
  if (auto tok = j.find("nextPageToken"); tok != j.end() && !tok->is_null()) {
    if (!tok->is_string()) return Bad(what, "listing response: \"nextPageToken\" is not a string");
    page.next_page_token = tok->get<std::string>();
  }
  return page;
}

Result<GcsObjectMeta> ParseGcsObject(std::string_view body, std::string_view what) {
  json j = ParseObject(body);
  if (j.is_discarded()) return Bad(what, "metadata response is not JSON");
  return ObjectFromJson(j, what, "metadata response", false);
}

Result<TokenResponse> ParseTokenResponse(std::string_view body, std::string_view what) {
  json j = ParseObject(body);
  // Scrub the parsed copy of the token on every way out.
  struct Wiper {
    json& j;
    ~Wiper() {
      if (!j.is_object()) return;
      auto it = j.find("access_token");
      if (it != j.end() && it->is_string()) {
        auto& s = it->get_ref<std::string&>();
        std::fill(s.begin(), s.end(), '\0');
      }
    }
  } wiper{j};
  auto bad = [&](std::string_view why) { return Bad(what, "token response " + std::string(why)); };
  if (j.is_discarded() || !j.is_object()) return bad("is not a JSON object");
  auto tok = j.find("access_token");
  if (tok == j.end() || !tok->is_string()) return bad("has no access_token");
  const std::string& t = tok->get_ref<const std::string&>();
  if (t.empty()) return bad("has an empty or malformed access_token");
  for (char c : t) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) return bad("has an empty or malformed access_token");
  }
  if (auto type = j.find("token_type"); type != j.end()) {
    if (!type->is_string()) return bad("has a token_type that is not a string");
    std::string tt = type->get<std::string>();
    for (char& c : tt) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (tt != "bearer") return bad("has token_type '" + type->get<std::string>().substr(0, 40) + "', not Bearer");
  }
  TokenResponse out;
  if (auto exp = j.find("expires_in"); exp != j.end()) {
    double v = -1;
    if (exp->is_number()) {
      v = exp->get<double>();
    } else if (exp->is_string()) {
      if (auto u = ParseDecimalU64(exp->get_ref<const std::string&>())) v = static_cast<double>(*u);
    }
    if (!std::isfinite(v) || v < 0 || v > kMaxTokenLifetimeS) return bad("has a malformed expires_in");
    out.expires_in_s = v;
  }
  out.access_token = t;
  return out;
}

}  // namespace coldstart::fetch
