#include "coldstart/runtime/state_dict.h"

#include <ATen/Context.h>
#include <ATen/Functions.h>
#include <torch/version.h>

#include <limits>

namespace coldstart::runtime {

std::optional<c10::ScalarType> TorchDType(loader::DType dtype) {
  using loader::DType;
  switch (dtype) {
    case DType::kF64: return c10::ScalarType::Double;
    case DType::kF32: return c10::ScalarType::Float;
    case DType::kF16: return c10::ScalarType::Half;
    case DType::kBF16: return c10::ScalarType::BFloat16;
    case DType::kI64: return c10::ScalarType::Long;
    case DType::kI32: return c10::ScalarType::Int;
    case DType::kI16: return c10::ScalarType::Short;
    case DType::kI8: return c10::ScalarType::Char;
    case DType::kU8: return c10::ScalarType::Byte;
    case DType::kBool: return c10::ScalarType::Bool;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
    case DType::kF8E4M3: return c10::ScalarType::Float8_e4m3fn;
    case DType::kF8E5M2: return c10::ScalarType::Float8_e5m2;
#endif
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
    case DType::kU16: return c10::ScalarType::UInt16;
    case DType::kU32: return c10::ScalarType::UInt32;
    case DType::kU64: return c10::ScalarType::UInt64;
#endif
    default: return std::nullopt;
  }
}

const NamedTensor* StateDict::Find(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

StateDict ToStateDict(std::shared_ptr<const loader::HostModel> host) {
  StateDict sd;
  sd.host_ = host;
  sd.tensors_.reserve(host->tensors().size());
  for (const auto& ht : host->tensors()) {
    const auto& e = *ht.entry;
    NamedTensor nt;
    nt.name = e.name;
    nt.dtype = e.dtype;
    for (auto d : e.shape) {
      if (d > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
        throw LoadError(MakeError(Errc::kFormat, "tensor '" + e.name + "': dimension too large for libtorch"));
      nt.shape.push_back(static_cast<std::int64_t>(d));
    }
    // Each tensor keeps the whole model alive; the deleter runs when its storage dies.
    auto keep = host;
    auto deleter = [keep](void*) mutable { keep.reset(); };
    auto st = TorchDType(e.dtype);
    auto opts = at::TensorOptions().device(at::kCPU);
    if (st) {
      nt.tensor = at::from_blob(ht.data, nt.shape, deleter, opts.dtype(*st));
    } else {
      nt.raw_bytes = true;
      nt.tensor = at::from_blob(ht.data, {static_cast<std::int64_t>(e.nbytes)}, deleter, opts.dtype(at::kByte));
    }
    sd.tensors_.push_back(std::move(nt));
  }
  return sd;
}

StateDict ToStateDict(std::shared_ptr<const loader::DeviceModel> model) {
  StateDict sd;
  sd.device_ = model;
  const bool cuda = model->device().kind == loader::DeviceKind::kCuda;
  const bool zero_copy_cuda = cuda && at::hasCUDA();
  if (!cuda) {
    std::byte probe{};
    if (auto st = model->engine().ReadBack(model->tensors().empty() ? 0 : model->tensors().front().data, 0, &probe); !st.ok())
      throw LoadError(std::move(st).error());  // e.g. the sim device discarded the bytes
  }
  for (const auto& t : model->tensors()) {
    NamedTensor nt;
    nt.name = t.entry->name;
    nt.dtype = t.dtype;
    for (auto d : t.entry->shape) nt.shape.push_back(static_cast<std::int64_t>(d));
    auto st = TorchDType(t.dtype);
    std::vector<std::int64_t> sizes = st ? nt.shape : std::vector<std::int64_t>{static_cast<std::int64_t>(t.nbytes)};
    nt.raw_bytes = !st;
    auto opts = at::TensorOptions().dtype(st ? *st : at::kByte);
    if (zero_copy_cuda) {
      auto keep = model;
      nt.tensor = at::from_blob(reinterpret_cast<void*>(t.data), sizes, [keep](void*) mutable { keep.reset(); },
                                opts.device(at::Device(at::kCUDA, static_cast<at::DeviceIndex>(model->device().index))));
    } else if (cuda) {
      nt.tensor = at::empty(sizes, opts);
      auto s = model->ReadBack(t, static_cast<std::byte*>(nt.tensor.data_ptr()));
      if (!s.ok()) throw LoadError(std::move(s).error());
    } else {
      auto keep = model;
      nt.tensor = at::from_blob(reinterpret_cast<void*>(t.data), sizes, [keep](void*) mutable { keep.reset(); }, opts);
    }
    sd.tensors_.push_back(std::move(nt));
  }
  return sd;
}

StateDict LoadStateDict(const std::string& path, const loader::HostLoadOptions& options) {
  auto layout = loader::OpenLocalModel(path);
  if (!layout.ok()) throw LoadError(std::move(layout).error());
  auto host = loader::LoadToHost(std::move(layout).value(), options);
  if (!host.ok()) throw LoadError(std::move(host).error());
  return ToStateDict(std::move(host).value());
}

std::string TorchVersionString() {
  return std::string("libtorch ") + TORCH_VERSION + " (CPU)";
}

}  // namespace coldstart::runtime
