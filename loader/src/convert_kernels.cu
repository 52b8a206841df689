// bf16 -> fp16 / fp32 kernels for the CUDA copy engine. Each thread converts 4 elements with one
// 8-byte load and one 8- or 16-byte store (the conversion is memory-bound; wide accesses halve
// the instruction count), falling back to one element per thread when dst is not aligned for the
// wide store. The element math is convert_internal.h, shared with the CPU reference.
#include <cstdint>

#include "convert_internal.h"

namespace coldstart::loader::internal {
namespace {

constexpr unsigned kThreads = 256;
// Grid-stride loops: a bounded grid covers any size, so huge tensors never overflow gridDim.
constexpr std::uint64_t kMaxBlocks = 65535;

template <bool kToF32>
__device__ __forceinline__ void StoreOne(void* dst, std::uint64_t i, std::uint16_t b) {
  if constexpr (kToF32) {
    static_cast<std::uint32_t*>(dst)[i] = Bf16ToF32Bits(b);
  } else {
    static_cast<std::uint16_t*>(dst)[i] = Bf16ToF16Bits(b);
  }
}

// Both GPU and host are little-endian: element 0 of a group is the low half of .x.
template <bool kToF32>
__global__ void ConvertVec4(const uint2* __restrict__ src, void* __restrict__ dst,
                            std::uint64_t groups, std::uint64_t elements) {
  const std::uint64_t stride = std::uint64_t{gridDim.x} * blockDim.x;
  const std::uint64_t first = std::uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  for (std::uint64_t g = first; g < groups; g += stride) {
    const uint2 v = src[g];
    const std::uint16_t e0 = v.x & 0xFFFFu, e1 = v.x >> 16, e2 = v.y & 0xFFFFu, e3 = v.y >> 16;
    if constexpr (kToF32) {
      static_cast<uint4*>(dst)[g] =
          make_uint4(Bf16ToF32Bits(e0), Bf16ToF32Bits(e1), Bf16ToF32Bits(e2), Bf16ToF32Bits(e3));
    } else {
      static_cast<uint2*>(dst)[g] = make_uint2(
          Bf16ToF16Bits(e0) | (std::uint32_t{Bf16ToF16Bits(e1)} << 16),
          Bf16ToF16Bits(e2) | (std::uint32_t{Bf16ToF16Bits(e3)} << 16));
    }
  }
  // The last elements % 4 values, one per thread of the first block.
  const std::uint64_t tail = groups * 4 + first;
  if (tail < elements && first < 4) {
    StoreOne<kToF32>(dst, tail, reinterpret_cast<const std::uint16_t*>(src)[tail]);
  }
}

template <bool kToF32>
__global__ void ConvertScalar(const std::uint16_t* __restrict__ src, void* __restrict__ dst,
                              std::uint64_t elements) {
  const std::uint64_t stride = std::uint64_t{gridDim.x} * blockDim.x;
  for (std::uint64_t i = std::uint64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < elements;
       i += stride) {
    StoreOne<kToF32>(dst, i, src[i]);
  }
}

unsigned Blocks(std::uint64_t work_items) {
  std::uint64_t blocks = (work_items + kThreads - 1) / kThreads;
  if (blocks == 0) blocks = 1;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

template <bool kToF32>
cudaError_t Launch(const void* src, void* dst, std::uint64_t elements, cudaStream_t stream) {
  if (elements == 0) return cudaSuccess;
  const std::uintptr_t wide = kToF32 ? 16 : 8;  // bytes one thread stores in the vector path
  if (reinterpret_cast<std::uintptr_t>(dst) % wide == 0 &&
      reinterpret_cast<std::uintptr_t>(src) % 8 == 0) {
    const std::uint64_t groups = elements / 4;
    ConvertVec4<kToF32><<<Blocks(groups > 0 ? groups : 1), kThreads, 0, stream>>>(
        static_cast<const uint2*>(src), dst, groups, elements);
  } else {
    ConvertScalar<kToF32><<<Blocks(elements), kThreads, 0, stream>>>(
        static_cast<const std::uint16_t*>(src), dst, elements);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchBf16ToF16(const void* src, void* dst, std::uint64_t elements,
                            cudaStream_t stream) {
  return Launch<false>(src, dst, elements, stream);
}

cudaError_t LaunchBf16ToF32(const void* src, void* dst, std::uint64_t elements,
                            cudaStream_t stream) {
  return Launch<true>(src, dst, elements, stream);
}

}  // namespace coldstart::loader::internal
