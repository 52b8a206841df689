// The environment variables cache/ reads, registered with core's registry (`coldstart env`
// prints them). Name, default, why.
#include "coldstart/core/env.h"

#include <array>

namespace coldstart::cache {
namespace {

constexpr std::array kVars = {
    EnvVarInfo{"COLDSTART_CACHE_DIR", "(unset)",
               "Disk cache folder, same as --cache-dir (which wins). Unset: $XDG_CACHE_HOME/coldstart, "
               "else $HOME/.cache/coldstart, where a cache is asked for (--cache, `coldstart cache`)."},
    EnvVarInfo{"COLDSTART_CACHE_MAX_BYTES", "0",
               "Size cap of the disk cache (bytes of cached chunks), same as --cache-max-bytes; 0 = no "
               "cap. Checked after fills: least recently used entries that no process has open are "
               "removed until the cache fits."},
    EnvVarInfo{"XDG_CACHE_HOME", "(unset)",
               "The XDG base folder for caches (an absolute path; a relative one is ignored, as the "
               "XDG spec says): the default cache folder is its coldstart/ subfolder."},
};

}  // namespace

const EnvRegistrar kCacheEnvRegistrar{"cache", 20, kVars};

// Called from the module's ApplyEnv functions: a call the compiler cannot drop, so the linker
// keeps this object (and its registrar) in every program that reads the module's options.
void LinkEnvCache() {}

}  // namespace coldstart::cache
