// Text forms of FaultSpec: the CLI's "k=v,k=v" and the control endpoint's JSON.
#include <array>
#include <charconv>
#include <nlohmann/json.hpp>
#include <utility>

#include "coldstart/core/env.h"
#include "coldstart/fake_gcs/server.h"

namespace coldstart::fakegcs {
namespace {

using Kind = FaultSpec::Kind;

constexpr std::array<std::pair<Kind, std::string_view>, 7> kKindNames = {{
    {Kind::kStatus, "status"},
    {Kind::kReset, "reset"},
    {Kind::kCutBody, "cut"},
    {Kind::kStall, "stall"},
    {Kind::kCorrupt, "corrupt"},
    {Kind::kGenerationChange, "generation"},
    {Kind::kFirstByteDelay, "first_byte_delay"},
}};

Error Bad(std::string message) { return MakeError(Errc::kInvalidArgument, std::move(message)); }

Result<bool> ParseBoolField(std::string_view v) {
  auto b = ParseBool(v);
  if (!b.ok()) return Bad("fault spec: media_only must be true/false, got '" + std::string(v) + "'");
  return *b;
}

Result<int> ParseStatus(std::string_view v) {
  int status = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), status);
  if (ec != std::errc() || p != v.data() + v.size() || status < 100 || status > 599)
    return Bad("fault spec: status must be an HTTP status 100..599, got '" + std::string(v) + "'");
  return status;
}

// One key=value of either form; JSON values arrive already turned into text.
Status SetField(FaultSpec& f, std::string_view key, std::string_view value) {
  if (key == "kind") {
    CS_ASSIGN_OR_RETURN(f.kind, ParseFaultKind(value));
  } else if (key == "status") {
    CS_ASSIGN_OR_RETURN(f.status, ParseStatus(value));
  } else if (key == "after" || key == "after_bytes") {
    auto b = ParseBytes(value);
    if (!b.ok()) return Bad("fault spec: after_bytes: " + b.error().message);
    f.after_bytes = *b;
  } else if (key == "seconds") {
    auto s = ParseSeconds(value);
    if (!s.ok()) return Bad("fault spec: seconds: " + s.error().message);
    f.seconds = *s;
  } else if (key == "object" || key == "object_glob") {
    if (value.empty()) return Bad("fault spec: object glob is empty");
    f.object_glob = std::string(value);
  } else if (key == "count") {
    auto c = ParseUint(value);
    if (!c.ok() || *c > 0xffffffffu) return Bad("fault spec: count must be a non-negative integer, got '" + std::string(value) + "'");
    f.count = static_cast<unsigned>(*c);
  } else if (key == "media_only") {
    CS_ASSIGN_OR_RETURN(f.media_only, ParseBoolField(value));
  } else {
    return Bad("fault spec: unknown key '" + std::string(key) +
               "' (known: kind, status, after_bytes, seconds, object, count, media_only)");
  }
  return OkStatus();
}

}  // namespace

std::string_view FaultKindName(FaultSpec::Kind kind) {
  for (const auto& [k, name] : kKindNames)
    if (k == kind) return name;
  return "unknown";
}

Result<FaultSpec::Kind> ParseFaultKind(std::string_view name) {
  for (const auto& [k, n] : kKindNames)
    if (n == name) return k;
  return Bad("unknown fault kind '" + std::string(name) +
             "' (known: status, reset, cut, stall, corrupt, generation, first_byte_delay)");
}

Result<FaultSpec> ParseFaultSpec(std::string_view text) {
  FaultSpec f;
  bool have_kind = false;
  while (!text.empty()) {
    auto comma = text.find(',');
    auto item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    if (item.empty()) continue;
    auto eq = item.find('=');
    if (eq == std::string_view::npos) return Bad("fault spec: expected key=value, got '" + std::string(item) + "'");
    auto key = item.substr(0, eq);
    have_kind |= key == "kind";
    CS_RETURN_IF_ERROR(SetField(f, key, item.substr(eq + 1)));
  }
  if (!have_kind) return Bad("fault spec: kind=... is required");
  return f;
}

Result<FaultSpec> FaultSpecFromJson(std::string_view json_text) {
  auto j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return MakeError(Errc::kFormat, "fault spec: body is not a JSON object");
  if (!j.contains("kind")) return Bad("fault spec: \"kind\" is required");
  FaultSpec f;
  for (const auto& [key, value] : j.items()) {
    std::string text;
    if (value.is_string()) {
      text = value.get<std::string>();
    } else if (value.is_boolean()) {
      text = value.get<bool>() ? "true" : "false";
    } else if (value.is_number_integer() || value.is_number_unsigned()) {
      text = value.dump();
    } else if (value.is_number_float()) {
      if (key != "seconds") return Bad("fault spec: " + key + " must be an integer");
      text = value.dump();
    } else {
      return Bad("fault spec: " + key + " has an unsupported JSON type");
    }
    CS_RETURN_IF_ERROR(SetField(f, key, text));
  }
  return f;
}

}  // namespace coldstart::fakegcs
