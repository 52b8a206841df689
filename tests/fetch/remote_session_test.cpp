// RemoteSession against small loopback servers that answer badly: malformed listing and
// metadata JSON, redirects, wrong messages.
#include <gtest/gtest.h>

#include <atomic>
#include <string>

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
  std::string listing;
  LoopbackServer loop;
  loop.server().Get(R"(/storage/v1/b/bkt/o)", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(listing, "application/json");
  });
  loop.server().Get(R"(/storage/v1/b/bkt/o/(.*))", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"name":"m/x","size":"12x","generation":"1"})", "application/json");
  });
  loop.Start();
  for (const std::string body : {R"({"items":[{"name":"m/a","size":null,"generation":"1"}]})",
                                 R"({"items":[{"name":"m/a","size":"12x","generation":"1"}]})",
                                 R"({"items":[{"name":"m/a","size":"1","generation":"1"}],"nextPageToken":7})",
                                 R"({"items":"m/a"})", "<html>"}) {
    listing = body;
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
  listing = "{}";
  auto s = Open("gs://bkt/m/x", FastOptions(loop.url("")));
  auto files = s->List();
  ASSERT_FALSE(files.ok());
  EXPECT_EQ(files.error().code, Errc::kFormat) << files.error().message;
  EXPECT_NE(files.error().message.find("\"size\""), std::string::npos) << files.error().message;
}

}  // namespace
}  // namespace coldstart::fetch
