// Positioned file I/O that finishes the job: EINTR retried, short transfers continued. One
// copy of these loops for every module (they were written out ten times).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "coldstart/core/result.h"

namespace coldstart {

// Reads up to `len` bytes at `off`; the count is short only at end of file. An error is
// MakePathError(what + ": cannot read", errno).
Result<std::size_t> ReadAt(int fd, void* buf, std::size_t len, std::uint64_t off, std::string_view what);
// Writes all `len` bytes at `off`. An error is MakePathError(what + ": cannot write", errno)
// (ENOSPC/EDQUOT: kResourceExhausted); a write that makes no progress is ENOSPC.
Status WriteAt(int fd, const void* buf, std::size_t len, std::uint64_t off, std::string_view what);

}  // namespace coldstart
