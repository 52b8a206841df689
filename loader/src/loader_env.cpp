// The environment variables loader/ reads, registered with core's registry (`coldstart env`
// prints them). Name, default, why.
#include "coldstart/core/env.h"

#include <array>

namespace coldstart::loader {
namespace {

constexpr std::array kVars = {
    EnvVarInfo{"COLDSTART_PREFETCH_FSYNC", "0",
               "1 = fdatasync each prefetched file before renaming it (survives power loss). Off "
               "by default: it doubled a 1 GiB prefetch's time here, and a re-run re-verifies "
               "every present file's CRC32C, so a torn file is fetched again."},
    EnvVarInfo{"COLDSTART_STAGING_BYTES", "0",
               "Staging budget for --device cuda/sim; 0 = 1/8 of available memory, at most 2 GiB. "
               "Host memory of a device load stays within it plus ~128 MiB whatever the model."},
    EnvVarInfo{"COLDSTART_SIM_BANDWIDTH", "25GB",
               "Copy bandwidth of the stand-in device in bytes/s (PCIe 4.0 x16 pinned ~25 GB/s)."},
    EnvVarInfo{"COLDSTART_CUDA_STREAMS", "4",
               "CUDA streams (copies in flight) for --device cuda, 1 to 64. 4 keeps the copy "
               "engine busy while completions are reported and conversion kernels run."},
    EnvVarInfo{"COLDSTART_HUGE_PAGES", "1",
               "Ask for transparent huge pages on the host arena: a 2 GiB model takes 1024 page "
               "faults instead of 524288."},
};

}  // namespace

const EnvRegistrar kLoaderEnvRegistrar{"loader", 30, kVars};

// Called from the module's ApplyEnv functions: a call the compiler cannot drop, so the linker
// keeps this object (and its registrar) in every program that reads the module's options.
void LinkEnvLoader() {}

}  // namespace coldstart::loader
