// The preloader's state machine (loader/preload.h) on a clock the test moves, and PreloadTo
// against the fake GCS server.
#include "coldstart/loader/preload.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "../common/temp_dir.h"
#include "coldstart/fake_gcs/server.h"
#include "coldstart/loader/synth.h"

namespace {

using coldstart::loader::ModelPhase;
using coldstart::loader::PreloadStatus;
using coldstart::loader::ServerPhase;
using Clock = PreloadStatus::Clock;
using namespace std::chrono_literals;

struct FakeClock {
  Clock::time_point t{};
  std::function<Clock::time_point()> fn() {
    return [this] { return t; };
  }
};

TEST(PreloadStatus, PhasesAndTheOneWordStateWithoutReadyUrl) {
  FakeClock c;
  PreloadStatus s({"gs://b/m", "to", "/models/m", false}, c.fn());
  EXPECT_EQ(s.Snapshot().state, "starting");
  EXPECT_FALSE(s.Ready());
  s.Progress(0, 1000);
  EXPECT_EQ(s.Snapshot().state, "fetching");
  s.Progress(1000, 1000);
  s.Verifying();
  EXPECT_EQ(s.Snapshot().state, "verifying");
  EXPECT_FALSE(s.Ready()) << "every byte in is not yet verified";
  c.t += 1s;
  s.ModelReady();
  auto snap = s.Snapshot();
  EXPECT_EQ(snap.state, "ready");
  EXPECT_TRUE(snap.ready);
  EXPECT_DOUBLE_EQ(snap.model_ready_seconds.value(), 1.0);
  s.ServerStarted(1234);
  EXPECT_EQ(s.Snapshot().server, ServerPhase::kRunning);
  EXPECT_EQ(s.Snapshot().state, "serving");
  EXPECT_TRUE(s.Ready());
  s.ServerExited(137);
  snap = s.Snapshot();
  EXPECT_EQ(snap.state, "exited");
  EXPECT_FALSE(snap.ready) << "a probe must not see a dead server as started";
  EXPECT_EQ(snap.exit_status.value(), 137);
}

TEST(PreloadStatus, ReadyUrlHoldsTheProbeUntilTheServerIsHealthy) {
  FakeClock c;
  PreloadStatus s({"gs://b/m", "mount", "/mnt/m", true}, c.fn());
  // --mount starts the server before the model is complete.
  s.ServerStarted(77);
  s.Progress(10, 100);
  EXPECT_EQ(s.Snapshot().state, "fetching");
  s.ServerHealthy();
  EXPECT_FALSE(s.Ready()) << "a healthy server on half a model is not ready";
  s.ModelReady();
  EXPECT_TRUE(s.Ready());
  EXPECT_EQ(s.Snapshot().state, "serving");

  PreloadStatus t({"gs://b/m", "to", "/m", true}, c.fn());
  t.ModelReady();
  EXPECT_FALSE(t.Ready()) << "--ready-url: model ready, server not started";
  t.ServerStarted(78);
  EXPECT_EQ(t.Snapshot().state, "server-starting");
  EXPECT_EQ(t.Snapshot().server, ServerPhase::kStarting);
  EXPECT_FALSE(t.Ready());
  t.ServerHealthy();
  EXPECT_TRUE(t.Ready());
  EXPECT_EQ(t.Snapshot().state, "serving");
}

TEST(PreloadStatus, RateIsOverTheLastSecondsAndEtaFollowsIt) {
  FakeClock c;
  PreloadStatus s({"gs://b/m", "to", "/m", false}, c.fn());
  EXPECT_FALSE(s.Snapshot().eta_seconds.has_value()) << "unknown before bytes flow";
  const std::uint64_t total = 100'000'000;
  std::uint64_t done = 0;
  // 20 s at 1 MB/s, then 10 s at 4 MB/s: the rate shown is the recent one, not the average.
  for (int i = 0; i <= 20; ++i, c.t += 1s, done += 1'000'000) s.Progress(done, total);
  for (int i = 0; i < 10; ++i) {
    c.t += 1s;
    done += 4'000'000;
    s.Progress(done, total);
  }
  auto snap = s.Snapshot();
  EXPECT_EQ(snap.bytes_done, done);
  EXPECT_NEAR(snap.bytes_per_second, 4e6, 1e3);
  ASSERT_TRUE(snap.eta_seconds.has_value());
  EXPECT_NEAR(*snap.eta_seconds, static_cast<double>(total - done) / 4e6, 0.01);
  EXPECT_NEAR(snap.elapsed_seconds, 31.0, 1e-9);
  // A stall shows: the window ends now, and nothing came in it.
  c.t += 2s;
  EXPECT_NEAR(s.Snapshot().bytes_per_second, 3 * 4e6 / 5, 1e3);
  c.t += 3s;
  EXPECT_EQ(s.Snapshot().bytes_per_second, 0.0);
  // Reports out of order never move the count back.
  s.Progress(done - 5, total);
  EXPECT_EQ(s.Snapshot().bytes_done, done);
}

TEST(PreloadStatus, FailureIsFinalAndNamesTheError) {
  FakeClock c;
  PreloadStatus s({"gs://b/m", "to", "/m", false}, c.fn());
  s.Progress(5, 10);
  s.ModelFailed(coldstart::MakeError(coldstart::Errc::kIntegrity, "gs://b/m/x.safetensors: CRC32C mismatch"));
  s.Progress(10, 10);
  s.ModelReady();
  auto snap = s.Snapshot();
  EXPECT_EQ(snap.state, "failed");
  EXPECT_EQ(snap.model, ModelPhase::kFailed);
  EXPECT_FALSE(snap.ready);
  EXPECT_EQ(snap.bytes_done, 5u);
  EXPECT_NE(snap.error.find("CRC32C mismatch"), std::string::npos);
  auto j = nlohmann::json::parse(s.ToJson());
  EXPECT_EQ(j["state"], "failed");
  EXPECT_NE(j["error"].get<std::string>().find("x.safetensors"), std::string::npos);
}

TEST(PreloadStatus, JsonHasEveryField) {
  FakeClock c;
  PreloadStatus s({"gs://b/m", "to", "/models/m", false}, c.fn());
  auto j = nlohmann::json::parse(s.ToJson());
  for (const char* k : {"state", "ready", "model", "server", "source", "mode", "dest", "bytes_done", "bytes_total",
                        "percent", "bytes_per_second", "eta_seconds", "elapsed_seconds"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_TRUE(j["eta_seconds"].is_null());
  EXPECT_EQ(j["dest"], "/models/m");
  s.Progress(0, 400);
  c.t += 1s;
  s.Progress(100, 400);
  j = nlohmann::json::parse(s.ToJson());
  EXPECT_DOUBLE_EQ(j["percent"].get<double>(), 25.0);
  EXPECT_DOUBLE_EQ(j["bytes_per_second"].get<double>(), 100.0);
  EXPECT_DOUBLE_EQ(j["eta_seconds"].get<double>(), 3.0);
  s.ModelReady();
  s.ServerStarted(42);
  j = nlohmann::json::parse(s.ToJson());
  EXPECT_EQ(j["pid"], 42);
  EXPECT_EQ(j["eta_seconds"], 0.0);
  EXPECT_EQ(j["bytes_total"], 400);
  EXPECT_EQ(j["bytes_done"], 400);
}

TEST(PreloadStatus, MountProgressMovesTheModelToReadyOrFailed) {
  FakeClock c;
  PreloadStatus s({"gs://b/m", "mount", "/mnt/m", false}, c.fn());
  coldstart::cache::MountProgress p;
  p.bytes_total = 1000;
  p.bytes_cached = 250;
  coldstart::loader::UpdateFromMount(p, s);
  EXPECT_EQ(s.Snapshot().state, "fetching");
  EXPECT_EQ(s.Snapshot().bytes_done, 250u);
  p.bytes_cached = 1000;
  coldstart::loader::UpdateFromMount(p, s);
  EXPECT_FALSE(s.Ready()) << "every byte cached is not yet read-ahead done";
  p.read_ahead_done = true;
  coldstart::loader::UpdateFromMount(p, s);
  EXPECT_TRUE(s.Ready());
  EXPECT_EQ(s.Snapshot().state, "ready");

  PreloadStatus f({"gs://b/m", "mount", "/mnt/m", false}, c.fn());
  p.bytes_cached = 600;
  p.read_ahead_failures = 2;
  coldstart::loader::UpdateFromMount(p, f);
  auto snap = f.Snapshot();
  EXPECT_EQ(snap.state, "failed");
  EXPECT_NE(snap.error.find("read-ahead failed for 2"), std::string::npos) << snap.error;
  EXPECT_FALSE(f.Ready());
}

// ---- PreloadTo: Prefetch with the state machine, through the fake server ----

class PreloadToTest : public ::testing::Test {
 protected:
  void SetUp() override {
    coldstart::loader::SynthOptions so;
    so.size_bytes = 2 << 20;
    so.shards = 2;
    so.seed = 3;
    auto w = coldstart::loader::SynthesizeModel(root_ / "bkt/m", so);
    ASSERT_TRUE(w.ok()) << w.error().message;
    coldstart::fakegcs::ServerOptions o;
    o.root = root_.path();
    auto s = coldstart::fakegcs::Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.error().message;
    server_ = std::move(s).value();
  }
  std::shared_ptr<coldstart::fetch::RemoteSession> Open(const std::string& src) {
    auto source = coldstart::fetch::ParseSource(src);
    EXPECT_TRUE(source.ok());
    coldstart::fetch::RemoteOptions o;
    o.fetch.retry.initial_backoff_s = 0.01;
    o.retry = o.fetch.retry;
    auto session = coldstart::fetch::RemoteSession::Open(
        *source, o, coldstart::Env::FromMap({{"STORAGE_EMULATOR_HOST", server_->endpoint()}, {"COLDSTART_METADATA", "off"}}));
    EXPECT_TRUE(session.ok()) << session.error().message;
    return session.ok() ? *session : nullptr;
  }
  coldstart::testing::TempDir root_, out_;
  std::unique_ptr<coldstart::fakegcs::Server> server_;
};

TEST_F(PreloadToTest, ReadyWithEveryByteCountedAndAgainWhenAllIsPresent) {
  std::uint64_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(root_ / "bkt/m")) total += e.file_size();
  for (int run = 0; run < 2; ++run) {
    PreloadStatus status({"gs://bkt/m", "to", out_ / "m", false});
    int calls = 0;
    coldstart::loader::PrefetchOptions o;
    o.progress = [&](std::uint64_t done, std::uint64_t total) {
      ++calls;
      // The status has the report before the caller does.
      EXPECT_EQ(status.Snapshot().bytes_done, done);
      EXPECT_EQ(status.Snapshot().state, done < total ? "fetching" : "verifying");
      return true;
    };
    auto session = Open("gs://bkt/m");
    ASSERT_TRUE(session);
    auto r = coldstart::loader::PreloadTo(*session, out_ / "m", o, status);
    ASSERT_TRUE(r.ok()) << r.error().message;
    auto snap = status.Snapshot();
    EXPECT_EQ(snap.state, "ready") << run;
    EXPECT_TRUE(snap.ready);
    EXPECT_EQ(snap.bytes_done, run == 0 ? total : 0u);
    EXPECT_EQ(snap.bytes_done, snap.bytes_total);
    EXPECT_EQ(r->skipped, run == 0 ? 0u : 4u);
    EXPECT_EQ(calls > 0, run == 0) << "the caller's progress callback still runs";
  }
}

TEST_F(PreloadToTest, MissingSourceAndCorruptBytesFailTheModel) {
  PreloadStatus missing({"gs://bkt/nope", "to", out_ / "x", false});
  auto session = Open("gs://bkt/nope");
  ASSERT_TRUE(session);
  auto r = coldstart::loader::PreloadTo(*session, out_ / "x", {}, missing);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(missing.Snapshot().state, "failed");
  EXPECT_EQ(missing.Snapshot().error, r.error().ToString());

  server_->AddFault(*coldstart::fakegcs::ParseFaultSpec("kind=corrupt,after=200000,count=0,object=bkt/m/model-00001-of-00002.safetensors"));
  PreloadStatus corrupt({"gs://bkt/m", "to", out_ / "c", false});
  session = Open("gs://bkt/m");
  ASSERT_TRUE(session);
  r = coldstart::loader::PreloadTo(*session, out_ / "c", {}, corrupt);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, coldstart::Errc::kIntegrity);
  EXPECT_EQ(corrupt.Snapshot().state, "failed");
  EXPECT_FALSE(corrupt.Ready());
}

}  // namespace
