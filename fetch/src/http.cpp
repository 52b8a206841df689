#include "coldstart/fetch/http.h"

#include <curl/curl.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "coldstart/fetch/url.h"

#ifndef COLDSTART_VERSION_STRING
#define COLDSTART_VERSION_STRING "0.0.0"
#endif

#include "handles.h"

namespace coldstart::fetch {
namespace {

using detail::EasyPtr;
using detail::SlistPtr;


std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

std::string_view TrimWs(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

struct Sink {
  HttpResponse* response;
  bool too_big = false;
};

size_t WriteCb(char* data, size_t size, size_t n, void* user) {
  auto* sink = static_cast<Sink*>(user);
  size_t bytes = size * n;
  if (sink->response->body.size() + bytes > kMaxHttpBody) {
    sink->too_big = true;
    return 0;  // makes curl fail with CURLE_WRITE_ERROR
  }
  sink->response->body.append(data, bytes);
  return bytes;
}

size_t HeaderCb(char* data, size_t size, size_t n, void* user) {
  auto* resp = static_cast<HttpResponse*>(user);
  size_t bytes = size * n;
  std::string_view line(data, bytes);
  // A new status line starts a new response (100 Continue, redirects): forget the old headers.
  if (line.substr(0, 5) == "HTTP/") {
    resp->headers.clear();
    resp->body.clear();  // a followed redirect's body is not the answer
    return bytes;
  }
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return bytes;
  std::string name = ToLower(TrimWs(line.substr(0, colon)));
  std::string_view value = TrimWs(line.substr(colon + 1));
  auto [it, inserted] = resp->headers.try_emplace(name, value);
  if (!inserted) it->second.append(", ").append(value);
  return bytes;
}

bool HasLineBreak(std::string_view s) { return s.find_first_of("\r\n") != std::string_view::npos; }

std::string_view ReasonPhrase(long status) {
  switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 412: return "Precondition Failed";
    case 416: return "Range Not Satisfiable";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "";
  }
}

// The server's own explanation, from the error body formats Google's APIs use.
std::string ErrorDetail(std::string_view body) {
  if (body.empty()) return {};
  auto j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded() && j.is_object()) {
    auto err = j.find("error");
    if (err != j.end()) {
      if (err->is_object()) {  // GCS JSON API: {"error": {"code": 404, "message": "..."}}
        auto msg = err->find("message");
        if (msg != err->end() && msg->is_string()) return msg->get<std::string>();
      } else if (err->is_string()) {  // OAuth: {"error": "invalid_grant", "error_description": "..."}
        std::string out = err->get<std::string>();
        auto desc = j.find("error_description");
        if (desc != j.end() && desc->is_string()) out += ": " + desc->get<std::string>();
        return out;
      }
    }
  }
  // Something else (HTML from a proxy, plain text from the metadata server): a short,
  // single-line excerpt.
  std::string out;
  for (char c : body.substr(0, 200)) {
    bool printable = static_cast<unsigned char>(c) >= 0x20 && c != 0x7f;
    if (!printable) c = ' ';
    if (c == ' ' && (out.empty() || out.back() == ' ')) continue;
    out.push_back(c);
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  if (body.size() > 200 && !out.empty()) out += " ...";
  return out;
}

Error TransportError(CURLcode code, const std::string& what, const char* errbuf, bool too_big) {
  Errc errc = Errc::kNetwork;
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT: errc = Errc::kTimeout; break;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL: errc = Errc::kInvalidArgument; break;
    case CURLE_OUT_OF_MEMORY: errc = Errc::kResourceExhausted; break;
    default: break;
  }
  std::string msg = what + ": ";
  if (too_big) {
    errc = Errc::kResourceExhausted;
    msg += "response body is larger than " + FormatBytes(static_cast<double>(kMaxHttpBody));
  } else {
    msg += curl_easy_strerror(code);
    // curl's detail names host and port ("Failed to connect to 127.0.0.1 port 80 ..."),
    // never headers or the query string.
    if (errbuf != nullptr && errbuf[0] != '\0') msg += " (" + std::string(TrimWs(errbuf)) + ")";
  }
  Error e = MakeError(errc, std::move(msg));
  e.curl_code = static_cast<int>(code);
  return e;
}

long Millis(double seconds) {
  if (!(seconds > 0)) return 0;  // curl: 0 = no timeout
  return static_cast<long>(std::ceil(seconds * 1000.0));
}

}  // namespace

Status CurlGlobalInit() {
  static std::once_flag once;
  static CURLcode result = CURLE_OK;
  std::call_once(once, [] { result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (result != CURLE_OK) {
    Error e = MakeError(Errc::kUnavailable, std::string("curl_global_init failed: ") +
                                                curl_easy_strerror(result));
    e.curl_code = static_cast<int>(result);
    return e;
  }
  return OkStatus();
}

std::string DefaultUserAgent() { return "coldstart/" COLDSTART_VERSION_STRING; }

std::string HttpResponse::Header(std::string_view name) const {
  auto it = headers.find(ToLower(name));
  return it == headers.end() ? std::string() : it->second;
}

struct HttpClient::Impl {
  HttpOptions opts;
  std::mutex mu;  // one easy handle = one transfer at a time
  EasyPtr easy;
};

HttpClient::HttpClient(HttpOptions o) : impl_(std::make_unique<Impl>()) {
  if (o.user_agent.empty()) o.user_agent = DefaultUserAgent();
  impl_->opts = std::move(o);
}
HttpClient::HttpClient(HttpClient&&) noexcept = default;
HttpClient& HttpClient::operator=(HttpClient&&) noexcept = default;
HttpClient::~HttpClient() = default;

const HttpOptions& HttpClient::options() const { return impl_->opts; }

Result<HttpResponse> HttpClient::Send(const HttpRequest& r) {
  if (!impl_) return MakeError(Errc::kInternal, "HttpClient used after move");
  const std::string what = r.method + " " + RedactUrl(r.url);
  if (r.method.empty() || r.method.find_first_of(" \r\n\t") != std::string::npos)
    return MakeError(Errc::kInvalidArgument, what + ": invalid HTTP method");
  // A header with a line break would smuggle another header; the message does not echo it
  // (it may be an Authorization header).
  size_t index = 0;
  for (const std::vector<std::string>* list :
       std::initializer_list<const std::vector<std::string>*>{&impl_->opts.extra_headers, &r.headers}) {
    for (const auto& h : *list) {
      ++index;
      if (HasLineBreak(h) || h.find(':') == std::string::npos)
        return MakeError(Errc::kInvalidArgument,
                         what + ": header #" + std::to_string(index) +
                             " is not a single 'Name: value' line");
    }
  }
  CS_RETURN_IF_ERROR(CurlGlobalInit());

  std::lock_guard<std::mutex> lock(impl_->mu);
  if (!impl_->easy) {
    impl_->easy.reset(curl_easy_init());
    if (!impl_->easy) return MakeError(Errc::kResourceExhausted, what + ": curl_easy_init failed");
  }
  CURL* h = impl_->easy.get();
  // Reset clears every option of the previous request but keeps the connection cache, TLS
  // session cache and DNS cache: that is the point of reusing the handle.
  curl_easy_reset(h);

  SlistPtr headers;
  auto add_header = [&](const std::string& line) -> bool {
    curl_slist* next = curl_slist_append(headers.get(), line.c_str());
    if (next == nullptr) return false;
    (void)headers.release();
    headers.reset(next);
    return true;
  };
  bool ok = true;
  for (const auto& hdr : impl_->opts.extra_headers) ok = ok && add_header(hdr);
  for (const auto& hdr : r.headers) ok = ok && add_header(hdr);
  // No "Expect: 100-continue" round trip before small POST bodies.
  if (!r.body.empty() || r.method == "POST") ok = ok && add_header("Expect:");
  if (!ok) return MakeError(Errc::kResourceExhausted, what + ": out of memory building headers");

  HttpResponse resp;
  Sink sink{&resp};
  char errbuf[CURL_ERROR_SIZE] = {0};

  curl_easy_setopt(h, CURLOPT_URL, r.url.c_str());
  // Only http(s): a token_uri from a credentials file must not make us read file:// or
  // talk to anything else curl supports.
  curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);  // no SIGALRM for DNS timeouts: we are multi-threaded
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h, CURLOPT_USERAGENT, impl_->opts.user_agent.c_str());
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, Millis(impl_->opts.connect_timeout_s));
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, Millis(impl_->opts.timeout_s));
  if (impl_->opts.http_version != 0) curl_easy_setopt(h, CURLOPT_HTTP_VERSION, impl_->opts.http_version);
  if (!impl_->opts.ca_file.empty()) curl_easy_setopt(h, CURLOPT_CAINFO, impl_->opts.ca_file.c_str());
  // Let curl decode gzip/deflate/br bodies the server chooses to send (JSON listings compress well).
  curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
  if (r.follow_redirects) {
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
  }
  if (r.method == "HEAD") {
    curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
  } else if (r.method == "GET" && r.body.empty()) {
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
  } else {
    if (r.method != "POST") curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, r.method.c_str());
    if (r.method == "POST" || !r.body.empty()) {
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
      curl_easy_setopt(h, CURLOPT_POSTFIELDS, r.body.data());
    }
  }
  curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers.get());
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &WriteCb);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
  curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &HeaderCb);
  curl_easy_setopt(h, CURLOPT_HEADERDATA, &resp);

  CURLcode code = curl_easy_perform(h);
  long status = 0;
  if (code == CURLE_OK) curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
  // Drop the pointers to this frame's errbuf, header list and sinks before they go away.
  curl_easy_reset(h);
  if (code != CURLE_OK) return TransportError(code, what, errbuf, sink.too_big);
  resp.status = status;
  return resp;
}

Error HttpError(long status, std::string_view what, std::string_view body) {
  std::string detail = ErrorDetail(body);
  std::string msg(what);
  Errc code = Errc::kHttp;
  if (status == 412) {
    code = Errc::kIntegrity;
    msg += ": object changed: generation precondition failed (HTTP 412)";
  } else {
    if (status == 401 || status == 403) code = Errc::kPermissionDenied;
    if (status == 404) code = Errc::kNotFound;
    msg += ": HTTP " + std::to_string(status);
    if (auto reason = ReasonPhrase(status); !reason.empty()) msg += " " + std::string(reason);
  }
  if (!detail.empty()) msg += ": " + detail;
  Error e = MakeError(code, std::move(msg));
  e.http_status = static_cast<int>(status);
  return e;
}

std::string FormEncode(const std::vector<std::pair<std::string, std::string>>& kv) {
  std::string out;
  for (const auto& [k, v] : kv) {
    if (!out.empty()) out.push_back('&');
    out += UrlEncode(k);
    out.push_back('=');
    out += UrlEncode(v);
  }
  return out;
}

}  // namespace coldstart::fetch
