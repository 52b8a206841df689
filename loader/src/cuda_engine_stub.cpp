// Built instead of cuda_engine.cpp when CMake found no CUDA compiler (or was told not to look):
// the CLI and the loader still link, and asking for a CUDA device is an ordinary error.
#include "coldstart/loader/copy_engine.h"

// loader/CMakeLists.txt says why CUDA is missing; this default covers other build systems.
#ifndef COLDSTART_NO_CUDA_REASON
#define COLDSTART_NO_CUDA_REASON "the CUDA toolkit was not found at build time"
#endif

namespace coldstart::loader {

Result<std::unique_ptr<CopyEngine>> MakeCudaCopyEngine(const CudaEngineOptions& options) {
  return MakeError(Errc::kUnavailable,
                   "coldstart was built without CUDA (" COLDSTART_NO_CUDA_REASON ")");
}

bool CudaCompiledIn() { return false; }

}  // namespace coldstart::loader
