#include "coldstart/loader/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "corpus.h"

namespace coldstart::loader {
namespace {

using coldstart::testing::StFile;

// Parses a whole in-memory file the way ReadHeaderFile does.
Result<SafetensorsHeader> ParseFileBytes(const std::string& file) {
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(file.data()), file.size());
  auto n = ParseHeaderLength(bytes, file.size());
  if (!n.ok()) return std::move(n).error();
  return ParseHeader(std::string_view(file).substr(8, *n), file.size());
}

TEST(SafetensorsDType, NamesSizesRoundTrip) {
  EXPECT_EQ(kAllDTypes.size(), 15u);
  for (DType d : kAllDTypes) {
    auto back = ParseDType(DTypeName(d));
    ASSERT_TRUE(back.ok()) << DTypeName(d);
    EXPECT_EQ(*back, d);
    EXPECT_GT(DTypeSize(d), 0u);
  }
  EXPECT_EQ(DTypeSize(DType::kBF16), 2u);
  EXPECT_EQ(DTypeSize(DType::kF8E5M2), 1u);
  EXPECT_EQ(DTypeSize(DType::kU64), 8u);
  EXPECT_EQ(DTypeName(DType::kF8E4M3), "F8_E4M3");
  EXPECT_FALSE(ParseDType("bf16").ok());
}

TEST(SafetensorsParse, EmptyHeaderIsAValidEmptyFile) {
  auto h = ParseFileBytes(StFile("{}"));
  ASSERT_TRUE(h.ok()) << h.error().message;
  EXPECT_TRUE(h->tensors.empty());
  EXPECT_EQ(h->data_bytes, 0u);
}

TEST(SafetensorsParse, AllDTypesScalarsZeroSizeMetadataAndPadding) {
  // Tensors listed out of offset order on purpose; the parser sorts them by offset.
  std::string header = R"({"__metadata__":{"format":"pt","note":"ünïcode ✓"},)"
                       R"("z_scalar":{"dtype":"F64","shape":[],"data_offsets":[0,8]},)"
                       R"("empty":{"dtype":"F32","shape":[3,0],"data_offsets":[8,8]},)"
                       R"("b":{"dtype":"BF16","shape":[2,3],"data_offsets":[8,20]},)"
                       R"("f8a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[20,24]},)"
                       R"("f8b":{"dtype":"F8_E5M2","shape":[4],"data_offsets":[24,28]},)"
                       R"("bool":{"dtype":"BOOL","shape":[4],"data_offsets":[28,32]},)"
                       R"("u64":{"dtype":"U64","shape":[1],"data_offsets":[32,40]},)"
                       R"("i64":{"dtype":"I64","shape":[1],"data_offsets":[40,48]},)"
                       R"("u32":{"dtype":"U32","shape":[1],"data_offsets":[48,52]},)"
                       R"("i32":{"dtype":"I32","shape":[1],"data_offsets":[52,56]},)"
                       R"("f32":{"dtype":"F32","shape":[1],"data_offsets":[56,60]},)"
                       R"("u16":{"dtype":"U16","shape":[1],"data_offsets":[60,62]},)"
                       R"("i16":{"dtype":"I16","shape":[1],"data_offsets":[62,64]},)"
                       R"("f16":{"dtype":"F16","shape":[1],"data_offsets":[64,66]},)"
                       R"("u8":{"dtype":"U8","shape":[1],"data_offsets":[66,67]},)"
                       R"("i8":{"dtype":"I8","shape":[1],"data_offsets":[67,68]}})";
  header.append(5, ' ');  // writer padding
  auto h = ParseFileBytes(StFile(header, std::string(68, '\x01')));
  ASSERT_TRUE(h.ok()) << h.error().message;
  ASSERT_EQ(h->tensors.size(), 16u);
  EXPECT_EQ(h->tensors.front().name, "z_scalar");
  EXPECT_TRUE(h->tensors.front().shape.empty());
  EXPECT_EQ(h->tensors[1].name, "empty");  // zero-size sorts before the tensor at the same offset
  EXPECT_EQ(h->tensors[1].nbytes(), 0u);
  EXPECT_EQ(h->metadata.at("note"), "ünïcode ✓");
  EXPECT_EQ(h->data_bytes, 68u);
  EXPECT_EQ(h->data_start(), 8 + header.size());
}

TEST(SafetensorsParse, ErrorsAreFormatErrors) {
  auto h = ParseFileBytes(StFile(R"({"t":{"dtype":"X","shape":[],"data_offsets":[0,0]}})"));
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.error().code, Errc::kFormat);
  EXPECT_NE(h.error().message.find("'t'"), std::string::npos) << "names the tensor: " << h.error().message;
}

class Malformed : public ::testing::TestWithParam<coldstart::testing::CorpusCase> {};

TEST_P(Malformed, RejectedWithTheRightError) {
  const auto& c = GetParam();
  auto h = ParseFileBytes(c.bytes);
  ASSERT_FALSE(h.ok()) << c.name << " was accepted";
  EXPECT_EQ(h.error().code, c.truncated ? Errc::kIntegrity : Errc::kFormat) << h.error().message;
  EXPECT_NE(h.error().message.find(c.expect), std::string::npos)
      << c.name << ": expected '" << c.expect << "' in: " << h.error().message;
  EXPECT_EQ(h.error().message.find('\n'), std::string::npos) << "one line";
}

INSTANTIATE_TEST_SUITE_P(Corpus, Malformed, ::testing::ValuesIn(coldstart::testing::MalformedFiles()),
                         [](const auto& info) { return info.param.name; });

TEST(SafetensorsCorpus, HasAtLeastTwentyFiveDistinctCases) {
  auto cases = coldstart::testing::MalformedFiles();
  EXPECT_GE(cases.size(), 25u);
  std::set<std::string> names;
  for (const auto& c : cases) EXPECT_TRUE(names.insert(c.name).second) << c.name;
}

TEST(SafetensorsFuzz, SeededMutationsNeverCrashAndNeverMisreport) {
  std::string header = R"({"__metadata__":{"a":"b"},"w":{"dtype":"BF16","shape":[2,4],"data_offsets":[0,16]},)"
                       R"("s":{"dtype":"F32","shape":[],"data_offsets":[16,20]}})";
  const std::string valid = StFile(header, std::string(20, '\x07'));
  ASSERT_TRUE(ParseFileBytes(valid).ok());
  unsigned accepted = 0;
  for (const auto& m : coldstart::testing::Mutations(valid, 3000, /*seed=*/20261121)) {
    auto h = ParseFileBytes(m);
    if (!h.ok()) {
      // Cut short (the header's length or offsets run past the end): truncated, exit 5.
      const bool truncated = h.error().message.find("truncated?") != std::string::npos;
      EXPECT_EQ(h.error().code, truncated ? Errc::kIntegrity : Errc::kFormat) << h.error().message;
      continue;
    }
    ++accepted;
    // Whatever was accepted is internally consistent: tensors tile the data section.
    std::uint64_t cursor = 0;
    for (const auto& t : h->tensors) {
      EXPECT_EQ(t.begin, cursor);
      cursor = t.end;
    }
    EXPECT_EQ(cursor, h->data_bytes);
    EXPECT_EQ(h->data_start() + h->data_bytes, m.size());
  }
  // Some flips land in the data section or in metadata strings and stay valid.
  EXPECT_GT(accepted, 0u);
  EXPECT_LT(accepted, 3000u);
}

TEST(SafetensorsUtf8, Validator) {
  EXPECT_TRUE(IsValidUtf8("plain"));
  EXPECT_TRUE(IsValidUtf8("\xc3\xa9\xe2\x9c\x93\xf0\x9f\x98\x80"));  // é ✓ 😀
  EXPECT_FALSE(IsValidUtf8("\x80"));
  EXPECT_FALSE(IsValidUtf8("\xc3"));                  // truncated
  EXPECT_FALSE(IsValidUtf8("\xe0\x80\x80"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));      // > U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xed\xbf\xbf"));          // surrogate
}

TEST(SafetensorsSerialize, RoundTripsThroughTheParser) {
  std::vector<TensorSpec> specs = {
      {"a", DType::kBF16, {3, 5}}, {"scalar", DType::kI64, {}}, {"zero", DType::kF32, {0, 7}}, {"flag", DType::kBool, {3}}};
  auto s = SerializeHeader(specs, {{"format", "pt"}});
  ASSERT_TRUE(s.ok()) << s.error().message;
  EXPECT_EQ(s->bytes.size() % 8, 0u) << "header padded to 8 bytes";
  EXPECT_EQ(s->data_bytes, 30u + 8u + 0u + 3u);
  std::string file = s->bytes + std::string(s->data_bytes, '\0');
  auto h = ParseFileBytes(file);
  ASSERT_TRUE(h.ok()) << h.error().message;
  EXPECT_EQ(h->tensors.size(), 4u);
  EXPECT_EQ(h->metadata.at("format"), "pt");
  std::vector<TensorSpec> dup = {{"a", DType::kU8, {1}}, {"a", DType::kU8, {1}}};
  EXPECT_FALSE(SerializeHeader(dup, {}).ok());
}

TEST(SafetensorsHeaderLength, LimitIsExactly100MB) {
  std::string prefix(8, '\0');
  auto with_len = [&](std::uint64_t n) {
    for (int i = 0; i < 8; ++i) prefix[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
    return std::span<const std::byte>(reinterpret_cast<const std::byte*>(prefix.data()), 8);
  };
  EXPECT_TRUE(ParseHeaderLength(with_len(kMaxHeaderBytes), kMaxHeaderBytes + 8).ok());
  EXPECT_FALSE(ParseHeaderLength(with_len(kMaxHeaderBytes + 1), kMaxHeaderBytes + 9).ok());
}

}  // namespace
}  // namespace coldstart::loader
