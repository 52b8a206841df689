// The environment variables tools/ reads, registered with core's registry (`coldstart env`
// prints them). Name, default, why.
#include "coldstart/core/env.h"

#include <array>

namespace coldstart::cli {
namespace {

constexpr std::array kVars = {
    EnvVarInfo{"COLDSTART_PROGRESS", "auto",
               "auto|bar|json|off: what --progress auto means. auto draws a bar on a TTY and nothing "
               "otherwise; json writes one JSON line a second to stderr (container logs)."},
    EnvVarInfo{"COLDSTART_MODEL_DIR", "",
               "Set by `coldstart preload` for CMD: the folder (--to) or mount point (--mount) "
               "holding the model. Read by nothing in coldstart; registered so a coldstart "
               "command run as CMD does not reject it."},
};

}  // namespace

const EnvRegistrar kToolsEnvRegistrar{"tools", 50, kVars};

// Called from the module's ApplyEnv functions: a call the compiler cannot drop, so the linker
// keeps this object (and its registrar) in every program that reads the module's options.
void LinkEnvTools() {}

}  // namespace coldstart::cli
