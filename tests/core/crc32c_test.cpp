#include "coldstart/core/crc32c.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace coldstart::fetch {
namespace {

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);  // the standard check value
  EXPECT_EQ(Crc32c(""), 0u);
  std::string zeros(32, '\0');
  EXPECT_EQ(Crc32c(zeros), 0x8A9136AAu);  // RFC 3720 B.4
  std::string ones(32, '\xff');
  EXPECT_EQ(Crc32c(ones), 0x62A8AB43u);
  // GCS's documented value for "hello world" is yZRlqg== (0xC99465AA).
  EXPECT_EQ(Crc32cToBase64(Crc32c("hello world")), "yZRlqg==");
}

TEST(Crc32c, ExtendAndCombineAgreeWithOnePass) {
  std::mt19937_64 rng(42);
  std::string data(100003, '\0');
  for (auto& c : data) c = static_cast<char>(rng());
  const std::uint32_t whole = Crc32c(data);
  for (std::size_t cut : {0ul, 1ul, 7ul, 4096ul, 65537ul, 100003ul}) {
    std::string_view a = std::string_view(data).substr(0, cut), b = std::string_view(data).substr(cut);
    EXPECT_EQ(Crc32cExtend(Crc32c(a), b.data(), b.size()), whole) << cut;
    EXPECT_EQ(Crc32cCombine(Crc32c(a), Crc32c(b), b.size()), whole) << cut;
  }
}

// Bit by bit, as the definition says: what the table and instruction paths must agree with,
// for long buffers of odd lengths at odd addresses.
std::uint32_t BitwiseCrc32c(const unsigned char* p, std::size_t n) {
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}

TEST(Crc32c, LongBuffersAgreeWithTheDefinition) {
  std::mt19937_64 rng(7);
  std::vector<unsigned char> data((1u << 20) + 64);
  for (auto& c : data) c = static_cast<unsigned char>(rng());
  for (std::size_t len : {std::size_t{49151}, std::size_t{49152}, std::size_t{49153}, std::size_t{98304 + 17},
                          std::size_t{1u << 20}})
    for (std::size_t off : {0u, 1u, 3u}) {
      const unsigned char* p = data.data() + off;
      EXPECT_EQ(Crc32c(p, len), BitwiseCrc32c(p, len)) << len << " at +" << off;
      // Continuing from a CRC that is not zero crosses the stripes too.
      EXPECT_EQ(Crc32cExtend(Crc32c(p, 5), p + 5, len - 5), BitwiseCrc32c(p, len)) << len << " at +" << off;
    }
}

TEST(Crc32c, Base64RoundTrips) {
  for (std::uint32_t v : {0u, 1u, 0xE3069283u, 0xFFFFFFFFu}) {
    auto back = Crc32cFromBase64(Crc32cToBase64(v));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, v);
  }
  EXPECT_FALSE(Crc32cFromBase64("not base64!").ok());
  EXPECT_FALSE(Crc32cFromBase64("AAAAAAAA").ok());  // 6 bytes
  EXPECT_EQ(Base64UrlEncode("\xfb\xff"), "-_8");
  EXPECT_EQ(*Base64UrlDecode("-_8"), "\xfb\xff");
  EXPECT_EQ(Base64Encode("hello"), "aGVsbG8=");
}

}  // namespace
}  // namespace coldstart::fetch
