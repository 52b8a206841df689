// Model folders: the sharded index, folders without one, and every way they go wrong.
#include "coldstart/loader/model.h"

#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "../common/temp_dir.h"
#include "corpus.h"

namespace coldstart::loader {
namespace {

using coldstart::testing::StFile;
using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;

std::string Shard(std::initializer_list<std::string> names) {
  std::string h = "{";
  std::uint64_t off = 0;
  for (const auto& n : names) {
    if (h.size() > 1) h += ",";
    h += "\"" + n + R"(":{"dtype":"F32","shape":[2],"data_offsets":[)" + std::to_string(off) + "," +
         std::to_string(off + 8) + "]}";
    off += 8;
  }
  h += "}";
  return StFile(h, std::string(off, '\x02'));
}

std::string Index(std::initializer_list<std::pair<std::string, std::string>> map) {
  std::string j = R"({"metadata":{"total_size":32},"weight_map":{)";
  bool first = true;
  for (const auto& [t, s] : map) {
    j += (first ? "\"" : ",\"") + t + "\":\"" + s + "\"";
    first = false;
  }
  return j + "}}";
}

struct Folder {
  TempDir dir;
  Folder() {
    WriteFile(dir / "a.safetensors", Shard({"w1", "w2"}));
    WriteFile(dir / "sub/b.safetensors", Shard({"w3"}));
  }
};

TEST(ModelIndex, ValidShardedFolder) {
  Folder f;
  WriteFile(f.dir / "model.safetensors.index.json",
            Index({{"w1", "a.safetensors"}, {"w2", "a.safetensors"}, {"w3", "sub/b.safetensors"}}));
  auto m = OpenLocalModel(f.dir.path());
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_TRUE(m->has_index);
  ASSERT_EQ(m->files.size(), 2u);
  ASSERT_EQ(m->tensors.size(), 3u);
  EXPECT_EQ(m->total_bytes, 24u);
  const auto* w3 = m->Find("w3");
  ASSERT_NE(w3, nullptr);
  EXPECT_EQ(m->files[w3->file].name, "sub/b.safetensors");
  EXPECT_EQ(w3->offset, m->files[w3->file].header.data_start());
}

TEST(ModelIndex, FolderWithoutIndexTakesEveryShardSorted) {
  TempDir d;
  WriteFile(d / "z.safetensors", Shard({"b"}));
  WriteFile(d / "a.safetensors", Shard({"a"}));
  WriteFile(d / "config.json", "{}");
  auto m = OpenLocalModel(d.path());
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_FALSE(m->has_index);
  ASSERT_EQ(m->files.size(), 2u);
  EXPECT_EQ(m->files[0].name, "a.safetensors");
}

TEST(ModelIndex, SingleFile) {
  TempDir d;
  WriteFile(d / "one.safetensors", Shard({"x", "y"}));
  auto m = OpenLocalModel(d / "one.safetensors");
  ASSERT_TRUE(m.ok()) << m.error().message;
  EXPECT_EQ(m->tensors.size(), 2u);
}

struct BadFolder {
  std::string name;
  std::string index;  // empty: no index written
  std::string expect;
  friend void PrintTo(const BadFolder& c, std::ostream* os) { *os << c.name; }
};

class BadIndex : public ::testing::TestWithParam<BadFolder> {};

TEST_P(BadIndex, Rejected) {
  Folder f;
  const auto& c = GetParam();
  if (!c.index.empty()) WriteFile(f.dir / "model.safetensors.index.json", c.index);
  auto m = OpenLocalModel(f.dir.path());
  ASSERT_FALSE(m.ok()) << c.name;
  EXPECT_NE(m.error().message.find(c.expect), std::string::npos) << c.name << ": " << m.error().message;
}

INSTANTIATE_TEST_SUITE_P(
    Corpus, BadIndex,
    ::testing::Values(
        BadFolder{"not_json", "{\"weight_map\":", "not valid JSON"},
        BadFolder{"not_object", "[]", "not a JSON object"},
        BadFolder{"no_weight_map", R"({"metadata":{}})", "no \"weight_map\""},
        BadFolder{"weight_map_array", R"({"weight_map":[]})", "not an object"},
        BadFolder{"weight_map_empty", R"({"weight_map":{}})", "is empty"},
        BadFolder{"value_not_string", R"({"weight_map":{"w1":1}})", "not a string"},
        BadFolder{"duplicate_key", R"({"weight_map":{"w1":"a.safetensors","w1":"a.safetensors"}})", "appears twice"},
        BadFolder{"dotdot", Index({{"w1", "../a.safetensors"}}), "escapes the model folder"},
        BadFolder{"dotdot_inner", Index({{"w1", "sub/../../etc/x.safetensors"}}), "escapes the model folder"},
        BadFolder{"absolute", Index({{"w1", "/etc/passwd"}}), "absolute path"},
        BadFolder{"empty_component", Index({{"w1", "sub//b.safetensors"}}), "empty path component"},
        BadFolder{"backslash", Index({{"w1", "sub\\\\b.safetensors"}}), "backslash"},
        BadFolder{"missing_shard", Index({{"w1", "nope.safetensors"}}), "missing"},
        BadFolder{"mapped_but_absent",
                  Index({{"w1", "a.safetensors"}, {"w2", "a.safetensors"}, {"w3", "sub/b.safetensors"}, {"w9", "a.safetensors"}}),
                  "does not contain it"},
        BadFolder{"unmapped_tensor", Index({{"w1", "a.safetensors"}, {"w3", "sub/b.safetensors"}}), "'w2' is not in"},
        BadFolder{"wrong_shard", Index({{"w1", "a.safetensors"}, {"w2", "a.safetensors"}, {"w3", "a.safetensors"}, {"w4", "sub/b.safetensors"}}),
                  "is mapped to a.safetensors"}),
    [](const auto& info) { return info.param.name; });

TEST(ModelIndex, SymlinkedShardOutsideTheFolderIsRefused) {
  TempDir outside;
  WriteFile(outside / "evil.safetensors", Shard({"w1"}));
  TempDir d;
  std::filesystem::create_symlink(outside / "evil.safetensors", d / "link.safetensors");
  WriteFile(d / "model.safetensors.index.json", Index({{"w1", "link.safetensors"}}));
  auto m = OpenLocalModel(d.path());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find("resolves outside"), std::string::npos) << m.error().message;
}

TEST(ModelIndex, SameTensorInTwoShardsWithoutIndex) {
  TempDir d;
  WriteFile(d / "a.safetensors", Shard({"w"}));
  WriteFile(d / "b.safetensors", Shard({"w"}));
  auto m = OpenLocalModel(d.path());
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find("in both a.safetensors and b.safetensors"), std::string::npos) << m.error().message;
}

TEST(ModelIndex, MalformedShardIsNamedInTheError) {
  TempDir d;
  WriteFile(d / "a.safetensors", Shard({"w"}));
  WriteFile(d / "b.safetensors", StFile("{\"x\":"));
  auto m = OpenLocalModel(d.path());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, Errc::kFormat);
  EXPECT_NE(m.error().message.find("b.safetensors: header is not valid JSON"), std::string::npos) << m.error().message;
}

TEST(ModelIndex, EmptyFolderAndMissingPath) {
  TempDir d;
  auto m = OpenLocalModel(d.path());
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, Errc::kNotFound);
  auto n = OpenLocalModel(d / "nope");
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.error().code, Errc::kNotFound);
}

// Issue 7: these ended in an uncaught std::filesystem::filesystem_error (abort, exit 134).
TEST(ModelPaths, SymlinkLoopsAreErrorsNamingThePathNotAborts) {
  TempDir d;
  WriteFile(d / "m/a.safetensors", Shard({"a"}));
  // A loop named like a shard (b -> c -> b), and a self-loop not named like one (ignored).
  ASSERT_EQ(::symlink("c.safetensors", (d / "m/b.safetensors").c_str()), 0);
  ASSERT_EQ(::symlink("b.safetensors", (d / "m/c.safetensors").c_str()), 0);
  ASSERT_EQ(::symlink("loop", (d / "m/loop").c_str()), 0);
  auto m = OpenLocalModel(d / "m");
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.error().code, Errc::kNotFound);
  EXPECT_EQ(m.error().sys_errno, ELOOP);
  EXPECT_NE(m.error().message.find("/m/b.safetensors: cannot open"), std::string::npos) << m.error().message;

  ASSERT_EQ(::symlink("self", (d / "self").c_str()), 0);
  auto self = OpenLocalModel(d / "self");
  ASSERT_FALSE(self.ok());
  EXPECT_EQ(self.error().code, Errc::kNotFound);
  EXPECT_EQ(self.error().sys_errno, ELOOP) << "not 'no such file': " << self.error().message;

  WriteFile(d / "i/a.safetensors", Shard({"a"}));
  ASSERT_EQ(::symlink(std::string(kIndexFileName).c_str(), (d / ("i/" + std::string(kIndexFileName))).c_str()), 0);
  auto idx = OpenLocalModel(d / "i");
  ASSERT_FALSE(idx.ok());
  EXPECT_EQ(idx.error().sys_errno, ELOOP);
  EXPECT_NE(idx.error().message.find(std::string(kIndexFileName) + ": cannot open"), std::string::npos)
      << idx.error().message;

  WriteFile(d / "j/" + std::string(kIndexFileName), R"({"weight_map":{"a":"s.safetensors"}})");
  ASSERT_EQ(::symlink("s.safetensors", (d / "j/s.safetensors").c_str()), 0);
  auto shard = OpenLocalModel(d / "j");
  ASSERT_FALSE(shard.ok());
  EXPECT_EQ(shard.error().sys_errno, ELOOP) << shard.error().message;
}

TEST(ModelPaths, ShardEntriesThatAreNotFilesAreRefusedNotSkipped) {
  TempDir d;
  WriteFile(d / "m/a.safetensors", Shard({"a"}));
  ASSERT_EQ(::symlink("gone.safetensors", (d / "m/b.safetensors").c_str()), 0);
  auto broken = OpenLocalModel(d / "m");
  ASSERT_FALSE(broken.ok()) << "a broken link would silently drop part of the model";
  EXPECT_EQ(broken.error().code, Errc::kNotFound);
  EXPECT_NE(broken.error().message.find("b.safetensors: broken symbolic link"), std::string::npos)
      << broken.error().message;
  WriteFile(d / "n/a.safetensors", Shard({"a"}));
  std::filesystem::create_directories(d / "n/dir.safetensors");
  auto dir = OpenLocalModel(d / "n");
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.error().code, Errc::kInvalidArgument);
  EXPECT_NE(dir.error().message.find("dir.safetensors: not a regular file"), std::string::npos) << dir.error().message;
}

TEST(ModelPaths, EachShardRecordsTheIdentitySeenWhenItsHeaderWasRead) {
  TempDir d;
  WriteFile(d / "a.safetensors", Shard({"a"}));
  auto m = OpenLocalModel(d.path());
  ASSERT_TRUE(m.ok()) << m.error().message;
  struct stat st {};
  ASSERT_EQ(::stat((d / "a.safetensors").c_str(), &st), 0);
  EXPECT_TRUE(m->files[0].identity == FileIdentity::FromStat(st));
}

TEST(ModelIndex, RelativeNameRules) {
  EXPECT_TRUE(CheckRelativeName("model-00001-of-00002.safetensors").ok());
  EXPECT_TRUE(CheckRelativeName("a/b.safetensors").ok());
  EXPECT_TRUE(CheckRelativeName("a..b.safetensors").ok());
  EXPECT_FALSE(CheckRelativeName("").ok());
  EXPECT_FALSE(CheckRelativeName("..").ok());
  EXPECT_FALSE(CheckRelativeName("a/./b").ok());
  EXPECT_FALSE(CheckRelativeName("a/").ok());
}

}  // namespace
}  // namespace coldstart::loader
