// The fake GCS server as a client meets it over loopback with plain libcurl: the JSON/XML API
// surface, generation semantics, auth flows, and every injectable fault observably happening.
#include <arpa/inet.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../common/temp_dir.h"
#include "coldstart/fake_gcs/server.h"
#include "coldstart/core/crc32c.h"

namespace {

// curl_global_init is not thread-safe; do it once before any test (some use many threads).
struct CurlGlobal : ::testing::Environment {
  void SetUp() override { curl_global_init(CURL_GLOBAL_DEFAULT); }
  void TearDown() override { curl_global_cleanup(); }
};
const auto* const kCurlEnv = ::testing::AddGlobalTestEnvironment(new CurlGlobal);

using coldstart::fakegcs::FaultSpec;
using coldstart::fakegcs::Server;
using coldstart::fakegcs::ServerOptions;
using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Reply {
  CURLcode code = CURLE_OK;
  long status = 0;
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
  double seconds = 0;
  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
};

std::size_t OnBody(char* p, std::size_t size, std::size_t n, void* user) {
  static_cast<std::string*>(user)->append(p, size * n);
  return size * n;
}

std::size_t OnHeader(char* p, std::size_t size, std::size_t n, void* user) {
  std::string line(p, size * n);
  auto colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    value.erase(value.find_last_not_of(" \t\r\n") + 1);
    (*static_cast<std::map<std::string, std::string>*>(user))[name] = value;
  }
  return size * n;
}

struct Request {
  std::string method = "GET";
  std::vector<std::string> headers;
  std::string post;  // form body for POST
  bool path_as_is = false;
};

// One request on a fresh connection (the easy handle owns it and closes it on cleanup).
Reply Http(const std::string& url, const Request& r = {}) {
  Reply out;
  std::unique_ptr<CURL, void (*)(CURL*)> curl(curl_easy_init(), curl_easy_cleanup);
  curl_slist* list = nullptr;
  for (const auto& h : r.headers) list = curl_slist_append(list, h.c_str());
  std::unique_ptr<curl_slist, void (*)(curl_slist*)> hold(list, curl_slist_free_all);
  curl_easy_setopt(curl.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl.get(), CURLOPT_HTTPHEADER, list);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(curl.get(), CURLOPT_WRITEDATA, &out.body);
  curl_easy_setopt(curl.get(), CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(curl.get(), CURLOPT_HEADERDATA, &out.headers);
  curl_easy_setopt(curl.get(), CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(curl.get(), CURLOPT_NOPROXY, "*");
  if (r.path_as_is) curl_easy_setopt(curl.get(), CURLOPT_PATH_AS_IS, 1L);
  if (r.method == "HEAD") curl_easy_setopt(curl.get(), CURLOPT_NOBODY, 1L);
  if (r.method == "POST") curl_easy_setopt(curl.get(), CURLOPT_POSTFIELDS, r.post.c_str());
  if (r.method == "DELETE") curl_easy_setopt(curl.get(), CURLOPT_CUSTOMREQUEST, "DELETE");
  auto t0 = Clock::now();
  out.code = curl_easy_perform(curl.get());
  out.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &out.status);
  return out;
}

Reply Get(const std::string& url, std::vector<std::string> headers = {}) {
  Request r;
  r.headers = std::move(headers);
  return Http(url, r);
}

std::string Bytes(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string Md5Base64(const std::string& data) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), d, &len, EVP_md5(), nullptr);
  return coldstart::Base64Encode(std::string_view(reinterpret_cast<char*>(d), len));
}

class FakeGcs : public ::testing::Test {
 protected:
  static constexpr std::size_t kModelSize = 1 << 20;

  void SetUp() override {
    model_ = Bytes(kModelSize, 7);
    WriteFile(root_ / "bkt/model-00001.safetensors", model_);
    WriteFile(root_ / "bkt/config.json", R"({"a":1})");
    WriteFile(root_ / "bkt/dir/a.txt", "a");
    WriteFile(root_ / "bkt/dir/sub/b.txt", "bb");
    WriteFile(root_ / "bkt/empty", "");
  }

  void Start(ServerOptions o = {}) {
    o.root = root_.path();
    auto s = Server::Start(std::move(o));
    ASSERT_TRUE(s.ok()) << s.error().ToString();
    server_ = std::move(*s);
    ep_ = server_->endpoint();
  }

  std::string Media(const std::string& object) const { return ep_ + "/storage/v1/b/bkt/o/" + object + "?alt=media"; }
  std::string ModelMedia() const { return Media("model-00001.safetensors"); }

  TempDir root_;
  std::string model_;
  std::unique_ptr<Server> server_;
  std::string ep_;
};

TEST_F(FakeGcs, ListsWithPaginationPrefixesAndDelimiter) {
  for (int i = 0; i < 25; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "many/obj-%02d", i);
    WriteFile(root_ / ("bkt/" + std::string(name)), "x");
  }
  Start();
  std::vector<std::string> names;
  std::string token;
  int pages = 0;
  do {
    std::string url = ep_ + "/storage/v1/b/bkt/o?prefix=many/&maxResults=10";
    if (!token.empty()) url += "&pageToken=" + token;
    auto r = Get(url);
    ASSERT_EQ(r.status, 200) << r.body;
    auto j = Json::parse(r.body);
    EXPECT_EQ(j["kind"], "storage#objects");
    for (const auto& it : j["items"]) names.push_back(it["name"]);
    token = j.value("nextPageToken", "");
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(names.size(), 25u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(names.front(), "many/obj-00");
  EXPECT_EQ(names.back(), "many/obj-24");

  auto top = Json::parse(Get(ep_ + "/storage/v1/b/bkt/o?delimiter=/").body);
  std::vector<std::string> items, prefixes;
  for (const auto& it : top["items"]) items.push_back(it["name"]);
  for (const auto& p : top["prefixes"]) prefixes.push_back(p);
  EXPECT_EQ(items, (std::vector<std::string>{"config.json", "empty", "model-00001.safetensors"}));
  EXPECT_EQ(prefixes, (std::vector<std::string>{"dir/", "many/"}));
  EXPECT_FALSE(top.contains("nextPageToken"));

  auto dir = Json::parse(Get(ep_ + "/storage/v1/b/bkt/o?prefix=dir/&delimiter=/").body);
  ASSERT_EQ(dir["items"].size(), 1u);
  EXPECT_EQ(dir["items"][0]["name"], "dir/a.txt");
  EXPECT_EQ(dir["prefixes"], Json::array({"dir/sub/"}));
  // Without a delimiter the listing is recursive.
  auto rec = Json::parse(Get(ep_ + "/storage/v1/b/bkt/o?prefix=dir/").body);
  EXPECT_EQ(rec["items"].size(), 2u);
  // Prefixes count toward maxResults and paginate too.
  auto p1 = Json::parse(Get(ep_ + "/storage/v1/b/bkt/o?delimiter=/&maxResults=4").body);
  EXPECT_EQ(p1["items"].size() + p1["prefixes"].size(), 4u);
  auto p2 = Json::parse(
      Get(ep_ + "/storage/v1/b/bkt/o?delimiter=/&maxResults=4&pageToken=" + p1["nextPageToken"].get<std::string>()).body);
  EXPECT_EQ(p1["prefixes"], Json::array({"dir/", "many/"}));
  ASSERT_EQ(p2["items"].size(), 1u);
  EXPECT_EQ(p2["items"][0]["name"], "model-00001.safetensors");
  EXPECT_FALSE(p2.contains("nextPageToken"));

  EXPECT_EQ(Get(ep_ + "/storage/v1/b/nobucket/o").status, 404);
  EXPECT_EQ(Get(ep_ + "/storage/v1/b/bkt/o?maxResults=0").status, 400);
}

TEST_F(FakeGcs, MetadataMatchesTheFile) {
  Start();
  auto r = Get(ep_ + "/storage/v1/b/bkt/o/model-00001.safetensors");
  ASSERT_EQ(r.status, 200) << r.body;
  auto j = Json::parse(r.body);
  EXPECT_EQ(j["kind"], "storage#object");
  EXPECT_EQ(j["name"], "model-00001.safetensors");
  EXPECT_EQ(j["bucket"], "bkt");
  EXPECT_EQ(j["size"], std::to_string(kModelSize));  // GCS sends int64 as strings
  ASSERT_TRUE(j["generation"].is_string());
  EXPECT_EQ(j["generation"], std::to_string(*server_->Generation("bkt", "model-00001.safetensors")));
  EXPECT_EQ(j["metageneration"], "1");
  EXPECT_EQ(j["crc32c"], coldstart::Crc32cToBase64(coldstart::Crc32c(model_)));
  EXPECT_EQ(j["md5Hash"], Md5Base64(model_));
  EXPECT_EQ(j["contentType"], "application/octet-stream");
  EXPECT_TRUE(j.contains("updated"));

  // Nested names travel percent-encoded, '/' as %2F.
  auto nested = Json::parse(Get(ep_ + "/storage/v1/b/bkt/o/dir%2Fsub%2Fb.txt").body);
  EXPECT_EQ(nested["name"], "dir/sub/b.txt");
  EXPECT_EQ(nested["size"], "2");

  auto missing = Get(ep_ + "/storage/v1/b/bkt/o/nope");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(Json::parse(missing.body)["error"]["code"], 404);
  EXPECT_EQ(Get(ep_ + "/storage/v1/b/nobucket/o/x").status, 404);
}

TEST_F(FakeGcs, MediaHonoursRanges) {
  Start();
  const std::string crc = "crc32c=" + coldstart::Crc32cToBase64(coldstart::Crc32c(model_));
  auto full = Get(ModelMedia());
  ASSERT_EQ(full.status, 200);
  EXPECT_EQ(full.body, model_);
  EXPECT_EQ(full.header("x-goog-hash"), crc + ",md5=" + Md5Base64(model_));
  EXPECT_EQ(full.header("x-goog-stored-content-length"), std::to_string(kModelSize));
  EXPECT_EQ(full.header("x-goog-generation"), std::to_string(*server_->Generation("bkt", "model-00001.safetensors")));

  auto part = Get(ModelMedia(), {"Range: bytes=100-199"});
  EXPECT_EQ(part.status, 206);
  EXPECT_EQ(part.body, model_.substr(100, 100));
  EXPECT_EQ(part.header("content-range"), "bytes 100-199/" + std::to_string(kModelSize));
  EXPECT_EQ(part.header("x-goog-hash").rfind(crc, 0), 0u) << "ranged answers carry the whole object's hash";

  auto open = Get(ModelMedia(), {"Range: bytes=1048000-"});
  EXPECT_EQ(open.status, 206);
  EXPECT_EQ(open.body, model_.substr(1048000));
  auto suffix = Get(ModelMedia(), {"Range: bytes=-10"});
  EXPECT_EQ(suffix.status, 206);
  EXPECT_EQ(suffix.body, model_.substr(kModelSize - 10));
  auto past_end = Get(ModelMedia(), {"Range: bytes=1048570-9999999"});
  EXPECT_EQ(past_end.status, 206);
  EXPECT_EQ(past_end.body, model_.substr(1048570));

  auto bad = Get(ModelMedia(), {"Range: bytes=" + std::to_string(kModelSize) + "-"});
  EXPECT_EQ(bad.status, 416);
  EXPECT_EQ(bad.header("content-range"), "bytes */" + std::to_string(kModelSize));
  EXPECT_EQ(Json::parse(bad.body)["error"]["code"], 416);

  auto empty = Get(Media("empty"));
  EXPECT_EQ(empty.status, 200);
  EXPECT_TRUE(empty.body.empty());
  EXPECT_EQ(Get(Media("nope")).status, 404);

  // XML API: same bytes and headers; HEAD has the headers and no body.
  auto xml = Get(ep_ + "/bkt/model-00001.safetensors", {"Range: bytes=5-9"});
  EXPECT_EQ(xml.status, 206);
  EXPECT_EQ(xml.body, model_.substr(5, 5));
  EXPECT_EQ(xml.header("x-goog-stored-content-length"), std::to_string(kModelSize));
  Request head;
  head.method = "HEAD";
  auto h = Http(ep_ + "/bkt/dir/sub/b.txt", head);
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.header("content-length"), "2");
  EXPECT_FALSE(h.header("x-goog-generation").empty());
  EXPECT_EQ(Get(ep_ + "/bkt/nope").status, 404);

  auto st = server_->stats();
  // Five JSON and one XML download with a body; the 416 and the HEAD are not media downloads.
  EXPECT_EQ(st.media_requests_per_object["bkt/model-00001.safetensors"], 6u);
  EXPECT_NE(std::find(st.ranges_served.begin(), st.ranges_served.end(), "bkt/model-00001.safetensors bytes=100-199"),
            st.ranges_served.end());
  EXPECT_GE(st.media_bytes_sent, kModelSize + 100);
}

TEST_F(FakeGcs, GenerationPreconditions) {
  Start();
  const auto gen = *server_->Generation("bkt", "config.json");
  const std::string g = std::to_string(gen);
  const std::string base = ep_ + "/storage/v1/b/bkt/o/config.json?alt=media";
  EXPECT_EQ(Get(base + "&generation=" + g).status, 200);
  EXPECT_EQ(Get(base + "&ifGenerationMatch=" + g).status, 200);
  EXPECT_EQ(Get(base + "&generation=" + std::to_string(gen + 1)).status, 404);
  EXPECT_EQ(Get(base + "&ifGenerationMatch=" + std::to_string(gen + 1)).status, 412);
  EXPECT_EQ(Get(ep_ + "/bkt/config.json", {"x-goog-if-generation-match: " + g}).status, 200);
  EXPECT_EQ(Get(ep_ + "/bkt/config.json", {"x-goog-if-generation-match: 1"}).status, 412);

  // An overwrite moves the generation on; pins to the old one now fail.
  auto bumped = server_->BumpGeneration("bkt", "config.json");
  ASSERT_TRUE(bumped.ok());
  EXPECT_GT(*bumped, gen);
  EXPECT_EQ(Get(base + "&ifGenerationMatch=" + g).status, 412);
  EXPECT_EQ(Get(base + "&generation=" + g).status, 404);
  EXPECT_EQ(Json::parse(Get(ep_ + "/storage/v1/b/bkt/o/config.json").body)["generation"], std::to_string(*bumped));
}

TEST_F(FakeGcs, RejectsPathTraversal) {
  WriteFile(root_ / "secret", "s");
  Start();
  Request as_is;
  as_is.path_as_is = true;
  EXPECT_EQ(Http(ep_ + "/bkt/../secret", as_is).status, 400);
  EXPECT_EQ(Get(ep_ + "/storage/v1/b/bkt/o/..%2Fsecret?alt=media").status, 400);
  EXPECT_EQ(Get(ep_ + "/storage/v1/b/bkt/o/dir%2F..%2F..%2Fsecret").status, 400);
  EXPECT_EQ(Get(ep_ + "/storage/v1/b/..%2F/o/secret").status, 400);
  auto listing = Get(ep_ + "/storage/v1/b/bkt/o?prefix=../");
  EXPECT_EQ(listing.status, 200);
  EXPECT_FALSE(Json::parse(listing.body).contains("items")) << listing.body;
}

TEST_F(FakeGcs, BearerTokenRequired) {
  ServerOptions o;
  o.required_token = "sekrit";
  Start(o);
  auto none = Get(ModelMedia());
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(Json::parse(none.body)["error"]["code"], 401);
  EXPECT_EQ(Get(ModelMedia(), {"Authorization: Bearer wrong"}).status, 401);
  EXPECT_EQ(Get(ep_ + "/storage/v1/b/bkt/o").status, 401);
  EXPECT_EQ(Get(ep_ + "/bkt/config.json").status, 401);
  EXPECT_EQ(Get(ModelMedia(), {"Authorization: Bearer sekrit"}).status, 200);
  EXPECT_EQ(Get(ModelMedia(), {"Authorization: Bearer " + server_->MintAccessToken()}).status, 200);
}

TEST_F(FakeGcs, StatusFaultHitsCountTimesThenClears) {
  Start();
  FaultSpec f;
  f.kind = FaultSpec::Kind::kStatus;
  f.status = 503;
  f.count = 2;
  f.object_glob = "bkt/model-*";
  server_->AddFault(f);
  EXPECT_EQ(Get(Media("config.json")).status, 200) << "glob does not match";
  EXPECT_EQ(Get(ep_ + "/storage/v1/b/bkt/o/model-00001.safetensors").status, 200) << "media_only spares metadata";
  auto first = Get(ModelMedia());
  EXPECT_EQ(first.status, 503);
  EXPECT_EQ(Json::parse(first.body)["error"]["code"], 503);
  EXPECT_EQ(Get(ep_ + "/bkt/model-00001.safetensors").status, 503);
  EXPECT_EQ(Get(ModelMedia()).status, 200);
  EXPECT_EQ(server_->stats().faults_injected, 2u);

  f.count = 0;  // every request, metadata too
  f.media_only = false;
  f.status = 429;
  server_->AddFault(f);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Get(ep_ + "/storage/v1/b/bkt/o/model-00001.safetensors").status, 429);
  server_->ClearFaults();
  EXPECT_EQ(Get(ModelMedia()).status, 200);
}

TEST_F(FakeGcs, CutResetStallCorruptFaultsBreakTheBody) {
  Start();
  FaultSpec cut;
  cut.kind = FaultSpec::Kind::kCutBody;
  cut.after_bytes = 100000;
  server_->AddFault(cut);
  auto c = Get(ModelMedia());
  EXPECT_EQ(c.status, 200);
  EXPECT_EQ(c.code, CURLE_PARTIAL_FILE);
  EXPECT_EQ(c.body, model_.substr(0, 100000));

  FaultSpec reset = cut;
  reset.kind = FaultSpec::Kind::kReset;
  server_->AddFault(reset);
  auto r = Get(ModelMedia());
  EXPECT_EQ(r.code, CURLE_RECV_ERROR) << curl_easy_strerror(r.code) << " (expected a TCP reset)";
  EXPECT_LE(r.body.size(), 100000u);

  FaultSpec stall = cut;
  stall.kind = FaultSpec::Kind::kStall;
  stall.seconds = 0.3;
  server_->AddFault(stall);
  auto s = Get(ModelMedia(), {"Range: bytes=1000-"});
  EXPECT_EQ(s.status, 206);
  EXPECT_EQ(s.code, CURLE_PARTIAL_FILE);
  EXPECT_EQ(s.body, model_.substr(1000, 100000)) << "after_bytes counts from the start of the response body";
  EXPECT_GE(s.seconds, 0.3);

  FaultSpec corrupt = cut;
  corrupt.kind = FaultSpec::Kind::kCorrupt;
  corrupt.after_bytes = 777777;
  server_->AddFault(corrupt);
  auto k = Get(ModelMedia());
  EXPECT_EQ(k.code, CURLE_OK);
  ASSERT_EQ(k.body.size(), model_.size());
  std::vector<std::size_t> diffs;
  for (std::size_t i = 0; i < model_.size(); ++i)
    if (k.body[i] != model_[i]) diffs.push_back(i);
  EXPECT_EQ(diffs, std::vector<std::size_t>{777777});
  EXPECT_NE(coldstart::Crc32cToBase64(coldstart::Crc32c(k.body)) ,
            coldstart::Crc32cToBase64(coldstart::Crc32c(model_)));

  // Faults are used up: the next download is whole.
  EXPECT_EQ(Get(ModelMedia()).body, model_);
}

TEST_F(FakeGcs, GenerationChangeFaultCutsAndOverwrites) {
  Start();
  const auto gen = *server_->Generation("bkt", "model-00001.safetensors");
  FaultSpec f;
  f.kind = FaultSpec::Kind::kGenerationChange;
  f.after_bytes = 4096;
  server_->AddFault(f);
  auto r = Get(ModelMedia() + "&ifGenerationMatch=" + std::to_string(gen));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.code, CURLE_PARTIAL_FILE);
  EXPECT_EQ(r.body.size(), 4096u);
  EXPECT_EQ(r.header("x-goog-generation"), std::to_string(gen));
  // The resume, pinned to what it started with, learns the object changed.
  EXPECT_EQ(Get(ModelMedia() + "&ifGenerationMatch=" + std::to_string(gen), {"Range: bytes=4096-"}).status, 412);
  EXPECT_EQ(Get(ModelMedia() + "&generation=" + std::to_string(gen)).status, 404);
  EXPECT_GT(*server_->Generation("bkt", "model-00001.safetensors"), gen);
}

TEST_F(FakeGcs, FirstByteDelayFaultAndOption) {
  ServerOptions o;
  o.first_byte_delay_s = 0.1;
  Start(o);
  FaultSpec f;
  f.kind = FaultSpec::Kind::kFirstByteDelay;
  f.seconds = 0.3;
  server_->AddFault(f);
  auto slow = Get(Media("config.json"));
  EXPECT_EQ(slow.status, 200);
  EXPECT_GE(slow.seconds, 0.4);
  auto normal = Get(Media("config.json"));
  EXPECT_GE(normal.seconds, 0.1);
  EXPECT_LT(normal.seconds, 0.4);
}

TEST_F(FakeGcs, RateLimitIsRoughlyHonoured) {
  ServerOptions o;
  o.rate_limit_bytes_per_s = 4 << 20;
  Start(o);
  auto r = Get(ModelMedia());  // 1 MiB at 4 MiB/s: 0.25 s ideally
  ASSERT_EQ(r.body, model_);
  EXPECT_GE(r.seconds, 0.2);
  EXPECT_LT(r.seconds, 2.0);
  auto small = Get(ModelMedia(), {"Range: bytes=0-1023"});
  EXPECT_LT(small.seconds, 0.2) << "the limit paces bytes, it adds no fixed delay";
}

TEST_F(FakeGcs, LinkRateLimitIsSharedByAllConnections) {
  ServerOptions o;
  o.link_rate_limit_bytes_per_s = 4 << 20;
  Start(o);
  // Two 1 MiB bodies at once through a 4 MiB/s link: 0.5 s together (0.25 s each alone).
  std::vector<Reply> replies(2);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (auto& r : replies) threads.emplace_back([&r, this] { r = Get(ModelMedia()); });
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (const auto& r : replies) ASSERT_EQ(r.body, model_);
  EXPECT_GE(seconds, 0.45) << "the link's rate is for all connections together";
  EXPECT_LT(seconds, 2.0);
  auto small = Get(ModelMedia(), {"Range: bytes=0-1023"});
  EXPECT_LT(small.seconds, 0.2) << "an idle link saves nothing up, but adds no fixed delay either";
}

TEST_F(FakeGcs, ControlEndpoints) {
  Start();
  Request add;
  add.method = "POST";
  add.headers = {"Content-Type: application/json"};
  add.post = R"({"kind":"status","status":500,"object":"bkt/config.json","count":1})";
  ASSERT_EQ(Http(ep_ + "/_fake/faults", add).status, 200);
  add.post = R"({"kind":"bogus"})";
  EXPECT_EQ(Http(ep_ + "/_fake/faults", add).status, 400);
  EXPECT_EQ(Get(Media("config.json")).status, 500);
  EXPECT_EQ(Get(Media("config.json")).status, 200);

  add.post = R"({"kind":"cut","after_bytes":10,"count":0})";
  ASSERT_EQ(Http(ep_ + "/_fake/faults", add).status, 200);
  EXPECT_EQ(Get(ModelMedia()).code, CURLE_PARTIAL_FILE);
  Request del;
  del.method = "DELETE";
  EXPECT_EQ(Http(ep_ + "/_fake/faults", del).status, 200);
  EXPECT_EQ(Get(ModelMedia()).code, CURLE_OK);

  auto st = Json::parse(Get(ep_ + "/_fake/stats").body);
  EXPECT_EQ(st["media_requests"], 3) << "the injected 500 sent no body";
  EXPECT_EQ(st["media_requests_per_object"]["bkt/config.json"], 1);
  EXPECT_EQ(st["faults_injected"], 2);
}

TEST(FakeGcsFaultSpec, ParsesCliAndJsonForms) {
  auto f = coldstart::fakegcs::ParseFaultSpec("kind=status,status=503,count=2,object=*/model-*");
  ASSERT_TRUE(f.ok()) << f.error().ToString();
  EXPECT_EQ(f->kind, FaultSpec::Kind::kStatus);
  EXPECT_EQ(f->status, 503);
  EXPECT_EQ(f->count, 2u);
  EXPECT_EQ(f->object_glob, "*/model-*");
  auto s = coldstart::fakegcs::ParseFaultSpec("kind=stall,after=1MiB,seconds=500ms,media_only=false");
  ASSERT_TRUE(s.ok()) << s.error().ToString();
  EXPECT_EQ(s->after_bytes, 1u << 20);
  EXPECT_DOUBLE_EQ(s->seconds, 0.5);
  EXPECT_FALSE(s->media_only);
  EXPECT_FALSE(coldstart::fakegcs::ParseFaultSpec("status=503").ok()) << "kind is required";
  EXPECT_FALSE(coldstart::fakegcs::ParseFaultSpec("kind=nope").ok());
  EXPECT_FALSE(coldstart::fakegcs::ParseFaultSpec("kind=status,colour=red").ok());
  auto j = coldstart::fakegcs::FaultSpecFromJson(R"({"kind":"first_byte_delay","seconds":0.25,"object_glob":"b/*"})");
  ASSERT_TRUE(j.ok()) << j.error().ToString();
  EXPECT_EQ(j->kind, FaultSpec::Kind::kFirstByteDelay);
  EXPECT_DOUBLE_EQ(j->seconds, 0.25);
  EXPECT_EQ(j->object_glob, "b/*");
}

// ---- auth flows -----------------------------------------------------------------------------

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

Pkey PemKey(const std::string& pem) {
  std::unique_ptr<BIO, int (*)(BIO*)> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), BIO_free);
  return Pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
}

std::string SignJwt(EVP_PKEY* key, const Json& header, const Json& claims) {
  using coldstart::Base64UrlEncode;
  std::string input = Base64UrlEncode(header.dump()) + "." + Base64UrlEncode(claims.dump());
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key);
  std::size_t len = 0;
  EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()), input.size());
  std::string sig(len, '\0');
  EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                 reinterpret_cast<const unsigned char*>(input.data()), input.size());
  sig.resize(len);
  return input + "." + Base64UrlEncode(sig);
}

Reply PostForm(const std::string& url, const std::string& form) {
  Request r;
  r.method = "POST";
  r.headers = {"Content-Type: application/x-www-form-urlencoded"};
  r.post = form;
  return Http(url, r);
}

TEST_F(FakeGcs, ServiceAccountJwtFlow) {
  ServerOptions o;
  o.required_token = "not-this-one";
  o.sa_key_out = root_ / "sa.json";
  Start(o);
  auto sa = Json::parse(coldstart::testing::ReadFile(o.sa_key_out));
  EXPECT_EQ(sa["type"], "service_account");
  EXPECT_EQ(sa["token_uri"], server_->token_uri());
  EXPECT_EQ(sa["client_email"], server_->client_email());
  Pkey key = PemKey(sa["private_key"]);
  ASSERT_TRUE(key);

  const auto now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  Json header = {{"alg", "RS256"}, {"typ", "JWT"}, {"kid", sa["private_key_id"]}};
  Json claims = {{"iss", sa["client_email"]},
                 {"scope", "https://www.googleapis.com/auth/devstorage.read_only"},
                 {"aud", sa["token_uri"]},
                 {"iat", now},
                 {"exp", now + 3600}};
  const std::string grant = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=";
  auto ok = PostForm(server_->token_uri(), grant + SignJwt(key.get(), header, claims));
  ASSERT_EQ(ok.status, 200) << ok.body;
  auto tok = Json::parse(ok.body);
  EXPECT_EQ(tok["token_type"], "Bearer");
  EXPECT_EQ(tok["expires_in"], 3599);
  EXPECT_EQ(Get(ModelMedia(), {"Authorization: Bearer " + tok["access_token"].get<std::string>()}).status, 200);

  Pkey other(EVP_RSA_gen(2048));
  auto forged = PostForm(server_->token_uri(), grant + SignJwt(other.get(), header, claims));
  EXPECT_EQ(forged.status, 400);
  EXPECT_EQ(Json::parse(forged.body)["error"], "invalid_grant");

  Json expired = claims;
  expired["iat"] = now - 7200;
  expired["exp"] = now - 3600;
  EXPECT_EQ(PostForm(server_->token_uri(), grant + SignJwt(key.get(), header, expired)).status, 400);
  Json wrong_aud = claims;
  wrong_aud["aud"] = "https://oauth2.googleapis.com/token";
  EXPECT_EQ(PostForm(server_->token_uri(), grant + SignJwt(key.get(), header, wrong_aud)).status, 400);
  EXPECT_EQ(PostForm(server_->token_uri(), "grant_type=password").status, 400);
  EXPECT_EQ(server_->stats().token_requests, 5u);
}

TEST_F(FakeGcs, AuthorizedUserRefreshFlow) {
  ServerOptions o;
  o.required_token = "not-this-one";
  o.authorized_user_out = root_ / "adc.json";
  Start(o);
  auto au = Json::parse(coldstart::testing::ReadFile(o.authorized_user_out));
  EXPECT_EQ(au["type"], "authorized_user");
  const std::string creds = "&client_id=" + au["client_id"].get<std::string>() +
                            "&client_secret=" + au["client_secret"].get<std::string>();
  auto ok = PostForm(server_->token_uri(),
                     "grant_type=refresh_token&refresh_token=" + au["refresh_token"].get<std::string>() + creds);
  ASSERT_EQ(ok.status, 200) << ok.body;
  const std::string token = Json::parse(ok.body)["access_token"];
  EXPECT_EQ(Get(ep_ + "/storage/v1/b/bkt/o", {"Authorization: Bearer " + token}).status, 200);
  EXPECT_EQ(PostForm(server_->token_uri(), "grant_type=refresh_token&refresh_token=stale" + creds).status, 400);
  EXPECT_EQ(PostForm(server_->token_uri(), "grant_type=refresh_token&refresh_token=" +
                                               au["refresh_token"].get<std::string>() + "&client_id=x&client_secret=y")
                .status,
            401);
}

TEST_F(FakeGcs, MetadataServer) {
  ServerOptions o;
  o.required_token = "not-this-one";
  Start(o);
  const std::string base = ep_ + "/computeMetadata/v1/";
  EXPECT_EQ(Get(base + "instance/service-accounts/default/token").status, 403);
  auto t = Get(base + "instance/service-accounts/default/token", {"Metadata-Flavor: Google"});
  ASSERT_EQ(t.status, 200);
  EXPECT_EQ(t.header("metadata-flavor"), "Google");
  auto tok = Json::parse(t.body);
  EXPECT_EQ(tok["expires_in"], 3599);
  EXPECT_EQ(tok["token_type"], "Bearer");
  EXPECT_EQ(Get(ModelMedia(), {"Authorization: Bearer " + tok["access_token"].get<std::string>()}).status, 200);
  auto email = Get(base + "instance/service-accounts/default/email", {"Metadata-Flavor: Google"});
  EXPECT_EQ(email.body, server_->client_email());
  EXPECT_EQ(Get(base + "project/project-id", {"Metadata-Flavor: Google"}).body, "coldstart-test");
  EXPECT_EQ(server_->stats().token_requests, 1u);
}

// ---- concurrency and lifecycle ----------------------------------------------------------------

TEST_F(FakeGcs, ServesManyConcurrentConnections) {
  Start();
  constexpr int kClients = 40;
  constexpr std::size_t kChunk = kModelSize / kClients;
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      const std::size_t first = i * kChunk;
      auto r = Get(ModelMedia(), {"Range: bytes=" + std::to_string(first) + "-" + std::to_string(first + kChunk - 1)});
      if (r.status == 206 && r.body == model_.substr(first, kChunk)) ++good;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good.load(), kClients);
  EXPECT_EQ(server_->stats().ranges_served.size(), static_cast<std::size_t>(kClients));
}

TEST_F(FakeGcs, StopEndsStallsAndIdleConnectionsPromptly) {
  Start();
  FaultSpec f;
  f.kind = FaultSpec::Kind::kStall;
  f.seconds = 30;
  f.after_bytes = 10;
  server_->AddFault(f);
  std::thread client([&] { Get(ModelMedia()); });
  // An idle connection, held open by a raw socket: its worker waits in httplib's keep-alive loop.
  int idle = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(server_->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(idle, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto t0 = Clock::now();
  server_->Stop();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 1.5);
  client.join();
  ::close(idle);
  server_->Stop();  // idempotent
}

#ifdef COLDSTART_FAKE_GCS_BIN
TEST_F(FakeGcs, ExecutableServesAndExitsOnSigterm) {
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(out[1], 1);
    ::close(out[0]);
    ::close(out[1]);
    ::execl(COLDSTART_FAKE_GCS_BIN, COLDSTART_FAKE_GCS_BIN, "--root", root_.path().c_str(), "--port", "0", "--fault",
            "kind=status,status=503,count=1,object=*/config.json", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(out[1]);
  std::string line;
  char c;
  while (::read(out[0], &c, 1) == 1 && c != '\n') line += c;
  ::close(out[0]);
  ASSERT_EQ(line.rfind("listening on http://127.0.0.1:", 0), 0u) << line;
  const std::string ep = line.substr(std::string("listening on ").size());
  EXPECT_EQ(Get(ep + "/bkt/config.json").status, 503);
  EXPECT_EQ(Get(ep + "/bkt/config.json").body, R"({"a":1})");
  ::kill(pid, SIGTERM);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}
#endif

}  // namespace
