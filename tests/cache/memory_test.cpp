// The memory probe over fake /proc and /sys trees: cgroup v2 and v1 limits, nested cgroups,
// no limit, no namespace, malformed files (fall back, never crash), and the arena's early refusal.
#include "coldstart/cache/memory.h"

#include <gtest/gtest.h>

#include "../common/temp_dir.h"
#include "coldstart/cache/host_arena.h"

namespace coldstart::cache {
namespace {

using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;

constexpr std::uint64_t kGiB = 1ull << 30;
constexpr std::uint64_t kMiB = 1ull << 20;

class FakeTree {
 public:
  FakeTree() {
    probe.proc_self_cgroup = dir_ / "proc/self/cgroup";
    probe.cgroup_root = dir_ / "sys/fs/cgroup";
    probe.meminfo = dir_ / "proc/meminfo";
    // 64 GiB host, 48 GiB available.
    WriteFile(probe.meminfo, "MemTotal:       67108864 kB\nMemFree:         1000000 kB\nMemAvailable:   50331648 kB\n");
  }
  void File(const std::string& rel, const std::string& text) { WriteFile(probe.cgroup_root + "/" + rel, text); }
  MemoryProbe probe;

 private:
  TempDir dir_;
};

TEST(AvailableMemory, NoCgroupFileMeansMemAvailable) {
  FakeTree t;
  EXPECT_EQ(AvailableMemoryBytes(t.probe), 48 * kGiB);
  auto a = ProbeAvailableMemory(t.probe);
  EXPECT_EQ(a.cgroup_limit, 0u);
  EXPECT_NE(a.ToString().find("no cgroup memory limit"), std::string::npos) << a.ToString();
}

TEST(AvailableMemory, V2LimitMinusWorkingSet) {
  FakeTree t;
  WriteFile(t.probe.proc_self_cgroup, "0::/kubepods/pod1/ctr\n");
  t.File("kubepods/pod1/ctr/memory.max", std::to_string(4 * kGiB) + "\n");
  t.File("kubepods/pod1/ctr/memory.current", std::to_string(1 * kGiB + 512 * kMiB) + "\n");
  // Inactive page cache is reclaimed before an OOM kill: it does not count as used.
  t.File("kubepods/pod1/ctr/memory.stat", "anon 1073741824\ninactive_file " + std::to_string(512 * kMiB) + "\nactive_file 0\n");
  auto a = ProbeAvailableMemory(t.probe);
  EXPECT_EQ(a.bytes, 3 * kGiB);
  EXPECT_EQ(a.cgroup_limit, 4 * kGiB);
  EXPECT_EQ(a.host_bytes, 48 * kGiB);
  EXPECT_NE(a.ToString().find("cgroup v2 limit 4.00 GiB"), std::string::npos) << a.ToString();
}

TEST(AvailableMemory, V2MaxMeansNoLimitButAnAncestorsLimitCounts) {
  FakeTree t;
  WriteFile(t.probe.proc_self_cgroup, "0::/a/b\n");
  t.File("a/b/memory.max", "max\n");
  t.File("a/b/memory.current", "100\n");
  EXPECT_EQ(AvailableMemoryBytes(t.probe), 48 * kGiB) << "max everywhere: the host's figure";
  t.File("a/memory.max", std::to_string(2 * kGiB));
  t.File("a/memory.current", std::to_string(kGiB));
  auto a = ProbeAvailableMemory(t.probe);
  EXPECT_EQ(a.bytes, kGiB) << "the parent's limit binds the child";
  EXPECT_NE(a.cgroup.find("/sys/fs/cgroup/a"), std::string::npos) << a.cgroup;
}

TEST(AvailableMemory, NeverMoreThanTheHostHas) {
  FakeTree t;
  WriteFile(t.probe.proc_self_cgroup, "0::/\n");
  t.File("memory.max", std::to_string(1024 * kGiB));
  t.File("memory.current", "0");
  EXPECT_EQ(AvailableMemoryBytes(t.probe), 48 * kGiB);
}

TEST(AvailableMemory, V2PathMissingUnderTheMountReadsTheMountItself) {
  // Docker without a cgroup namespace: /proc/self/cgroup names the host's path, and the
  // container's own cgroup is mounted at /sys/fs/cgroup.
  FakeTree t;
  WriteFile(t.probe.proc_self_cgroup, "0::/system.slice/docker-abc.scope\n");
  t.File("memory.max", std::to_string(2 * kGiB));
  t.File("memory.current", std::to_string(512 * kMiB));
  EXPECT_EQ(AvailableMemoryBytes(t.probe), 2 * kGiB - 512 * kMiB);
}

TEST(AvailableMemory, V1LimitAndItsNoLimitValue) {
  FakeTree t;
  WriteFile(t.probe.proc_self_cgroup, "12:pids:/x\n4:memory:/docker/abc\n0::/\n");
  t.File("memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n");
  t.File("memory/docker/abc/memory.usage_in_bytes", "1000\n");
  EXPECT_EQ(AvailableMemoryBytes(t.probe), 48 * kGiB) << "v1's 'unlimited' is not a limit";
  t.File("memory/docker/abc/memory.limit_in_bytes", std::to_string(8 * kGiB) + "\n");
  t.File("memory/docker/abc/memory.usage_in_bytes", std::to_string(3 * kGiB) + "\n");
  t.File("memory/docker/abc/memory.stat", "cache 0\ntotal_inactive_file " + std::to_string(kGiB) + "\n");
  auto a = ProbeAvailableMemory(t.probe);
  EXPECT_EQ(a.bytes, 6 * kGiB);
  EXPECT_EQ(a.cgroup.rfind("v1 ", 0), 0u) << a.cgroup;
}

TEST(AvailableMemory, MalformedFilesFallBackWithoutCrashing) {
  FakeTree t;
  WriteFile(t.probe.proc_self_cgroup, "garbage without colons\n0::/c\n");
  t.File("c/memory.max", "12x\n");  // not a number: no limit we can trust
  t.File("c/memory.current", "5\n");
  EXPECT_EQ(AvailableMemoryBytes(t.probe), 48 * kGiB);
  t.File("c/memory.max", std::to_string(kGiB));
  t.File("c/memory.current", "");  // unreadable usage: same
  EXPECT_EQ(AvailableMemoryBytes(t.probe), 48 * kGiB);
  t.File("c/memory.current", std::to_string(2 * kGiB));  // over the limit: nothing left, not a wrap-around
  EXPECT_EQ(AvailableMemoryBytes(t.probe), 0u);
  WriteFile(t.probe.proc_self_cgroup, "0::/../../etc\n");  // never leaves the mount
  EXPECT_EQ(AvailableMemoryBytes(t.probe), 48 * kGiB);
  WriteFile(t.probe.meminfo, "MemAvailable: lots\n");  // no usable MemAvailable: free pages, > 0
  EXPECT_GT(AvailableMemoryBytes(t.probe), 0u);
  t.probe.proc_self_cgroup = "/nonexistent/cgroup";
  t.probe.meminfo = "/nonexistent/meminfo";
  EXPECT_GT(AvailableMemoryBytes(t.probe), 0u);
}

TEST(AvailableMemory, TheRealMachineGivesAPositiveFigure) {
  EXPECT_GT(AvailableMemoryBytes(), 0u);
}

TEST(HostArenaMemory, AnArenaLargerThanTheCgroupAllowsIsRefusedUpFront) {
  FakeTree t;
  WriteFile(t.probe.proc_self_cgroup, "0::/ctr\n");
  t.File("ctr/memory.max", std::to_string(256 * kMiB));
  t.File("ctr/memory.current", std::to_string(64 * kMiB));
  HostArenaOptions o;
  o.probe = t.probe;
  auto big = HostArena::Allocate(kGiB, o);
  ASSERT_FALSE(big.ok()) << "MAP_NORESERVE would succeed and the load would be OOM-killed halfway";
  EXPECT_EQ(big.error().code, Errc::kResourceExhausted);
  EXPECT_NE(big.error().message.find("needs 1.00 GiB"), std::string::npos) << big.error().message;
  EXPECT_NE(big.error().message.find("192.00 MiB available"), std::string::npos) << big.error().message;
  auto small = HostArena::Allocate(64 * kMiB, o);
  ASSERT_TRUE(small.ok()) << small.error().message;
  o.resident_bytes = 32 * kMiB;  // a filtered load writes only part of a large arena
  EXPECT_TRUE(HostArena::Allocate(kGiB, o).ok());
}

}  // namespace
}  // namespace coldstart::cache
