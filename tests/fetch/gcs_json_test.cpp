// The server-JSON and response-header parsers, table-driven over malformed input: every bad
// body is one Errc::kFormat error naming where it came from, never an exception or a default.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "coldstart/fetch/content_range.h"
#include "coldstart/fetch/gcs_json.h"

namespace coldstart::fetch {
namespace {

constexpr std::string_view kWhat = "gs://bkt/m/ (GET http://127.0.0.1:1/storage/v1/b/bkt/o)";
// "AAAAAA==" is 4 zero bytes; "1B2M2Y8AsgTpgAmY7PhCfg==" is the MD5 of "".
constexpr std::string_view kGoodItem =
    R"({"name":"m/a.safetensors","size":"12","generation":"1700000000000001","crc32c":"AAAAAA==","md5Hash":"1B2M2Y8AsgTpgAmY7PhCfg=="})";

TEST(GcsJson, GoodListPageAndObject) {
  auto page = ParseGcsListPage(std::string(R"({"items":[)") + std::string(kGoodItem) + R"(,{"name":"m/b","size":0,"generation":7}],"nextPageToken":"tok"})", kWhat);
  ASSERT_TRUE(page.ok()) << page.error().message;
  ASSERT_EQ(page->items.size(), 2u);
  EXPECT_EQ(page->items[0].name, "m/a.safetensors");
  EXPECT_EQ(page->items[0].size, 12u);
  EXPECT_EQ(page->items[0].generation, 1700000000000001);
  EXPECT_EQ(page->items[0].crc32c, 0u);
  EXPECT_EQ(page->items[0].md5_base64, "1B2M2Y8AsgTpgAmY7PhCfg==");
  EXPECT_FALSE(page->items[1].crc32c.has_value());
  EXPECT_EQ(page->next_page_token, "tok");
  auto empty = ParseGcsListPage("{}", kWhat);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->items.empty());
  EXPECT_TRUE(empty->next_page_token.empty());
  auto big = ParseGcsObject(R"({"size":"18446744073709551615","generation":"9223372036854775807"})", kWhat);
  ASSERT_TRUE(big.ok()) << big.error().message;
  EXPECT_EQ(big->size, 18446744073709551615ull);
  EXPECT_EQ(big->generation, 9223372036854775807ll);
}

TEST(GcsJson, MalformedListPagesAreFormatErrors) {
  const std::vector<std::string> bodies = {
      "", "not json", "[]", "null", "\"str\"", "12", "{", R"({"items":{}})", R"({"items":"x"})",
      R"({"items":[null]})", R"({"items":[1]})", R"({"items":[[]]})", R"({"nextPageToken":5})",
      R"({"nextPageToken":{}})", R"({"items":[{"size":"1","generation":"1"}]})",
      R"({"items":[{"name":null,"size":"1","generation":"1"}]})",
      R"({"items":[{"name":"","size":"1","generation":"1"}]})",
      R"({"items":[{"name":5,"size":"1","generation":"1"}]})",
      R"({"items":[{"name":"a","size":null,"generation":"1"}]})",
      R"({"items":[{"name":"a","generation":"1"}]})",
      R"({"items":[{"name":"a","size":"12x","generation":"1"}]})",
      R"({"items":[{"name":"a","size":"-1","generation":"1"}]})",
      R"({"items":[{"name":"a","size":-1,"generation":"1"}]})",
      R"({"items":[{"name":"a","size":1.5,"generation":"1"}]})",
      R"({"items":[{"name":"a","size":"18446744073709551616","generation":"1"}]})",
      R"({"items":[{"name":"a","size":"99999999999999999999999","generation":"1"}]})",
      R"({"items":[{"name":"a","size":" 1","generation":"1"}]})",
      R"({"items":[{"name":"a","size":"","generation":"1"}]})",
      R"({"items":[{"name":"a","size":"0x10","generation":"1"}]})",
      R"({"items":[{"name":"a","size":true,"generation":"1"}]})",
      R"({"items":[{"name":"a","size":[],"generation":"1"}]})",
      R"({"items":[{"name":"a","size":"1"}]})",
      R"({"items":[{"name":"a","size":"1","generation":"0"}]})",
      R"({"items":[{"name":"a","size":"1","generation":"9223372036854775808"}]})",
      R"({"items":[{"name":"a","size":"1","generation":null}]})",
      R"({"items":[{"name":"a","size":"1","generation":"1e5"}]})",
      R"({"items":[{"name":"a","size":"1","generation":"1","crc32c":null}]})",
      R"({"items":[{"name":"a","size":"1","generation":"1","crc32c":12}]})",
      R"({"items":[{"name":"a","size":"1","generation":"1","crc32c":"AAAA"}]})",
      R"({"items":[{"name":"a","size":"1","generation":"1","crc32c":"!!!!!!=="}]})",
      R"({"items":[{"name":"a","size":"1","generation":"1","md5Hash":7}]})",
      R"({"items":[{"name":"a","size":"1","generation":"1","md5Hash":"AAAAAA=="}]})",
  };
  for (const auto& b : bodies) {
    auto r = ParseGcsListPage(b, kWhat);
    ASSERT_FALSE(r.ok()) << b;
    EXPECT_EQ(r.error().code, Errc::kFormat) << b;
    EXPECT_EQ(r.error().message.rfind(std::string(kWhat), 0), 0u) << r.error().message;
    EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << r.error().message;
  }
}

TEST(GcsJson, MalformedObjectsAreFormatErrors) {
  const std::vector<std::string> bodies = {
      "", "<html>", "[]", "null", "{}", R"({"size":null,"generation":"1"})", R"({"size":"12x","generation":"1"})",
      R"({"size":"1","generation":"-5"})", R"({"size":"1","generation":-5})", R"({"size":{},"generation":"1"})",
      R"({"name":[],"size":"1","generation":"1"})", R"({"size":"1","generation":"1","crc32c":"AAAAAAAA"})",
  };
  for (const auto& b : bodies) {
    auto r = ParseGcsObject(b, kWhat);
    ASSERT_FALSE(r.ok()) << b;
    EXPECT_EQ(r.error().code, Errc::kFormat) << b;
  }
}

TEST(GcsJson, TokenResponses) {
  auto good = ParseTokenResponse(R"({"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"})", "t");
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(good->access_token, "ya29.abc");
  EXPECT_EQ(good->expires_in_s, 3599);
  auto no_exp = ParseTokenResponse(R"({"access_token":"x"})", "t");
  ASSERT_TRUE(no_exp.ok());
  EXPECT_EQ(no_exp->expires_in_s, 3600);
  const std::vector<std::string> bodies = {
      "", "x", "[]", "null", "{}", R"({"access_token":null})", R"({"access_token":5})", R"({"access_token":""})",
      R"({"access_token":"a b"})", R"({"access_token":"a\nb"})", R"({"access_token":"x","expires_in":null})",
      R"({"access_token":"x","expires_in":-1})", R"({"access_token":"x","expires_in":"12x"})",
      R"({"access_token":"x","expires_in":1e308})", R"({"access_token":"x","expires_in":[]})",
      R"({"access_token":"x","token_type":"MAC"})", R"({"access_token":"x","token_type":3})",
  };
  for (const auto& b : bodies) {
    auto r = ParseTokenResponse(b, "GET http://metadata/token");
    ASSERT_FALSE(r.ok()) << b;
    EXPECT_EQ(r.error().code, Errc::kFormat) << b;
    EXPECT_EQ(r.error().message.rfind("GET http://metadata/token: ", 0), 0u) << r.error().message;
  }
  // The token never appears in a message.
  auto bad = ParseTokenResponse(R"({"access_token":"secret-tok","token_type":"mac"})", "t");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message.find("secret-tok"), std::string::npos);
}

TEST(ContentRangeParse, GoodAndBad) {
  auto a = ParseContentRange("bytes 100-199/1000");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->first, 100u);
  EXPECT_EQ(a->last, 199u);
  EXPECT_EQ(a->size, 1000u);
  EXPECT_FALSE(a->unsatisfied);
  auto b = ParseContentRange(" Bytes 0-0/*\r\n");
  ASSERT_TRUE(b.has_value());
  EXPECT_FALSE(b->size.has_value());
  auto c = ParseContentRange("bytes */1000");
  ASSERT_TRUE(c.has_value());
  EXPECT_TRUE(c->unsatisfied);
  EXPECT_EQ(c->size, 1000u);
  for (const char* bad : {"", "bytes", "bytes ", "items 0-1/2", "bytes 1-0/5", "bytes 0-5/5", "bytes -1-5/10",
                          "bytes 0-1", "bytes 0-1/", "bytes 0-1/1x", "bytes 12x-20/30", "bytes 0-18446744073709551616/*",
                          "bytes */*", "bytes a-b/c", "bytes 0 -1/2", "bytes=0-1/2"}) {
    EXPECT_FALSE(ParseContentRange(bad).has_value()) << bad;
  }
  EXPECT_EQ(ParseGeneration("1700000000000001"), 1700000000000001);
  EXPECT_EQ(ParseGeneration(" 5\r\n"), 5);
  for (const char* bad : {"", "0", "-1", "12x", "9223372036854775808", "1.5", "x"})
    EXPECT_FALSE(ParseGeneration(bad).has_value()) << bad;
  EXPECT_EQ(ParseDecimalU64("18446744073709551615"), 18446744073709551615ull);
  EXPECT_FALSE(ParseDecimalU64("18446744073709551616").has_value());
}

}  // namespace
}  // namespace coldstart::fetch
