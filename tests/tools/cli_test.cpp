// The `coldstart` executable as a user meets it: exit codes, one-line errors, JSON outputs.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>
#include <tuple>

#include <cstdio>
#include <filesystem>
#include <map>
#include <vector>
#include <nlohmann/json.hpp>

#include "../common/independent.h"
#include "../common/exec.h"
#include "../common/temp_dir.h"
#include "../loader/corpus.h"

namespace {

using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;

using coldstart::testing::Exec;
using coldstart::testing::Run;

int Lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

TEST(Cli, SynthInspectLoadDigestsMatchIndependentRead) {
  TempDir d;
  auto s = Exec("synth " + (d / "m") + " --size 3MiB --shards 2 --seed 11 --json");
  ASSERT_EQ(s.code, 0) << s.err;
  auto sj = nlohmann::json::parse(s.out);
  auto i = Exec("inspect " + (d / "m") + " --json");
  ASSERT_EQ(i.code, 0) << i.err;
  auto ij = nlohmann::json::parse(i.out);
  ASSERT_EQ(ij["tensors"].size(), sj["tensors"].get<std::size_t>());
  for (const auto& t : ij["tensors"]) {
    for (const char* k : {"name", "dtype", "shape", "file", "data_offsets"}) EXPECT_TRUE(t.contains(k)) << k;
    EXPECT_EQ(t["dtype"], "BF16");
  }
  std::map<std::string, std::string> expected;
  for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"})
    expected.merge(coldstart::testing::IndependentDigests(d / ("m/" + std::string(f))));
  for (const char* engine : {"uring", "pread"}) {
    auto l = Exec("load " + (d / "m") + " --device cpu --digest sha256 --json --io-engine " + engine);
    ASSERT_EQ(l.code, 0) << l.err;
    auto lj = nlohmann::json::parse(l.out);
    EXPECT_EQ(lj["bytes"], sj["bytes"]);
    EXPECT_GT(lj["seconds"].get<double>(), 0.0);
    std::map<std::string, std::string> got;
    for (const auto& t : lj["tensors"]) got[t["name"]] = t["sha256"];
    EXPECT_EQ(got, expected) << engine;
  }
  auto human = Exec("load " + (d / "m"));
  EXPECT_EQ(human.code, 0);
  EXPECT_NE(human.out.find("B/s"), std::string::npos) << human.out;
}

TEST(Cli, EveryMalformedFileFailsWithOneLineNamingIt) {
  TempDir d;
  for (const auto& c : coldstart::testing::MalformedFiles()) {
    const std::string path = d / (c.name + ".safetensors");
    WriteFile(path, c.bytes);
    for (const char* cmd : {"inspect", "load"}) {
      auto r = Exec(std::string(cmd) + " " + path);
      // README: 4 malformed input, 5 truncated file.
      EXPECT_EQ(r.code, c.truncated ? 5 : 4) << c.name << " " << cmd << ": " << r.err;
      EXPECT_EQ(Lines(r.err), 1) << c.name << ": " << r.err;
      EXPECT_EQ(r.err.rfind("coldstart: error: " + path + ": ", 0), 0u) << r.err;
      EXPECT_NE(r.err.find(c.expect), std::string::npos) << r.err;
      EXPECT_TRUE(r.out.empty()) << "nothing reported as success: " << r.out;
    }
  }
}

TEST(Cli, UsageAndEnvironmentErrors) {
  auto missing = Exec("inspect /nonexistent/model");
  EXPECT_EQ(missing.code, 3);
  EXPECT_EQ(Lines(missing.err), 1);
  auto flag = Exec("load --bogus x");
  EXPECT_EQ(flag.code, 2);
  EXPECT_EQ(Lines(flag.err), 1) << flag.err;
  TempDir d;
  ASSERT_EQ(Exec("synth " + (d / "m")).code, 0);
  auto env = Exec("load " + (d / "m"), "COLDSTART_READ_CHUNK=huge");
  EXPECT_EQ(env.code, 2);
  EXPECT_NE(env.err.find("COLDSTART_READ_CHUNK"), std::string::npos);
  auto typo = Exec("load " + (d / "m"), "COLDSTART_IO_ENGIN=pread");
  EXPECT_EQ(typo.code, 2);
  EXPECT_NE(typo.err.find("unknown environment variable"), std::string::npos);
  auto dev = Exec("load " + (d / "m") + " --device tpu");
  EXPECT_EQ(dev.code, 2);
  auto preset = Exec("synth " + (d / "x") + " --preset nope");
  EXPECT_EQ(preset.code, 2);
  EXPECT_EQ(Exec("env").code, 0);
  EXPECT_EQ(Exec("--help").code, 0);
}

TEST(Cli, DeviceSimDigestsMatchTheCpuLoadAndCudaFailsCleanly) {
  TempDir d;
  ASSERT_EQ(Exec("synth " + (d / "m") + " --size 3MiB --shards 2").code, 0);
  auto cpu = Exec("load " + (d / "m") + " --digest sha256 --json --no-torch");
  ASSERT_EQ(cpu.code, 0) << cpu.err;
  auto sim = Exec("load " + (d / "m") + " --device sim --digest sha256 --json --staging-bytes 1MiB --order layer");
  ASSERT_EQ(sim.code, 0) << sim.err;
  auto cj = nlohmann::json::parse(cpu.out), sj = nlohmann::json::parse(sim.out);
  std::map<std::string, std::string> a, b;
  for (const auto& t : cj["tensors"]) a[t["name"]] = t["sha256"];
  for (const auto& t : sj["tensors"]) b[t["name"]] = t["sha256"];
  EXPECT_EQ(a, b);
  for (const char* k : {"first_byte_seconds", "fetch_seconds", "h2d_seconds", "total_seconds", "h2d_gb_per_s"})
    EXPECT_TRUE(sj["phases"].contains(k)) << k;
  EXPECT_LE(sj["staging"]["peak_bytes"].get<std::uint64_t>(), sj["staging"]["budget_bytes"].get<std::uint64_t>());
  auto f16 = Exec("load " + (d / "m") + " --device sim --convert f16 --only '*layers.0.*' --json");
  ASSERT_EQ(f16.code, 0) << f16.err;
  auto fj = nlohmann::json::parse(f16.out);
  EXPECT_EQ(fj["tensors"].size(), 13u);
  EXPECT_EQ(fj["tensors"][0]["dtype"], "F16");
  auto cuda = Exec("load " + (d / "m") + " --device cuda:0");
  if (cuda.code != 0) {
    EXPECT_EQ(cuda.code, 9) << cuda.err;
    EXPECT_EQ(Lines(cuda.err), 1) << cuda.err;
  }
  EXPECT_EQ(Exec("load " + (d / "m") + " --device sim --sim-discard --digest sha256").code, 2);
  EXPECT_EQ(Exec("load " + (d / "m") + " --device tpu").code, 2);
}

TEST(Cli, TruncatedShardFailsLoadButInspectSeesNothingWrongWithHeaders) {
  TempDir d;
  ASSERT_EQ(Exec("synth " + (d / "m") + " --shards 2").code, 0);
  const std::string shard = d / "m/model-00002-of-00002.safetensors";
  auto size = std::filesystem::file_size(shard);
  std::filesystem::resize_file(shard, size - 1);
  auto r = Exec("load " + (d / "m"));
  EXPECT_EQ(r.code, 5) << "README: 5 is a truncated file; " << r.err;
  EXPECT_NE(r.err.find("model-00002-of-00002.safetensors"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("truncated?"), std::string::npos) << r.err;
  EXPECT_EQ(Lines(r.err), 1) << r.err;
}

TEST(Cli, MisspelledSubcommandIsNamedWithASuggestion) {
  auto r = Exec("laod x");
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "coldstart: error: unknown subcommand 'laod' (did you mean 'load'?)\n");
  auto far = Exec("frobnicate x");
  EXPECT_EQ(far.code, 2);
  EXPECT_NE(far.err.find("unknown subcommand 'frobnicate' (not one of inspect, load,"), std::string::npos) << far.err;
  EXPECT_EQ(Lines(far.err), 1);
}

TEST(Cli, OutOfRangeNumbersAndBadValuesAreUsageErrorsOnEveryDevice) {
  TempDir d;
  ASSERT_EQ(Exec("synth " + (d / "m")).code, 0);
  const std::string m = d / "m";
  struct Case {
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {"--concurrency 0", "--concurrency"},
      {"--queue-depth 0", "--queue-depth"},
      {"--threads 1000", "--threads"},
      {"--threads -1", "--threads"},
      {"--remote-chunk 0", "--remote-chunk"},
      {"--chunk 0", "--chunk"},
      {"--staging-bytes junk", "--staging-bytes"},
      {"--order bogus", "--order"},
      {"--convert f8", "--convert"},
      {"--sim-bandwidth 0", "--sim-bandwidth"},
  };
  for (const char* device : {"cpu", "sim"}) {
    for (const auto& c : cases) {
      auto r = Exec("load " + m + " --no-torch --device " + device + " " + c.args);
      EXPECT_EQ(r.code, 2) << device << " " << c.args << ": " << r.err;
      EXPECT_EQ(Lines(r.err), 1) << c.args << ": " << r.err;
      EXPECT_NE(r.err.find(c.expect), std::string::npos) << c.args << ": " << r.err;
      EXPECT_TRUE(r.out.empty()) << c.args;
    }
  }
}

TEST(Cli, CpuLoadHonoursOnlyAndRefusesDeviceOnlyFlags) {
  TempDir d;
  ASSERT_EQ(Exec("synth " + (d / "m") + " --shards 2").code, 0);
  const std::string m = d / "m";
  auto all = Exec("load " + m + " --no-torch --json --digest sha256");
  ASSERT_EQ(all.code, 0) << all.err;
  std::map<std::string, std::string> full;
  const auto aj = nlohmann::json::parse(all.out);  // named: a range-for over parse()[...] dangles
  for (const auto& t : aj["tensors"]) full[t["name"].get<std::string>()] = t["sha256"].get<std::string>();
  auto some = Exec("load " + m + " --no-torch --json --digest sha256 --only '*layers.0.*' --only '*embed*'");
  ASSERT_EQ(some.code, 0) << some.err;
  auto sj = nlohmann::json::parse(some.out);
  ASSERT_EQ(sj["tensors"].size(), 14u);  // 13 of layer 0 and the embedding
  std::uint64_t bytes = 0;
  for (const auto& t : sj["tensors"]) {
    const std::string name = t["name"];
    EXPECT_TRUE(name.find("layers.0.") != std::string::npos || name.find("embed") != std::string::npos) << name;
    ASSERT_EQ(full.count(name), 1u) << name;
    EXPECT_EQ(t["sha256"], full.at(name)) << name;
  }
  bytes = sj["bytes"];
  EXPECT_LT(bytes, aj["bytes"].get<std::uint64_t>()) << "only the selected bytes are read";

  // Matching nothing: the same line on every device, exit 3 (was: everything loaded, exit 0).
  auto cpu_none = Exec("load " + m + " --no-torch --only 'nothing*'");
  auto sim_none = Exec("load " + m + " --device sim --only 'nothing*'");
  EXPECT_EQ(cpu_none.code, 3) << cpu_none.err;
  EXPECT_EQ(sim_none.code, 3) << sim_none.err;
  EXPECT_EQ(cpu_none.err, "coldstart: error: " + m + ": no tensor matches --only 'nothing*'\n");
  EXPECT_EQ(cpu_none.err, sim_none.err);

  for (const char* flag : {"--convert f16", "--staging-bytes 1MiB", "--order layer", "--sim-discard"}) {
    auto r = Exec("load " + m + " --no-torch " + flag);
    EXPECT_EQ(r.code, 2) << flag << ": " << r.err;
    EXPECT_EQ(Lines(r.err), 1) << r.err;
    EXPECT_TRUE(r.out.empty()) << flag << " was ignored: " << r.out;
  }
  EXPECT_NE(Exec("load " + m + " --no-torch --convert f16").err.find("--convert needs --device cuda or sim"),
            std::string::npos);
  // What a cpu load does anyway is accepted.
  EXPECT_EQ(Exec("load " + m + " --no-torch --order file --convert none").code, 0);
}

TEST(Cli, SymlinkLoopsAreOneLineNotAnAbort) {
  TempDir d;
  ASSERT_EQ(Exec("synth " + (d / "m")).code, 0);
  ASSERT_EQ(::symlink("b.safetensors", (d / "m/a.safetensors").c_str()), 0);
  ASSERT_EQ(::symlink("a.safetensors", (d / "m/b.safetensors").c_str()), 0);
  ASSERT_EQ(::symlink("self", (d / "self").c_str()), 0);
  for (const std::string& path : {d / "m", d / "self"}) {
    for (const char* cmd : {"inspect", "load"}) {
      auto r = Exec(std::string(cmd) + " " + path);
      EXPECT_EQ(r.code, 3) << cmd << " " << path << ": " << r.err;  // was 134 (filesystem_error)
      EXPECT_EQ(Lines(r.err), 1) << r.err;
      EXPECT_NE(r.err.find("Too many levels of symbolic links"), std::string::npos) << r.err;
    }
  }
}

TEST(Cli, OddPathsGetOneLineAndADocumentedCode) {
  TempDir d;
  std::filesystem::create_directories(d / "empty");
  WriteFile(d / "notes/readme.txt", "hi");
  std::filesystem::create_directories(d / "dirs/x.safetensors");
  WriteFile(d / "dirs/y.safetensors", coldstart::testing::StFile("{}"));
  struct Case {
    std::string args;
    int code;
  };
  for (const auto& c : std::vector<Case>{{"load " + (d / "empty"), 3},
                                         {"load " + (d / "notes"), 3},
                                         {"load " + (d / "dirs"), 2},
                                         {"load /dev/null", 2},
                                         {"inspect /dev/null", 2},
                                         {"load " + (d / "notes/readme.txt/x"), 3}}) {
    auto r = Exec(c.args);
    EXPECT_EQ(r.code, c.code) << c.args << ": " << r.err;
    EXPECT_EQ(Lines(r.err), 1) << c.args << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << c.args;
  }
}

// Tests run as root, which no file mode refuses: the permission checks run the binary as the
// unprivileged uid 65534 through setpriv (util-linux). Where that is impossible they skip.
TEST(Cli, PermissionDeniedIsExitSeven) {
  if (::geteuid() != 0 || std::system("command -v setpriv >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "needs root and setpriv to run the CLI as an unprivileged user";
  TempDir d;  // mode 0700, owned by root: uid 65534 may not search it
  ASSERT_EQ(Exec("synth " + (d / "m") + " --shards 2").code, 0);
  const std::string nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups";
  auto as_nobody = [&](const std::string& args) { return Exec(args, nobody); };
  // A model inside a folder the user cannot search.
  auto r = as_nobody("inspect " + (d / "m"));
  EXPECT_EQ(r.code, 7) << r.err;
  EXPECT_NE(r.err.find("Permission denied"), std::string::npos) << r.err;
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  // Searchable folders but an unreadable shard.
  ASSERT_EQ(::chmod(d.path().c_str(), 0755), 0);
  ASSERT_EQ(::chmod((d / "m").c_str(), 0755), 0);
  ASSERT_EQ(::chmod((d / "m/model-00002-of-00002.safetensors").c_str(), 0600), 0);
  auto shard = as_nobody("load --no-torch " + (d / "m"));
  EXPECT_EQ(shard.code, 7) << shard.err;
  EXPECT_NE(shard.err.find("model-00002-of-00002.safetensors: cannot open: Permission denied"), std::string::npos)
      << shard.err;
  // A folder that may be searched but not listed (no index to go by).
  ASSERT_EQ(::unlink((d / "m/model.safetensors.index.json").c_str()), 0);
  ASSERT_EQ(::chmod((d / "m").c_str(), 0711), 0);
  auto list = as_nobody("inspect " + (d / "m"));
  EXPECT_EQ(list.code, 7) << list.err;
  EXPECT_NE(list.err.find("cannot list: Permission denied"), std::string::npos) << list.err;
  ASSERT_EQ(::chmod(d.path().c_str(), 0700), 0);
}

}  // namespace

// ---- remote sources through the CLI, against the fake GCS server on loopback ----

#include "coldstart/fake_gcs/server.h"

namespace {

class CliRemote : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(Exec("synth " + (root_ / "bkt/m") + " --size 2MiB --shards 2 --seed 4").code, 0);
    coldstart::fakegcs::ServerOptions o;
    o.root = root_.path();
    auto s = coldstart::fakegcs::Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.error().message;
    server_ = std::move(s).value();
    env_ = "STORAGE_EMULATOR_HOST=" + server_->endpoint() + " COLDSTART_METADATA=off COLDSTART_RETRY_INITIAL=0.01";
  }
  TempDir root_, out_;
  std::unique_ptr<coldstart::fakegcs::Server> server_;
  std::string env_;
};

TEST_F(CliRemote, PrefetchInspectLoadThroughGs) {
  auto p = Exec("prefetch gs://bkt/m " + (out_ / "m") + " --json", env_);
  ASSERT_EQ(p.code, 0) << p.err;
  auto j = nlohmann::json::parse(p.out);
  EXPECT_EQ(j["files"], 4);  // 2 shards, index, config
  EXPECT_EQ(j["verified_crc32c"], 4);
  for (const char* k : {"files", "bytes", "seconds", "gb_per_s", "retries"}) EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(coldstart::testing::ReadFile(out_ / "m/model-00002-of-00002.safetensors"),
            coldstart::testing::ReadFile(root_ / "bkt/m/model-00002-of-00002.safetensors"));
  auto again = Exec("prefetch gs://bkt/m " + (out_ / "m") + " --json", env_);
  ASSERT_EQ(again.code, 0);
  EXPECT_EQ(nlohmann::json::parse(again.out)["skipped"], 4);
  auto i = Exec("inspect gs://bkt/m --json", env_);
  ASSERT_EQ(i.code, 0) << i.err;
  auto l = Exec("load gs://bkt/m --digest sha256 --json --no-torch", env_);
  ASSERT_EQ(l.code, 0) << l.err;
  auto local = Exec("load " + (out_ / "m") + " --digest sha256 --json --no-torch");
  ASSERT_EQ(local.code, 0);
  EXPECT_EQ(nlohmann::json::parse(l.out)["tensors"], nlohmann::json::parse(local.out)["tensors"]);
  EXPECT_TRUE(nlohmann::json::parse(l.out)["network"]["crc32c_verified"].get<bool>());
  EXPECT_EQ(Exec("auth", env_).code, 0);
  auto a = Exec("auth gs://bkt", env_);
  EXPECT_EQ(a.code, 0);
  EXPECT_NE(a.out.find("anonymous"), std::string::npos) << a.out;
}

// A destination folder the user may not create is exit 7 (permission), not 6 (I/O).
TEST_F(CliRemote, PrefetchIntoAFolderWeMayNotCreateIsExitSeven) {
  if (::geteuid() != 0 || std::system("command -v setpriv >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "needs root and setpriv to run the CLI as an unprivileged user";
  ASSERT_EQ(::chmod(out_.path().c_str(), 0755), 0);  // root's, searchable, not writable by others
  auto r = Exec("prefetch gs://bkt/m " + (out_ / "sub/m"), "setpriv --reuid=65534 --regid=65534 --clear-groups env " + env_);
  EXPECT_EQ(r.code, 7) << r.err;
  EXPECT_NE(r.err.find("Permission denied"), std::string::npos) << r.err;
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  ASSERT_EQ(::chmod(out_.path().c_str(), 0700), 0);
}

TEST_F(CliRemote, ErrorsAreOneLineWithTheRightExitCode) {
  auto missing = Exec("prefetch gs://bkt/nope " + (out_ / "x"), env_);
  EXPECT_EQ(missing.code, 3) << missing.err;
  EXPECT_EQ(Lines(missing.err), 1) << missing.err;
  EXPECT_NE(missing.err.find("gs://bkt/nope"), std::string::npos);
  auto local = Exec("prefetch /tmp " + (out_ / "x"), env_);
  EXPECT_EQ(local.code, 2);
  auto bad_bucket = Exec("prefetch gs://Bad_Bucket/x " + (out_ / "x"), env_);
  EXPECT_EQ(bad_bucket.code, 2) << bad_bucket.err;
  auto bad_header = Exec("prefetch gs://bkt/m " + (out_ / "x") + " --header nocolon", env_);
  EXPECT_EQ(bad_header.code, 2);
  coldstart::fakegcs::FaultSpec f;
  f.kind = coldstart::fakegcs::FaultSpec::Kind::kCorrupt;
  f.after_bytes = 200000;  // in the data section: the header stays readable
  f.count = 0;
  f.object_glob = "bkt/m/model-00001-of-00002.safetensors";
  server_->AddFault(f);
  auto corrupt = Exec("prefetch gs://bkt/m " + (out_ / "c"), env_);
  EXPECT_EQ(corrupt.code, 5) << corrupt.err;
  EXPECT_EQ(Lines(corrupt.err), 1) << corrupt.err;
  EXPECT_NE(corrupt.err.find("CRC32C mismatch"), std::string::npos) << corrupt.err;
  EXPECT_FALSE(std::filesystem::exists(out_ / "c/model-00001-of-00002.safetensors"));
  auto load = Exec("load gs://bkt/m --no-torch", env_);
  EXPECT_EQ(load.code, 5) << load.err;
}

TEST_F(CliRemote, NotASafetensorsBodyIsNeverSavedAsAModel) {
  WriteFile(root_ / "bkt/h/model.safetensors", "<!DOCTYPE html><html><body>Sign in to continue</body></html>\n");
  auto r = Exec("prefetch gs://bkt/h " + (out_ / "h"), env_);
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_NE(r.err.find("gs://bkt/h/model.safetensors"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("not a safetensors file"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty());
  EXPECT_TRUE(std::filesystem::is_empty(out_ / "h")) << "nothing under the final name, no partial left";
}

TEST_F(CliRemote, PlantedSymlinksAreNeverFollowed) {
  const std::string victim = out_ / "victim";
  WriteFile(victim, "precious");
  std::filesystem::create_directories(out_ / "m");
  // The fixed temporary name of earlier versions: removed (the link, not its target).
  const std::string old_name = out_ / "m/model-00001-of-00002.safetensors.coldstart-partial";
  ASSERT_EQ(::symlink(victim.c_str(), old_name.c_str()), 0);
  auto p = Exec("prefetch gs://bkt/m " + (out_ / "m") + " --json", env_);
  ASSERT_EQ(p.code, 0) << p.err;
  EXPECT_EQ(coldstart::testing::ReadFile(victim), "precious");
  EXPECT_FALSE(std::filesystem::is_symlink(old_name));
  EXPECT_EQ(coldstart::testing::ReadFile(out_ / "m/model-00001-of-00002.safetensors"),
            coldstart::testing::ReadFile(root_ / "bkt/m/model-00001-of-00002.safetensors"));
  // At a lock's name: refused with one line, nothing written through it.
  std::filesystem::create_directories(out_ / "n");
  ASSERT_EQ(::symlink(victim.c_str(), (out_ / "n/.config.json.coldstart-lock").c_str()), 0);
  auto q = Exec("prefetch gs://bkt/m " + (out_ / "n"), env_);
  EXPECT_EQ(q.code, 6) << q.err;
  EXPECT_EQ(Lines(q.err), 1) << q.err;
  EXPECT_NE(q.err.find("symbolic link"), std::string::npos) << q.err;
  EXPECT_EQ(coldstart::testing::ReadFile(victim), "precious");
}

// ---- slow transfers: signals, concurrent runs and resume ----

// The CLI as a child process whose pid we know (the shell execs it), output into files.
class Child {
 public:
  Child(const std::string& args, const std::string& env) {
    const std::string cmd = "exec env " + env + " " + COLDSTART_BIN + " " + args + " >" + (t_ / "out") + " 2>" + (t_ / "err");
    pid_ = ::fork();
    if (pid_ == 0) {
      ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  void Signal(int sig) { ::kill(pid_, sig); }
  Run Wait() {
    int status = 0;
    ::waitpid(pid_, &status, 0);
    Run r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = coldstart::testing::ReadFile(t_ / "out");
    r.err = coldstart::testing::ReadFile(t_ / "err");
    return r;
  }

 private:
  TempDir t_;
  pid_t pid_ = -1;
};

// A 4 MiB model behind a server that sends 1 MiB/s per connection.
class CliSlow : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(Exec("synth " + (root_ / "bkt/m") + " --size 4MiB --shards 2 --seed 5").code, 0);
    coldstart::fakegcs::ServerOptions o;
    o.root = root_.path();
    o.rate_limit_bytes_per_s = 1 << 20;
    auto s = coldstart::fakegcs::Server::Start(o);
    ASSERT_TRUE(s.ok()) << s.error().message;
    server_ = std::move(s).value();
    env_ = "STORAGE_EMULATOR_HOST=" + server_->endpoint() + " COLDSTART_METADATA=off COLDSTART_RETRY_INITIAL=0.01";
  }
  // Every file we wrote equals the source; what else is left in the folder.
  std::vector<std::string> CheckFolder(const std::string& dir) {
    std::vector<std::string> hidden;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      if (name[0] == '.') {
        hidden.push_back(name);
        continue;
      }
      EXPECT_EQ(coldstart::testing::ReadFile(e.path().string()), coldstart::testing::ReadFile(root_ / ("bkt/m/" + name))) << name;
    }
    return hidden;
  }
  TempDir root_, out_;
  std::unique_ptr<coldstart::fakegcs::Server> server_;
  std::string env_;
};

TEST_F(CliSlow, SignalsCancelPrefetchInOneLineAndTheNextRunResumes) {
  const std::string dest = out_ / "m";
  const std::string slow = "prefetch gs://bkt/m " + dest + " --json --concurrency 1 --remote-chunk 128KiB";
  Child a(slow, env_);
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  a.Signal(SIGINT);
  auto ra = a.Wait();
  EXPECT_EQ(ra.code, 130) << ra.err;
  EXPECT_EQ(Lines(ra.err), 1) << ra.err;
  EXPECT_EQ(ra.err.rfind("coldstart: cancelled by SIGINT", 0), 0u) << ra.err;
  EXPECT_TRUE(ra.out.empty()) << ra.out;
  auto left = CheckFolder(dest);
  std::size_t partials = 0, records = 0;
  for (const auto& n : left) {
    partials += n.find(".coldstart-partial.") != std::string::npos;
    records += n.find(".coldstart-resume") != std::string::npos;
    EXPECT_EQ(n.find(".coldstart-lock"), std::string::npos) << n;
  }
  EXPECT_GE(partials, 1u) << "verified ranges are kept";
  EXPECT_EQ(partials, records) << "each kept partial has its resume record";

  Child b(slow, env_);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  b.Signal(SIGTERM);
  auto rb = b.Wait();
  EXPECT_EQ(rb.code, 143) << rb.err;
  EXPECT_EQ(Lines(rb.err), 1) << rb.err;
  EXPECT_EQ(rb.err.rfind("coldstart: cancelled by SIGTERM", 0), 0u) << rb.err;

  server_->ResetStats();
  auto done = Exec("prefetch gs://bkt/m " + dest + " --json --concurrency 8 --remote-chunk 128KiB", env_);
  ASSERT_EQ(done.code, 0) << done.err;
  auto j = nlohmann::json::parse(done.out);
  const auto resumed = j["resumed_bytes"].get<std::uint64_t>();
  EXPECT_GT(resumed, 1u << 20) << "about 1.7 s at 1 MiB/s were kept";
  std::uint64_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(root_ / "bkt/m")) total += e.file_size();
  EXPECT_LE(server_->stats().media_bytes_sent, total - resumed) << "kept ranges are not fetched again";
  EXPECT_TRUE(CheckFolder(dest).empty()) << "no partial, record or lock left";
}

TEST_F(CliSlow, SignalsCancelLoadsInOneLine) {
  Child host("load gs://bkt/m --no-torch --concurrency 1 --remote-chunk 128KiB", env_);
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  host.Signal(SIGTERM);
  auto r = host.Wait();
  EXPECT_EQ(r.code, 143) << r.err;
  EXPECT_EQ(Lines(r.err), 1) << r.err;
  EXPECT_EQ(r.err.rfind("coldstart: cancelled by SIGTERM", 0), 0u) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  Child sim("load gs://bkt/m --device sim --concurrency 1 --remote-chunk 128KiB", env_);
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  sim.Signal(SIGINT);
  auto s = sim.Wait();
  EXPECT_EQ(s.code, 130) << s.err;
  EXPECT_EQ(Lines(s.err), 1) << s.err;
  EXPECT_EQ(s.err.rfind("coldstart: cancelled by SIGINT", 0), 0u) << s.err;
}

// A server that takes its time with the listing: the first signal ends the load at once, in one
// line with the usual status, rather than once the listing's retries give up (minutes).
TEST_F(CliSlow, ASignalDuringTheListingEndsTheLoadAtOnce) {
  coldstart::fakegcs::FaultSpec slow;
  slow.kind = coldstart::fakegcs::FaultSpec::Kind::kFirstByteDelay;
  slow.seconds = 20;
  slow.media_only = false;  // the listing and metadata requests too
  slow.count = 0;           // every one
  server_->AddFault(slow);
  for (const auto& [args, sig, code] : std::vector<std::tuple<std::string, int, int>>{
           {"load gs://bkt/m --no-torch", SIGTERM, 143}, {"load gs://bkt/m --device sim", SIGINT, 130}}) {
    Child c(args, env_);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    const auto t0 = std::chrono::steady_clock::now();
    c.Signal(sig);
    auto r = c.Wait();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5)) << args;
    EXPECT_EQ(r.code, code) << args << ": " << r.err;
    EXPECT_EQ(Lines(r.err), 1) << r.err;
    EXPECT_NE(r.err.find("cancelled by " + std::string(sig == SIGINT ? "SIGINT" : "SIGTERM") + " (while listing"),
              std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty()) << r.out;
  }
}

TEST_F(CliSlow, ConcurrentPrefetchesIntoOneFolderNeverShareAFile) {
  const std::string dest = out_ / "m";
  const std::string args = "prefetch gs://bkt/m " + dest + " --json --concurrency 4 --remote-chunk 256KiB";
  Child a(args, env_), b(args, env_);
  auto ra = a.Wait(), rb = b.Wait();
  ASSERT_EQ(ra.code, 0) << ra.err;
  ASSERT_EQ(rb.code, 0) << rb.err;
  auto ja = nlohmann::json::parse(ra.out), jb = nlohmann::json::parse(rb.out);
  EXPECT_EQ(ja["files"].get<int>() + jb["files"].get<int>(), 4) << "each file written once: " << ra.out << rb.out;
  EXPECT_EQ(ja["skipped"].get<int>() + jb["skipped"].get<int>(), 4);
  EXPECT_GE(ja["lock_waits"].get<int>() + jb["lock_waits"].get<int>(), 1);
  EXPECT_TRUE(CheckFolder(dest).empty());
}

// Two processes loading one model at once through one disk cache: the origin sends each byte
// about once (a chunk one of them is fetching, the other waits for and reads from the cache).
TEST_F(CliSlow, TwoLoadProcessesOnOneCacheFetchEachByteOnce) {
  std::uint64_t model = 0;
  for (const auto& e : std::filesystem::directory_iterator(root_ / "bkt/m")) model += std::filesystem::file_size(e.path());
  server_->ResetStats();
  const std::string args = "load gs://bkt/m --no-torch --json --digest sha256 --cache-dir " + (out_ / "cache");
  Child a(args, env_), b(args, env_);
  auto ra = a.Wait(), rb = b.Wait();
  ASSERT_EQ(ra.code, 0) << ra.err;
  ASSERT_EQ(rb.code, 0) << rb.err;
  auto ja = nlohmann::json::parse(ra.out), jb = nlohmann::json::parse(rb.out);
  EXPECT_EQ(ja["tensors"], jb["tensors"]);
  const auto sent = server_->stats().media_bytes_sent;
  EXPECT_LE(static_cast<double>(sent), 1.15 * static_cast<double>(model)) << "origin sent " << sent << " for a model of " << model;
  EXPECT_GT(ja["cache"]["hit_bytes"].get<std::uint64_t>() + jb["cache"]["hit_bytes"].get<std::uint64_t>(), 0u);
  // A third load reads the cache only.
  server_->ResetStats();
  auto c = Exec(args, env_);
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_EQ(nlohmann::json::parse(c.out)["tensors"], ja["tensors"]);
  EXPECT_EQ(server_->stats().media_bytes_sent, 0u);
}

}  // namespace

// ---- `coldstart cache`, over a cache filled through the library ----

#include <fcntl.h>

#include "coldstart/cache/disk_cache.h"
#include "coldstart/core/crc32c.h"

namespace {

using coldstart::cache::ChunkClaim;
using coldstart::cache::ClaimState;
using coldstart::cache::DiskCache;
using coldstart::cache::DiskCacheOptions;
using coldstart::cache::ObjectKey;

// Fills chunks [0, n) of `key` (n = all when -1) with bytes derived from the chunk index.
void FillChunks(DiskCache& cache, const ObjectKey& key, int n = -1) {
  auto e = cache.OpenEntry(key);
  ASSERT_TRUE(e.ok()) << e.error().ToString();
  for (std::size_t c = 0; c < (*e)->chunk_count() && (n < 0 || static_cast<int>(c) < n); ++c) {
    ChunkClaim claim;
    ASSERT_EQ(*(*e)->Claim(c, &claim), ClaimState::kClaimed);
    std::vector<std::byte> b((*e)->ChunkLength(c), static_cast<std::byte>(c + 1));
    ASSERT_TRUE((*e)->Fill(std::move(claim), b.data(), coldstart::Crc32c(b.data(), b.size())).ok());
  }
}

TEST(Cli, CacheLsVerifyEvictClear) {
  TempDir d;
  const std::string dir = d / "cache";
  auto missing = Exec("cache ls --cache-dir " + dir);
  EXPECT_EQ(missing.code, 3) << missing.err;
  EXPECT_EQ(Lines(missing.err), 1) << missing.err;
  EXPECT_FALSE(std::filesystem::exists(dir)) << "looking never creates a cache";

  DiskCacheOptions o;
  o.dir = dir;
  o.chunk_bytes = 4096;
  auto cache = DiskCache::Open(o);
  ASSERT_TRUE(cache.ok()) << cache.error().ToString();
  const ObjectKey a{"gs://bkt@http://127.0.0.1:1", "m/model-a.safetensors", "11", 3 * 4096};
  const ObjectKey b{"gs://bkt@http://127.0.0.1:1", "m/model-b.safetensors", "12", 2 * 4096};
  const ObjectKey held{"https://example.test", "/m/model.safetensors", "\"etag\"", 4096};
  FillChunks(**cache, a);
  FillChunks(**cache, b, 1);
  auto held_entry = (*cache)->OpenEntry(held);  // open here: in use while the CLI runs
  ASSERT_TRUE(held_entry.ok());
  FillChunks(**cache, held);
  struct timespec old[2] = {{1'700'000'000, 0}, {1'700'000'000, 0}};
  auto entries = (*cache)->List();
  ASSERT_TRUE(entries.ok());
  for (const auto& e : *entries) ASSERT_EQ(::utimensat(AT_FDCWD, (e.path + "/use").c_str(), old, 0), 0);

  auto ls = Exec("cache ls --json --cache-dir " + dir);
  ASSERT_EQ(ls.code, 0) << ls.err;
  auto j = nlohmann::json::parse(ls.out);
  EXPECT_EQ(j["dir"], dir);
  EXPECT_EQ(j["chunk_bytes"], 4096);
  EXPECT_EQ(j["total_bytes"], 5 * 4096);
  ASSERT_EQ(j["entries"].size(), 3u);
  std::map<std::string, nlohmann::json> by_name;
  for (const auto& e : j["entries"]) by_name[e["name"]] = e;
  EXPECT_EQ(by_name["m/model-a.safetensors"]["present_bytes"], 3 * 4096);
  EXPECT_EQ(by_name["m/model-a.safetensors"]["complete"], true);
  EXPECT_EQ(by_name["m/model-a.safetensors"]["version"], "11");
  EXPECT_EQ(by_name["m/model-b.safetensors"]["present_bytes"], 4096);
  EXPECT_EQ(by_name["m/model-b.safetensors"]["complete"], false);
  EXPECT_EQ(by_name["/m/model.safetensors"]["in_use"], true);
  EXPECT_EQ(by_name["m/model-a.safetensors"]["in_use"], false);
  EXPECT_EQ(by_name["m/model-a.safetensors"]["last_used_unix"], 1'700'000'000);

  // COLDSTART_CACHE_DIR names the folder too; one line per entry plus the total.
  auto human = Exec("cache ls", "COLDSTART_CACHE_DIR=" + dir);
  ASSERT_EQ(human.code, 0) << human.err;
  EXPECT_EQ(Lines(human.out), 4) << human.out;
  EXPECT_NE(human.out.find("m/model-b.safetensors  version 12  4.00 KiB/8.00 KiB (50%)  last use 2023-11-14"),
            std::string::npos) << human.out;
  EXPECT_NE(human.out.find("/m/model.safetensors  version \"etag\"  4.00 KiB/4.00 KiB (100%)"), std::string::npos);
  EXPECT_NE(human.out.find("in use\n"), std::string::npos);
  EXPECT_NE(human.out.find("3 entries, 20.00 KiB cached in " + dir), std::string::npos) << human.out;
  // The XDG default when nothing names the folder.
  auto xdg = Exec("cache ls", "XDG_CACHE_HOME=" + (d / "xdg"));
  EXPECT_EQ(xdg.code, 3);
  EXPECT_NE(xdg.err.find(d / "xdg/coldstart"), std::string::npos) << xdg.err;

  // A flipped byte on disk: verify finds it, clears it, says so, exit 5; then all is well.
  {
    auto e = (*cache)->FindEntry(a);
    ASSERT_TRUE(e.ok());
    std::FILE* f = std::fopen((*e)->data_path().c_str(), "r+b");
    ASSERT_NE(f, nullptr);
    std::fseek(f, 4096 + 7, SEEK_SET);
    std::fputc(0x55, f);
    std::fclose(f);
  }
  auto v = Exec("cache verify --cache-dir " + dir);
  EXPECT_EQ(v.code, 5) << v.err;
  EXPECT_EQ(Lines(v.err), 1) << v.err;
  EXPECT_NE(v.out.find("model-a.safetensors (chunk 1)"), std::string::npos) << v.out;
  auto v2 = Exec("cache verify --json --cache-dir " + dir);
  ASSERT_EQ(v2.code, 0) << v2.err;
  auto vj = nlohmann::json::parse(v2.out);
  EXPECT_EQ(vj["entries"], 3);
  EXPECT_EQ(vj["chunks_checked"], 4);  // a: 2 of 3 left, b: 1, held: 1
  EXPECT_EQ(vj["corrupt_chunks"], 0);

  // evict needs a size; least recently used first, never the entry in use.
  auto nocap = Exec("cache evict --cache-dir " + dir);
  EXPECT_EQ(nocap.code, 2);
  EXPECT_EQ(Lines(nocap.err), 1);
  EXPECT_EQ(Exec("cache evict --max-bytes lots --cache-dir " + dir).code, 2);
  EXPECT_EQ(Exec("cache bogus").code, 2);
  auto ev = Exec("cache evict --json --cache-dir " + dir, "COLDSTART_CACHE_MAX_BYTES=8KiB");
  ASSERT_EQ(ev.code, 0) << ev.err;
  auto ej = nlohmann::json::parse(ev.out);
  EXPECT_EQ(ej["max_bytes"], 8192);
  EXPECT_LE(ej["used_bytes"].get<std::uint64_t>(), 8192u);
  EXPECT_GE(ej["entries_removed"].get<int>(), 1);
  EXPECT_TRUE((*cache)->FindEntry(held).ok());

  auto cl = Exec("cache clear --cache-dir " + dir);
  ASSERT_EQ(cl.code, 0) << cl.err;
  EXPECT_NE(cl.out.find("1 in use kept"), std::string::npos) << cl.out;
  auto after = Exec("cache ls --json --cache-dir " + dir);
  ASSERT_EQ(after.code, 0);
  auto aj = nlohmann::json::parse(after.out);
  ASSERT_EQ(aj["entries"].size(), 1u);
  EXPECT_EQ(aj["entries"][0]["name"], "/m/model.safetensors");
  EXPECT_NE(Exec("env").out.find("COLDSTART_CACHE_DIR"), std::string::npos);
}

}  // namespace
