#pragma once

#include "coldstart/loader/host_loader.h"
#include "commands.h"

namespace coldstart::cli {

// Defaults, then the environment (strictly), then flags: the precedence everywhere.
Result<loader::HostLoadOptions> MakeHostLoadOptions(const ReadFlags& flags);

}  // namespace coldstart::cli
