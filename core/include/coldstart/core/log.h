// Logging: one line per event ("coldstart: warning: HOST ignores Range requests; ..."), on
// stderr unless a sink is set (the FUSE mount's log, tests). A line is written with one
// write(2), so lines of concurrent threads never interleave, and carries no newline inside it.
// The level comes from COLDSTART_LOG (error | warning | info | debug; default warning), applied
// once by ConfigureLogging; library code never reads the environment itself.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "coldstart/core/env.h"
#include "coldstart/core/result.h"

namespace coldstart {

enum class LogLevel : int { kError = 0, kWarning = 1, kInfo = 2, kDebug = 3 };

std::string_view LogLevelName(LogLevel level);  // "error", "warning", "info", "debug"
Result<LogLevel> ParseLogLevel(std::string_view text);

// Lines above this level are dropped (default kWarning).
void SetLogLevel(LogLevel level);
bool LogEnabled(LogLevel level);
// COLDSTART_LOG; a bad value is an error naming the variable.
Status ConfigureLogging(const Env& env);

// Where lines go instead of stderr; empty restores stderr. The sink gets the message without
// the "coldstart: LEVEL: " prefix and may be called from any thread.
using LogSink = std::function<void(LogLevel level, std::string_view message)>;
void SetLogSink(LogSink sink);

void Log(LogLevel level, std::string_view message);
inline void LogError(std::string_view m) { Log(LogLevel::kError, m); }
inline void LogWarning(std::string_view m) { Log(LogLevel::kWarning, m); }
inline void LogInfo(std::string_view m) { Log(LogLevel::kInfo, m); }
inline void LogDebug(std::string_view m) { Log(LogLevel::kDebug, m); }

}  // namespace coldstart
