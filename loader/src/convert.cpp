// CPU reference conversions (copy_engine.h). Always compiled: the sim engine converts with these,
// and the CUDA kernels are tested against them. The bit logic lives in convert_internal.h so the
// kernels run the very same code.
#include <cstring>

#include "coldstart/loader/copy_engine.h"
#include "convert_internal.h"

namespace coldstart::loader {

// memcpy per element: src/dst may be unaligned (tensor data inside a staging buffer), and the
// compiler turns these into plain loads/stores where it can.
void ConvertBf16ToF16(const std::byte* src, std::uint64_t elements, std::byte* dst) {
  for (std::uint64_t i = 0; i < elements; ++i) {
    std::uint16_t b;
    std::memcpy(&b, src + 2 * i, 2);
    const std::uint16_t h = internal::Bf16ToF16Bits(b);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

void ConvertBf16ToF32(const std::byte* src, std::uint64_t elements, std::byte* dst) {
  for (std::uint64_t i = 0; i < elements; ++i) {
    std::uint16_t b;
    std::memcpy(&b, src + 2 * i, 2);
    const std::uint32_t f = internal::Bf16ToF32Bits(b);
    std::memcpy(dst + 4 * i, &f, 4);
  }
}

}  // namespace coldstart::loader
