#include "coldstart/core/env.h"

#include <gtest/gtest.h>

namespace coldstart {
namespace {

// This suite links core alone: it registers a table of its own, as a module does.
constexpr EnvVarInfo kTestVars[] = {
    {"COLDSTART_IO_ENGINE", "auto", "a variable as a module registers it"},
    {"COLDSTART_READ_CHUNK", "8MiB", "a size"},
    {"COLDSTART_HUGE_PAGES", "1", "a flag"},
    {"COLDSTART_READ_THREADS", "0", "a number"},
    {"COLDSTART_TEST_SECRET", "(unset)", "a token", true},
    {"COLDSTART_TEST_URL", "(unset)", "an endpoint"},
};
const EnvRegistrar kTestRegistrar{"test", 5, kTestVars};

TEST(ParseBytes, UnitsAndErrors) {
  EXPECT_EQ(*ParseBytes("4096"), 4096u);
  EXPECT_EQ(*ParseBytes("8MiB"), 8u << 20);
  EXPECT_EQ(*ParseBytes("8M"), 8u << 20);
  EXPECT_EQ(*ParseBytes("1.5GiB"), 3ull << 29);
  EXPECT_EQ(*ParseBytes(" 2 kb "), 2048u);
  for (const char* bad : {"", "-1", "MiB", "1.5", "12XB", "1e9", "9999999TiB", "0x10"})
    EXPECT_FALSE(ParseBytes(bad).ok()) << bad;
}

TEST(ParseSeconds, Units) {
  EXPECT_DOUBLE_EQ(*ParseSeconds("30"), 30.0);
  EXPECT_DOUBLE_EQ(*ParseSeconds("500ms"), 0.5);
  EXPECT_DOUBLE_EQ(*ParseSeconds("2m"), 120.0);
  EXPECT_FALSE(ParseSeconds("soon").ok());
  EXPECT_FALSE(ParseSeconds("5 parsecs").ok());
}

TEST(ParseBool, Spellings) {
  EXPECT_TRUE(*ParseBool("Yes"));
  EXPECT_FALSE(*ParseBool("off"));
  EXPECT_FALSE(ParseBool("maybe").ok());
}

TEST(Env, UnknownColdstartVariableIsAnError) {
  auto st = Env::FromMap({{"COLDSTART_IO_ENGIN", "pread"}}).Validate();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("COLDSTART_IO_ENGIN"), std::string::npos);
  EXPECT_TRUE(Env::FromMap({{"COLDSTART_IO_ENGINE", "pread"}, {"HOME", "/root"}}).Validate().ok());
}

TEST(Env, TypedGettersNameTheVariable) {
  Env env = Env::FromMap({{"COLDSTART_READ_CHUNK", "big"}, {"COLDSTART_HUGE_PAGES", "0"}});
  auto c = env.GetBytes("COLDSTART_READ_CHUNK");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.error().message.find("COLDSTART_READ_CHUNK"), std::string::npos);
  auto h = env.GetBool("COLDSTART_HUGE_PAGES");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(*h, std::optional<bool>(false));
  auto missing = env.GetUint("COLDSTART_READ_THREADS");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
}

TEST(Env, EveryKnownVariableIsDocumented) {
  for (const auto& v : KnownEnvVars()) {
    // Ours, or the standard Google (and XDG) variables we honour.
    bool google = v.name == "STORAGE_EMULATOR_HOST" || v.name == "GOOGLE_APPLICATION_CREDENTIALS" ||
                  v.name == "GCE_METADATA_HOST" || v.name == "CLOUDSDK_CONFIG" || v.name == "HOME" ||
                  v.name == "XDG_CACHE_HOME";  // the disk cache's default folder
    EXPECT_TRUE(v.name.substr(0, 10) == "COLDSTART_" || google) << v.name;
    EXPECT_FALSE(v.doc.empty()) << v.name;

  }
}

TEST(Env, RegistryListsModulesInRankOrder) {
  constexpr static EnvVarInfo kLater[] = {{"COLDSTART_TEST_LATER", "x", "registered later, ranked first"}};
  static const EnvRegistrar later{"early", 1, kLater};
  auto vars = KnownEnvVars();
  ASSERT_GE(vars.size(), 7u);
  EXPECT_EQ(vars[0].name, "COLDSTART_TEST_LATER");
  EXPECT_EQ(vars[1].name, "COLDSTART_IO_ENGINE");
  ASSERT_NE(FindEnvVar("COLDSTART_TEST_SECRET"), nullptr);
  EXPECT_TRUE(FindEnvVar("COLDSTART_TEST_SECRET")->secret);
  EXPECT_EQ(FindEnvVar("COLDSTART_NOPE"), nullptr);
}

TEST(Env, SecretsAndUrlPasswordsAreRedacted) {
  EXPECT_EQ(RedactEnvValue("COLDSTART_TEST_SECRET", "ya29.token"), "(set, hidden)");
  EXPECT_EQ(RedactEnvValue("COLDSTART_TEST_URL", "https://user:hunter2@host:8443/p"), "https://user:***@host:8443/p");
  EXPECT_EQ(RedactEnvValue("COLDSTART_TEST_URL", "https://host/p?sig=abc&x=1"), "https://host/p?***");
  EXPECT_EQ(RedactEnvValue("COLDSTART_TEST_URL", "https://user@host/p"), "https://user@host/p");
  EXPECT_EQ(RedactEnvValue("COLDSTART_TEST_URL", "127.0.0.1:9000"), "127.0.0.1:9000");
  EXPECT_EQ(RedactEnvValue("COLDSTART_TEST_URL", "http://a:b@c@host/"), "http://a:***@host/");
}

TEST(Error, ContextAndErrno) {
  Error e = MakeSysError(Errc::kIo, "read", ENOSPC);
  e.WithContext("shard.safetensors");
  EXPECT_EQ(e.sys_errno, ENOSPC);
  EXPECT_EQ(e.message.rfind("shard.safetensors: read: ", 0), 0u) << e.message;
}

}  // namespace
}  // namespace coldstart
