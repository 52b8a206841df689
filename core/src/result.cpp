#include "coldstart/core/result.h"

#include <cerrno>
#include <cstring>

namespace coldstart {

std::string_view ErrcName(Errc code) {
  switch (code) {
    case Errc::kInvalidArgument: return "invalid argument";
    case Errc::kNotFound: return "not found";
    case Errc::kPermissionDenied: return "permission denied";
    case Errc::kIo: return "I/O error";
    case Errc::kFormat: return "malformed input";
    case Errc::kIntegrity: return "integrity check failed";
    case Errc::kHttp: return "HTTP error";
    case Errc::kNetwork: return "network error";
    case Errc::kTimeout: return "timed out";
    case Errc::kCancelled: return "cancelled";
    case Errc::kUnavailable: return "unavailable";
    case Errc::kResourceExhausted: return "resource exhausted";
    case Errc::kInternal: return "internal error";
  }
  return "unknown error code";
}

Error&& Error::WithContext(std::string_view context) && {
  WithContext(context);
  return std::move(*this);
}

Error& Error::WithContext(std::string_view context) & {
  std::string m;
  m.reserve(context.size() + 2 + message.size());
  m.append(context).append(": ").append(message);
  message = std::move(m);
  return *this;
}

std::string Error::ToString() const { return message; }

Error MakeError(Errc code, std::string message) {
  Error e;
  e.code = code;
  e.message = std::move(message);
  return e;
}

Error MakeSysError(Errc code, std::string message, int err) {
  Error e;
  e.code = code;
  char buf[256];
  // GNU strerror_r returns the string (maybe not buf).
  const char* text = strerror_r(err, buf, sizeof buf);
  e.message = std::move(message) + ": " + text;
  e.sys_errno = err;
  return e;
}

Errc ErrcFromErrno(int err) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
    case ELOOP: return Errc::kNotFound;
    case EACCES:
    case EPERM: return Errc::kPermissionDenied;
    case ENOSPC:
    case EDQUOT:
    case ENOMEM: return Errc::kResourceExhausted;
    default: return Errc::kIo;
  }
}

Error MakePathError(std::string message, int err) { return MakeSysError(ErrcFromErrno(err), std::move(message), err); }

}  // namespace coldstart
