#include "coldstart/fetch/http.h"

#include <curl/curl.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include "coldstart/fetch/retry.h"
#include "loopback_server.h"

namespace coldstart::fetch {
namespace {

using coldstart::testing::LoopbackServer;

bool Contains(const std::string& s, std::string_view part) { return s.find(part) != std::string::npos; }

class HttpClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto& s = srv_.server();
    s.Get("/echo", [this](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        ports_.insert(req.remote_port);
        last_headers_ = req.headers;
      }
      res.set_header("X-Mixed-Case", "v1");
      res.set_content("hello", "text/plain");
    });
    s.Post("/form", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard<std::mutex> lock(mu_);
      last_headers_ = req.headers;
      last_body_ = req.body;
      res.set_content("{}", "application/json");
    });
    s.Get(R"(/status/(\d+))", [](const httplib::Request& req, httplib::Response& res) {
      res.status = std::stoi(req.matches[1]);
      res.set_content(R"({"error": {"code": )" + std::string(req.matches[1]) +
                          R"(, "message": "No such object: bucket/model.safetensors"}})",
                      "application/json");
    });
    s.Get("/slow", [](const httplib::Request&, httplib::Response& res) {
      std::this_thread::sleep_for(std::chrono::milliseconds(600));
      res.set_content("late", "text/plain");
    });
    srv_.Start();
  }

  std::string SeenHeader(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = last_headers_.find(name);
    return it == last_headers_.end() ? "<absent>" : it->second;
  }

  std::mutex mu_;
  std::set<int> ports_;
  httplib::Headers last_headers_;
  std::string last_body_;
  // Last, so it is destroyed first: the server stops and joins its workers before the state
  // its handlers write goes away (ThreadSanitizer saw a handler's write race the destructor).
  LoopbackServer srv_;
};

TEST_F(HttpClientTest, UserAgentHeadersAndBody) {
  HttpOptions o;
  o.extra_headers = {"X-Goog-User-Project: my-project"};
  HttpClient client(o);
  HttpRequest req;
  req.url = srv_.url("/echo");
  req.headers = {"X-Request: 1"};
  auto r = client.Send(req);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "hello");
  EXPECT_EQ(r->headers.at("x-mixed-case"), "v1");  // names lower-cased
  EXPECT_EQ(r->Header("X-MIXED-CASE"), "v1");
  EXPECT_EQ(r->Header("absent"), "");
  EXPECT_EQ(SeenHeader("User-Agent"), DefaultUserAgent());
  EXPECT_EQ(DefaultUserAgent().rfind("coldstart/", 0), 0u);
  EXPECT_EQ(SeenHeader("X-Goog-User-Project"), "my-project");
  EXPECT_EQ(SeenHeader("X-Request"), "1");

  HttpOptions custom;
  custom.user_agent = "coldstart/test (ci)";
  HttpClient c2(custom);
  ASSERT_TRUE(c2.Send(req).ok());
  EXPECT_EQ(SeenHeader("User-Agent"), "coldstart/test (ci)");
  EXPECT_EQ(SeenHeader("X-Goog-User-Project"), "<absent>");
}

TEST_F(HttpClientTest, PostsFormBodies) {
  HttpClient client(HttpOptions{});
  HttpRequest req;
  req.method = "POST";
  req.url = srv_.url("/form");
  req.headers = {"Content-Type: application/x-www-form-urlencoded"};
  req.body = FormEncode({{"grant_type", "refresh_token"}, {"refresh_token", "1//a b+c&d=e"}});
  EXPECT_EQ(req.body, "grant_type=refresh_token&refresh_token=1%2F%2Fa%20b%2Bc%26d%3De");
  auto r = client.Send(req);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->status, 200);
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_EQ(last_body_, req.body);
  auto form = coldstart::testing::ParseForm(last_body_);
  EXPECT_EQ(form["refresh_token"], "1//a b+c&d=e");
  EXPECT_EQ(last_headers_.count("Expect"), 0u);
}

TEST_F(HttpClientTest, ReusesOneConnection) {
  HttpClient client(HttpOptions{});
  HttpRequest req;
  req.url = srv_.url("/echo");
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(client.Send(req).ok());
  // A moved client keeps its handle and connection.
  HttpClient moved = std::move(client);
  ASSERT_TRUE(moved.Send(req).ok());
  std::lock_guard<std::mutex> lock(mu_);
  EXPECT_EQ(ports_.size(), 1u);
}

TEST_F(HttpClientTest, HeadRequest) {
  HttpClient client(HttpOptions{});
  HttpRequest req;
  req.method = "HEAD";
  req.url = srv_.url("/echo");
  auto r = client.Send(req);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "");
  EXPECT_FALSE(r->Header("content-length").empty());  // of the (possibly compressed) GET body
}

TEST_F(HttpClientTest, StatusesMapToErrors) {
  HttpClient client(HttpOptions{});
  struct Case {
    int status;
    Errc code;
    bool retryable;
  };
  for (Case c : {Case{404, Errc::kNotFound, false}, Case{401, Errc::kPermissionDenied, false},
                 Case{403, Errc::kPermissionDenied, false}, Case{412, Errc::kIntegrity, false},
                 Case{400, Errc::kHttp, false}, Case{429, Errc::kHttp, true}, Case{503, Errc::kHttp, true}}) {
    HttpRequest req;
    req.url = srv_.url("/status/" + std::to_string(c.status));
    auto r = client.Send(req);
    ASSERT_TRUE(r.ok()) << r.error().message;  // an HTTP error status is a completed exchange
    ASSERT_EQ(r->status, c.status);
    Error e = HttpError(r->status, "GET gs://bucket/model.safetensors", r->body);
    EXPECT_EQ(e.code, c.code) << c.status;
    EXPECT_EQ(e.http_status, c.status);
    EXPECT_EQ(IsRetryable(e), c.retryable) << c.status;
    EXPECT_TRUE(Contains(e.message, "GET gs://bucket/model.safetensors")) << e.message;
    EXPECT_TRUE(Contains(e.message, "No such object: bucket/model.safetensors")) << e.message;
    if (c.status == 412) {
      EXPECT_TRUE(Contains(e.message, "object changed: generation precondition failed")) << e.message;
    } else {
      EXPECT_TRUE(Contains(e.message, "HTTP " + std::to_string(c.status))) << e.message;
    }
  }
}

TEST(HttpError, BodyFormats) {
  Error oauth = HttpError(400, "token request to https://oauth2.googleapis.com/token",
                          R"({"error": "invalid_grant", "error_description": "Token has been expired or revoked."})");
  EXPECT_EQ(oauth.code, Errc::kHttp);
  EXPECT_TRUE(Contains(oauth.message, "invalid_grant: Token has been expired or revoked.")) << oauth.message;
  EXPECT_TRUE(Contains(oauth.message, "HTTP 400 Bad Request")) << oauth.message;

  Error html = HttpError(502, "GET https://h/x", "<html>\n<body>Bad\tgateway</body></html>");
  EXPECT_TRUE(Contains(html.message, "<html> <body>Bad gateway</body></html>")) << html.message;
  EXPECT_EQ(html.message.find('\n'), std::string::npos);

  Error big = HttpError(500, "GET https://h/x", std::string(5000, 'x'));
  EXPECT_LT(big.message.size(), 300u);

  Error empty = HttpError(404, "GET https://h/x", "");
  EXPECT_EQ(empty.message, "GET https://h/x: HTTP 404 Not Found");
  EXPECT_EQ(empty.code, Errc::kNotFound);
}

TEST(HttpClient, ConnectionRefusedIsNetworkErrorWithoutSecrets) {
  int port = coldstart::testing::DeadLoopbackPort();
  HttpOptions o;
  o.extra_headers = {"Authorization: Bearer SECRET-HEADER-TOKEN"};
  HttpClient client(o);
  HttpRequest req;
  req.url = "http://user:SECRET-PW@127.0.0.1:" + std::to_string(port) + "/b/o?X-Goog-Signature=SECRET-SIG#frag";
  req.headers = {"Authorization: Bearer SECRET-REQ-TOKEN"};
  auto r = client.Send(req);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kNetwork);
  EXPECT_EQ(r.error().curl_code, CURLE_COULDNT_CONNECT);
  EXPECT_TRUE(IsRetryable(r.error()));
  const std::string& m = r.error().message;
  EXPECT_TRUE(Contains(m, "GET http://127.0.0.1:" + std::to_string(port) + "/b/o")) << m;
  EXPECT_FALSE(Contains(m, "SECRET")) << m;
}

TEST_F(HttpClientTest, TimeoutIsKTimeout) {
  HttpOptions o;
  o.timeout_s = 0.2;
  HttpClient client(o);
  HttpRequest req;
  req.url = srv_.url("/slow?token=SECRET");
  auto start = std::chrono::steady_clock::now();
  auto r = client.Send(req);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kTimeout);
  EXPECT_EQ(r.error().curl_code, CURLE_OPERATION_TIMEDOUT);
  EXPECT_TRUE(IsRetryable(r.error()));
  EXPECT_FALSE(Contains(r.error().message, "SECRET"));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(550));
}

TEST(HttpClient, RejectsBadRequestsWithoutEchoingThem) {
  HttpClient client(HttpOptions{});
  HttpRequest injected;
  injected.url = "http://127.0.0.1:1/x";
  injected.headers = {"Authorization: Bearer SECRET\r\nX-Evil: 1"};
  auto r = client.Send(injected);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  EXPECT_FALSE(Contains(r.error().message, "SECRET")) << r.error().message;

  // Only http and https: a token_uri of file:///etc/passwd must not be read.
  HttpRequest file;
  file.url = "file:///etc/passwd";
  auto f = client.Send(file);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code, Errc::kInvalidArgument);
  EXPECT_FALSE(IsRetryable(f.error()));
}

TEST(HttpClient, CurlGlobalInitIsIdempotentAcrossThreads) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] {
      if (!CurlGlobalInit().ok()) ++failures;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace coldstart::fetch
