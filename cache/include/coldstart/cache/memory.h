// How much memory this process may still use. Inside a container the cgroup's limit is what
// counts: on Cloud Run or GKE the host has far more free memory than the container may take,
// and going past the limit is an OOM kill, not a slow swap. The staging budget and the host
// arena's early check are sized from this, never from the host's free memory alone.
#pragma once

#include <cstdint>
#include <string>

namespace coldstart::cache {

// Where the probe looks; tests point it at a fake tree under a temporary folder.
struct MemoryProbe {
  std::string proc_self_cgroup = "/proc/self/cgroup";
  std::string cgroup_root = "/sys/fs/cgroup";  // v2 mount, or the folder holding v1's "memory/"
  std::string meminfo = "/proc/meminfo";
};

struct MemoryAvailability {
  std::uint64_t bytes = 0;         // what may still be used: min(host, cgroup)
  std::uint64_t host_bytes = 0;    // MemAvailable of /proc/meminfo (or free pages when unreadable)
  std::uint64_t cgroup_limit = 0;  // the tightest cgroup limit on the way to the root; 0 = none
  std::string cgroup;              // "v2 /sys/fs/cgroup/x" or "v1 ..." where that limit is; "" = none
  std::string ToString() const;    // "3.2 GiB available (cgroup v2 limit 4.0 GiB at ...)"
};

// The cgroup of this process (from /proc/self/cgroup: v1's "memory" line, else v2's "0::/path")
// and each of its ancestors up to the mount: limit (v2 memory.max, v1 memory.limit_in_bytes;
// "max" or v1's near-2^63 value = none) minus usage (memory.current / memory.usage_in_bytes)
// less the inactive page cache the kernel reclaims before it would OOM (memory.stat
// inactive_file / total_inactive_file, as the kubelet counts a working set). The smallest
// remainder wins, never more than the host's MemAvailable. A cgroup path that does not exist
// under the mount (no cgroup namespace) is read at the mount itself. Missing or malformed files
// mean "no limit there", never a crash.
MemoryAvailability ProbeAvailableMemory(const MemoryProbe& probe);
std::uint64_t AvailableMemoryBytes(const MemoryProbe& probe);
std::uint64_t AvailableMemoryBytes();  // the real /proc and /sys

}  // namespace coldstart::cache
