// The ranged-read engine against loopback servers that redirect, trickle, or ignore Range.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "coldstart/core/crc32c.h"
#include "coldstart/fetch/http.h"
#include "coldstart/fetch/range_fetcher.h"
#include "loopback_server.h"

namespace coldstart::fetch {
namespace {

using coldstart::testing::LoopbackServer;

std::string RandomBody(std::size_t n, unsigned seed) {
  std::string body(n, '\0');
  std::mt19937_64 rng(seed);
  for (auto& c : body) c = static_cast<char>(rng());
  return body;
}

struct FetchResult {
  Status status;
  std::string out;
  FetchStats stats;
  bool crcs_ok = true;
};

FetchResult FetchAll(const RemoteObject& obj, FetchOptions fo, std::function<Result<std::string>()> auth = {}) {
  auto ranges = ChunkObjects(std::span(&obj, 1), fo.chunk_bytes);
  FetchResult r;
  r.out.assign(obj.size, '\0');
  std::vector<std::uint32_t> crcs(ranges.size());
  FetchCallbacks cb;
  cb.acquire = [&](std::size_t i) { return reinterpret_cast<std::byte*>(r.out.data() + ranges[i].offset); };
  cb.done = [&](std::size_t i, std::byte*, std::uint32_t crc) { crcs[i] = crc; return OkStatus(); };
  cb.auth_header = std::move(auth);
  r.status = RangeFetcher(fo).Fetch(std::span(&obj, 1), ranges, cb, &r.stats);
  for (std::size_t i = 0; r.status.ok() && i < ranges.size(); ++i)
    r.crcs_ok = r.crcs_ok && crcs[i] == Crc32c(r.out.data() + ranges[i].offset, ranges[i].length);
  return r;
}

// The origin answers every GET with a 302 to a "CDN" on another port, whose signed URL
// expires part-way through: every range arrives, the CDN never sees the Authorization header,
// and after the first success ranges go to the CDN directly (few origin hits).
TEST(RangeFetcherRedirects, FollowsCachesDropsAuthAndRecoversFromAnExpiredTarget) {
  const std::string body = RandomBody(1 << 20, 3);
  LoopbackServer origin, cdn;
  std::atomic<int> origin_hits{0}, cdn_hits{0}, cdn_auth{0}, origin_auth{0}, sig{1}, refused{0};
  origin.server().Get("/models/obj", [&](const httplib::Request& req, httplib::Response& res) {
    ++origin_hits;
    if (req.has_header("Authorization")) ++origin_auth;
    const_cast<httplib::Request&>(req).ranges.clear();  // else httplib applies Range to the 302's body
    res.status = 302;
    res.set_header("Location", cdn.url("/cdn/obj?sig=" + std::to_string(sig.load())));
    res.set_content("<html>moved</html>", "text/html");  // must never land in the destination
  });
  cdn.server().Get("/cdn/obj", [&](const httplib::Request& req, httplib::Response& res) {
    int n = ++cdn_hits;
    if (req.has_header("Authorization")) ++cdn_auth;
    if (n == 6) ++sig;  // the signature handed out so far expires
    if (req.get_param_value("sig") != std::to_string(sig.load())) {
      ++refused;
      res.status = 403;
      res.set_content("expired", "text/plain");
      return;
    }
    res.set_content(body, "application/octet-stream");  // httplib answers Range itself
  });
  origin.Start();
  cdn.Start();
  RemoteObject obj{"obj", origin.url("/models/obj"), body.size(), 0};
  FetchOptions fo;
  fo.chunk_bytes = 64 << 10;  // 16 ranges
  fo.concurrency = 2;
  fo.threads = 1;
  fo.retry.max_attempts = 1;  // a 403 from the cached target must not count as an attempt
  auto r = FetchAll(obj, fo, [] { return Result<std::string>(std::string("Authorization: Bearer origin-secret")); });
  ASSERT_TRUE(r.status.ok()) << r.status.error().message;
  EXPECT_TRUE(r.out == body);
  EXPECT_TRUE(r.crcs_ok);
  EXPECT_EQ(cdn_auth.load(), 0);
  EXPECT_GT(origin_auth.load(), 0);
  EXPECT_GT(refused.load(), 0);
  // 16 ranges: the first wave and the ranges after the expiry go through the origin.
  EXPECT_LE(origin_hits.load(), 8) << "later ranges should go straight to the redirect target";
}

TEST(RangeFetcherRedirects, ALoopIsOneErrorNamingTheObject) {
  LoopbackServer loop;
  loop.server().Get("/loop", [&](const httplib::Request&, httplib::Response& res) {
    res.status = 302;
    res.set_header("Location", "/loop");
  });
  loop.Start();
  RemoteObject obj{"http://x/loop", loop.url("/loop"), 100, 0};
  FetchOptions fo;
  fo.retry.max_attempts = 3;
  fo.retry.initial_backoff_s = 0.001;
  auto r = FetchAll(obj, fo);
  ASSERT_FALSE(r.status.ok());
  EXPECT_NE(r.status.error().message.find("http://x/loop: more than 10 redirects"), std::string::npos)
      << r.status.error().message;
  EXPECT_EQ(r.stats.requests, 1u) << "a redirect loop is not retried";
}

TEST(HttpClientRedirects, SmallRequestsFollowAndKeepOnlyTheFinalBody) {
  LoopbackServer loop;
  loop.server().Get("/a", [&](const httplib::Request&, httplib::Response& res) {
    res.status = 301;
    res.set_header("Location", "/b");
    res.set_content("old body", "text/plain");
  });
  loop.server().Get("/b", [&](const httplib::Request&, httplib::Response& res) { res.set_content("final", "text/plain"); });
  loop.Start();
  HttpClient client;
  HttpRequest req;
  req.url = loop.url("/a");
  auto resp = client.Send(req);
  ASSERT_TRUE(resp.ok()) << resp.error().message;
  EXPECT_EQ(resp->status, 200);
  EXPECT_EQ(resp->body, "final");
}

// One byte every 50 ms never tripped the old 1 byte/s stall check; below the minimum rate for
// the stall window is a stall now.
TEST(RangeFetcherStall, ATrickleIsAStall) {
  LoopbackServer loop;
  std::atomic<bool> stop{false};
  loop.server().Get("/trickle", [&](const httplib::Request& req, httplib::Response& res) {
    const_cast<httplib::Request&>(req).ranges.clear();
    res.set_content_provider(200, "application/octet-stream",
                             [&](std::size_t offset, std::size_t, httplib::DataSink& sink) {
                               if (stop) return false;
                               std::this_thread::sleep_for(std::chrono::milliseconds(50));
                               char c = static_cast<char>(offset);
                               return sink.write(&c, 1);
                             });
  });
  loop.Start();
  RemoteObject obj{"trickle", loop.url("/trickle"), 200, 0};
  FetchOptions fo;
  fo.retry.max_attempts = 1;
  fo.retry.stall_timeout_s = 1;
  fo.retry.stall_min_bytes_per_second = 1024;
  const auto t0 = std::chrono::steady_clock::now();
  auto r = FetchAll(obj, fo);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stop = true;
  ASSERT_FALSE(r.status.ok());
  EXPECT_EQ(r.status.error().code, Errc::kTimeout);
  EXPECT_NE(r.status.error().message.find("stalled: below 1.00 KiB/s for 1 s"), std::string::npos)
      << r.status.error().message;
  EXPECT_LT(s, 5.0);
}

TEST(RangeFetcherStall, MinimumRateComesFromTheEnvironment) {
  RetryOptions o;
  EXPECT_EQ(o.stall_min_bytes_per_second, 16u << 10);
  ASSERT_TRUE(o.ApplyEnv(Env::FromMap({{"COLDSTART_STALL_MIN_RATE", "1MiB"}})).ok());
  EXPECT_EQ(o.stall_min_bytes_per_second, 1u << 20);
  EXPECT_FALSE(o.ApplyEnv(Env::FromMap({{"COLDSTART_STALL_MIN_RATE", "0"}})).ok());
  EXPECT_FALSE(o.ApplyEnv(Env::FromMap({{"COLDSTART_STALL_MIN_RATE", "fast"}})).ok());
}

// A server that ignores Range: each ranged GET used to download the object again up to its
// range's end (one GET per range). Now the object is read as one stream after the first 200:
// GETs stay near the concurrency, not the number of ranges, bytes and CRCs are right in both
// callback styles, and the warning is given once per object.
TEST(RangeFetcherIgnoredRange, OneStreamPerObject) {
  const std::string a = RandomBody(3 << 20, 11), b = RandomBody((1 << 20) + 12345, 12);
  LoopbackServer loop;
  std::atomic<int> gets{0};
  for (auto [path, body] : {std::pair<std::string, const std::string*>{"/a", &a}, {"/b", &b}}) {
    loop.server().Get(path, [&gets, body](const httplib::Request& req, httplib::Response& res) {
      ++gets;
      const_cast<httplib::Request&>(req).ranges.clear();
      res.set_content(*body, "application/octet-stream");
    });
  }
  loop.Start();
  std::vector<RemoteObject> objs = {{"obj-a", loop.url("/a"), a.size(), 0}, {"obj-b", loop.url("/b"), b.size(), 0}};
  FetchOptions fo;
  fo.chunk_bytes = 64 << 10;  // 48 + 17 ranges
  fo.concurrency = 4;
  fo.threads = 2;
  auto ranges = ChunkObjects(objs, fo.chunk_bytes);
  ASSERT_EQ(ranges.size(), 65u);
  for (bool use_sink : {false, true}) {
    gets = 0;
    std::vector<std::string> out = {std::string(a.size(), '\0'), std::string(b.size(), '\0')};
    std::vector<std::uint32_t> crcs(ranges.size());
    std::vector<int> done_count(ranges.size());
    std::vector<std::string> warnings;
    std::mutex mu;
    FetchCallbacks cb;
    if (use_sink) {
      cb.sink = [&](std::size_t i, std::uint64_t off, const std::byte* d, std::size_t n) {
        std::memcpy(out[ranges[i].object].data() + ranges[i].offset + off, d, n);
        return OkStatus();
      };
    } else {
      cb.acquire = [&](std::size_t i) { return reinterpret_cast<std::byte*>(out[ranges[i].object].data() + ranges[i].offset); };
    }
    cb.done = [&](std::size_t i, std::byte*, std::uint32_t crc) {
      std::lock_guard lk(mu);
      crcs[i] = crc;
      ++done_count[i];
      return OkStatus();
    };
    cb.warning = [&](const std::string& m) {
      std::lock_guard lk(mu);
      warnings.push_back(m);
    };
    FetchStats st;
    auto s = RangeFetcher(fo).Fetch(objs, ranges, cb, &st);
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_TRUE(out[0] == a);
    EXPECT_TRUE(out[1] == b);
    for (std::size_t i = 0; i < ranges.size(); ++i) {
      EXPECT_EQ(done_count[i], 1) << i;
      const std::string& body = ranges[i].object == 0 ? a : b;
      EXPECT_EQ(crcs[i], Crc32c(body.data() + ranges[i].offset, ranges[i].length)) << i;
    }
    // Per object: the first wave in flight before the 200 was seen, then one stream (and
    // maybe a second one if the first ended before later ranges were queued on it).
    EXPECT_LE(gets.load(), 2 * (4 + 2)) << "sink=" << use_sink;
    EXPECT_EQ(st.requests, static_cast<std::uint64_t>(gets.load()));
    ASSERT_EQ(warnings.size(), 2u);
    EXPECT_NE(warnings[0].find("127.0.0.1:" + std::to_string(loop.port()) + " ignores Range requests; downloading obj-"),
              std::string::npos) << warnings[0];
    EXPECT_NE(warnings[0].find(" as one stream"), std::string::npos) << warnings[0];
  }
}

}  // namespace
}  // namespace coldstart::fetch
