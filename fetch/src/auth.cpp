#include "coldstart/fetch/auth.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include <pthread.h>

#include "coldstart/core/crc32c.h"  // Base64UrlEncode
#include "coldstart/fetch/gcs_json.h"
#include "coldstart/fetch/retry.h"
#include "coldstart/fetch/url.h"

#include "handles.h"

namespace coldstart::fetch {
void LinkEnvFetch();  // fetch_env.cpp
}  // namespace coldstart::fetch


namespace coldstart::fetch {
namespace {

using detail::BioPtr;
using detail::MdCtxPtr;
using detail::PkeyPtr;

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// ---- small RAII owners -------------------------------------------------------------------


// Overwrites a secret before its memory is released, so it does not linger in freed heap
// pages (core dumps, later allocations).
void Wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

// A string that wipes itself: refresh tokens and client secrets live as long as the
// credentials object.
class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string v) : v_(std::move(v)) {}
  Secret(const Secret&) = delete;
  Secret& operator=(const Secret&) = delete;
  ~Secret() { Wipe(v_); }
  const std::string& get() const { return v_; }

 private:
  std::string v_;
};

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

// A bearer token goes into a header line: printable ASCII without spaces only.
bool ValidTokenChars(std::string_view t) {
  if (t.empty()) return false;
  for (char c : t) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) return false;
  }
  return true;
}

bool IsHttpUrl(std::string_view u) {
  auto starts = [&](std::string_view p) {
    if (u.size() < p.size()) return false;
    for (size_t i = 0; i < p.size(); ++i)
      if (std::tolower(static_cast<unsigned char>(u[i])) != p[i]) return false;
    return true;
  };
  return starts("http://") || starts("https://");
}

std::string OpenSslErrorText() {
  unsigned long code = ERR_get_error();
  ERR_clear_error();  // leave nothing behind for the next, unrelated OpenSSL caller
  if (code == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(code, buf, sizeof buf);
  return buf;
}

// Token-endpoint requests get the caller's user agent, HTTP version and timeouts, but not
// the --header extras: those are meant for the storage endpoint.
HttpOptions AuthHttpOptions(const HttpOptions& http) {
  HttpOptions o = http;
  o.extra_headers.clear();
  return o;
}

// ---- token responses ---------------------------------------------------------------------

struct Token {
  std::string access_token;
  double expires_in_s = 3600;
};

// The OAuth token endpoint's and the metadata server's answer (gcs_json.h parses the body).
// Never echoes the body: it holds the token.
Result<Token> TokenFromResponse(HttpResponse& resp, const std::string& what) {
  if (resp.status != 200) {
    Error e = HttpError(resp.status, what, resp.body);
    Wipe(resp.body);
    return e;
  }
  auto parsed = ParseTokenResponse(resp.body, what);
  Wipe(resp.body);
  if (!parsed.ok()) return std::move(parsed).error();
  Token t;
  t.access_token = std::move(parsed->access_token);
  t.expires_in_s = parsed->expires_in_s;
  return t;
}

// ---- credential kinds --------------------------------------------------------------------

class AnonymousCredentials final : public Credentials {
 public:
  explicit AnonymousCredentials(std::string why) : why_(std::move(why)) {}
  Result<std::string> AuthorizationHeader() override { return std::string(); }
  std::string Describe() const override { return why_.empty() ? "anonymous" : "anonymous (" + why_ + ")"; }
  std::string Kind() const override { return "anonymous"; }

 private:
  std::string why_;
};

class AccessTokenCredentials final : public Credentials {
 public:
  explicit AccessTokenCredentials(const std::string& token) : header_("Authorization: Bearer " + token) {}
  ~AccessTokenCredentials() override { Wipe(header_); }
  Result<std::string> AuthorizationHeader() override { return header_; }
  std::string Describe() const override { return "access token given with --access-token or COLDSTART_ACCESS_TOKEN"; }
  std::string Kind() const override { return "access-token"; }

 private:
  std::string header_;
};

// Caches one token; subclasses only know how to fetch a fresh one. The first token is fetched
// on the calling thread (there is nothing to hand out before it); after that a background
// thread ("cs-token") fetches the next one ahead of expiry, so AuthorizationHeader() returns
// the cached token without touching the network while it is valid, and a fetch event loop
// asking for a header never waits on a token endpoint. Every fetch, foreground or background,
// goes through the same RetryPolicy as data: one 503 from a metadata server is retried, not
// fatal. mu_ is held across a foreground fetch on purpose: when many threads find no valid
// token at once, one request goes out and the rest wait for its answer.
class RefreshingCredentials : public Credentials {
 public:
  RefreshingCredentials(HttpOptions http, std::string kind, std::string describe)
      : http_(std::move(http)), kind_(std::move(kind)), describe_(std::move(describe)) {}
  // Subclasses call StopRefresher() in their destructors: the thread calls their Fetch().
  ~RefreshingCredentials() override {
    StopRefresher();
    Wipe(token_);
  }

  // Before the first AuthorizationHeader() (no thread runs yet).
  void SetRetry(const RetryOptions& retry) { retry_ = retry; }

  Result<std::string> AuthorizationHeader() final {
    std::lock_guard<std::mutex> lock(mu_);
    if (!token_.empty() && Clock::now() < expiry_) return "Authorization: Bearer " + token_;
    // No token yet, or the background refresh could not get one before this one expired.
    const auto started = Clock::now();
    auto fresh = FetchWithRetry();
    if (!fresh.ok()) return std::move(fresh).error().WithContext(describe_);
    StoreLocked(std::move(*fresh), started);
    if (!refresher_.joinable()) refresher_ = std::thread([this] { RefreshLoop(); });
    return "Authorization: Bearer " + token_;
  }
  std::string Describe() const final { return describe_; }
  std::string Kind() const final { return kind_; }

 protected:
  virtual Result<Token> Fetch(HttpClient& http) = 0;

  // Ends the background refresh (interrupting a backoff wait) and joins it. Idempotent.
  void StopRefresher() {
    {
      std::lock_guard<std::mutex> lk(stop_mu_);
      stop_ = true;
    }
    stop_cv_.notify_all();
    std::thread t;
    {
      std::lock_guard<std::mutex> lock(mu_);
      t = std::move(refresher_);
    }
    if (t.joinable()) t.join();
  }

 private:
  // Sleeps `seconds` unless the object is being destroyed; false = stop.
  bool SleepUnlessStopped(double seconds) {
    std::unique_lock<std::mutex> lk(stop_mu_);
    return !stop_cv_.wait_for(lk, std::chrono::duration<double>(seconds), [&] { return stop_; });
  }

  Result<Token> FetchWithRetry() {
    RetryPolicy policy(retry_);
    const auto t0 = Clock::now();
    for (unsigned attempt = 1;; ++attempt) {
      Result<Token> r = [&] {
        std::lock_guard<std::mutex> lk(http_mu_);
        return Fetch(http_);
      }();
      if (r.ok()) return r;
      const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
      auto delay = policy.NextDelay(r.error(), attempt, elapsed);
      if (!delay) {
        Error e = std::move(r).error();
        if (attempt > 1 && IsRetryable(e)) e.message += " (gave up after " + std::to_string(attempt) + " attempts)";
        return e;
      }
      if (!SleepUnlessStopped(*delay)) return MakeError(Errc::kCancelled, "credentials are being released");
    }
  }

  // Caller holds mu_. `started`: when the request went out, so the cached expiry is never
  // later than the real one.
  void StoreLocked(Token fresh, Clock::time_point started) {
    Wipe(token_);
    token_ = std::move(fresh.access_token);
    const double life = fresh.expires_in_s;
    expiry_ = started + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(life));
    // kTokenRefreshMarginS before expiry; a token shorter-lived than twice the margin at half
    // its life; never sooner than 1 s after the last fetch (a 0 s token must not spin).
    const double ahead = std::max({life - kTokenRefreshMarginS, life / 2, 1.0});
    refresh_at_ = started + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(ahead));
  }

  void RefreshLoop() {
    pthread_setname_np(pthread_self(), "cs-token");
    for (;;) {
      Clock::time_point due;
      {
        std::lock_guard<std::mutex> lock(mu_);
        due = refresh_at_;
      }
      {
        std::unique_lock<std::mutex> lk(stop_mu_);
        if (stop_cv_.wait_until(lk, due, [&] { return stop_; })) return;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (Clock::now() < refresh_at_) continue;  // a foreground fetch moved it
      }
      const auto started = Clock::now();
      auto fresh = FetchWithRetry();
      std::lock_guard<std::mutex> lock(mu_);
      if (fresh.ok()) {
        StoreLocked(std::move(*fresh), started);
        continue;
      }
      if (fresh.error().code == Errc::kCancelled) return;
      // The policy gave up; the cached token may still work. Try again in a while (half the
      // time it has left, 1 s .. 60 s); once it expires, callers fetch in the foreground.
      const double left = std::chrono::duration<double>(expiry_ - Clock::now()).count();
      refresh_at_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(std::clamp(left / 2, 1.0, 60.0)));
    }
  }

  std::mutex mu_;  // token_, expiry_, refresh_at_, refresher_
  std::mutex http_mu_;  // http_: one request at a time
  HttpClient http_;
  RetryOptions retry_;
  std::string kind_;
  std::string describe_;
  std::string token_;
  Clock::time_point expiry_{};
  Clock::time_point refresh_at_{};
  std::thread refresher_;
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;  // GUARDED_BY(stop_mu_)
};

// RFC 7523 JWT-bearer grant: we sign {iss, scope, aud, iat, exp} with the key file's RSA key
// and trade it at token_uri for an access token (what google-auth does for service accounts).
class ServiceAccountCredentials final : public RefreshingCredentials {
 public:
  ServiceAccountCredentials(HttpOptions http, std::string kind, std::string describe, std::string email,
                            std::string key_id, std::string token_uri, PkeyPtr key)
      : RefreshingCredentials(std::move(http), std::move(kind), std::move(describe)),
        email_(std::move(email)), key_id_(std::move(key_id)), token_uri_(std::move(token_uri)),
        key_(std::move(key)) {}

  ~ServiceAccountCredentials() override { StopRefresher(); }

 private:
  Result<Token> Fetch(HttpClient& http) override {
    std::string what = "token request to " + RedactUrl(token_uri_);
    CS_ASSIGN_OR_RETURN(std::string assertion, MakeAssertion());
    HttpRequest req;
    req.method = "POST";
    req.url = token_uri_;
    req.headers = {"Content-Type: application/x-www-form-urlencoded", "Accept: application/json"};
    req.body = FormEncode({{"grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"},
                           {"assertion", assertion}});
    Wipe(assertion);
    auto resp = http.Send(req);
    Wipe(req.body);
    if (!resp.ok()) return std::move(resp).error();
    return TokenFromResponse(*resp, what);
  }

  Result<std::string> MakeAssertion() const {
    json header = {{"alg", "RS256"}, {"typ", "JWT"}};
    if (!key_id_.empty()) header["kid"] = key_id_;
    auto iat = static_cast<long long>(std::time(nullptr));
    json claims = {{"iss", email_},          {"scope", kGcsReadOnlyScope}, {"aud", token_uri_},
                   {"iat", iat},             {"exp", iat + 3600}};
    std::string signing_input = Base64UrlEncode(header.dump()) + "." + Base64UrlEncode(claims.dump());

    MdCtxPtr ctx(EVP_MD_CTX_new());
    size_t sig_len = 0;
    auto* data = reinterpret_cast<const unsigned char*>(signing_input.data());
    if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key_.get()) != 1 ||
        EVP_DigestSign(ctx.get(), nullptr, &sig_len, data, signing_input.size()) != 1) {
      return MakeError(Errc::kInternal, "signing the service account JWT: " + OpenSslErrorText());
    }
    std::string sig(sig_len, '\0');
    if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &sig_len, data,
                       signing_input.size()) != 1) {
      return MakeError(Errc::kInternal, "signing the service account JWT: " + OpenSslErrorText());
    }
    sig.resize(sig_len);
    return signing_input + "." + Base64UrlEncode(sig);
  }

  std::string email_;
  std::string key_id_;
  std::string token_uri_;
  PkeyPtr key_;  // EVP_PKEY_free clears the private key material
};

class AuthorizedUserCredentials final : public RefreshingCredentials {
 public:
  AuthorizedUserCredentials(HttpOptions http, std::string kind, std::string describe, std::string client_id,
                            std::string client_secret, std::string refresh_token, std::string token_uri)
      : RefreshingCredentials(std::move(http), std::move(kind), std::move(describe)),
        client_id_(std::move(client_id)), client_secret_(std::move(client_secret)),
        refresh_token_(std::move(refresh_token)), token_uri_(std::move(token_uri)) {}

  ~AuthorizedUserCredentials() override { StopRefresher(); }

 private:
  Result<Token> Fetch(HttpClient& http) override {
    HttpRequest req;
    req.method = "POST";
    req.url = token_uri_;
    req.headers = {"Content-Type: application/x-www-form-urlencoded", "Accept: application/json"};
    req.body = FormEncode({{"client_id", client_id_},
                           {"client_secret", client_secret_.get()},
                           {"refresh_token", refresh_token_.get()},
                           {"grant_type", "refresh_token"}});
    auto resp = http.Send(req);
    Wipe(req.body);
    if (!resp.ok()) return std::move(resp).error();
    return TokenFromResponse(*resp, "token request to " + RedactUrl(token_uri_));
  }

  std::string client_id_;
  Secret client_secret_;
  Secret refresh_token_;
  std::string token_uri_;
};

constexpr std::string_view kMetadataSaPath = "/computeMetadata/v1/instance/service-accounts/default/";

class MetadataServerCredentials final : public RefreshingCredentials {
 public:
  MetadataServerCredentials(HttpOptions http, std::string describe, std::string host)
      : RefreshingCredentials(std::move(http), "metadata-server", std::move(describe)),
        host_(std::move(host)) {}

  ~MetadataServerCredentials() override { StopRefresher(); }

 private:
  Result<Token> Fetch(HttpClient& http) override {
    HttpRequest req;
    req.url = "http://" + host_ + std::string(kMetadataSaPath) + "token";
    req.headers = {"Metadata-Flavor: Google"};
    auto resp = http.Send(req);
    if (!resp.ok()) return std::move(resp).error();
    return TokenFromResponse(*resp, "GET " + RedactUrl(req.url));
  }

  std::string host_;
};

// ---- files -------------------------------------------------------------------------------

Result<std::string> ReadSmallFile(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    int err = errno;
    Errc code = err == ENOENT ? Errc::kNotFound : err == EACCES ? Errc::kPermissionDenied : Errc::kIo;
    return MakeSysError(code, "credentials file " + path, err);
  }
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> owner(f, &std::fclose);
  std::string data;
  char buf[8192];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    data.append(buf, n);
    // Key files are ~2.3 KiB; anything this large is not one.
    if (data.size() > (1u << 20)) {
      Wipe(data);
      return MakeError(Errc::kFormat, "credentials file " + path + ": larger than 1 MiB, not a credentials file");
    }
  }
  if (std::ferror(f)) {
    int err = errno;
    Wipe(data);
    return MakeSysError(Errc::kIo, "credentials file " + path, err);
  }
  OPENSSL_cleanse(buf, sizeof buf);
  return data;
}

// The string field `name`, or an error naming the file and field (never the value).
Result<std::string> StringField(const json& j, std::string_view name, const std::string& path,
                                std::string_view type, bool required) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) {
    if (!required) return std::string();
    return MakeError(Errc::kFormat, "credentials file " + path + ": " + std::string(type) +
                                        " credentials have no \"" + std::string(name) + "\" field");
  }
  if (!it->is_string())
    return MakeError(Errc::kFormat, "credentials file " + path + ": \"" + std::string(name) +
                                        "\" is not a string");
  std::string v = it->get<std::string>();
  if (required && Trim(v).empty())
    return MakeError(Errc::kFormat, "credentials file " + path + ": \"" + std::string(name) + "\" is empty");
  return v;
}

Result<std::string> TokenUri(const json& j, const std::string& path, std::string_view type) {
  CS_ASSIGN_OR_RETURN(std::string uri, StringField(j, "token_uri", path, type, false));
  if (uri.empty()) return std::string(kGoogleTokenUri);
  if (!IsHttpUrl(uri))
    return MakeError(Errc::kFormat, "credentials file " + path + ": token_uri '" + RedactUrl(uri) +
                                        "' is not an http(s) URL");
  return uri;
}

Result<PkeyPtr> ParsePrivateKey(const std::string& pem, const std::string& path) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  if (!bio) return MakeError(Errc::kResourceExhausted, "BIO_new_mem_buf failed");
  // No passphrase callback: Google's key files are never encrypted, and OpenSSL must not
  // prompt on the terminal.
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, [](char*, int, int, void*) { return 0; }, nullptr));
  if (!key) {
    ERR_clear_error();  // the reason names PEM internals only; keep the queue clean anyway
    return MakeError(Errc::kFormat, "credentials file " + path +
                                        ": \"private_key\" is not a PEM-encoded private key");
  }
  if (EVP_PKEY_base_id(key.get()) != EVP_PKEY_RSA)
    return MakeError(Errc::kFormat, "credentials file " + path + ": \"private_key\" is not an RSA key (RS256 needs one)");
  return key;
}

struct MetadataProbe {
  std::optional<std::string> email;  // set: a metadata server with a default service account
  std::string why_not;               // otherwise, for Describe()
};

Result<MetadataProbe> ProbeMetadata(const std::string& host, const HttpOptions& http, const RetryOptions& retry) {
  HttpOptions o = http;
  // Off Google Cloud the name does not resolve or nothing answers; keep that cheap.
  o.connect_timeout_s = 1;
  o.timeout_s = 1.5;
  HttpClient client(o);
  HttpRequest req;
  req.url = "http://" + host + std::string(kMetadataSaPath) + "email";
  req.headers = {"Metadata-Flavor: Google"};
  // Nothing answering is the normal case off Google Cloud and is not retried (it must stay
  // cheap); a metadata server that answers 5xx/429 is retried under the data's policy.
  RetryPolicy policy(retry);
  const auto t0 = Clock::now();
  auto resp = client.Send(req);
  for (unsigned attempt = 1; resp.ok() && resp->Header("metadata-flavor") == "Google" &&
                             (resp->status == 408 || resp->status == 429 || resp->status >= 500);
       ++attempt) {
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    auto delay = policy.NextDelay(HttpError(resp->status, "metadata", ""), attempt, elapsed);
    if (!delay) break;
    std::this_thread::sleep_for(std::chrono::duration<double>(*delay));
    resp = client.Send(req);
  }
  MetadataProbe p;
  if (!resp.ok()) {
    p.why_not = "no metadata server at " + host;
    return p;
  }
  // A real metadata server labels its answers; anything else (a captive portal, a
  // catch-all proxy) is not one.
  if (resp->Header("metadata-flavor") != "Google") {
    p.why_not = host + " is not a metadata server";
    return p;
  }
  if (resp->status == 404) {
    p.why_not = "metadata server " + host + " has no default service account";
    return p;
  }
  if (resp->status != 200) {
    // On Google Cloud but the server misbehaves: say so rather than silently going anonymous
    // and failing later with 401s.
    Error e = HttpError(resp->status, "probing the metadata server (GET " + RedactUrl(req.url) + ")", resp->body);
    e.message += " (set COLDSTART_METADATA=off to skip it)";
    return e;
  }
  p.email = std::string(Trim(resp->body));
  return p;
}

Result<std::string> MetadataHost(const Env& env) {
  std::string host = env.Get("GCE_METADATA_HOST").value_or("");
  if (host.empty()) return std::string(kDefaultMetadataHost);
  // Google's libraries take "host[:port]"; tolerate a scheme and a trailing slash.
  if (host.rfind("http://", 0) == 0) host = host.substr(7);
  while (!host.empty() && host.back() == '/') host.pop_back();
  if (host.empty() || host.find_first_of("/?#@ \t\r\n") != std::string::npos)
    return MakeError(Errc::kInvalidArgument, "GCE_METADATA_HOST '" + host + "' is not a host[:port]");
  return host;
}

}  // namespace

Status AuthOptions::ApplyEnv(const Env& env) {
  LinkEnvFetch();
  if (access_token.empty()) {
    if (auto v = env.Get("COLDSTART_ACCESS_TOKEN")) access_token = *v;
  }
  return OkStatus();
}

Result<std::shared_ptr<Credentials>> LoadCredentialsFile(const std::string& path, const HttpOptions& http,
                                                         std::string_view kind, const RetryOptions& retry) {
  CS_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  Wipe(text);
  // Scrub the secret fields of the parsed copy too, on every way out of this function.
  struct JsonWiper {
    json& j;
    ~JsonWiper() {
      if (!j.is_object()) return;
      for (const char* f : {"private_key", "client_secret", "refresh_token"}) {
        auto it = j.find(f);
        if (it != j.end() && it->is_string()) Wipe(it->get_ref<std::string&>());
      }
    }
  } wiper{j};
  if (j.is_discarded() || !j.is_object())
    return MakeError(Errc::kFormat, "credentials file " + path + ": not a JSON object");
  auto type_it = j.find("type");
  if (type_it == j.end() || !type_it->is_string())
    return MakeError(Errc::kFormat, "credentials file " + path + ": no \"type\" field "
                                    "(expected service_account or authorized_user)");
  std::string type = type_it->get<std::string>();
  HttpOptions auth_http = AuthHttpOptions(http);
  bool adc = kind == "gcloud-adc";

  if (type == "service_account") {
    CS_ASSIGN_OR_RETURN(std::string email, StringField(j, "client_email", path, type, true));
    CS_ASSIGN_OR_RETURN(std::string key_id, StringField(j, "private_key_id", path, type, false));
    CS_ASSIGN_OR_RETURN(std::string token_uri, TokenUri(j, path, type));
    auto pem_field = j.find("private_key");
    if (pem_field == j.end() || !pem_field->is_string() || pem_field->get_ref<const std::string&>().empty())
      return MakeError(Errc::kFormat, "credentials file " + path + ": service_account credentials have no \"private_key\"");
    CS_ASSIGN_OR_RETURN(PkeyPtr key, ParsePrivateKey(pem_field->get_ref<const std::string&>(), path));
    std::string describe = (adc ? "gcloud application-default credentials " : "service account key ") + path +
                           " (" + (adc ? "service account " : "") + email + ")";
    auto creds = std::make_shared<ServiceAccountCredentials>(
        std::move(auth_http), kind.empty() ? "service-account" : std::string(kind), std::move(describe),
        std::move(email), std::move(key_id), std::move(token_uri), std::move(key));
    creds->SetRetry(retry);
    return std::shared_ptr<Credentials>(std::move(creds));
  }
  if (type == "authorized_user") {
    CS_ASSIGN_OR_RETURN(std::string client_id, StringField(j, "client_id", path, type, true));
    CS_ASSIGN_OR_RETURN(std::string client_secret, StringField(j, "client_secret", path, type, true));
    CS_ASSIGN_OR_RETURN(std::string refresh_token, StringField(j, "refresh_token", path, type, true));
    CS_ASSIGN_OR_RETURN(std::string token_uri, TokenUri(j, path, type));
    std::string describe = (adc ? "gcloud application-default credentials " : "authorized user credentials ") +
                           path + (adc ? " (authorized user)" : "");
    auto creds = std::make_shared<AuthorizedUserCredentials>(
        std::move(auth_http), kind.empty() ? "authorized-user" : std::string(kind), std::move(describe),
        std::move(client_id), client_secret, refresh_token, std::move(token_uri));
    Wipe(client_secret);
    Wipe(refresh_token);
    creds->SetRetry(retry);
    return std::shared_ptr<Credentials>(std::move(creds));
  }
  return MakeError(Errc::kUnavailable,
                   "credentials file " + path + ": type \"" + type +
                       "\" is not supported (supported: service_account, authorized_user); "
                       "pass a token with --access-token \"$(gcloud auth print-access-token)\" instead");
}

Result<std::shared_ptr<Credentials>> ResolveCredentials(const AuthOptions& o, const Env& env,
                                                        const HttpOptions& http) {
  // Parsed first so a typo fails on every path, not only on the one that reaches it.
  bool use_metadata = true;
  if (auto v = env.Get("COLDSTART_METADATA")) {
    std::string mode(Trim(*v));
    if (mode == "off") {
      use_metadata = false;
    } else if (mode != "auto" && !mode.empty()) {
      return MakeError(Errc::kInvalidArgument, "COLDSTART_METADATA: '" + mode + "' is not auto or off");
    }
  }

  if (o.anonymous) return std::shared_ptr<Credentials>(std::make_shared<AnonymousCredentials>("--anonymous"));

  std::string token(Trim(o.access_token));
  if (!token.empty()) {
    if (!ValidTokenChars(token)) {
      Wipe(token);
      return MakeError(Errc::kInvalidArgument,
                       "the access token (--access-token / COLDSTART_ACCESS_TOKEN) contains spaces or "
                       "control characters");
    }
    auto creds = std::make_shared<AccessTokenCredentials>(token);
    Wipe(token);
    return std::shared_ptr<Credentials>(std::move(creds));
  }

  if (o.emulator) return std::shared_ptr<Credentials>(std::make_shared<AnonymousCredentials>("storage emulator"));

  if (auto gac = env.Get("GOOGLE_APPLICATION_CREDENTIALS"); gac && !gac->empty()) {
    auto c = LoadCredentialsFile(*gac, http, {}, o.retry);
    if (!c.ok()) return std::move(c).error().WithContext("GOOGLE_APPLICATION_CREDENTIALS");
    return c;
  }

  std::string adc_dir;
  if (auto cfg = env.Get("CLOUDSDK_CONFIG"); cfg && !cfg->empty()) {
    adc_dir = *cfg;
  } else if (auto home = env.Get("HOME"); home && !home->empty()) {
    adc_dir = *home + "/.config/gcloud";
  }
  if (!adc_dir.empty()) {
    std::string adc = adc_dir + "/application_default_credentials.json";
    struct stat st {};
    // Absent is the normal case (no `gcloud auth application-default login`); anything
    // else, unreadable included, goes to LoadCredentialsFile to produce a precise error.
    if (::stat(adc.c_str(), &st) == 0 || (errno != ENOENT && errno != ENOTDIR)) return LoadCredentialsFile(adc, http, "gcloud-adc", o.retry);
  }

  std::string why = "no credentials found";
  if (use_metadata) {
    CS_ASSIGN_OR_RETURN(std::string host, MetadataHost(env));
    CS_ASSIGN_OR_RETURN(MetadataProbe probe, ProbeMetadata(host, AuthHttpOptions(http), o.retry));
    if (probe.email) {
      std::string describe = "metadata server " + host + " (" +
                             (probe.email->empty() ? std::string("default service account") : *probe.email) + ")";
      auto creds = std::make_shared<MetadataServerCredentials>(AuthHttpOptions(http), std::move(describe), host);
      creds->SetRetry(o.retry);
      return std::shared_ptr<Credentials>(std::move(creds));
    }
    why += "; " + probe.why_not;
  }
  return std::shared_ptr<Credentials>(std::make_shared<AnonymousCredentials>(why));
}

}  // namespace coldstart::fetch
