#include "coldstart/runtime/state_dict.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>

#include "../common/temp_dir.h"
#include "coldstart/loader/device_loader.h"
#include "coldstart/loader/safetensors.h"

namespace coldstart::runtime {
namespace {

using coldstart::testing::TempDir;
using coldstart::testing::WriteFile;
using loader::DType;

// A file with known values in several dtypes, written through the serializer.
std::string KnownFile() {
  std::vector<loader::TensorSpec> specs = {{"f32", DType::kF32, {2, 2}},
                                           {"i64", DType::kI64, {3}},
                                           {"bf16", DType::kBF16, {2}},
                                           {"u16", DType::kU16, {2}},
                                           {"flag", DType::kBool, {2}},
                                           {"scalar", DType::kF64, {}},
                                           {"empty", DType::kF32, {0, 4}}};
  auto h = loader::SerializeHeader(specs, {});
  std::string data;
  auto put = [&](const void* p, std::size_t n) { data.append(static_cast<const char*>(p), n); };
  float f[] = {1.5f, -2.0f, 0.25f, 8.0f};
  std::int64_t i[] = {-1, 0, 1LL << 40};
  std::uint16_t bf[] = {0x3F80, 0xC000};  // 1.0, -2.0
  std::uint16_t u[] = {65535, 7};
  std::uint8_t b[] = {1, 0};
  double s = 3.25;
  put(f, sizeof f);
  put(i, sizeof i);
  put(bf, sizeof bf);
  put(u, sizeof u);
  put(b, sizeof b);
  put(&s, sizeof s);
  return h->bytes + data;
}

TEST(StateDict, ValuesDtypesAndShapes) {
  TempDir d;
  WriteFile(d / "m.safetensors", KnownFile());
  StateDict sd = LoadStateDict(d / "m.safetensors");
  ASSERT_EQ(sd.tensors().size(), 7u);
  const auto* f = sd.Find("f32");
  ASSERT_NE(f, nullptr);
  EXPECT_EQ(f->tensor.scalar_type(), at::kFloat);
  EXPECT_EQ(f->tensor.sizes(), at::IntArrayRef({2, 2}));
  EXPECT_FLOAT_EQ(f->tensor[1][1].item<float>(), 8.0f);
  EXPECT_FLOAT_EQ(f->tensor.sum().item<float>(), 7.75f);
  EXPECT_EQ(sd.Find("i64")->tensor[2].item<std::int64_t>(), 1LL << 40);
  const auto& bf = sd.Find("bf16")->tensor;
  EXPECT_EQ(bf.scalar_type(), at::kBFloat16);
  EXPECT_FLOAT_EQ(bf.to(at::kFloat)[1].item<float>(), -2.0f);
  EXPECT_TRUE(sd.Find("flag")->tensor[0].item<bool>());
  EXPECT_EQ(sd.Find("scalar")->tensor.dim(), 0);
  EXPECT_DOUBLE_EQ(sd.Find("scalar")->tensor.item<double>(), 3.25);
  EXPECT_EQ(sd.Find("empty")->tensor.numel(), 0);
  const auto* u16 = sd.Find("u16");
  if (TorchDType(DType::kU16)) {
    EXPECT_FALSE(u16->raw_bytes);
  } else {
    // This libtorch has no uint16: raw bytes, dtype named, never reinterpreted as int16.
    EXPECT_TRUE(u16->raw_bytes);
    EXPECT_EQ(u16->tensor.scalar_type(), at::kByte);
    EXPECT_EQ(u16->tensor.numel(), 4);
    EXPECT_EQ(u16->dtype, DType::kU16);
    EXPECT_EQ(u16->shape, std::vector<std::int64_t>({2}));
  }
}

TEST(StateDict, ZeroCopyAndTensorsOutliveTheDict) {
  TempDir d;
  WriteFile(d / "m.safetensors", KnownFile());
  at::Tensor kept;
  const void* host_ptr = nullptr;
  {
    StateDict sd = LoadStateDict(d / "m.safetensors");
    kept = sd.Find("f32")->tensor;
    host_ptr = sd.host()->Find("f32")->data;
    EXPECT_EQ(kept.data_ptr(), host_ptr) << "no copy between the arena and the tensor";
  }
  // The StateDict is gone; the tensor still owns the arena.
  EXPECT_FLOAT_EQ(kept[0][0].item<float>(), 1.5f);
}

TEST(StateDict, ErrorsAreLoadErrorExceptions) {
  TempDir d;
  WriteFile(d / "bad.safetensors", std::string("\x02\0\0\0\0\0\0\0{x", 10));
  try {
    LoadStateDict(d / "bad.safetensors");
    FAIL() << "no exception";
  } catch (const LoadError& e) {
    EXPECT_EQ(e.error().code, Errc::kFormat);
    EXPECT_NE(std::string(e.what()).find("bad.safetensors"), std::string::npos);
  }
}

TEST(StateDict, DeviceModelOnTheStandInDeviceBecomesCpuTensors) {
  TempDir d;
  WriteFile(d / "m.safetensors", KnownFile());
  loader::DeviceLoadOptions o;
  o.device = {loader::DeviceKind::kSim, 0};
  o.bf16_conversion = loader::Conversion::kBf16ToF32;
  auto layout = loader::OpenLocalModel(d / "m.safetensors");
  ASSERT_TRUE(layout.ok());
  auto m = loader::LoadLocalToDevice(std::move(layout).value(), o);
  ASSERT_TRUE(m.ok()) << m.error().message;
  at::Tensor bf;
  {
    StateDict sd = ToStateDict(std::shared_ptr<const loader::DeviceModel>(*m));
    EXPECT_FLOAT_EQ(sd.Find("f32")->tensor[1][1].item<float>(), 8.0f);
    bf = sd.Find("bf16")->tensor;
    EXPECT_EQ(bf.scalar_type(), at::kFloat) << "converted on the device";
    EXPECT_EQ(sd.Find("i64")->tensor[2].item<std::int64_t>(), 1LL << 40);
  }
  m->reset();
  EXPECT_FLOAT_EQ(bf[1].item<float>(), -2.0f) << "tensors keep the device model alive";
  o.sim.keep_bytes = false;
  auto l2 = loader::OpenLocalModel(d / "m.safetensors");
  auto discarded = loader::LoadLocalToDevice(std::move(l2).value(), o);
  ASSERT_TRUE(discarded.ok());
  EXPECT_THROW(ToStateDict(std::shared_ptr<const loader::DeviceModel>(*discarded)), LoadError);
}

TEST(StateDict, DTypeMappingCoversTheCommonTypes) {
  for (DType d : {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kI64, DType::kI32, DType::kI16,
                  DType::kI8, DType::kU8, DType::kBool})
    EXPECT_TRUE(TorchDType(d).has_value()) << loader::DTypeName(d);
}

}  // namespace
}  // namespace coldstart::runtime
