#include "coldstart/fetch/content_range.h"

#include <cctype>
#include <limits>

#include "coldstart/fetch/gcs_json.h"

namespace coldstart::fetch {
namespace {

std::string_view TrimSpaces(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

}  // namespace

std::optional<ContentRange> ParseContentRange(std::string_view value) {
  std::string_view v = TrimSpaces(value);
  if (v.size() < 6) return std::nullopt;
  for (std::size_t i = 0; i < 5; ++i)
    if (std::tolower(static_cast<unsigned char>(v[i])) != "bytes"[i]) return std::nullopt;
  if (v[5] != ' ') return std::nullopt;
  v.remove_prefix(6);
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  const auto slash = v.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  std::string_view range = v.substr(0, slash), total = v.substr(slash + 1);
  ContentRange cr;
  if (total != "*") {
    cr.size = ParseDecimalU64(total);
    if (!cr.size) return std::nullopt;
  }
  if (range == "*") {
    if (!cr.size) return std::nullopt;  // "bytes */*" says nothing
    cr.unsatisfied = true;
    return cr;
  }
  const auto dash = range.find('-');
  if (dash == std::string_view::npos) return std::nullopt;
  auto first = ParseDecimalU64(range.substr(0, dash));
  auto last = ParseDecimalU64(range.substr(dash + 1));
  if (!first || !last || *last < *first) return std::nullopt;
  if (cr.size && *last >= *cr.size) return std::nullopt;
  cr.first = *first;
  cr.last = *last;
  return cr;
}

std::optional<std::int64_t> ParseGeneration(std::string_view value) {
  auto g = ParseDecimalU64(TrimSpaces(value));
  if (!g || *g == 0 || *g > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
  return static_cast<std::int64_t>(*g);
}

}  // namespace coldstart::fetch
