// The one place where coldstart reads the process environment (STYLE.md, principle 4).
//
// Every variable coldstart understands is registered by the module that reads it (one
// EnvRegistrar per module, next to its options: fetch/src/fetch_env.cpp, loader/src/
// loader_env.cpp, the CLI's own) with its default and the reason for it; `coldstart env` prints
// the registry. The environment is snapshotted once
// (Env::FromProcess) and each module's options struct applies the snapshot in its own
// ApplyEnv(), so a value is parsed strictly: a malformed value, or a COLDSTART_* name that
// is not in the table (a typo), is an error rather than silently ignored.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "coldstart/core/result.h"

namespace coldstart {

struct EnvVarInfo {
  std::string_view name;
  std::string_view default_value;
  std::string_view doc;
  bool secret = false;  // never printed (tokens); `coldstart env` says only whether it is set
};

// Registers a module's variables at static-initialisation time. Define one per module as a
// namespace-scope object in a translation unit that the module's options code pulls in.
class EnvRegistrar {
 public:
  // `rank` orders modules in `coldstart env` (core 0, fetch 10, cache 20, loader 30, runtime 40,
  // tools 50); a module's table keeps its own order.
  EnvRegistrar(std::string_view module, int rank, std::span<const EnvVarInfo> vars);
};

// Every registered variable, in the order `coldstart env` prints them.
std::vector<EnvVarInfo> KnownEnvVars();
// The registered entry for `name`, or nullptr.
const EnvVarInfo* FindEnvVar(std::string_view name);

// What may be shown of a variable's value: "(set, hidden)" for secrets, and URLs with their
// password (user:PASSWORD@host) and query string replaced by "***".
std::string RedactEnvValue(std::string_view name, std::string_view value);

class Env {
 public:
  // Snapshot of the variables in KnownEnvVars() plus any other COLDSTART_* variable
  // (which makes Validate() fail).
  static Env FromProcess();
  static Env FromMap(std::map<std::string, std::string> values);

  // Fails on a COLDSTART_* variable that coldstart does not know.
  Status Validate() const;

  std::optional<std::string> Get(std::string_view name) const;
  // Each returns nullopt when unset, an error naming the variable when malformed.
  Result<std::optional<std::uint64_t>> GetBytes(std::string_view name) const;
  Result<std::optional<std::uint64_t>> GetUint(std::string_view name) const;
  Result<std::optional<double>> GetSeconds(std::string_view name) const;
  Result<std::optional<bool>> GetBool(std::string_view name) const;

 private:
  std::map<std::string, std::string, std::less<>> values_;
};

// "64MiB", "8M", "1G", "4096", "1.5GiB" -> bytes. Suffixes are binary (K = KiB) since every
// size coldstart takes is a buffer or chunk size. Rejects negatives, junk, overflow.
Result<std::uint64_t> ParseBytes(std::string_view text);
Result<std::uint64_t> ParseUint(std::string_view text);
// "30", "30s", "500ms", "2m" -> seconds.
Result<double> ParseSeconds(std::string_view text);
// 1/0, true/false, yes/no, on/off.
Result<bool> ParseBool(std::string_view text);
// 1536 -> "1.50 KiB"
std::string FormatBytes(double bytes);

}  // namespace coldstart
