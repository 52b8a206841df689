// The one check for names that are joined to a local folder (shard names from an index,
// object names written by prefetch): header-only so the parser's sanitizer build needs no
// other source.
#pragma once

#include <string>
#include <string_view>

#include "coldstart/core/result.h"

namespace coldstart {

// OK when `name` is a relative path that stays inside the folder it is joined to: not empty,
// not absolute, no NUL byte or backslash, no empty, "." or ".." component. Errors read
// "<noun> '<name>' escapes <folder> ('..')".
inline Status CheckRelativePath(std::string_view name, std::string_view noun, std::string_view folder) {
  auto bad = [&](std::string why) {
    return MakeError(Errc::kFormat, std::string(noun) + " '" + std::string(name) + "' " + why);
  };
  if (name.empty()) return bad("is empty");
  if (name.front() == '/') return bad("is an absolute path");
  if (name.find('\0') != std::string_view::npos) return bad("contains a NUL byte");
  if (name.find('\\') != std::string_view::npos) return bad("contains a backslash");
  std::size_t start = 0;
  while (start <= name.size()) {
    std::size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    std::string_view part = name.substr(start, end - start);
    if (part.empty()) return bad("has an empty path component");
    if (part == "..") return bad("escapes " + std::string(folder) + " ('..')");
    if (part == ".") return bad("has a '.' component");
    start = end + 1;
  }
  return OkStatus();
}

}  // namespace coldstart
