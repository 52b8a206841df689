// Internal to loader/: the bf16 conversion bit logic shared by the CPU reference (convert.cpp)
// and the CUDA kernels (convert_kernels.cu), plus the kernel launchers the CUDA engine calls.
//
// Why one integer implementation for both sides instead of __float2half_rn on the GPU and a
// compiler's _Float16 on the CPU: the engine promises bit-identical results on every device, and
// hardware/library conversions disagree on NaN payloads (some return a canonical 0x7FFF). One
// function compiled for host and device cannot disagree, and the tests check it against an
// independent arithmetic reference for all 65,536 inputs.
//
// Kept C++17 and free of coldstart headers so nvcc compiles it with any host compiler.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define COLDSTART_HD __host__ __device__ __forceinline__
#else
#define COLDSTART_HD inline
#endif

namespace coldstart::loader::internal {

// bf16 is the upper half of an IEEE binary32, so widening is a shift: exact, NaN payloads kept.
COLDSTART_HD std::uint32_t Bf16ToF32Bits(std::uint16_t b) { return std::uint32_t{b} << 16; }

// bf16 -> IEEE binary16, round to nearest, ties to even. Out of range -> +-inf, NaN -> quiet NaN
// with the sign and the top payload bits kept (what x86 F16C and soft-float do), tiny values ->
// correctly rounded subnormals or +-0.
COLDSTART_HD std::uint16_t Bf16ToF16Bits(std::uint16_t b) {
  const std::uint32_t x = Bf16ToF32Bits(b);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  std::uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) {  // inf or NaN
    if (abs == 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7C00u);
    return static_cast<std::uint16_t>(sign | 0x7E00u | ((abs >> 13) & 0x3FFu));
  }
  // 65520 = halfway between 65504 (largest half, odd mantissa) and 65536: ties-to-even gives inf.
  if (abs >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);
  if (abs >= 0x38800000u) {  // >= 2^-14: a normal half
    // Round at bit 13: add 0xFFF plus the bit that becomes the last mantissa bit (ties to even).
    // A carry out of the mantissa correctly bumps the exponent; the guard above stops it at inf.
    abs += 0x0FFFu + ((abs >> 13) & 1u);
    // Rebias the exponent from 127 to 15 (112 = 127 - 15), then drop 13 mantissa bits.
    return static_cast<std::uint16_t>(sign | ((abs - (112u << 23)) >> 13));
  }
  // A half subnormal (unit 2^-24) or zero. Binary32 exponent e (biased) with e < 102 means the
  // value is below 2^-25, i.e. under half a unit: rounds to zero.
  const std::uint32_t e = abs >> 23;
  if (e < 102) return static_cast<std::uint16_t>(sign);
  // value = m * 2^(e - 150) with a 24-bit significand m; in units of 2^-24 that is m >> (126 - e).
  const std::uint32_t m = (abs & 0x7FFFFFu) | 0x800000u;
  const std::uint32_t shift = 126u - e;  // 14 .. 24
  std::uint32_t r = m >> shift;
  const std::uint32_t rem = m & ((1u << shift) - 1u);
  const std::uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (r & 1u))) ++r;  // may become 0x400, the smallest normal
  return static_cast<std::uint16_t>(sign | r);
}

}  // namespace coldstart::loader::internal

#if defined(COLDSTART_CUDA_ENGINE)
#include <cuda_runtime_api.h>

namespace coldstart::loader::internal {

// Converts `elements` bf16 values at device address `src` into `dst` (fp16 or fp32) on `stream`.
// src must be 16-byte aligned (the engine's scratch is); dst must be aligned to its element size.
// Returns the launch status (cudaGetLastError); execution errors surface on the stream.
cudaError_t LaunchBf16ToF16(const void* src, void* dst, std::uint64_t elements,
                            cudaStream_t stream);
cudaError_t LaunchBf16ToF32(const void* src, void* dst, std::uint64_t elements,
                            cudaStream_t stream);

}  // namespace coldstart::loader::internal
#endif
