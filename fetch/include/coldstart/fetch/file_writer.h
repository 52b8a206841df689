// The file-write half of the io_uring service: one process-wide ring (created on first use,
// joined at exit) on which writes are queued and completed asynchronously, so a thread that
// hands bytes to a file (the engine's file sink, fed by the fetch event loop) does not wait for
// the page-cache copy or writeback throttling. Short writes are requeued for the rest; EINTR and
// EAGAIN are resubmitted. Where io_uring is missing (old kernel, seccomp) writes are pwrite()
// calls made at once by the submitting thread, with the same completion semantics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "coldstart/core/result.h"

namespace coldstart::fetch {

class FileWriter {
 public:
  virtual ~FileWriter() = default;
  // The process's writer.
  static FileWriter& Shared();
  // An independent writer (tests pick the engine). `use_uring` false: pwrite.
  static std::unique_ptr<FileWriter> Make(bool use_uring, unsigned queue_depth = 64);

  // Queues a write of data[0, len) at `offset` of `fd`; `done` runs exactly once, on the
  // writer's thread (or the caller's for pwrite), after every byte is written or with the
  // error (ENOSPC/EDQUOT: kResourceExhausted). `data` and `fd` must stay valid until then.
  // Never blocks for the write itself; it waits only while `queue_depth` writes are in flight.
  virtual void Submit(int fd, std::uint64_t offset, const std::byte* data, std::size_t len,
                      std::function<void(Status)> done) = 0;
  // Submit and wait.
  Status Write(int fd, std::uint64_t offset, const std::byte* data, std::size_t len);
  virtual const char* engine() const = 0;  // "io_uring" | "pwrite"
};

}  // namespace coldstart::fetch
