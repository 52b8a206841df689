// Errors are values inside coldstart (STYLE.md, principle 2): every fallible call returns
// Result<T> or Status carrying a code, the OS/HTTP/curl detail and a message with context.
// Exceptions appear only at the libtorch-facing surface (runtime/), exit codes at the CLI.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace coldstart {

enum class Errc : std::uint8_t {
  kInvalidArgument,  // caller passed something unusable (bad flag, bad option value)
  kNotFound,         // file / object / tensor absent
  kPermissionDenied, // EACCES, HTTP 401/403
  kIo,               // read/write/open failure (sys_errno set)
  kFormat,           // malformed safetensors / index / JSON
  kIntegrity,        // checksum or size mismatch, object changed under us
  kHttp,             // non-retryable HTTP status (http_status set)
  kNetwork,          // connection-level failure (curl_code set)
  kTimeout,          // deadline or stall
  kCancelled,        // a progress callback asked to stop
  kUnavailable,      // feature missing on this machine (no GPU, no io_uring)
  kResourceExhausted,// out of memory, disk full, budget too small
  kInternal,         // a bug in coldstart
};

std::string_view ErrcName(Errc code);

struct Error {
  Errc code = Errc::kInternal;
  std::string message;  // complete, human-readable, already names the object
  int sys_errno = 0;    // errno where the failure came from the OS
  int http_status = 0;  // HTTP status where the failure came from a server
  int curl_code = 0;    // CURLcode where the failure came from libcurl

  // Prefixes the message with what was being done: "model-00001.safetensors: " + message.
  Error&& WithContext(std::string_view context) &&;
  Error& WithContext(std::string_view context) &;
  // One line for people: the message, plus the errno text when there is one.
  std::string ToString() const;
};

Error MakeError(Errc code, std::string message);
// message + ": " + strerror(err), with sys_errno set.
Error MakeSysError(Errc code, std::string message, int err);
// The code for an errno from opening, stat'ing or listing a path: ENOENT, ENOTDIR and ELOOP
// (the path does not lead to a file) -> kNotFound, EACCES and EPERM -> kPermissionDenied,
// ENOSPC, EDQUOT and ENOMEM -> kResourceExhausted, anything else -> kIo. One place, so the
// CLI's exit codes (README) agree whichever call failed.
Errc ErrcFromErrno(int err);
// MakeSysError(ErrcFromErrno(err), message, err).
Error MakePathError(std::string message, int err);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(implicit)
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT(implicit)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : err_(std::move(error)), failed_(true) {}  // NOLINT(implicit)
  bool ok() const { return !failed_; }
  explicit operator bool() const { return ok(); }
  const Error& error() const& { return err_; }
  Error&& error() && { return std::move(err_); }

 private:
  Error err_;
  bool failed_ = false;
};

using Status = Result<void>;
inline Status OkStatus() { return {}; }

}  // namespace coldstart

#define CS_CONCAT_INNER_(a, b) a##b
#define CS_CONCAT_(a, b) CS_CONCAT_INNER_(a, b)

// Returns the error of a Status/Result expression from the enclosing function.
#define CS_RETURN_IF_ERROR(expr)                          \
  do {                                                    \
    auto&& cs_status_ = (expr);                           \
    if (!cs_status_.ok()) return std::move(cs_status_).error(); \
  } while (0)

// auto x = value of a Result expression, or return its error.
#define CS_ASSIGN_OR_RETURN(lhs, expr) \
  CS_ASSIGN_OR_RETURN_IMPL_(CS_CONCAT_(cs_result_, __LINE__), lhs, expr)
#define CS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).error();   \
  lhs = std::move(tmp).value()
