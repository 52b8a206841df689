// Credentials against a fake Google on 127.0.0.1: an OAuth token endpoint that verifies the
// service-account JWT's RS256 signature with the public half of a key pair generated here,
// and a fake metadata server (GCE_METADATA_HOST). Nothing leaves loopback: every test sets
// GCE_METADATA_HOST to a loopback address or COLDSTART_METADATA=off.
#include "coldstart/fetch/auth.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <ctime>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../common/temp_dir.h"
#include "coldstart/core/crc32c.h"
#include "loopback_server.h"

namespace coldstart::fetch {
namespace {

using json = nlohmann::json;
using coldstart::testing::LoopbackServer;
using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;

constexpr const char* kSaEmail = "loader@proj.iam.gserviceaccount.com";
constexpr const char* kVmEmail = "vm-sa@proj.iam.gserviceaccount.com";
constexpr const char* kClientId = "cid.apps.googleusercontent.com";
constexpr const char* kClientSecret = "CLIENT-SECRET-VALUE";
constexpr const char* kRefreshToken = "1//REFRESH-TOKEN-VALUE";
constexpr std::string_view kMetaPath = "/computeMetadata/v1/instance/service-accounts/default/";

bool Contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

Pkey Generate(const char* type) {
  EVP_PKEY* k = std::string_view(type) == "RSA" ? EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048})
                                                : EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
  if (k == nullptr) std::abort();
  return Pkey(k);
}

// One RSA key for the whole suite: generating 2048-bit keys is the slow part.
EVP_PKEY* SuiteKey() {
  static Pkey key = Generate("RSA");
  return key.get();
}

std::string PrivatePem(EVP_PKEY* key) {
  std::unique_ptr<BIO, int (*)(BIO*)> bio(BIO_new(BIO_s_mem()), &BIO_free);
  if (PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) std::abort();
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

// Independent RS256 check: split, verify the signature with the public key, decode claims.
bool VerifyJwt(const std::string& jwt, EVP_PKEY* key, json* header, json* claims, std::string* why) {
  size_t d1 = jwt.find('.'), d2 = jwt.rfind('.');
  if (d1 == std::string::npos || d1 == d2) return *why = "not three parts", false;
  auto h = Base64UrlDecode(jwt.substr(0, d1));
  auto c = Base64UrlDecode(jwt.substr(d1 + 1, d2 - d1 - 1));
  auto s = Base64UrlDecode(jwt.substr(d2 + 1));
  if (!h.ok() || !c.ok() || !s.ok()) return *why = "bad base64url", false;
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  std::string signed_part = jwt.substr(0, d2);
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key) != 1 ||
      EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(s->data()), s->size(),
                       reinterpret_cast<const unsigned char*>(signed_part.data()), signed_part.size()) != 1)
    return *why = "signature does not verify", false;
  *header = json::parse(*h, nullptr, false);
  *claims = json::parse(*c, nullptr, false);
  if (header->is_discarded() || claims->is_discarded()) return *why = "not JSON", false;
  return true;
}

// The fake token endpoint and metadata server.
class FakeGoogle {
 public:
  std::atomic<int> token_requests{0};
  std::atomic<int> metadata_token_requests{0};
  std::atomic<int> metadata_email_requests{0};
  std::atomic<int> expires_in{3600};
  std::atomic<int> fail_status{0};       // token endpoint answers with this and an OAuth error
  std::atomic<bool> malformed{false};    // token endpoint answers without access_token
  std::atomic<bool> flavor{true};        // metadata answers carry Metadata-Flavor: Google
  std::atomic<bool> no_sa{false};        // metadata server has no default service account
  std::atomic<int> metadata_status{0};   // metadata server answers with this status
  std::atomic<int> metadata_fail_next{0};  // > 0: only that many metadata answers use metadata_status
  std::atomic<int> fail_next{0};           // > 0: only that many token answers use fail_status
  std::atomic<bool> saw_storage_header{false};

  FakeGoogle() {
    auto& s = srv_.server();
    s.Post("/token", [this](const httplib::Request& req, httplib::Response& res) { Token(req, res); });
    s.Get(std::string(kMetaPath) + "email", [this](const httplib::Request& req, httplib::Response& res) {
      ++metadata_email_requests;
      if (!Metadata(req, res)) return;
      res.set_content(kVmEmail, "application/text");
    });
    s.Get(std::string(kMetaPath) + "token", [this](const httplib::Request& req, httplib::Response& res) {
      int n = ++metadata_token_requests;
      if (!Metadata(req, res)) return;
      res.set_content(json{{"access_token", "ya29.meta-" + std::to_string(n)},
                           {"expires_in", expires_in.load()},
                           {"token_type", "Bearer"}}
                          .dump(),
                      "application/json");
    });
    srv_.Start();
  }

  std::string token_uri() const { return srv_.url("/token"); }
  std::string host() const { return srv_.host(); }
  std::vector<std::string> problems() {
    std::lock_guard<std::mutex> lock(mu_);
    return problems_;
  }

 private:
  void Problem(std::string p) {
    std::lock_guard<std::mutex> lock(mu_);
    problems_.push_back(std::move(p));
  }

  bool Metadata(const httplib::Request& req, httplib::Response& res) {
    if (flavor) res.set_header("Metadata-Flavor", "Google");
    if (req.get_header_value("Metadata-Flavor") != "Google") {
      Problem("metadata request without Metadata-Flavor: Google");
      res.status = 403;
      return false;
    }
    if (int st = metadata_status.load()) {
      if (metadata_fail_next.load() > 0 && --metadata_fail_next == 0) metadata_status = 0;
      res.status = st;
      res.set_content("backend error", "text/plain");
      return false;
    }
    if (no_sa) {
      res.status = 404;
      res.set_content("Not Found", "text/plain");
      return false;
    }
    return true;
  }

  void Token(const httplib::Request& req, httplib::Response& res) {
    int n = ++token_requests;
    if (req.has_header("X-Storage-Only")) saw_storage_header = true;
    if (req.get_header_value("Content-Type") != "application/x-www-form-urlencoded")
      Problem("token request Content-Type " + req.get_header_value("Content-Type"));
    if (req.get_header_value("User-Agent").rfind("coldstart/", 0) != 0) Problem("user agent");
    if (int st = fail_status.load()) {
      if (fail_next.load() > 0 && --fail_next == 0) fail_status = 0;
      res.status = st;
      res.set_content(R"({"error": "invalid_grant", "error_description": "Bad Request"})", "application/json");
      return;
    }
    if (malformed) {
      res.set_content(R"({"acess_token": "LEAKED-TOKEN-VALUE", "expires_in": 3600})", "application/json");
      return;
    }
    auto form = coldstart::testing::ParseForm(req.body);
    if (form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer") {
      json header, claims;
      std::string why;
      if (!VerifyJwt(form["assertion"], SuiteKey(), &header, &claims, &why)) {
        Problem("JWT: " + why);
        res.status = 400;
        res.set_content(R"({"error": "invalid_grant", "error_description": "Invalid JWT Signature."})",
                        "application/json");
        return;
      }
      long long now = std::time(nullptr);
      if (header.value("alg", "") != "RS256" || header.value("typ", "") != "JWT" ||
          header.value("kid", "") != "kid-123")
        Problem("JWT header " + header.dump());
      if (claims.value("iss", "") != kSaEmail) Problem("iss");
      if (claims.value("scope", "") != "https://www.googleapis.com/auth/devstorage.read_only") Problem("scope");
      if (claims.value("aud", "") != token_uri()) Problem("aud");
      long long iat = claims.value("iat", 0LL), exp = claims.value("exp", 0LL);
      if (iat < now - 60 || iat > now + 60 || exp != iat + 3600) Problem("iat/exp");
    } else if (form["grant_type"] == "refresh_token") {
      if (form["client_id"] != kClientId || form["client_secret"] != kClientSecret ||
          form["refresh_token"] != kRefreshToken)
        Problem("refresh_token grant fields");
    } else {
      Problem("grant_type " + form["grant_type"]);
    }
    res.set_content(json{{"access_token", "ya29.tok-" + std::to_string(n)},
                         {"expires_in", expires_in.load()},
                         {"token_type", "Bearer"}}
                        .dump(),
                    "application/json");
  }

  LoopbackServer srv_;
  std::mutex mu_;
  std::vector<std::string> problems_;
};

class AuthTest : public ::testing::Test {
 protected:
  HttpOptions Http() {
    HttpOptions o;
    o.connect_timeout_s = 2;
    o.timeout_s = 5;
    o.extra_headers = {"X-Storage-Only: 1"};  // for the storage endpoint, never for token requests
    return o;
  }

  std::string WriteSa(const std::string& path, std::string pem = "", std::string token_uri = "") {
    json j = {{"type", "service_account"},
              {"project_id", "proj"},
              {"private_key_id", "kid-123"},
              {"private_key", pem.empty() ? PrivatePem(SuiteKey()) : pem},
              {"client_email", kSaEmail},
              {"client_id", "1234567890"},
              {"token_uri", token_uri.empty() ? google_.token_uri() : token_uri}};
    WriteFile(path, j.dump(2));
    return path;
  }
  std::string WriteUser(const std::string& path) {
    json j = {{"type", "authorized_user"},
              {"client_id", kClientId},
              {"client_secret", kClientSecret},
              {"refresh_token", kRefreshToken},
              {"token_uri", google_.token_uri()}};
    WriteFile(path, j.dump(2));
    return path;
  }

  // Retries as in production but with millisecond backoffs, so failing tests stay fast.
  static AuthOptions Fast(AuthOptions o = {}) {
    o.retry.max_attempts = 3;
    o.retry.initial_backoff_s = 0.001;
    o.retry.max_backoff_s = 0.002;
    return o;
  }

  std::shared_ptr<Credentials> Resolve(const AuthOptions& o, std::map<std::string, std::string> env) {
    if (!env.count("GCE_METADATA_HOST") && !env.count("COLDSTART_METADATA")) env["COLDSTART_METADATA"] = "off";
    auto c = ResolveCredentials(Fast(o), Env::FromMap(env), Http());
    EXPECT_TRUE(c.ok()) << c.error().message;
    return c.ok() ? *c : nullptr;
  }

  static std::string Header(Credentials& c) {
    auto h = c.AuthorizationHeader();
    EXPECT_TRUE(h.ok()) << h.error().message;
    return h.ok() ? *h : "";
  }

  void ExpectNoSecrets(const std::string& text) {
    for (std::string_view secret : {std::string_view(kClientSecret), std::string_view(kRefreshToken),
                                    std::string_view("PRIVATE KEY"), std::string_view("eyJhbGci"),
                                    std::string_view("ya29."), std::string_view("LEAKED"),
                                    std::string_view("SECRET")})
      EXPECT_FALSE(Contains(text, secret)) << "'" << secret << "' leaked into: " << text;
  }

  void TearDown() override {
    for (const auto& p : google_.problems()) ADD_FAILURE() << "fake Google saw: " << p;
    EXPECT_FALSE(google_.saw_storage_header.load()) << "--header extras were sent to the token endpoint";
  }

  FakeGoogle google_;
  TempDir dir_;
};

TEST_F(AuthTest, ExplicitTokenFlagEnvAndPrecedence) {
  AuthOptions o;
  o.access_token = " ya29.explicit\n";
  auto c = Resolve(o, {{"GOOGLE_APPLICATION_CREDENTIALS", dir_ / "never-read.json"}});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Kind(), "access-token");
  EXPECT_EQ(Header(*c), "Authorization: Bearer ya29.explicit");
  ExpectNoSecrets(c->Describe());

  AuthOptions from_env;
  ASSERT_TRUE(from_env.ApplyEnv(Env::FromMap({{"COLDSTART_ACCESS_TOKEN", "ya29.env"}})).ok());
  EXPECT_EQ(from_env.access_token, "ya29.env");
  AuthOptions flag_wins;
  flag_wins.access_token = "ya29.flag";
  ASSERT_TRUE(flag_wins.ApplyEnv(Env::FromMap({{"COLDSTART_ACCESS_TOKEN", "ya29.env"}})).ok());
  EXPECT_EQ(flag_wins.access_token, "ya29.flag");
  EXPECT_EQ(google_.token_requests.load(), 0);
}

TEST_F(AuthTest, MalformedExplicitTokenIsNotEchoed) {
  AuthOptions o;
  o.access_token = "ya29.SECRET part";
  auto c = ResolveCredentials(o, Env::FromMap({{"COLDSTART_METADATA", "off"}}), Http());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().code, Errc::kInvalidArgument);
  ExpectNoSecrets(c.error().message);
}

TEST_F(AuthTest, AnonymousAndEmulator) {
  AuthOptions anon;
  anon.anonymous = true;
  anon.access_token = "ya29.ignored";
  auto a = Resolve(anon, {});
  ASSERT_TRUE(a);
  EXPECT_EQ(a->Kind(), "anonymous");
  EXPECT_EQ(Header(*a), "");

  AuthOptions emu;
  emu.emulator = true;
  auto e = Resolve(emu, {{"GOOGLE_APPLICATION_CREDENTIALS", dir_ / "never-read.json"},
                         {"GCE_METADATA_HOST", google_.host()}});
  ASSERT_TRUE(e);
  EXPECT_EQ(e->Kind(), "anonymous");
  EXPECT_TRUE(Contains(e->Describe(), "emulator")) << e->Describe();
  EXPECT_EQ(Header(*e), "");
  EXPECT_EQ(google_.metadata_email_requests.load(), 0);

  emu.access_token = "ya29.emu";
  auto et = Resolve(emu, {});
  ASSERT_TRUE(et);
  EXPECT_EQ(et->Kind(), "access-token");
  EXPECT_EQ(Header(*et), "Authorization: Bearer ya29.emu");

  auto nothing = Resolve(AuthOptions{}, {{"COLDSTART_METADATA", "off"}, {"CLOUDSDK_CONFIG", dir_ / "empty"}});
  ASSERT_TRUE(nothing);
  EXPECT_EQ(nothing->Kind(), "anonymous");
  EXPECT_TRUE(Contains(nothing->Describe(), "no credentials found")) << nothing->Describe();
}

TEST_F(AuthTest, ServiceAccountJwtIsSignedAndExchanged) {
  std::string path = WriteSa(dir_ / "sa.json");
  auto c = Resolve(AuthOptions{}, {{"GOOGLE_APPLICATION_CREDENTIALS", path}});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Kind(), "service-account");
  EXPECT_EQ(c->Describe(), "service account key " + path + " (" + kSaEmail + ")");
  EXPECT_EQ(google_.token_requests.load(), 0);  // lazily, on first use
  EXPECT_EQ(Header(*c), "Authorization: Bearer ya29.tok-1");
  EXPECT_EQ(google_.token_requests.load(), 1);
  ExpectNoSecrets(c->Describe());
}

TEST_F(AuthTest, TokenIsCachedAcrossThreads) {
  auto c = Resolve(AuthOptions{}, {{"GOOGLE_APPLICATION_CREDENTIALS", WriteSa(dir_ / "sa.json")}});
  ASSERT_TRUE(c);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        auto h = c->AuthorizationHeader();
        if (!h.ok() || *h != "Authorization: Bearer ya29.tok-1") ++wrong;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(google_.token_requests.load(), 1);
}

// A 4 s token is refreshed by the background thread at half its life; callers get the cached
// token from memory meanwhile (no request of their own), and the new one once it arrives.
TEST_F(AuthTest, RefreshesInTheBackgroundBeforeExpiry) {
  google_.expires_in = 4;
  auto c = Resolve(AuthOptions{}, {{"GOOGLE_APPLICATION_CREDENTIALS", WriteUser(dir_ / "user.json")}});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Kind(), "authorized-user");
  EXPECT_EQ(Header(*c), "Authorization: Bearer ya29.tok-1");
  EXPECT_EQ(Header(*c), "Authorization: Bearer ya29.tok-1");
  EXPECT_EQ(google_.token_requests.load(), 1);
  google_.expires_in = 3600;
  for (int i = 0; i < 400 && google_.token_requests.load() < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(google_.token_requests.load(), 2) << "no background refresh within 4 s";
  // The new token is stored right after the request is answered.
  std::string h;
  for (int i = 0; i < 200 && (h = Header(*c)) != "Authorization: Bearer ya29.tok-2"; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(h, "Authorization: Bearer ya29.tok-2");
  EXPECT_EQ(google_.token_requests.load(), 2);
}

// The background refresh fails (the policy gives up): the cached token is still handed out
// while it is valid, and destroying the credentials stops the thread promptly.
TEST_F(AuthTest, FailedBackgroundRefreshKeepsTheValidTokenAndStopsOnDestruction) {
  google_.expires_in = 2;
  auto c = Resolve(AuthOptions{}, {{"GOOGLE_APPLICATION_CREDENTIALS", WriteUser(dir_ / "user.json")}});
  ASSERT_TRUE(c);
  EXPECT_EQ(Header(*c), "Authorization: Bearer ya29.tok-1");
  google_.fail_status = 500;
  for (int i = 0; i < 300 && google_.token_requests.load() < 4; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_GE(google_.token_requests.load(), 4) << "1 + 3 attempts of the background refresh";
  auto h = c->AuthorizationHeader();
  if (h.ok()) {
    EXPECT_EQ(*h, "Authorization: Bearer ya29.tok-1");  // valid until 2 s
  }
  const auto t0 = std::chrono::steady_clock::now();
  c.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(500));
}

// One 503 (or a reset) from the token endpoint is retried, not a failed load.
TEST_F(AuthTest, TokenRequestsAreRetried) {
  auto c = Resolve(AuthOptions{}, {{"GOOGLE_APPLICATION_CREDENTIALS", WriteSa(dir_ / "sa.json")}});
  ASSERT_TRUE(c);
  google_.fail_next = 2;
  google_.fail_status = 503;
  EXPECT_EQ(Header(*c), "Authorization: Bearer ya29.tok-3");
  EXPECT_EQ(google_.token_requests.load(), 3);
}

// One 503 from the metadata server, at the probe and at the token request, does not fail.
TEST_F(AuthTest, MetadataServer503IsRetried) {
  google_.metadata_fail_next = 1;
  google_.metadata_status = 503;
  auto c = Resolve(AuthOptions{}, {{"GCE_METADATA_HOST", google_.host()}});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Kind(), "metadata-server");
  EXPECT_EQ(google_.metadata_email_requests.load(), 2);
  google_.metadata_fail_next = 1;
  google_.metadata_status = 503;
  EXPECT_EQ(Header(*c), "Authorization: Bearer ya29.meta-2");
  EXPECT_EQ(google_.metadata_token_requests.load(), 2);
}

TEST_F(AuthTest, ExpiredTokenAndFailedRefreshIsAnError) {
  google_.expires_in = 0;
  auto c = Resolve(AuthOptions{}, {{"GOOGLE_APPLICATION_CREDENTIALS", WriteUser(dir_ / "user.json")}});
  ASSERT_TRUE(c);
  EXPECT_EQ(Header(*c), "Authorization: Bearer ya29.tok-1");
  google_.fail_status = 503;
  auto h = c->AuthorizationHeader();
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().http_status, 503);
}

TEST_F(AuthTest, GcloudAdcFileViaCloudsdkConfigAndHome) {
  WriteUser(dir_ / "gcloud/application_default_credentials.json");
  auto c = Resolve(AuthOptions{}, {{"CLOUDSDK_CONFIG", dir_ / "gcloud"}, {"HOME", dir_ / "nohome"}});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Kind(), "gcloud-adc");
  EXPECT_TRUE(Contains(c->Describe(), "gcloud application-default credentials")) << c->Describe();
  EXPECT_TRUE(Contains(c->Describe(), dir_ / "gcloud/application_default_credentials.json"));
  EXPECT_EQ(Header(*c), "Authorization: Bearer ya29.tok-1");
  ExpectNoSecrets(c->Describe());

  WriteSa(dir_ / "home/.config/gcloud/application_default_credentials.json");
  auto h = Resolve(AuthOptions{}, {{"HOME", dir_ / "home"}});
  ASSERT_TRUE(h);
  EXPECT_EQ(h->Kind(), "gcloud-adc");
  EXPECT_TRUE(Contains(h->Describe(), kSaEmail)) << h->Describe();
  EXPECT_EQ(Header(*h), "Authorization: Bearer ya29.tok-2");

  // GOOGLE_APPLICATION_CREDENTIALS comes first.
  auto g = Resolve(AuthOptions{}, {{"HOME", dir_ / "home"},
                                   {"GOOGLE_APPLICATION_CREDENTIALS", WriteSa(dir_ / "sa.json")}});
  ASSERT_TRUE(g);
  EXPECT_EQ(g->Kind(), "service-account");
}

TEST_F(AuthTest, MetadataServer) {
  auto c = Resolve(AuthOptions{}, {{"GCE_METADATA_HOST", google_.host()}});
  ASSERT_TRUE(c);
  EXPECT_EQ(c->Kind(), "metadata-server");
  EXPECT_EQ(c->Describe(), "metadata server " + google_.host() + " (" + kVmEmail + ")");
  EXPECT_EQ(google_.metadata_email_requests.load(), 1);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Header(*c), "Authorization: Bearer ya29.meta-1");
  EXPECT_EQ(google_.metadata_token_requests.load(), 1);

  auto off = Resolve(AuthOptions{}, {{"GCE_METADATA_HOST", google_.host()}, {"COLDSTART_METADATA", "off"}});
  ASSERT_TRUE(off);
  EXPECT_EQ(off->Kind(), "anonymous");
  EXPECT_EQ(google_.metadata_email_requests.load(), 1);

  auto bad = ResolveCredentials(AuthOptions{}, Env::FromMap({{"COLDSTART_METADATA", "sometimes"}}), Http());
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(Contains(bad.error().message, "COLDSTART_METADATA"));
}

TEST_F(AuthTest, MetadataServerAbsentOrImpostorMeansAnonymous) {
  int dead_port = coldstart::testing::DeadLoopbackPort();
  auto start = std::chrono::steady_clock::now();
  auto refused = Resolve(AuthOptions{}, {{"GCE_METADATA_HOST", "127.0.0.1:" + std::to_string(dead_port)}});
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->Kind(), "anonymous");
  EXPECT_TRUE(Contains(refused->Describe(), "no metadata server")) << refused->Describe();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));

  google_.flavor = false;
  auto impostor = Resolve(AuthOptions{}, {{"GCE_METADATA_HOST", google_.host()}});
  ASSERT_TRUE(impostor);
  EXPECT_EQ(impostor->Kind(), "anonymous");
  EXPECT_TRUE(Contains(impostor->Describe(), "not a metadata server")) << impostor->Describe();

  google_.flavor = true;
  google_.no_sa = true;
  auto no_sa = Resolve(AuthOptions{}, {{"GCE_METADATA_HOST", google_.host()}});
  ASSERT_TRUE(no_sa);
  EXPECT_EQ(no_sa->Kind(), "anonymous");
  EXPECT_TRUE(Contains(no_sa->Describe(), "no default service account")) << no_sa->Describe();

  // A metadata server that is there but failing is an error, not a silent anonymous.
  google_.metadata_status = 503;
  auto failing = ResolveCredentials(Fast(), Env::FromMap({{"GCE_METADATA_HOST", google_.host()}}), Http());
  ASSERT_FALSE(failing.ok());
  EXPECT_EQ(failing.error().http_status, 503);
  EXPECT_TRUE(Contains(failing.error().message, "COLDSTART_METADATA=off")) << failing.error().message;
}

TEST_F(AuthTest, MalformedCredentialFilesAreErrorsNamingTheFile) {
  Pkey ec = Generate("EC");
  const std::string bad_pem = "-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n";
  struct Case {
    std::string name;
    std::string content;
    std::string_view why;
    Errc code = Errc::kFormat;
  };
  json sa = {{"type", "service_account"},   {"client_email", kSaEmail},
             {"private_key", bad_pem},      {"token_uri", google_.token_uri()},
             {"private_key_id", "kid-123"}};
  json user = {{"type", "authorized_user"}, {"client_id", kClientId}, {"client_secret", kClientSecret},
               {"refresh_token", kRefreshToken}};
  auto without = [](json j, const char* field) {
    j.erase(field);
    return j.dump();
  };
  auto with = [](json j, const char* field, json v) {
    j[field] = v;
    return j;
  };
  const Case cases[] = {
      {"notjson.json", "{\"type\": \"service_account\", \"private_key\": \"SECRET", "not a JSON object"},
      {"array.json", "[1, 2]", "not a JSON object"},
      {"notype.json", without(user, "type"), "no \"type\" field"},
      {"external.json", with(user, "type", "external_account").dump(), "\"external_account\" is not supported",
       Errc::kUnavailable},
      {"noemail.json", without(sa, "client_email"), "\"client_email\""},
      {"numemail.json", with(sa, "client_email", 42).dump(), "\"client_email\" is not a string"},
      {"nokey.json", without(sa, "private_key"), "\"private_key\""},
      {"badkey.json", sa.dump(), "not a PEM-encoded private key"},
      {"eckey.json", with(sa, "private_key", PrivatePem(ec.get())).dump(), "not an RSA key"},
      {"fileuri.json", with(with(sa, "private_key", PrivatePem(SuiteKey())), "token_uri", "file:///etc/passwd").dump(),
       "not an http(s) URL"},
      {"norefresh.json", without(user, "refresh_token"), "\"refresh_token\""},
      {"emptysecret.json", with(user, "client_secret", "").dump(), "\"client_secret\" is empty"},
  };
  for (const auto& c : cases) {
    std::string path = dir_ / c.name;
    WriteFile(path, c.content);
    auto r = ResolveCredentials(AuthOptions{}, Env::FromMap({{"GOOGLE_APPLICATION_CREDENTIALS", path},
                                                             {"COLDSTART_METADATA", "off"}}),
                                Http());
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.error().code, c.code) << c.name << ": " << r.error().message;
    EXPECT_TRUE(Contains(r.error().message, path)) << r.error().message;
    EXPECT_TRUE(Contains(r.error().message, "GOOGLE_APPLICATION_CREDENTIALS")) << r.error().message;
    EXPECT_TRUE(Contains(r.error().message, c.why)) << c.name << ": " << r.error().message;
    ExpectNoSecrets(r.error().message);
  }

  auto missing = ResolveCredentials(
      AuthOptions{}, Env::FromMap({{"GOOGLE_APPLICATION_CREDENTIALS", dir_ / "nope.json"}, {"COLDSTART_METADATA", "off"}}),
      Http());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code, Errc::kNotFound);
  EXPECT_TRUE(Contains(missing.error().message, dir_ / "nope.json"));

  // A broken gcloud file is an error too, not a silent fall-through to anonymous.
  WriteFile(dir_ / "gc/application_default_credentials.json", "{oops");
  auto adc = ResolveCredentials(AuthOptions{}, Env::FromMap({{"CLOUDSDK_CONFIG", dir_ / "gc"}, {"COLDSTART_METADATA", "off"}}),
                                Http());
  ASSERT_FALSE(adc.ok());
  EXPECT_TRUE(Contains(adc.error().message, dir_ / "gc/application_default_credentials.json"));
}

TEST_F(AuthTest, TokenEndpointErrorsDoNotLeakSecrets) {
  google_.fail_status = 400;
  auto sa = Resolve(AuthOptions{}, {{"GOOGLE_APPLICATION_CREDENTIALS", WriteSa(dir_ / "sa.json")}});
  ASSERT_TRUE(sa);
  auto h = sa->AuthorizationHeader();
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().http_status, 400);
  EXPECT_TRUE(Contains(h.error().message, "invalid_grant: Bad Request")) << h.error().message;
  EXPECT_TRUE(Contains(h.error().message, "service account key")) << h.error().message;
  ExpectNoSecrets(h.error().message);

  auto user = Resolve(AuthOptions{}, {{"GOOGLE_APPLICATION_CREDENTIALS", WriteUser(dir_ / "user.json")}});
  ASSERT_TRUE(user);
  auto u = user->AuthorizationHeader();
  ASSERT_FALSE(u.ok());
  ExpectNoSecrets(u.error().message);

  google_.fail_status = 0;
  google_.malformed = true;
  auto m = user->AuthorizationHeader();
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, Errc::kFormat);
  EXPECT_TRUE(Contains(m.error().message, "no access_token")) << m.error().message;
  ExpectNoSecrets(m.error().message);
}

TEST_F(AuthTest, UnreachableTokenEndpointIsNetworkError) {
  int dead_port = coldstart::testing::DeadLoopbackPort();
  std::string path = WriteSa(dir_ / "sa.json", "", "http://127.0.0.1:" + std::to_string(dead_port) + "/token");
  auto c = Resolve(AuthOptions{}, {{"GOOGLE_APPLICATION_CREDENTIALS", path}});
  ASSERT_TRUE(c);
  auto h = c->AuthorizationHeader();
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().code, Errc::kNetwork);
  ExpectNoSecrets(h.error().message);
}

}  // namespace
}  // namespace coldstart::fetch
