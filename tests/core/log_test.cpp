// Logging: levels, COLDSTART_LOG, a sink instead of stderr, one line per event.
#include "coldstart/core/log.h"

#include <gtest/gtest.h>

#include <mutex>
#include <thread>
#include <vector>

namespace coldstart {
namespace {

class LogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SetLogSink([this](LogLevel l, std::string_view m) {
      std::lock_guard lk(mu_);
      lines_.emplace_back(l, std::string(m));
    });
  }
  void TearDown() override {
    SetLogSink({});
    SetLogLevel(LogLevel::kWarning);
  }
  std::mutex mu_;
  std::vector<std::pair<LogLevel, std::string>> lines_;
};

TEST_F(LogTest, LevelsFilterAndLinesStayOneLine) {
  SetLogLevel(LogLevel::kWarning);
  LogInfo("not shown");
  LogWarning("shown\nwith a newline inside");
  LogError("always");
  ASSERT_EQ(lines_.size(), 2u);
  EXPECT_EQ(lines_[0].first, LogLevel::kWarning);
  EXPECT_EQ(lines_[0].second, "shown with a newline inside");
  EXPECT_EQ(lines_[1].first, LogLevel::kError);
  SetLogLevel(LogLevel::kDebug);
  LogDebug("now shown");
  EXPECT_EQ(lines_.size(), 3u);
  SetLogLevel(LogLevel::kError);
  LogWarning("dropped");
  EXPECT_EQ(lines_.size(), 3u);
}

TEST_F(LogTest, EnvironmentSetsTheLevelStrictly) {
  ASSERT_TRUE(ConfigureLogging(Env::FromMap({{"COLDSTART_LOG", "info"}})).ok());
  EXPECT_TRUE(LogEnabled(LogLevel::kInfo));
  EXPECT_FALSE(LogEnabled(LogLevel::kDebug));
  auto bad = ConfigureLogging(Env::FromMap({{"COLDSTART_LOG", "verbose"}}));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, Errc::kInvalidArgument);
  EXPECT_NE(bad.error().message.find("COLDSTART_LOG"), std::string::npos);
  EXPECT_TRUE(LogEnabled(LogLevel::kInfo));  // a bad value changes nothing
  EXPECT_TRUE(ConfigureLogging(Env::FromMap({})).ok());
  ASSERT_NE(FindEnvVar("COLDSTART_LOG"), nullptr);
}

TEST_F(LogTest, ConcurrentLinesArriveWhole) {
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([t] {
      for (int i = 0; i < 200; ++i) LogWarning("thread " + std::to_string(t) + " line " + std::to_string(i));
    });
  for (auto& t : ts) t.join();
  ASSERT_EQ(lines_.size(), 800u);
  for (const auto& [l, m] : lines_) EXPECT_EQ(m.rfind("thread ", 0), 0u) << m;
}

}  // namespace
}  // namespace coldstart
