// Runs the `coldstart` executable (COLDSTART_BIN) through the shell, as a user would: exit code
// (128 + signal when killed), stdout and stderr.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <string>

#include "temp_dir.h"

namespace coldstart::testing {

struct Run {
  int code = -1;
  std::string out, err;
};

// `env` is prefixed to the command line ("VAR=value ...").
inline Run Exec(const std::string& args, const std::string& env = "") {
  TempDir t;
  std::string cmd = env + " " + COLDSTART_BIN + " " + args + " >" + (t / "out") + " 2>" + (t / "err");
  int rc = std::system(cmd.c_str());
  Run r;
  r.code = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
  r.out = ReadFile(t / "out");
  r.err = ReadFile(t / "err");
  return r;
}

}  // namespace coldstart::testing
