#include "coldstart/core/log.h"

#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <mutex>

namespace coldstart {
namespace {

constexpr std::array<EnvVarInfo, 1> kCoreVars = {{
    {"COLDSTART_LOG", "warning",
     "Log lines shown on stderr: error, warning, info or debug. Errors that end a command are "
     "always printed; warnings say what coldstart worked around (a server ignoring Range, an "
     "offline cache)."},
}};
const EnvRegistrar kRegistrar("core", 0, kCoreVars);

std::atomic<int> g_level{static_cast<int>(LogLevel::kWarning)};
std::mutex g_sink_mu;
LogSink g_sink;  // GUARDED_BY(g_sink_mu)

}  // namespace

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kError: return "error";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kInfo: return "info";
    case LogLevel::kDebug: return "debug";
  }
  return "?";
}

Result<LogLevel> ParseLogLevel(std::string_view text) {
  for (LogLevel l : {LogLevel::kError, LogLevel::kWarning, LogLevel::kInfo, LogLevel::kDebug})
    if (text == LogLevelName(l)) return l;
  return MakeError(Errc::kInvalidArgument, "log level '" + std::string(text) + "' is not one of error, warning, info, debug");
}

void SetLogLevel(LogLevel level) { g_level = static_cast<int>(level); }
bool LogEnabled(LogLevel level) { return static_cast<int>(level) <= g_level.load(std::memory_order_relaxed); }

Status ConfigureLogging(const Env& env) {
  if (auto v = env.Get("COLDSTART_LOG")) {
    auto l = ParseLogLevel(*v);
    if (!l.ok()) return std::move(l).error().WithContext("COLDSTART_LOG");
    SetLogLevel(*l);
  }
  return OkStatus();
}

void SetLogSink(LogSink sink) {
  std::lock_guard lk(g_sink_mu);
  g_sink = std::move(sink);
}

void Log(LogLevel level, std::string_view message) {
  if (!LogEnabled(level)) return;
  std::string line(message);
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';
  {
    std::lock_guard lk(g_sink_mu);
    if (g_sink) {
      g_sink(level, line);
      return;
    }
  }
  line = "coldstart: " + std::string(LogLevelName(level)) + ": " + line + "\n";
  const int saved = errno;
  std::size_t off = 0;
  while (off < line.size()) {
    ssize_t n = ::write(STDERR_FILENO, line.data() + off, line.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += static_cast<std::size_t>(n);
  }
  errno = saved;
}

}  // namespace coldstart
