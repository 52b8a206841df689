// One anonymous mapping that holds a whole model's host-side bytes (tensors are slices of it).
// 2 MiB aligned so transparent huge pages can back it, and so any 4 KiB-aligned file offset
// can be mirrored by an address with the same alignment (what O_DIRECT reads need).
#pragma once

#include <cstddef>
#include <cstdint>

#include "coldstart/cache/memory.h"
#include "coldstart/core/result.h"

namespace coldstart::cache {

struct HostArenaOptions {
  // madvise(MADV_HUGEPAGE): 512x fewer page faults while the arena fills (COLDSTART_HUGE_PAGES).
  bool huge_pages = true;
  // Bytes of the arena that will be written (a load of a few tensors of a large model touches
  // only those); 0 = all of it. Allocate refuses, with Errc::kResourceExhausted, when this is
  // more than AvailableMemoryBytes() (cache/memory.h: the cgroup limit inside a container): the
  // mapping is MAP_NORESERVE, so without the check the load would end in an OOM kill halfway.
  std::uint64_t resident_bytes = 0;
  MemoryProbe probe;  // where that check looks (tests: a fake cgroup tree)
};

class HostArena {
 public:
  static constexpr std::uint64_t kAlignment = 2ull << 20;

  static Result<HostArena> Allocate(std::uint64_t bytes, const HostArenaOptions& options = {});

  HostArena() = default;
  HostArena(HostArena&& o) noexcept;
  HostArena& operator=(HostArena&& o) noexcept;
  HostArena(const HostArena&) = delete;
  HostArena& operator=(const HostArena&) = delete;
  ~HostArena();

  std::byte* data() const { return data_; }
  std::uint64_t size() const { return size_; }

 private:
  void Release();
  std::byte* data_ = nullptr;
  std::uint64_t size_ = 0;      // bytes the caller asked for
  std::uint64_t mapped_ = 0;    // bytes mapped (rounded up)
};

}  // namespace coldstart::cache
