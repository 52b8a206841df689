// libtorch view of a loaded model: one torch::Tensor per safetensors tensor, zero-copy over the
// loader's arena (each tensor shares ownership of the HostModel, so the memory lives as long
// as any tensor does). This is the libtorch-facing surface, so failures are exceptions
// (coldstart::runtime::LoadError) rather than Result values.
#pragma once

#include <ATen/Tensor.h>
#include <c10/core/ScalarType.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "coldstart/loader/device_loader.h"
#include "coldstart/loader/host_loader.h"

namespace coldstart::runtime {

class LoadError : public std::runtime_error {
 public:
  explicit LoadError(Error e) : std::runtime_error(e.message), error_(std::move(e)) {}
  const Error& error() const { return error_; }

 private:
  Error error_;
};

struct NamedTensor {
  std::string name;
  loader::DType dtype = loader::DType::kU8;  // the file's dtype
  std::vector<std::int64_t> shape;           // the file's shape
  at::Tensor tensor;
  // This libtorch has no matching dtype (e.g. U16/U32/U64/F8 before torch 2.1/2.3): `tensor`
  // is then a 1-D uint8 tensor of the raw bytes, never a reinterpretation.
  bool raw_bytes = false;
};

class StateDict {
 public:
  const std::vector<NamedTensor>& tensors() const { return tensors_; }
  const NamedTensor* Find(const std::string& name) const;
  const std::shared_ptr<const loader::HostModel>& host() const { return host_; }
  const std::shared_ptr<const loader::DeviceModel>& device() const { return device_; }

 private:
  friend StateDict ToStateDict(std::shared_ptr<const loader::HostModel> host);
// A device load as torch::Tensors: CUDA tensors over the model's device memory when this
// libtorch has CUDA (zero-copy; each keeps the model alive); CPU tensors over the stand-in
// device's memory; for a CUDA model with a CPU-only libtorch (Debian's), CPU tensors read
// back from the device (one copy, so the model is usable; say so in logs). Throws LoadError.
StateDict ToStateDict(std::shared_ptr<const loader::DeviceModel> model);
  friend StateDict ToStateDict(std::shared_ptr<const loader::DeviceModel> model);
  std::shared_ptr<const loader::HostModel> host_;
  std::shared_ptr<const loader::DeviceModel> device_;
  std::vector<NamedTensor> tensors_;
};

// The libtorch dtype for a safetensors dtype, or nullopt where this libtorch lacks one.
std::optional<c10::ScalarType> TorchDType(loader::DType dtype);

StateDict ToStateDict(std::shared_ptr<const loader::HostModel> host);
// A device load as torch::Tensors: CUDA tensors over the model's device memory when this
// libtorch has CUDA (zero-copy; each keeps the model alive); CPU tensors over the stand-in
// device's memory; for a CUDA model with a CPU-only libtorch (Debian's), CPU tensors read
// back from the device (one copy, so the model is usable; say so in logs). Throws LoadError.
StateDict ToStateDict(std::shared_ptr<const loader::DeviceModel> model);
// OpenLocalModel + LoadToHost + ToStateDict; throws LoadError.
StateDict LoadStateDict(const std::string& path, const loader::HostLoadOptions& options = {});

// "libtorch 1.13.0 (CPU)"
std::string TorchVersionString();

}  // namespace coldstart::runtime
