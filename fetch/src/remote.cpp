#include "coldstart/fetch/remote.h"

#include <curl/curl.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "coldstart/core/crc32c.h"
#include "coldstart/core/relative_path.h"
#include "coldstart/fetch/content_range.h"
#include "coldstart/fetch/gcs_json.h"

namespace coldstart::fetch {
void LinkEnvFetch();  // fetch_env.cpp
}  // namespace coldstart::fetch


namespace coldstart::fetch {
namespace {

// Side files of a Hugging Face model folder fetched from an http(s) folder when present.
constexpr const char* kSideFiles[] = {"config.json", "generation_config.json", "tokenizer.json",
                                      "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"};

std::string ObjectDisplay(const Source& s, const std::string& object) { return "gs://" + s.bucket + "/" + object; }

bool IsSafetensorsUrl(const std::string& url) {
  const std::string path = url.substr(0, url.find_first_of("?#"));
  return path.size() > 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0;
}

// What names of an http(s) source resolve against: a .safetensors URL's own folder (JoinUrl
// replaces its last segment), else the URL taken as a folder, with a '/' added when missing.
std::string HttpFolderUrl(const std::string& url) {
  if (IsSafetensorsUrl(url)) return url;
  std::string path = url.substr(0, url.find_first_of("?#"));
  if (path.empty() || path.back() != '/') path += '/';
  return path;
}

// For 401/403: what to check. GCS: the identity and its role; a plain URL: the URL itself.
std::string PermissionHint(const Source& source, const std::string& credentials, bool token_given) {
  if (source.kind == SourceKind::kGcs)
    return " (credentials used: " + credentials +
           "; check that this identity can read the bucket: roles/storage.objectViewer)";
  return std::string(" (the server refused this URL") +
         (token_given ? " with the --access-token sent as a bearer token" : "") +
         ": if it is a signed URL, it may have expired; if the server needs credentials, pass them "
         "with --header 'Authorization: ...')";
}

}  // namespace

Status RemoteOptions::ApplyEnv(const Env& env) {
  LinkEnvFetch();
  if (endpoint.empty())
    if (auto e = env.Get("COLDSTART_ENDPOINT")) endpoint = *e;
  CS_RETURN_IF_ERROR(auth.ApplyEnv(env));
  CS_RETURN_IF_ERROR(fetch.ApplyEnv(env));
  CS_RETURN_IF_ERROR(retry.ApplyEnv(env));
  return OkStatus();
}

Status CheckDestinationName(std::string_view name) {
  return CheckRelativePath(name, "object name", "the destination folder");
}

Result<std::shared_ptr<RemoteSession>> RemoteSession::Open(const Source& source, const RemoteOptions& options,
                                                           const Env& env) {
  auto s = std::shared_ptr<RemoteSession>(new RemoteSession());
  s->source_ = source;
  s->options_ = options;
  CS_RETURN_IF_ERROR(s->options_.fetch.Validate());
  if (source.kind == SourceKind::kGcs) {
    CS_ASSIGN_OR_RETURN(s->endpoint_, ResolveGcsEndpoint(options.endpoint, env));
    AuthOptions a = options.auth;
    a.emulator = a.emulator || s->endpoint_.emulator;
    a.retry = options.retry;
    CS_ASSIGN_OR_RETURN(s->creds_, ResolveCredentials(a, env, options.http));
  } else if (source.kind == SourceKind::kHttp) {
    // Plain URLs (signed URLs, hubs) carry their own authorisation; an explicit token is sent.
    AuthOptions a = options.auth;
    a.retry = options.retry;
    if (a.access_token.empty()) a.anonymous = true;
    CS_ASSIGN_OR_RETURN(s->creds_, ResolveCredentials(a, env, options.http));
  } else {
    return MakeError(Errc::kInvalidArgument, source.original + " is a local path, not a remote source");
  }
  if (s->options_.fetch.http2 && s->options_.http.http_version == 0) {
    // Same protocol for listing as for the ranged reads (cleartext h2 needs prior knowledge).
    const std::string& base = source.kind == SourceKind::kGcs ? s->endpoint_.base : source.url;
    s->options_.http.http_version =
        base.rfind("http://", 0) == 0 ? CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE : CURL_HTTP_VERSION_2TLS;
  }
  s->http_ = std::make_unique<HttpClient>(s->options_.http);
  s->options_.fetch.headers.insert(s->options_.fetch.headers.end(), options.http.extra_headers.begin(),
                                   options.http.extra_headers.end());
  if (s->options_.fetch.user_agent.empty()) s->options_.fetch.user_agent = options.http.user_agent;
  return s;
}

std::string RemoteSession::DescribeCredentials() const { return creds_ ? creds_->Describe() : "none"; }

Result<std::string> RemoteSession::AuthHeader() {
  if (!creds_) return std::string();
  return creds_->AuthorizationHeader();
}

Error RemoteSession::Annotate(Error e) const {
  if (e.http_status == 401 || e.http_status == 403)
    e.message += PermissionHint(source_, DescribeCredentials(), !options_.auth.access_token.empty());
  return e;
}

Error RemoteSession::DescribeHttpError(long status, const std::string& what, const std::string& body) {
  Error e = HttpError(status, what, body);
  if (status == 401 || status == 403)
    e.message += PermissionHint(source_, DescribeCredentials(), !options_.auth.access_token.empty());
  if (status == 404 && source_.kind == SourceKind::kGcs)
    e.message += " (check the bucket and object names)";
  return e;
}

Result<HttpResponse> RemoteSession::SendWithRetry(HttpRequest req, const std::string& what) {
  RetryPolicy policy(options_.retry);
  const auto t0 = std::chrono::steady_clock::now();
  const std::size_t base_headers = req.headers.size();
  for (unsigned attempt = 1;; ++attempt) {
    req.headers.resize(base_headers);
    CS_ASSIGN_OR_RETURN(auto auth, AuthHeader());
    if (!auth.empty()) req.headers.push_back(auth);
    Result<HttpResponse> r = [&] {
      std::lock_guard lk(mu_);
      return http_->Send(req);
    }();
    Error err;
    if (r.ok()) {
      if (r->status >= 200 && r->status < 300) return r;
      err = DescribeHttpError(r->status, what, r->body);
    } else {
      err = std::move(r).error().WithContext(what);
    }
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    auto delay = policy.NextDelay(err, attempt, elapsed);
    if (!delay) return err;
    std::this_thread::sleep_for(std::chrono::duration<double>(*delay));
  }
}

Result<RemoteFile> RemoteSession::StatGcsObject(const std::string& object, const std::string& name) {
  HttpRequest req;
  req.url = endpoint_.base + "/storage/v1/b/" + UrlEncode(source_.bucket) + "/o/" + UrlEncode(object) +
            "?fields=name,size,generation,crc32c,md5Hash";
  CS_ASSIGN_OR_RETURN(auto resp, SendWithRetry(req, ObjectDisplay(source_, object)));
  CS_ASSIGN_OR_RETURN(GcsObjectMeta m,
                      ParseGcsObject(resp.body, ObjectDisplay(source_, object) + " (GET " + RedactUrl(req.url) + ")"));
  RemoteFile f;
  f.name = name;
  f.object.display = ObjectDisplay(source_, object);
  f.object.size = m.size;
  f.object.generation = m.generation;
  f.version = std::to_string(m.generation);
  f.mtime_unix = m.generation / 1000000;
  f.crc32c = m.crc32c;
  f.md5_base64 = std::move(m.md5_base64);
  // Pinning the generation: an overwrite mid-download answers 412 instead of mixing versions.
  f.object.url = endpoint_.base + "/storage/v1/b/" + UrlEncode(source_.bucket) + "/o/" + UrlEncode(object) +
                 "?alt=media&ifGenerationMatch=" + std::to_string(f.object.generation);
  return f;
}

Result<std::vector<RemoteFile>> RemoteSession::ListGcs() {
  std::string prefix = source_.object;
  if (!prefix.empty() && prefix.back() != '/') prefix += '/';
  std::vector<RemoteFile> out;
  std::string page_token;
  do {
    HttpRequest req;
    req.url = endpoint_.base + "/storage/v1/b/" + UrlEncode(source_.bucket) + "/o?prefix=" + UrlEncode(prefix) +
              "&maxResults=" + std::to_string(options_.list_page_size) + "&fields=items(name,size,generation,crc32c,md5Hash),nextPageToken" +
              (page_token.empty() ? "" : "&pageToken=" + UrlEncode(page_token));
    CS_ASSIGN_OR_RETURN(auto resp, SendWithRetry(req, "gs://" + source_.bucket + "/" + prefix));
    CS_ASSIGN_OR_RETURN(GcsListPage page,
                        ParseGcsListPage(resp.body, "gs://" + source_.bucket + "/" + prefix + " (GET " + RedactUrl(req.url) + ")"));
    for (auto& it : page.items) {
      if (it.name.size() <= prefix.size() || it.name.compare(0, prefix.size(), prefix) != 0 || it.name.back() == '/')
        continue;  // folder placeholders (and names outside the prefix, which GCS never sends)
      RemoteFile f;
      f.name = it.name.substr(prefix.size());
      CS_RETURN_IF_ERROR(CheckDestinationName(f.name));
      f.object.display = ObjectDisplay(source_, it.name);
      f.object.size = it.size;
      f.object.generation = it.generation;
      f.version = std::to_string(it.generation);
      f.mtime_unix = it.generation / 1000000;
      f.crc32c = it.crc32c;
      f.md5_base64 = std::move(it.md5_base64);
      f.object.url = endpoint_.base + "/storage/v1/b/" + UrlEncode(source_.bucket) + "/o/" + UrlEncode(it.name) +
                     "?alt=media&ifGenerationMatch=" + std::to_string(f.object.generation);
      out.push_back(std::move(f));
    }
    if (!page.next_page_token.empty() && page.next_page_token == page_token)
      return MakeError(Errc::kFormat, "gs://" + source_.bucket + "/" + prefix + ": listing returned the same nextPageToken twice");
    page_token = std::move(page.next_page_token);
  } while (!page_token.empty());
  if (out.empty() && !source_.object.empty() && source_.object.back() != '/') {
    // Not a folder: maybe a single object.
    auto single = StatGcsObject(source_.object, source_.object.substr(source_.object.rfind('/') + 1));
    if (single.ok()) return std::vector<RemoteFile>{std::move(single).value()};
    if (single.error().code != Errc::kNotFound) return std::move(single).error();
  }
  if (out.empty())
    return MakeError(Errc::kNotFound, "gs://" + source_.bucket + "/" + source_.object +
                                          ": no objects under this prefix and no object of this name");
  return out;
}

Result<RemoteFile> RemoteSession::StatHttp(const std::string& url, const std::string& name) {
  // A one-byte ranged GET rather than HEAD: signed URLs are signed for GET only.
  HttpRequest req;
  req.url = url;
  req.headers.push_back("Range: bytes=0-0");
  CS_ASSIGN_OR_RETURN(auto resp, SendWithRetry(req, RedactUrl(url)));
  RemoteFile f;
  f.name = name;
  f.object.display = RedactUrl(url);
  f.object.url = url;
  const std::string cr = resp.Header("content-range");
  if (resp.status == 206) {
    auto range = ParseContentRange(cr);
    if (!range || range->unsatisfied || !range->size)
      return MakeError(cr.empty() ? Errc::kHttp : Errc::kFormat,
                       RedactUrl(url) + ": server did not report the size (" +
                           (cr.empty() ? std::string("no Content-Range") : "malformed Content-Range '" + cr.substr(0, 80) + "'") + ")");
    f.object.size = *range->size;
  } else if (resp.status == 200) {
    f.object.size = resp.body.size();  // the server ignored Range and sent it all (small file)
  } else {
    return MakeError(Errc::kHttp, RedactUrl(url) + ": server did not report the size (no Content-Range)");
  }
  if (std::string g = resp.Header("x-goog-generation"); !g.empty()) {
    auto gen = ParseGeneration(g);
    if (!gen) return MakeError(Errc::kFormat, RedactUrl(url) + ": malformed x-goog-generation '" + g.substr(0, 40) + "'");
    f.object.generation = *gen;
  }
  // The validator a cache keys this version by (what a conditional GET would send).
  f.version = resp.Header("etag");
  const std::string modified = resp.Header("last-modified");
  if (f.version.empty()) f.version = modified;
  if (!modified.empty()) {
    const time_t t = curl_getdate(modified.c_str(), nullptr);  // -1: not a date
    if (t > 0) f.mtime_unix = t;
  }
  std::string hash = resp.Header("x-goog-hash");  // crc32c=...,md5=...
  for (std::size_t p = 0; p < hash.size();) {
    std::size_t e = hash.find(',', p);
    if (e == std::string::npos) e = hash.size();
    std::string kv = hash.substr(p, e - p);
    while (!kv.empty() && kv.front() == ' ') kv.erase(0, 1);
    if (kv.rfind("crc32c=", 0) == 0) {
      auto crc = Crc32cFromBase64(kv.substr(7));
      if (!crc.ok()) return MakeError(Errc::kFormat, RedactUrl(url) + ": x-goog-hash crc32c is not 4 base64-encoded bytes");
      f.crc32c = *crc;
    } else if (kv.rfind("md5=", 0) == 0) {
      auto md5 = Base64Decode(kv.substr(4));
      if (!md5.ok() || md5->size() != 16)
        return MakeError(Errc::kFormat, RedactUrl(url) + ": x-goog-hash md5 is not 16 base64-encoded bytes");
      f.md5_base64 = kv.substr(4);
    }
    p = e + 1;
  }
  return f;
}

Result<std::vector<RemoteFile>> RemoteSession::ListHttp() {
  const std::string path = source_.url.substr(0, source_.url.find_first_of("?#"));
  if (IsSafetensorsUrl(source_.url)) {
    std::string name = path.substr(path.rfind('/') + 1);
    CS_ASSIGN_OR_RETURN(auto f, StatHttp(source_.url, name));
    return std::vector<RemoteFile>{std::move(f)};
  }
  // Anything else is a folder: "https://host/models/gemma" means ".../gemma/", not its parent
  // (which JoinUrl would resolve names against). A query string of a folder URL names no file.
  const std::string url = HttpFolderUrl(source_.url);
  const std::string how = path.back() == '/' ? std::string() : " (read as the folder " + RedactUrl(url) +
                                                                   " since it does not end in .safetensors)";
  std::vector<RemoteFile> out;
  std::set<std::string> names;
  auto index = StatHttp(JoinUrl(url, "model.safetensors.index.json"), "model.safetensors.index.json");
  if (index.ok()) {
    CS_ASSIGN_OR_RETURN(auto text, GetSmall(*index, 256u << 20));
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      return MakeError(Errc::kFormat, index->object.display + ": not a safetensors index (no weight_map)");
    for (const auto& [tensor, shard] : j["weight_map"].items()) {
      if (!shard.is_string()) return MakeError(Errc::kFormat, index->object.display + ": weight_map value is not a string");
      names.insert(shard.get<std::string>());
    }
    out.push_back(std::move(index).value());
  } else if (index.error().code == Errc::kNotFound) {
    auto single = StatHttp(JoinUrl(url, "model.safetensors"), "model.safetensors");
    if (single.ok()) out.push_back(std::move(single).value());
    if (!single.ok() && single.error().code == Errc::kNotFound) {
      if (path.back() != '/') {
        // Neither file under it: maybe the URL is a file after all (config.json, a .bin).
        auto self = StatHttp(source_.url, path.substr(path.rfind('/') + 1));
        if (self.ok())
          return MakeError(Errc::kInvalidArgument,
                           RedactUrl(source_.url) + " is not a .safetensors file or a folder of them "
                           "(give the folder URL, ending in '/', or a .safetensors file)");
      }
      return MakeError(Errc::kNotFound, RedactUrl(url) + ": no model.safetensors.index.json or model.safetensors in this folder" + how);
    }
    if (!single.ok()) return std::move(single).error();
  } else {
    Error e = std::move(index).error();
    e.message += how;
    return e;
  }
  for (const auto& n : names) {
    CS_RETURN_IF_ERROR(CheckDestinationName(n));
    CS_ASSIGN_OR_RETURN(auto f, StatHttp(JoinUrl(url, n), n));
    out.push_back(std::move(f));
  }
  for (const char* side : kSideFiles) {
    auto f = StatHttp(JoinUrl(url, side), side);
    if (f.ok()) out.push_back(std::move(f).value());
    else if (f.error().code != Errc::kNotFound) return std::move(f).error();
  }
  return out;
}

Result<std::vector<RemoteFile>> RemoteSession::List() {
  return source_.kind == SourceKind::kGcs ? ListGcs() : ListHttp();
}

Result<RemoteFile> RemoteSession::Stat(const std::string& name) {
  if (source_.kind == SourceKind::kGcs) {
    std::string prefix = source_.object;
    if (!prefix.empty() && prefix.back() != '/') prefix += '/';
    return StatGcsObject(prefix + name, name);
  }
  return StatHttp(JoinUrl(HttpFolderUrl(source_.url), name), name);
}

Result<std::string> RemoteSession::GetSmall(const RemoteFile& f, std::uint64_t max_bytes) {
  if (f.object.size > max_bytes)
    return MakeError(Errc::kFormat, f.object.display + " is " + std::to_string(f.object.size) + " bytes, more than the " +
                                        std::to_string(max_bytes) + " expected of it");
  HttpRequest req;
  req.url = f.object.url;
  CS_ASSIGN_OR_RETURN(auto resp, SendWithRetry(req, f.object.display));
  return resp.body;
}

}  // namespace coldstart::fetch
