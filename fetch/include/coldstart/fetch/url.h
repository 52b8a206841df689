// Where a model comes from (a gs:// bucket or prefix, an http(s) URL, a local path) and which
// GCS endpoint to talk to. Pure string handling: nothing here touches the network or the
// process environment (the endpoint resolution takes an Env snapshot).
#pragma once

#include <string>
#include <string_view>

#include "coldstart/core/env.h"
#include "coldstart/core/result.h"

namespace coldstart::fetch {

enum class SourceKind { kLocal, kGcs, kHttp };

struct Source {
  SourceKind kind = SourceKind::kLocal;
  std::string original;  // the text as the user gave it
  std::string bucket;    // gs: validated bucket name
  std::string object;    // gs: object name or prefix, no leading '/', empty = whole bucket
  std::string url;       // http(s): the full URL, unchanged
  std::string path;      // local: the path, unchanged
};

// "gs://BUCKET[/PREFIX]", "http://...", "https://..." (scheme case-insensitive), anything
// without a "scheme://" is a local path. Bucket names are checked against GCS's naming rules
// so a typo fails here with a reason instead of as a 404 later. Other schemes (s3://, ...)
// are rejected rather than taken for a local folder named "s3:".
Result<Source> ParseSource(std::string_view text);

// Why a bucket name is invalid, or OK. Exposed for tests and for listing code.
Status ValidateBucketName(std::string_view bucket);

std::string_view SourceKindName(SourceKind k);  // "local" | "gcs" | "http"

struct GcsEndpoint {
  std::string base;       // scheme://host[:port][/path], no trailing slash
  bool emulator = false;  // came from STORAGE_EMULATOR_HOST: no credentials by default
};

inline constexpr std::string_view kDefaultGcsEndpoint = "https://storage.googleapis.com";

// Precedence: flag (--endpoint) > COLDSTART_ENDPOINT > STORAGE_EMULATOR_HOST > default.
// An explicit endpoint must carry its scheme and is treated as real GCS (credentials are
// sent: private endpoints and proxies need them). STORAGE_EMULATOR_HOST follows the Google
// client libraries: "localhost:9023" means "http://localhost:9023", and marks an emulator.
Result<GcsEndpoint> ResolveGcsEndpoint(std::string_view flag_endpoint, const Env& env);

// RFC 3986 percent-encoding: unreserved characters (A-Z a-z 0-9 - . _ ~) are kept, every
// other byte becomes %XX (upper-case hex). This is what GCS's JSON API wants for an object
// name in a path segment ("a/b c" -> "a%2Fb%20c") and for query values.
std::string UrlEncode(std::string_view s);

// Resolves `relative` against `base` the way a browser resolves a link, for the cases a
// model folder needs: an absolute URL is returned as is, "//host/x" takes base's scheme,
// "/x" replaces base's path, anything else replaces the last path segment of base (after
// dropping base's query and fragment): "https://h/a/b/" + "m.safetensors" ->
// "https://h/a/b/m.safetensors", "https://h/a/index.json" + "m.safetensors" ->
// "https://h/a/m.safetensors". `relative` must already be percent-encoded; dot segments
// ("../") are not collapsed.
std::string JoinUrl(std::string_view base, std::string_view relative);

// "scheme://host[:port]/path" without userinfo, query or fragment: safe to put in an error
// message (signed URLs and tokens travel in the query string).
std::string RedactUrl(std::string_view url);

}  // namespace coldstart::fetch
