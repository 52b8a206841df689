// RemoteSession against small loopback servers that answer badly: malformed listing and
// metadata JSON, redirects, wrong messages.
#include <gtest/gtest.h>

#include <mutex>

#include <atomic>
#include <string>

#include "coldstart/fetch/http.h"
#include "coldstart/fetch/remote.h"
#include "loopback_server.h"

namespace coldstart::fetch {
namespace {

using coldstart::testing::LoopbackServer;

Env NoMetadata() { return Env::FromMap({{"COLDSTART_METADATA", "off"}}); }

RemoteOptions FastOptions(const std::string& endpoint = {}) {
  RemoteOptions o;
  o.endpoint = endpoint;
  o.auth.anonymous = true;
  o.retry.max_attempts = 2;
  o.retry.initial_backoff_s = 0.001;
  o.retry.max_backoff_s = 0.002;
  o.fetch.retry = o.retry;
  return o;
}

std::shared_ptr<RemoteSession> Open(const std::string& url, const RemoteOptions& o) {
  auto src = ParseSource(url);
  EXPECT_TRUE(src.ok());
  auto s = RemoteSession::Open(*src, o, NoMetadata());
  EXPECT_TRUE(s.ok()) << s.error().message;
  return s.ok() ? *s : nullptr;
}

// A listing whose item has "size": null used to terminate the process (nlohmann's get<> threw
// type_error out of ListGcs); "12x" was read as 12.
TEST(RemoteSessionJson, MalformedListingIsOneFormatErrorNamingTheUrl) {
  std::mutex mu;  // the handler runs on a server thread
  std::string listing;
  LoopbackServer loop;
  loop.server().Get(R"(/storage/v1/b/bkt/o)", [&](const httplib::Request&, httplib::Response& res) {
    std::lock_guard lk(mu);
    res.set_content(listing, "application/json");
  });
  loop.server().Get(R"(/storage/v1/b/bkt/o/(.*))", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"name":"m/x","size":"12x","generation":"1"})", "application/json");
  });
  loop.Start();
  for (const char* body : {R"({"items":[{"name":"m/a","size":null,"generation":"1"}]})",
                                 R"({"items":[{"name":"m/a","size":"12x","generation":"1"}]})",
                                 R"({"items":[{"name":"m/a","size":"1","generation":"1"}],"nextPageToken":7})",
                                 R"({"items":"m/a"})", "<html>"}) {
    {
      std::lock_guard lk(mu);
      listing = body;
    }
    auto s = Open("gs://bkt/m", FastOptions(loop.url("")));
    ASSERT_TRUE(s);
    auto files = s->List();
    ASSERT_FALSE(files.ok()) << body;
    EXPECT_EQ(files.error().code, Errc::kFormat) << files.error().message;
    EXPECT_NE(files.error().message.find("gs://bkt/m/"), std::string::npos) << files.error().message;
    EXPECT_NE(files.error().message.find("/storage/v1/b/bkt/o"), std::string::npos) << files.error().message;
    EXPECT_EQ(files.error().message.find("maxResults"), std::string::npos) << "query string leaked";
  }
  // A single object whose metadata says "size": "12x".
  {
    std::lock_guard lk(mu);
    listing = "{}";
  }
  auto s = Open("gs://bkt/m/x", FastOptions(loop.url("")));
  auto files = s->List();
  ASSERT_FALSE(files.ok());
  EXPECT_EQ(files.error().code, Errc::kFormat) << files.error().message;
  EXPECT_NE(files.error().message.find("\"size\""), std::string::npos) << files.error().message;
}

// A plain URL that answers 403 talks about the URL (expired signature, --header), not about
// GCS roles or --anonymous.
TEST(RemoteSessionMessages, ForbiddenPlainUrlTalksAboutTheUrl) {
  LoopbackServer loop;
  loop.server().Get(R"(/.*)", [&](const httplib::Request&, httplib::Response& res) {
    res.status = 403;
    res.set_content("<Error>Request has expired</Error>", "application/xml");
  });
  loop.Start();
  auto s = Open(loop.url("/m/model.safetensors?X-Goog-Signature=abc"), FastOptions());
  ASSERT_TRUE(s);
  auto files = s->List();
  ASSERT_FALSE(files.ok());
  const std::string& m = files.error().message;
  EXPECT_EQ(files.error().code, Errc::kPermissionDenied);
  EXPECT_NE(m.find("signed URL"), std::string::npos) << m;
  EXPECT_NE(m.find("--header 'Authorization: ...'"), std::string::npos) << m;
  EXPECT_EQ(m.find("roles/storage"), std::string::npos) << m;
  EXPECT_EQ(m.find("--anonymous"), std::string::npos) << m;
  EXPECT_EQ(m.find("X-Goog-Signature"), std::string::npos) << m;
  Error annotated = s->Annotate(HttpError(401, "GET x", ""));
  EXPECT_NE(annotated.message.find("signed URL"), std::string::npos) << annotated.message;
}

// "https://host/models/gemma" is the folder gemma/, not its parent models/; a URL to a file
// that is not .safetensors is an error naming it, never its parent folder's model.
TEST(RemoteSessionFolders, FolderUrlWithoutSlashAndNonSafetensorsFile) {
  LoopbackServer loop;
  std::atomic<int> parent_hits{0};
  loop.server().Get("/models/gemma/model.safetensors", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(std::string(100, 'x'), "application/octet-stream");
  });
  loop.server().Get("/models/gemma/config.json", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content("{}", "application/json");
  });
  loop.server().Get("/models/model.safetensors", [&](const httplib::Request&, httplib::Response& res) {
    ++parent_hits;
    res.set_content(std::string(7, 'y'), "application/octet-stream");
  });
  loop.Start();
  for (const std::string& url : {loop.url("/models/gemma"), loop.url("/models/gemma/")}) {
    auto s = Open(url, FastOptions());
    ASSERT_TRUE(s);
    auto files = s->List();
    ASSERT_TRUE(files.ok()) << url << ": " << files.error().message;
    ASSERT_EQ(files->size(), 2u) << url;
    EXPECT_EQ((*files)[0].name, "model.safetensors");
    EXPECT_EQ((*files)[0].object.size, 100u);
    EXPECT_EQ((*files)[0].object.url, loop.url("/models/gemma/model.safetensors"));
    EXPECT_EQ((*files)[1].name, "config.json");
    auto st = s->Stat("config.json");
    ASSERT_TRUE(st.ok()) << st.error().message;
    EXPECT_EQ(st->object.url, loop.url("/models/gemma/config.json"));
  }
  EXPECT_EQ(parent_hits.load(), 0);

  auto cfg = Open(loop.url("/models/gemma/config.json"), FastOptions());
  auto files = cfg->List();
  ASSERT_FALSE(files.ok());
  EXPECT_EQ(files.error().code, Errc::kInvalidArgument) << files.error().message;
  EXPECT_NE(files.error().message.find(loop.url("/models/gemma/config.json") + " is not a .safetensors file or a folder"),
            std::string::npos) << files.error().message;
  EXPECT_EQ(parent_hits.load(), 0);

  auto missing = Open(loop.url("/models/none"), FastOptions());
  auto nf = missing->List();
  ASSERT_FALSE(nf.ok());
  EXPECT_EQ(nf.error().code, Errc::kNotFound);
  EXPECT_NE(nf.error().message.find("read as the folder " + loop.url("/models/none/")), std::string::npos)
      << nf.error().message;
}

}  // namespace
}  // namespace coldstart::fetch
