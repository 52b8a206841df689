#include "coldstart/core/crc32c.h"

#include <gtest/gtest.h>

#include <random>

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

// A bit-at-a-time CRC32C (Castagnoli, reflected), independent of the library's tables and of
// its three-lane hardware path.
std::uint32_t BitwiseCrc32c(const std::string& data) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char ch : data) {
    crc ^= ch;
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
  }
  return ~crc;
}

TEST(Crc32c, LongBuffersMatchABitwiseReference) {
  std::mt19937_64 rng(7);
  // Around the three-lane stride (3 x 8 KiB) and its multiples, with odd tails and offsets.
  for (std::size_t len : {24575ul, 24576ul, 24577ul, 49152ul + 13, 98304ul + 7, 300001ul}) {
    for (std::size_t start : {0ul, 1ul, 5ul}) {
      std::string data(len + start, '\0');
      for (auto& c : data) c = static_cast<char>(rng());
      const std::string part = data.substr(start);
      EXPECT_EQ(Crc32c(part), BitwiseCrc32c(part)) << len << " at +" << start;
      // Extending from a non-zero CRC through the long path.
      const std::uint32_t head = Crc32c(std::string_view(part).substr(0, 3));
      EXPECT_EQ(Crc32cExtend(head, part.data() + 3, part.size() - 3), BitwiseCrc32c(part)) << len;
    }
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
