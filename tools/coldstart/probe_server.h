// The startup probe of `coldstart preload`: an HTTP/1.1 server on its own threads answering
// every path and method with what `answer` returns (status and JSON body). cpp-httplib stays
// in this file's .cpp, so the rest of the CLI compiles without its 9,000-line header.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "coldstart/core/result.h"

namespace coldstart::cli {

class ProbeServer {
 public:
  using Answer = std::function<std::pair<int, std::string>()>;  // (status, JSON body)
  // Listens on host:port (port 0: one the kernel picks) before returning.
  static Result<std::unique_ptr<ProbeServer>> Start(const std::string& host, int port, Answer answer);
  virtual ~ProbeServer() = default;  // stops serving and joins its threads
  virtual int port() const = 0;
};

}  // namespace coldstart::cli
