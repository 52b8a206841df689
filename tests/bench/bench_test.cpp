// `coldstart bench`: the JSON schema and its reader, the summary and --compare, --cold's page
// dropping, and short end-to-end runs of the CLI against a small synthetic model served by the
// fake GCS server on loopback.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "../common/temp_dir.h"
#include "coldstart/bench/result.h"
#include "coldstart/bench/runner.h"
#include "coldstart/fake_gcs/server.h"

namespace {

namespace fs = std::filesystem;
using coldstart::bench::Phase;
using coldstart::bench::Report;
using coldstart::bench::RunRow;
using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;

Report SampleReport() {
  Report r;
  r.source = "/models/gemma";
  r.command = "coldstart bench /models/gemma --runs 2";
  r.machine = "2 CPUs";
  r.date = "2026-12-03T12:00:00Z";
  r.conditions = "fake GCS on loopback, warm page cache";
  r.model_bytes = 4194304;
  RunRow a;
  a.scenario = "load", a.peer = "coldstart", a.run = 1, a.replica = 2, a.cold = true, a.cold_method = "fadvise";
  a.total_s = 1.25, a.bytes = 4194304, a.origin_bytes = 4194305;
  a.note = "cache: 0 bytes served";
  a.phases = {{"listing", 0.001, 0.02, 0}, {"fetch", 0.02, 1.2, 4194304}};
  a.samples = {{0.5, 1000}, {1.0, 4194304}};
  RunRow b;
  b.scenario = "copy-then-load", b.peer = "curl", b.ok = false, b.error = "curl exited with 7";
  r.rows = {a, b};
  return r;
}

TEST(BenchJson, RoundTripsEveryField) {
  const Report in = SampleReport();
  auto out = coldstart::bench::ReportFromJson(coldstart::bench::ToJson(in));
  ASSERT_TRUE(out.ok()) << out.error().ToString();
  EXPECT_EQ(out->source, in.source);
  EXPECT_EQ(out->command, in.command);
  EXPECT_EQ(out->machine, in.machine);
  EXPECT_EQ(out->date, in.date);
  EXPECT_EQ(out->conditions, in.conditions);
  EXPECT_EQ(out->model_bytes, in.model_bytes);
  ASSERT_EQ(out->rows.size(), 2u);
  const RunRow& a = out->rows[0];
  EXPECT_EQ(a.scenario, "load");
  EXPECT_EQ(a.peer, "coldstart");
  EXPECT_EQ(a.run, 1);
  EXPECT_EQ(a.replica, 2);
  EXPECT_TRUE(a.ok);
  EXPECT_TRUE(a.cold);
  EXPECT_EQ(a.cold_method, "fadvise");
  EXPECT_EQ(a.note, "cache: 0 bytes served");
  EXPECT_DOUBLE_EQ(a.total_s, 1.25);
  EXPECT_EQ(a.bytes, 4194304u);
  EXPECT_EQ(a.origin_bytes, 4194305u);
  ASSERT_EQ(a.phases.size(), 2u);
  EXPECT_EQ(a.phases[1].name, "fetch");
  EXPECT_DOUBLE_EQ(a.phases[1].start_s, 0.02);
  EXPECT_DOUBLE_EQ(a.phases[1].end_s, 1.2);
  EXPECT_EQ(a.phases[1].bytes, 4194304u);
  ASSERT_EQ(a.samples.size(), 2u);
  EXPECT_DOUBLE_EQ(a.samples[0].t_s, 0.5);
  EXPECT_EQ(a.samples[1].bytes, 4194304u);
  const RunRow& b = out->rows[1];
  EXPECT_FALSE(b.ok);
  EXPECT_EQ(b.error, "curl exited with 7");
  EXPECT_EQ(b.replica, -1);
}

// Rewrites the sample's JSON with `edit` applied and reads it back: the error's message.
std::string ErrorAfter(const std::string& from, const std::string& to) {
  std::string text = coldstart::bench::ToJson(SampleReport());
  const auto p = text.find(from);
  if (p == std::string::npos) return "sample has no " + from;
  text.replace(p, from.size(), to);
  auto r = coldstart::bench::ReportFromJson(text);
  return r.ok() ? "accepted" : r.error().message;
}

TEST(BenchJson, MalformedDocumentsAreRefusedNamingTheField) {
  EXPECT_NE(coldstart::bench::ReportFromJson("{").error().message.find("not valid JSON"), std::string::npos);
  EXPECT_NE(coldstart::bench::ReportFromJson("[]").error().message.find("not an object"), std::string::npos);
  EXPECT_EQ(coldstart::bench::ReportFromJson("{}").error().code, coldstart::Errc::kFormat);
  EXPECT_NE(ErrorAfter("\"schema\": 1", "\"schema\": 2").find("\"schema\" is 2"), std::string::npos);
  EXPECT_NE(ErrorAfter("\"model_bytes\": 4194304", "\"model_bytes\": -1").find("\"model_bytes\" is not an unsigned"),
            std::string::npos);
  EXPECT_NE(ErrorAfter("\"source\": \"/models/gemma\",", "").find("\"source\" is missing"), std::string::npos);
  EXPECT_NE(ErrorAfter("\"total_s\": 1.25", "\"total_s\": \"1.25\"").find("rows[0]: \"total_s\" is not a number"),
            std::string::npos);
  EXPECT_NE(ErrorAfter("\"ok\": false", "\"ok\": 0").find("rows[1]: \"ok\" is not true or false"), std::string::npos);
  EXPECT_NE(ErrorAfter("\"replica\": 2", "\"replica\": -2").find("\"replica\" is out of range"), std::string::npos);
  EXPECT_NE(ErrorAfter("\"end_s\": 1.2", "\"end_s\": 0.01").find("rows[0].phases[1]: \"end_s\" is before"),
            std::string::npos);
  EXPECT_NE(ErrorAfter("\"t_s\": 0.5", "\"t_s\": null").find("rows[0].samples[0]: \"t_s\" is not a number"),
            std::string::npos);
  EXPECT_NE(ErrorAfter("\"name\": \"listing\"", "\"name\": \"\"").find("\"name\" is empty"), std::string::npos);
  EXPECT_NE(ErrorAfter("\"rows\": [", "\"rows\": 3, \"x\": [").find("\"rows\" is not an array"), std::string::npos);
}

TEST(BenchRate, DecimalForNetworkRatesBinaryWhenAskedFor) {
  EXPECT_DOUBLE_EQ(*coldstart::bench::ParseRate("50MB"), 50e6);
  EXPECT_DOUBLE_EQ(*coldstart::bench::ParseRate("50MB/s"), 50e6);
  EXPECT_DOUBLE_EQ(*coldstart::bench::ParseRate("1.5G"), 1.5e9);
  EXPECT_DOUBLE_EQ(*coldstart::bench::ParseRate("4MiB"), 4.0 * 1048576);
  EXPECT_DOUBLE_EQ(*coldstart::bench::ParseRate("1000"), 1000);
  EXPECT_FALSE(coldstart::bench::ParseRate("fast").ok());
  EXPECT_FALSE(coldstart::bench::ParseRate("-1MB").ok());
  EXPECT_FALSE(coldstart::bench::ParseRate("5 parsecs").ok());
}

RunRow Ok(const std::string& scenario, const std::string& peer, double total) {
  RunRow r;
  r.scenario = scenario, r.peer = peer, r.total_s = total, r.bytes = 1000000, r.origin_bytes = 1000000;
  return r;
}

TEST(BenchSummary, MinMedianMaxAndSpeedUpAgainstCopyThenLoad) {
  Report r;
  r.model_bytes = 1000000;
  r.rows = {Ok("copy-then-load", "curl", 9), Ok("copy-then-load", "curl", 10), Ok("copy-then-load", "curl", 30),
            Ok("load", "coldstart", 1), Ok("load", "coldstart", 3), Ok("load", "coldstart", 2)};
  RunRow skipped;
  skipped.scenario = "parallel-copy-then-load", skipped.peer = "aria2c", skipped.ok = false;
  skipped.note = "skipped: aria2c is not installed";
  r.rows.push_back(skipped);
  const std::string t = coldstart::bench::SummaryTable(r);
  EXPECT_NE(t.find("copy-then-load           curl            3/3    9.000   10.000   30.000"), std::string::npos) << t;
  EXPECT_NE(t.find("load                     coldstart       3/3    1.000    2.000    3.000"), std::string::npos) << t;
  EXPECT_NE(t.find("5.00x"), std::string::npos) << "10 s / 2 s\n" << t;
  EXPECT_NE(t.find("aria2c is not installed"), std::string::npos) << t;
}

TEST(BenchCompare, FlagsAMedianMoreThanTenPercentSlower) {
  Report old, now;
  old.rows = {Ok("load", "coldstart", 1.0), Ok("load", "coldstart", 1.0), Ok("copy-then-load", "curl", 10)};
  now.rows = {Ok("load", "coldstart", 1.05), Ok("load", "coldstart", 1.05), Ok("copy-then-load", "curl", 8)};
  auto same = coldstart::bench::Compare(old, now);
  EXPECT_FALSE(same.slower) << same.text;
  EXPECT_NE(same.text.find("-20.0%  faster"), std::string::npos) << same.text;
  now.rows[0].total_s = now.rows[1].total_s = 1.2;
  auto slower = coldstart::bench::Compare(old, now);
  EXPECT_TRUE(slower.slower);
  EXPECT_NE(slower.text.find("+20.0%  SLOWER"), std::string::npos) << slower.text;
}

TEST(BenchCold, DropPagesEmptiesThePageCacheOfEveryFile) {
  TempDir dir;
  std::string bytes(8 << 20, 'x');
  WriteFile(dir / "a/one.bin", bytes);
  WriteFile(dir / "two.bin", bytes.substr(0, 1 << 20));
  {  // read it: it is in the page cache now
    std::ifstream in(dir / "a/one.bin", std::ios::binary);
    std::string back((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_EQ(back.size(), bytes.size());
  }
  auto before = coldstart::bench::ResidentBytes(dir.path());
  ASSERT_TRUE(before.ok()) << before.error().ToString();
  if (*before == 0) GTEST_SKIP() << "this file system keeps no pages that mincore can see (tmpfs-less overlay?)";
  auto method = coldstart::bench::DropPages({dir.path()});
  ASSERT_TRUE(method.ok()) << method.error().ToString();
  auto after = coldstart::bench::ResidentBytes(dir.path());
  ASSERT_TRUE(after.ok());
  if (*method == "fadvise" || *method == "fadvise+drop_caches") {
    EXPECT_EQ(*after, 0u) << *method;
  } else {
    // The method says how much stayed: it must be true.
    EXPECT_GT(*after, 0u) << *method;
    EXPECT_NE(method->find("still resident"), std::string::npos) << *method;
  }
}

// --- the CLI, end to end ---------------------------------------------------------------------

struct Cli {
  int status = -1;
  std::string out;
};

Cli RunCli(const std::string& args, const std::string& env = "") {
  Cli r;
  const std::string cmd = env + std::string(COLDSTART_BIN) + " " + args + " 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::uint64_t FolderBytes(const std::string& dir) {
  std::uint64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) total += e.file_size();
  return total;
}

Report ReadReport(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto r = coldstart::bench::ReportFromJson(ss.str());
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().ToString());
  return r.ok() ? *r : Report{};
}

class BenchCli : public ::testing::Test {
 protected:
  void Synth(const std::string& size) {
    model_ = dir_ / "model";
    auto s = RunCli("synth " + model_ + " --size " + size);
    ASSERT_EQ(s.status, 0) << s.out;
    model_bytes_ = FolderBytes(model_);
  }
  // `coldstart bench MODEL ARGS --json FILE`: the report it wrote (empty when it failed).
  Report Bench(const std::string& args) {
    const std::string json = dir_ / ("report-" + std::to_string(++reports_) + ".json");
    auto r = RunCli("bench " + model_ + " " + args + " --json " + json);
    EXPECT_EQ(r.status, 0) << args << "\n" << r.out;
    return r.status == 0 ? ReadReport(json) : Report{};
  }
  TempDir dir_;
  int reports_ = 0;
  std::string model_;
  std::uint64_t model_bytes_ = 0;
};

TEST_F(BenchCli, ThreeScenariosTwoRunsGiveOrderedPhasesAndTheModelsBytes) {
  Synth("4MiB");
  const std::string json = dir_ / "out.json";
  auto r = RunCli("bench " + model_ + " --scenario load --scenario prefetch-then-load --scenario copy-then-load --runs 2 --json " +
                  json + " --work-dir " + dir_.path());
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_NE(r.out.find("median s"), std::string::npos) << "the summary table\n" << r.out;
  const Report rep = ReadReport(json);
  EXPECT_EQ(rep.model_bytes, model_bytes_);
  EXPECT_NE(rep.command.find("--runs 2"), std::string::npos);
  ASSERT_EQ(rep.rows.size(), 6u);
  std::set<std::string> seen;
  for (const auto& row : rep.rows) {
    SCOPED_TRACE(row.scenario + " run " + std::to_string(row.run));
    seen.insert(row.scenario + "/" + row.peer + "/" + std::to_string(row.run));
    EXPECT_TRUE(row.ok) << row.error;
    EXPECT_EQ(row.replica, -1);
    // The tensors' bytes: the model folder less its headers, index and config.
    EXPECT_GT(row.bytes, model_bytes_ * 9 / 10);
    EXPECT_LE(row.bytes, model_bytes_);
    EXPECT_GE(row.origin_bytes, row.bytes) << "the origin served at least what was loaded";
    // One pass over the model, not two; `load` reads up to 1 MiB of the shard first for its
    // header, and those bytes again with the tensors.
    EXPECT_LE(row.origin_bytes, model_bytes_ * 11 / 10 + (row.scenario == "load" ? (1u << 20) : 0)) << "one pass";
    ASSERT_FALSE(row.phases.empty());
    double prev_end = 0;
    for (const auto& p : row.phases) {
      EXPECT_LE(p.start_s, p.end_s) << p.name;
      EXPECT_GE(p.start_s + 1e-9, prev_end) << p.name << " starts before the phase before it ends";
      prev_end = p.end_s;
    }
    EXPECT_NEAR(row.total_s, row.phases.back().end_s, 1e-6);
    EXPECT_LT(row.total_s, 20);
  }
  EXPECT_EQ(seen, (std::set<std::string>{"load/coldstart/0", "load/coldstart/1", "prefetch-then-load/coldstart/0",
                                         "prefetch-then-load/coldstart/1", "copy-then-load/curl/0",
                                         "copy-then-load/curl/1"}));
  for (const auto& row : rep.rows) {
    std::set<std::string> names;
    for (const auto& p : row.phases) names.insert(p.name);
    std::set<std::string> want;
    if (row.scenario == "load") want = {"listing", "first_byte", "fetch", "ready"};
    if (row.scenario == "copy-then-load") want = {"copy", "load"};
    if (row.scenario == "prefetch-then-load") want = {"first_byte", "prefetch", "load"};
    for (const auto& w : want) EXPECT_TRUE(names.count(w)) << row.scenario << " has no phase " << w;
  }
  EXPECT_FALSE(fs::exists(dir_ / "coldstart-bench-")) << "temp folders are removed";
  for (const auto& e : fs::directory_iterator(dir_.path()))
    EXPECT_EQ(e.path().filename().string().rfind("coldstart-bench-", 0), std::string::npos) << e.path();
}

TEST_F(BenchCli, ColdSaysHowThePagesWereDropped) {
  Synth("2MiB");
  const Report rep = Bench("--scenario load --cold");
  ASSERT_EQ(rep.rows.size(), 1u);
  EXPECT_TRUE(rep.rows[0].cold);
  EXPECT_EQ(rep.rows[0].cold_method.rfind("fadvise", 0), 0u) << rep.rows[0].cold_method;
  EXPECT_NE(rep.conditions.find("cold"), std::string::npos);
}

TEST_F(BenchCli, PerConnectionCapIsHonoured) {
  Synth("2MiB");
  // One stream at 1 MB/s: the 2 MiB model takes ~2.1 s.
  const Report rep = Bench("--scenario copy-then-load --cap-per-connection 1MB");
  ASSERT_EQ(rep.rows.size(), 1u);
  ASSERT_TRUE(rep.rows[0].ok) << rep.rows[0].error;
  EXPECT_GE(rep.rows[0].total_s, 1.5);
  EXPECT_LT(rep.rows[0].total_s, 10);
  EXPECT_NE(rep.conditions.find("per-connection cap 1 MB/s"), std::string::npos) << rep.conditions;
  EXPECT_FALSE(rep.rows[0].samples.empty()) << "the copy's progress over time";
}

TEST_F(BenchCli, ReplicasEachGetARowAndTheOriginCountsThemAll) {
  Synth("2MiB");
  const Report rep = Bench("--scenario load --replicas 3");
  ASSERT_EQ(rep.rows.size(), 3u);
  std::set<int> replicas;
  for (const auto& row : rep.rows) {
    EXPECT_TRUE(row.ok) << row.error;
    replicas.insert(row.replica);
    // Three loads without a cache: the origin served the model three times.
    EXPECT_GE(row.origin_bytes, 3 * row.bytes);
  }
  EXPECT_EQ(replicas, (std::set<int>{0, 1, 2}));
}

TEST_F(BenchCli, LinkCapIsSharedByTheLoadsConnections) {
  Synth("2MiB");
  // coldstart load opens many connections; together they get 2 MB/s: ~1.1 s for 2.2 MB.
  const Report rep = Bench("--scenario load --cap-link 2MB");
  ASSERT_EQ(rep.rows.size(), 1u);
  ASSERT_TRUE(rep.rows[0].ok) << rep.rows[0].error;
  EXPECT_GE(rep.rows[0].total_s, 0.9);
  EXPECT_LT(rep.rows[0].total_s, 10);
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return -1;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

TEST_F(BenchCli, ServerIsTimedToReadyAndToItsFirstAnswerThenStopped) {
  Synth("1MiB");
  const int port = FreePort();
  ASSERT_GT(port, 0);
  const std::string p = std::to_string(port);
  WriteFile(dir_ / "request.json", "{\"prompt\": \"hello\"}");
  // `coldstart preload` stands in for a server (no libtorch needed): its probe answers 200 once
  // the model is in, GET and POST alike; its CMD would run 30 s unless the bench stops it.
  const std::string cmd = "{coldstart} preload {src} --to " + (dir_ / "to") + " --probe-port " + p + " -- sleep 30";
  const std::string json = dir_ / "server.json";
  const auto t0 = std::chrono::steady_clock::now();
  auto r = RunCli("bench " + model_ + " --scenario server --cmd '" + cmd + "' --ready-url http://127.0.0.1:" + p +
                  "/ready --request " + (dir_ / "request.json") + " --request-url http://127.0.0.1:" + p +
                  "/v1/completions --json " + json);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_LT(seconds, 20) << "the server (and its sleep 30) was stopped after the request";
  const Report rep = ReadReport(json);
  ASSERT_EQ(rep.rows.size(), 1u);
  const RunRow& row = rep.rows[0];
  ASSERT_TRUE(row.ok) << row.error;
  EXPECT_EQ(row.peer, "coldstart");
  ASSERT_EQ(row.phases.size(), 2u);
  EXPECT_EQ(row.phases[0].name, "ready");
  EXPECT_EQ(row.phases[1].name, "first_token");
  EXPECT_LE(row.phases[0].end_s, row.phases[1].end_s);
  EXPECT_DOUBLE_EQ(row.total_s, row.phases[1].end_s);
  EXPECT_TRUE(fs::exists(dir_ / "to/config.json")) << "the server's model was really fetched before ready";
}

TEST_F(BenchCli, MountThenReadReadsEveryShardThroughTheMount) {
  if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "no usable /dev/fuse";
  if (std::system("command -v fusermount3 >/dev/null 2>&1") != 0) GTEST_SKIP() << "no fusermount3";
  Synth("2MiB");
  const std::string json = dir_ / "mount.json";
  auto r = RunCli("bench " + model_ + " --scenario mount-then-read --json " + json + " --work-dir " + dir_.path());
  const Report rep = ReadReport(json);
  ASSERT_EQ(rep.rows.size(), 2u) << r.out;
  std::uint64_t shard_bytes = 0;
  for (const auto& e : fs::directory_iterator(model_))
    if (e.path().extension() == ".safetensors") shard_bytes += e.file_size();
  for (const auto& row : rep.rows) {
    SCOPED_TRACE(row.peer);
    if (!row.ok && row.error.empty()) continue;  // rclone not installed: skipped, saying so
    if (row.peer == "coldstart" && !row.ok && row.error.find("mount") != std::string::npos &&
        row.error.find("ermission") != std::string::npos)
      GTEST_SKIP() << "mounting is not permitted here: " << row.error;
    ASSERT_TRUE(row.ok) << row.error;
    EXPECT_EQ(row.bytes, shard_bytes);
    ASSERT_EQ(row.phases.size(), 2u);
    EXPECT_EQ(row.phases[0].name, "mount");
    EXPECT_EQ(row.phases[1].name, "read");
    EXPECT_GE(row.origin_bytes, shard_bytes) << "the bytes came through the origin";
  }
  EXPECT_EQ(r.status, 0) << r.out;
  for (const auto& e : fs::directory_iterator(dir_.path()))
    EXPECT_EQ(e.path().filename().string().rfind("coldstart-bench-", 0), std::string::npos) << "left mounted or behind: " << e.path();
}

TEST_F(BenchCli, CtrlCStopsTheRunInFlightAndRemovesTheTempFolders) {
  Synth("2MiB");
  // A copy at 1 MB/s takes ~2.1 s; Ctrl-C (SIGINT to the foreground group) comes after 0.7 s.
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::setpgid(0, 0);
    ::execl(COLDSTART_BIN, COLDSTART_BIN, "bench", model_.c_str(), "--scenario", "copy-then-load", "--runs", "3",
            "--cap-per-connection", "1MB", "--work-dir", dir_.path().c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  const auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  ::kill(-pid, SIGINT);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_LT(seconds, 2.0) << "the copy in flight got the Ctrl-C too";
  for (const auto& e : fs::directory_iterator(dir_.path()))
    EXPECT_EQ(e.path().filename().string().rfind("coldstart-bench-", 0), std::string::npos) << "left behind: " << e.path();
}

TEST_F(BenchCli, ARemoteSourceIsReadAsItIsWithoutPeersOrCaps) {
  Synth("1MiB");
  fs::create_directories(dir_ / "origin/bkt");
  fs::rename(model_, dir_ / "origin/bkt/m");
  coldstart::fakegcs::ServerOptions so;
  so.root = dir_ / "origin";
  auto server = coldstart::fakegcs::Server::Start(so);
  ASSERT_TRUE(server.ok()) << server.error().ToString();
  const std::string env = "STORAGE_EMULATOR_HOST=" + (*server)->endpoint() + " COLDSTART_METADATA=off ";
  const std::string json = dir_ / "remote.json";
  auto r = RunCli("bench gs://bkt/m --scenario load --scenario copy-then-load --json " + json, env);
  ASSERT_EQ(r.status, 0) << r.out;
  const Report rep = ReadReport(json);
  ASSERT_EQ(rep.rows.size(), 2u);
  EXPECT_EQ(rep.source, "gs://bkt/m");
  EXPECT_TRUE(rep.rows[0].ok) << rep.rows[0].error;
  EXPECT_EQ(rep.rows[0].origin_bytes, 0u) << "not our server: not counted";
  EXPECT_GE((*server)->stats().media_bytes_sent, rep.rows[0].bytes) << "the load read the given gs:// URL";
  EXPECT_EQ(rep.model_bytes, rep.rows[0].bytes);
  EXPECT_FALSE(rep.rows[1].ok);
  EXPECT_NE(rep.rows[1].note.find("skipped: peers copy over http from the fake server"), std::string::npos) << rep.rows[1].note;
  EXPECT_EQ(RunCli("bench gs://bkt/m --scenario load --cap-link 1MB", env).status, 2) << "caps shape the fake server only";
}

TEST_F(BenchCli, CompareExitsOneWhenSomethingGotSlower) {
  Report old, now;
  old.rows = {Ok("load", "coldstart", 1.0)};
  now.rows = {Ok("load", "coldstart", 1.5)};
  WriteFile(dir_ / "old.json", coldstart::bench::ToJson(old));
  WriteFile(dir_ / "new.json", coldstart::bench::ToJson(now));
  auto slower = RunCli("bench --compare " + (dir_ / "old.json") + " " + (dir_ / "new.json"));
  EXPECT_EQ(slower.status, 1) << slower.out;
  EXPECT_NE(slower.out.find("SLOWER"), std::string::npos) << slower.out;
  auto same = RunCli("bench --compare " + (dir_ / "old.json") + " " + (dir_ / "old.json"));
  EXPECT_EQ(same.status, 0) << same.out;
  WriteFile(dir_ / "bad.json", "{\"schema\": 1}");
  EXPECT_EQ(RunCli("bench --compare " + (dir_ / "old.json") + " " + (dir_ / "bad.json")).status, 4) << "a format error";
}

TEST_F(BenchCli, MissingPeersAndUnknownScenarios) {
  Synth("1MiB");
  EXPECT_EQ(RunCli("bench " + model_ + " --scenario lod").status, 2);
  // first-token without config.json: a row saying so, exit 0.
  fs::remove(model_ + "/config.json");
  const Report rep = Bench("--scenario first-token");
  ASSERT_EQ(rep.rows.size(), 1u);
  EXPECT_FALSE(rep.rows[0].ok);
  EXPECT_TRUE(rep.rows[0].error.empty());
  EXPECT_NE(rep.rows[0].note.find("skipped: the model has no config.json"), std::string::npos) << rep.rows[0].note;
}

}  // namespace
