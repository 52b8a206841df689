#include "coldstart/fetch/retry.h"

#include <curl/curl.h>
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace coldstart::fetch {
namespace {

Error HttpFail(int http) {
  Error e = MakeError(Errc::kHttp, "HTTP " + std::to_string(http));
  e.http_status = http;
  return e;
}
Error Net(int curl_code = CURLE_RECV_ERROR) {
  Error e = MakeError(Errc::kNetwork, "connection reset");
  e.curl_code = curl_code;
  return e;
}

RetryPolicy Fixed(RetryOptions o, double jitter) {
  return RetryPolicy(o, [jitter] { return jitter; });
}

TEST(RetryPolicy, DefaultScheduleIsPinned) {
  RetryOptions o;  // 8 attempts, 0.2 s doubling, 10 s cap
  o.max_attempts = 10;
  // Jitter 0.5 -> delay = 0.75 * base.
  auto p = Fixed(o, 0.5);
  const double expected[] = {0.15, 0.3, 0.6, 1.2, 2.4, 4.8, 7.5, 7.5, 7.5};
  for (unsigned n = 1; n <= 9; ++n) {
    auto d = p.NextDelay(Net(), n, 0);
    ASSERT_TRUE(d.has_value()) << n;
    EXPECT_DOUBLE_EQ(*d, expected[n - 1]) << "after failure " << n;
  }
  EXPECT_FALSE(p.NextDelay(Net(), 10, 0).has_value());  // 10 attempts made

  const double bases[] = {0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10, 10};
  for (unsigned n = 1; n <= 8; ++n) EXPECT_DOUBLE_EQ(p.BaseDelay(n), bases[n - 1]) << n;
}

TEST(RetryPolicy, EqualJitterBounds) {
  RetryOptions o;
  EXPECT_DOUBLE_EQ(*Fixed(o, 0.0).NextDelay(Net(), 3, 0), 0.4);  // half of base 0.8
  double near_one = *Fixed(o, 0.999999).NextDelay(Net(), 3, 0);
  EXPECT_LT(near_one, 0.8);
  EXPECT_GT(near_one, 0.79);
  // Out-of-range jitter is clamped into [0, 1).
  EXPECT_LT(*Fixed(o, 7.0).NextDelay(Net(), 3, 0), 0.8);
  EXPECT_DOUBLE_EQ(*Fixed(o, -1.0).NextDelay(Net(), 3, 0), 0.4);
  // failed_attempts 0 is treated as 1.
  EXPECT_DOUBLE_EQ(*Fixed(o, 0.0).NextDelay(Net(), 0, 0), 0.1);
}

TEST(RetryPolicy, CustomMultiplierAndCap) {
  RetryOptions o;
  o.initial_backoff_s = 1;
  o.multiplier = 3;
  o.max_backoff_s = 20;
  auto p = Fixed(o, 0.0);
  EXPECT_DOUBLE_EQ(*p.NextDelay(Net(), 1, 0), 0.5);
  EXPECT_DOUBLE_EQ(*p.NextDelay(Net(), 2, 0), 1.5);
  EXPECT_DOUBLE_EQ(*p.NextDelay(Net(), 3, 0), 4.5);
  EXPECT_DOUBLE_EQ(*p.NextDelay(Net(), 4, 0), 10);  // 27 capped to 20
  // Huge attempt counts do not overflow into nonsense.
  o.max_attempts = 1000;
  EXPECT_DOUBLE_EQ(Fixed(o, 0.0).BaseDelay(999), 20);
}

TEST(RetryPolicy, AttemptsExhausted) {
  RetryOptions o;
  o.max_attempts = 3;
  auto p = Fixed(o, 0.0);
  EXPECT_TRUE(p.NextDelay(Net(), 1, 0).has_value());
  EXPECT_TRUE(p.NextDelay(Net(), 2, 0).has_value());
  EXPECT_FALSE(p.NextDelay(Net(), 3, 0).has_value());
  o.max_attempts = 1;  // no retries at all
  EXPECT_FALSE(Fixed(o, 0.0).NextDelay(Net(), 1, 0).has_value());
}

TEST(RetryPolicy, DeadlineStopsRetries) {
  RetryOptions o;
  o.deadline_s = 1.0;
  auto p = Fixed(o, 0.0);                                  // first delay 0.1 s
  EXPECT_TRUE(p.NextDelay(Net(), 1, 0.85).has_value());   // next attempt at 0.95 s
  EXPECT_TRUE(p.NextDelay(Net(), 1, 0.9).has_value());    // exactly at the deadline
  EXPECT_FALSE(p.NextDelay(Net(), 1, 0.95).has_value());  // would start at 1.05 s
  EXPECT_FALSE(p.NextDelay(Net(), 1, 5).has_value());
}

TEST(RetryPolicy, NonRetryableGivesUpImmediately) {
  auto p = Fixed(RetryOptions{}, 0.0);
  EXPECT_FALSE(p.NextDelay(HttpFail(404), 1, 0).has_value());
  EXPECT_FALSE(p.NextDelay(MakeError(Errc::kIntegrity, "crc32c mismatch"), 1, 0).has_value());
  EXPECT_TRUE(p.NextDelay(HttpFail(503), 1, 0).has_value());
}

TEST(IsRetryable, HttpStatuses) {
  for (int s : {408, 429, 500, 501, 502, 503, 504, 599}) EXPECT_TRUE(IsRetryable(HttpFail(s))) << s;
  for (int s : {400, 401, 403, 404, 405, 409, 410, 411, 412, 416, 499, 600, 301, 200})
    EXPECT_FALSE(IsRetryable(HttpFail(s))) << s;
  // The code does not matter for an HTTP status, except integrity/format ones.
  Error perm = HttpFail(403);
  perm.code = Errc::kPermissionDenied;
  EXPECT_FALSE(IsRetryable(perm));
  Error gone = HttpFail(412);
  gone.code = Errc::kIntegrity;
  EXPECT_FALSE(IsRetryable(gone));
}

TEST(IsRetryable, TransportAndOtherErrors) {
  EXPECT_TRUE(IsRetryable(Net()));
  EXPECT_TRUE(IsRetryable(Net(0)));
  EXPECT_TRUE(IsRetryable(Net(CURLE_COULDNT_CONNECT)));
  EXPECT_TRUE(IsRetryable(Net(CURLE_PARTIAL_FILE)));
  EXPECT_TRUE(IsRetryable(Net(CURLE_SEND_ERROR)));
  EXPECT_TRUE(IsRetryable(Net(CURLE_GOT_NOTHING)));
  EXPECT_TRUE(IsRetryable(Net(CURLE_HTTP2_STREAM)));
  EXPECT_TRUE(IsRetryable(Net(CURLE_COULDNT_RESOLVE_HOST)));
  EXPECT_TRUE(IsRetryable(MakeError(Errc::kTimeout, "stalled for 20 s")));
  for (int c : {CURLE_URL_MALFORMAT, CURLE_UNSUPPORTED_PROTOCOL, CURLE_PEER_FAILED_VERIFICATION,
                CURLE_SSL_CACERT_BADFILE, CURLE_TOO_MANY_REDIRECTS, CURLE_ABORTED_BY_CALLBACK,
                CURLE_WRITE_ERROR})
    EXPECT_FALSE(IsRetryable(Net(c))) << c;
  for (Errc c : {Errc::kInvalidArgument, Errc::kNotFound, Errc::kPermissionDenied, Errc::kIo, Errc::kFormat,
                 Errc::kIntegrity, Errc::kHttp, Errc::kCancelled, Errc::kUnavailable,
                 Errc::kResourceExhausted, Errc::kInternal})
    EXPECT_FALSE(IsRetryable(MakeError(c, "x"))) << ErrcName(c);
}

TEST(RetryPolicy, DefaultJitterIsInRangeAcrossThreads) {
  RetryPolicy p{RetryOptions{}};
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        auto d = p.NextDelay(Net(), 2, 0);  // base 0.4
        if (!d || *d < 0.2 || *d >= 0.4) ++bad;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(RetryOptions, ApplyEnvAndValidate) {
  RetryOptions o;
  ASSERT_TRUE(o.ApplyEnv(Env::FromMap({{"COLDSTART_RETRY_ATTEMPTS", "3"},
                                       {"COLDSTART_RETRY_INITIAL", "100ms"},
                                       {"COLDSTART_RETRY_MAX_BACKOFF", "2s"},
                                       {"COLDSTART_RETRY_DEADLINE", "1m"},
                                       {"COLDSTART_STALL_TIMEOUT", "5"}}))
                  .ok());
  EXPECT_EQ(o.max_attempts, 3u);
  EXPECT_DOUBLE_EQ(o.initial_backoff_s, 0.1);
  EXPECT_DOUBLE_EQ(o.max_backoff_s, 2);
  EXPECT_DOUBLE_EQ(o.deadline_s, 60);
  EXPECT_DOUBLE_EQ(o.stall_timeout_s, 5);

  RetryOptions untouched;
  ASSERT_TRUE(untouched.ApplyEnv(Env::FromMap({})).ok());
  EXPECT_EQ(untouched.max_attempts, 8u);
  EXPECT_DOUBLE_EQ(untouched.deadline_s, 600);

  auto bad = RetryOptions{}.ApplyEnv(Env::FromMap({{"COLDSTART_RETRY_INITIAL", "soon"}}));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("COLDSTART_RETRY_INITIAL"), std::string::npos);
  EXPECT_FALSE(RetryOptions{}.ApplyEnv(Env::FromMap({{"COLDSTART_RETRY_ATTEMPTS", "0"}})).ok());
  EXPECT_FALSE(RetryOptions{}.ApplyEnv(Env::FromMap({{"COLDSTART_RETRY_MAX_BACKOFF", "10ms"}})).ok());

  RetryOptions m;
  m.multiplier = 0.5;
  EXPECT_FALSE(m.Validate().ok());
  EXPECT_TRUE(RetryOptions{}.Validate().ok());
}

}  // namespace
}  // namespace coldstart::fetch
