// The token sampler behind Generator, exposed for tests (libtorch).
#pragma once

#include <ATen/Tensor.h>
#include <ATen/core/Generator.h>

#include "coldstart/runtime/generator.h"

namespace coldstart::runtime {

// One token from `logits` ([vocab], any float dtype): argmax when temperature is 0, else a draw
// from softmax(logits / temperature) restricted to the top-k and the top-p nucleus, from `gen`.
std::int64_t SampleToken(const at::Tensor& logits, const SamplingOptions& options, at::Generator& gen);

}  // namespace coldstart::runtime
