// A small-request HTTP client over one libcurl easy handle: token exchanges, the metadata
// server, GCS listing and object metadata. Responses are buffered in memory (capped), so it
// is NOT for bulk data; the ranged-read engine drives curl-multi itself.
//
// Secrets: error messages name the method, scheme, host and path of the URL but never its
// query string (signed URLs, API keys) or userinfo, and never any request header or body
// (Authorization, assertions, refresh tokens).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "coldstart/core/result.h"

namespace coldstart::fetch {

struct HttpOptions {
  std::string user_agent;                  // empty = "coldstart/VERSION"
  std::vector<std::string> extra_headers;  // "K: V", sent on every request (--header)
  long http_version = 0;                   // 0 = curl default; or CURL_HTTP_VERSION_1_1 / _2TLS
  double connect_timeout_s = 10;           // includes DNS resolution
  double timeout_s = 60;                   // whole request
  std::string ca_file;                     // PEM bundle to trust instead of the system's (--cacert)
};

struct HttpRequest {
  std::string method = "GET";        // GET, HEAD, POST, or any other verb
  std::string url;                   // http:// or https:// only
  std::vector<std::string> headers;  // "K: V", after HttpOptions::extra_headers
  std::string body;                  // sent when non-empty (and always for POST)
  // Follow up to 10 redirects (http/https only). curl drops Authorization and Cookie when a
  // redirect changes host or port (no CURLOPT_UNRESTRICTED_AUTH); a 301/302 to a POST is
  // re-sent as a GET, as browsers do.
  bool follow_redirects = true;
};

struct HttpResponse {
  long status = 0;
  std::map<std::string, std::string> headers;  // lower-case names; a repeated header keeps
                                               // its values joined with ", "
  std::string body;

  // The header's value or "" (name in any case).
  std::string Header(std::string_view name) const;
};

// "coldstart/0.1.0"
std::string DefaultUserAgent();

// curl_global_init(CURL_GLOBAL_DEFAULT), exactly once per process however many threads call
// it (std::call_once); every component that creates curl handles calls this first. The
// result of the first call is remembered and returned to every caller.
Status CurlGlobalInit();

// Response bodies above this are refused (Errc::kResourceExhausted): a listing page or token
// response is kilobytes; a multi-gigabyte body here means someone pointed us at a shard.
inline constexpr std::size_t kMaxHttpBody = 64u << 20;

// Owns one reused curl easy handle, so consecutive requests to one host reuse the connection
// (keep-alive, TLS session). Move-only. A handle must not be used by two threads at once;
// Send() takes an internal mutex, so sharing one client is safe but serializes requests: give
// each worker thread its own client for parallelism.
class HttpClient {
 public:
  explicit HttpClient(HttpOptions o = {});
  HttpClient(HttpClient&&) noexcept;
  HttpClient& operator=(HttpClient&&) noexcept;
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;
  ~HttpClient();

  // Any HTTP status is a successful exchange (check response.status; HttpError maps it).
  // Transport failures: Errc::kTimeout for curl timeouts, Errc::kInvalidArgument for a
  // malformed or non-http(s) URL, Errc::kResourceExhausted for an oversized body, otherwise
  // Errc::kNetwork; curl_code is set on all of them.
  Result<HttpResponse> Send(const HttpRequest& r);

  const HttpOptions& options() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Maps a non-success HTTP status to an Error (http_status set): 401/403 -> kPermissionDenied,
// 404 -> kNotFound, 412 -> kIntegrity ("object changed: generation precondition failed"),
// others -> kHttp. `what` says what was being done ("GET https://host/path"). The message
// includes the server's explanation when the body is a GCS JSON error
// ({"error": {"message": ...}}) or an OAuth error ({"error": ..., "error_description": ...}),
// else a short printable excerpt of the body.
Error HttpError(long status, std::string_view what, std::string_view body);

// application/x-www-form-urlencoded: "k1=v1&k2=v2", each name and value percent-encoded
// (RFC 3986 unreserved kept, spaces as %20).
std::string FormEncode(const std::vector<std::pair<std::string, std::string>>& kv);

}  // namespace coldstart::fetch
