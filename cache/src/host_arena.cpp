#include "coldstart/cache/host_arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <string>

#include "coldstart/cache/memory.h"
#include "coldstart/core/env.h"

namespace coldstart::cache {

Result<HostArena> HostArena::Allocate(std::uint64_t bytes, const HostArenaOptions& options) {
  HostArena a;
  if (bytes == 0) return a;
  const std::uint64_t resident = options.resident_bytes ? std::min(options.resident_bytes, bytes) : bytes;
  if (const MemoryAvailability avail = ProbeAvailableMemory(options.probe); resident > avail.bytes)
    return MakeError(Errc::kResourceExhausted, "the model needs " + FormatBytes(static_cast<double>(resident)) +
                                                   " of host memory but only " + avail.ToString());
  std::uint64_t mapped = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  // Over-map by one alignment unit and trim, so the base is 2 MiB aligned.
  std::uint64_t raw_size = mapped + kAlignment;
  void* raw = ::mmap(nullptr, raw_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED)
    return MakeSysError(Errc::kResourceExhausted,
                        "cannot map " + FormatBytes(static_cast<double>(bytes)) + " of host memory for the model",
                        errno);
  auto base = reinterpret_cast<std::uintptr_t>(raw);
  auto aligned = (base + kAlignment - 1) / kAlignment * kAlignment;
  if (aligned > base) ::munmap(raw, aligned - base);
  std::uint64_t tail = (base + raw_size) - (aligned + mapped);
  if (tail > 0) ::munmap(reinterpret_cast<void*>(aligned + mapped), tail);
  if (options.huge_pages) ::madvise(reinterpret_cast<void*>(aligned), mapped, MADV_HUGEPAGE);
  a.data_ = reinterpret_cast<std::byte*>(aligned);
  a.size_ = bytes;
  a.mapped_ = mapped;
  return a;
}

HostArena::HostArena(HostArena&& o) noexcept : data_(o.data_), size_(o.size_), mapped_(o.mapped_) {
  o.data_ = nullptr;
  o.size_ = o.mapped_ = 0;
}

HostArena& HostArena::operator=(HostArena&& o) noexcept {
  if (this != &o) {
    Release();
    data_ = o.data_;
    size_ = o.size_;
    mapped_ = o.mapped_;
    o.data_ = nullptr;
    o.size_ = o.mapped_ = 0;
  }
  return *this;
}

HostArena::~HostArena() { Release(); }

void HostArena::Release() {
  if (data_ != nullptr) ::munmap(data_, mapped_);
  data_ = nullptr;
  size_ = mapped_ = 0;
}

}  // namespace coldstart::cache
