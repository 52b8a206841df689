#include "coldstart/fetch/url.h"

#include <algorithm>
#include <cctype>

namespace coldstart::fetch {
namespace {

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool IStartsWith(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (Lower(s[i]) != Lower(prefix[i])) return false;
  return true;
}

bool IsAlnumLower(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// RFC 3986 scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
bool IsScheme(std::string_view s) {
  if (s.empty() || !std::isalpha(static_cast<unsigned char>(s[0]))) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '-' || c == '.';
  });
}

bool HasControl(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

Error Bad(std::string_view text, std::string why) {
  return MakeError(Errc::kInvalidArgument, "source '" + std::string(text) + "': " + why);
}

// Splits "scheme://authority/rest?q#f" into its pieces; `authority_end` is the index after
// the authority (start of path, query, fragment or end). Returns false without "://".
bool SplitAuthority(std::string_view url, size_t* authority_begin, size_t* authority_end) {
  size_t sep = url.find("://");
  if (sep == std::string_view::npos || !IsScheme(url.substr(0, sep))) return false;
  *authority_begin = sep + 3;
  size_t end = url.find_first_of("/?#", *authority_begin);
  *authority_end = end == std::string_view::npos ? url.size() : end;
  return true;
}

// Validates an http(s) URL enough to give a clear message before curl does: a host, no
// whitespace or control characters.
Status CheckHttpUrl(std::string_view text, std::string_view what) {
  size_t ab = 0, ae = 0;
  if (!SplitAuthority(text, &ab, &ae))
    return MakeError(Errc::kInvalidArgument, std::string(what) + " '" + std::string(text) +
                                                 "' is not an http:// or https:// URL");
  std::string_view authority = text.substr(ab, ae - ab);
  if (size_t at = authority.rfind('@'); at != std::string_view::npos) authority.remove_prefix(at + 1);
  if (authority.empty() || authority.front() == ':')
    return MakeError(Errc::kInvalidArgument,
                     std::string(what) + " '" + RedactUrl(text) + "' has no host name");
  if (HasControl(text) || text.find(' ') != std::string_view::npos)
    return MakeError(Errc::kInvalidArgument, std::string(what) + " '" + RedactUrl(text) +
                                                 "' contains spaces or control characters "
                                                 "(percent-encode them)");
  return OkStatus();
}

// Normalizes an explicit endpoint: scheme required, trailing slashes dropped, no query.
Result<std::string> NormalizeEndpoint(std::string_view text, std::string_view what) {
  if (!IStartsWith(text, "http://") && !IStartsWith(text, "https://"))
    return MakeError(Errc::kInvalidArgument,
                     std::string(what) + " '" + std::string(text) +
                         "' must start with http:// or https:// (e.g. https://storage.googleapis.com)");
  CS_RETURN_IF_ERROR(CheckHttpUrl(text, what));
  if (text.find_first_of("?#") != std::string_view::npos)
    return MakeError(Errc::kInvalidArgument, std::string(what) + " '" + RedactUrl(text) +
                                                 "' must not have a query string or fragment");
  std::string base(text);
  size_t ab = 0, ae = 0;
  SplitAuthority(base, &ab, &ae);
  while (base.size() > ae && base.back() == '/') base.pop_back();
  return base;
}

}  // namespace

std::string_view SourceKindName(SourceKind k) {
  switch (k) {
    case SourceKind::kLocal: return "local";
    case SourceKind::kGcs: return "gcs";
    case SourceKind::kHttp: return "http";
  }
  return "unknown";
}

// GCS bucket naming rules (cloud.google.com/storage/docs/buckets#naming). The "goog" prefix
// and "google" look-alike rules are left out on purpose: they only restrict creating new
// buckets, and rejecting a name that works would leave the user no way around us.
Status ValidateBucketName(std::string_view b) {
  auto bad = [&](std::string why) {
    return MakeError(Errc::kInvalidArgument, "invalid bucket name '" + std::string(b) + "': " + why);
  };
  if (b.empty()) return MakeError(Errc::kInvalidArgument, "empty bucket name");
  for (char c : b) {
    if (c >= 'A' && c <= 'Z') return bad("bucket names are lower-case");
    if (!IsAlnumLower(c) && c != '-' && c != '_' && c != '.')
      return bad("only a-z, 0-9, '-', '_' and '.' are allowed");
  }
  if (!IsAlnumLower(b.front()) || !IsAlnumLower(b.back()))
    return bad("must start and end with a letter or digit");
  bool dotted = b.find('.') != std::string_view::npos;
  if (!dotted && (b.size() < 3 || b.size() > 63)) return bad("must be 3 to 63 characters long");
  if (dotted) {
    if (b.size() < 3 || b.size() > 222)
      return bad("names with dots must be 3 to 222 characters long");
    size_t parts = 0;
    bool all_digits = true;
    size_t start = 0;
    while (start <= b.size()) {
      size_t dot = b.find('.', start);
      std::string_view part = b.substr(start, dot == std::string_view::npos ? b.npos : dot - start);
      if (part.empty()) return bad("empty component between dots");
      if (part.size() > 63) return bad("each dot-separated component must be at most 63 characters");
      all_digits = all_digits && std::all_of(part.begin(), part.end(), IsDigit);
      ++parts;
      if (dot == std::string_view::npos) break;
      start = dot + 1;
    }
    if (parts == 4 && all_digits) return bad("must not look like an IP address");
  }
  return OkStatus();
}

Result<Source> ParseSource(std::string_view text) {
  if (text.empty()) return MakeError(Errc::kInvalidArgument, "empty source (expected gs://BUCKET[/PREFIX], an http(s) URL or a local path)");
  Source s;
  s.original = std::string(text);
  if (IStartsWith(text, "gs://")) {
    std::string_view rest = text.substr(5);
    size_t slash = rest.find('/');
    std::string_view bucket = rest.substr(0, slash);
    if (bucket.empty()) return Bad(text, "no bucket name after gs://");
    auto st = ValidateBucketName(bucket);
    if (!st.ok()) return std::move(st).error().WithContext("source '" + std::string(text) + "'");
    std::string_view object = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);
    if (!object.empty() && object.front() == '/')
      return Bad(text, "object name starts with '/' (use gs://" + std::string(bucket) + "/PREFIX)");
    if (object.size() > 1024) return Bad(text, "object name is longer than 1024 bytes");
    if (object.find_first_of("\r\n") != std::string_view::npos)
      return Bad(text, "object name contains a line break");
    s.kind = SourceKind::kGcs;
    s.bucket = std::string(bucket);
    s.object = std::string(object);
    return s;
  }
  if (IStartsWith(text, "gs:")) return Bad(text, "malformed gs:// URL (expected gs://BUCKET[/PREFIX])");
  if (IStartsWith(text, "http://") || IStartsWith(text, "https://")) {
    auto st = CheckHttpUrl(text, "source");
    if (!st.ok()) return std::move(st).error();
    s.kind = SourceKind::kHttp;
    s.url = std::string(text);
    return s;
  }
  if (size_t sep = text.find("://"); sep != std::string_view::npos && IsScheme(text.substr(0, sep)))
    return Bad(text, "unsupported scheme '" + std::string(text.substr(0, sep)) +
                         "://' (expected gs://, http://, https:// or a local path)");
  if (text.find('\0') != std::string_view::npos) return Bad(text, "path contains a NUL byte");
  s.kind = SourceKind::kLocal;
  s.path = std::string(text);
  return s;
}

Result<GcsEndpoint> ResolveGcsEndpoint(std::string_view flag_endpoint, const Env& env) {
  if (!flag_endpoint.empty()) {
    CS_ASSIGN_OR_RETURN(std::string base, NormalizeEndpoint(flag_endpoint, "--endpoint"));
    return GcsEndpoint{std::move(base), false};
  }
  if (auto v = env.Get("COLDSTART_ENDPOINT"); v && !v->empty()) {
    CS_ASSIGN_OR_RETURN(std::string base, NormalizeEndpoint(*v, "COLDSTART_ENDPOINT"));
    return GcsEndpoint{std::move(base), false};
  }
  if (auto v = env.Get("STORAGE_EMULATOR_HOST"); v && !v->empty()) {
    std::string text = *v;
    // Google's client libraries accept both "host:port" and "http://host:port".
    if (!IStartsWith(text, "http://") && !IStartsWith(text, "https://")) text = "http://" + text;
    CS_ASSIGN_OR_RETURN(std::string base, NormalizeEndpoint(text, "STORAGE_EMULATOR_HOST"));
    return GcsEndpoint{std::move(base), true};
  }
  return GcsEndpoint{std::string(kDefaultGcsEndpoint), false};
}

std::string UrlEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() * 3);
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::string JoinUrl(std::string_view base, std::string_view relative) {
  if (relative.empty()) return std::string(base);
  if (size_t sep = relative.find("://"); sep != std::string_view::npos && IsScheme(relative.substr(0, sep)))
    return std::string(relative);
  size_t ab = 0, ae = 0;
  if (!SplitAuthority(base, &ab, &ae)) {
    // Not a URL: plain string join with exactly one '/'.
    std::string out(base);
    if (!out.empty() && out.back() != '/' && relative.front() != '/') out.push_back('/');
    out.append(relative);
    return out;
  }
  if (relative.substr(0, 2) == "//") return std::string(base.substr(0, ab - 2)) + std::string(relative);
  if (relative.front() == '/') return std::string(base.substr(0, ae)) + std::string(relative);
  std::string_view path = base.substr(ae);
  path = path.substr(0, path.find_first_of("?#"));
  if (relative.front() == '?') return std::string(base.substr(0, ae)) + std::string(path) + std::string(relative);
  size_t last = path.rfind('/');
  std::string out(base.substr(0, ae));
  if (last == std::string_view::npos) {
    out.push_back('/');
  } else {
    out.append(path.substr(0, last + 1));
  }
  out.append(relative);
  return out;
}

std::string RedactUrl(std::string_view url) {
  size_t ab = 0, ae = 0;
  if (!SplitAuthority(url, &ab, &ae)) return std::string(url.substr(0, url.find_first_of("?#")));
  std::string_view authority = url.substr(ab, ae - ab);
  if (size_t at = authority.rfind('@'); at != std::string_view::npos) authority.remove_prefix(at + 1);
  std::string_view path = url.substr(ae);
  path = path.substr(0, path.find_first_of("?#"));
  std::string out(url.substr(0, ab));
  out.append(authority).append(path);
  return out;
}

}  // namespace coldstart::fetch
