// The bf16 reference conversions (exhaustively, against independent arithmetic), the CUDA engine's
// failure on machines without a usable GPU, and the engine itself where a GPU is present (those
// tests skip, saying why, elsewhere).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cfenv>
#include <cmath>
#include <cstring>
#include <iostream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "coldstart/loader/copy_engine.h"

namespace coldstart::loader {
namespace {

// ---- independent references -----------------------------------------------------------------

// The value of a bf16 from its fields: sign, 8-bit exponent (bias 127), 7-bit mantissa.
double DecodeBf16(std::uint16_t b) {
  const int sign = b >> 15, exp = (b >> 7) & 0xFF, mant = b & 0x7F;
  double v = exp == 0 ? std::ldexp(mant, -126 - 7) : std::ldexp(128 + mant, exp - 127 - 7);
  return sign ? -v : v;
}
bool Bf16IsNan(std::uint16_t b) { return (b & 0x7F80) == 0x7F80 && (b & 0x7F) != 0; }
bool Bf16IsInf(std::uint16_t b) { return (b & 0x7FFF) == 0x7F80; }

// Binary16 of a finite double by arithmetic: pick the quantum of the target binade, divide
// (exact: a power of two), round with nearbyint in the default ties-to-even mode, re-encode.
std::uint16_t RefHalf(double v) {
  const std::uint16_t sign = std::signbit(v) ? 0x8000 : 0;
  const double a = std::fabs(v);
  if (a == 0) return sign;
  int e2 = 0;
  std::frexp(a, &e2);                     // a = f * 2^e2, f in [0.5, 1)
  const int binade = std::max(e2 - 1, -14);  // subnormals share the 2^-14 binade's quantum
  const double q = std::ldexp(1.0, binade - 10);
  const double r = std::nearbyint(a / q) * q;
  if (r >= 65536.0) return sign | 0x7C00;
  if (r < std::ldexp(1.0, -14)) return sign | static_cast<std::uint16_t>(r / std::ldexp(1.0, -24));
  std::frexp(r, &e2);
  const int exp = e2 - 1;
  const auto mant = static_cast<std::uint16_t>((r / std::ldexp(1.0, exp) - 1.0) * 1024.0);
  return sign | static_cast<std::uint16_t>((exp + 15) << 10) | mant;
}

std::vector<std::byte> AllBf16Patterns() {
  std::vector<std::byte> v(65536 * 2);
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    std::memcpy(v.data() + 2 * i, &b, 2);
  }
  return v;
}

template <typename T>
T Load(const std::byte* p, std::size_t i) {
  T v;
  std::memcpy(&v, p + sizeof(T) * i, sizeof(T));
  return v;
}

// ---- CPU reference conversions -------------------------------------------------------------

TEST(ConvertBf16, ToF32IsExactForAllPatterns) {
  const auto src = AllBf16Patterns();
  std::vector<std::byte> dst(65536 * 4);
  ConvertBf16ToF32(src.data(), 65536, dst.data());
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    const auto got = Load<std::uint32_t>(dst.data(), i);
    if (Bf16IsNan(b)) {
      // "Exact" includes NaN payloads and sign: the bits are the upper half unchanged.
      ASSERT_EQ(got >> 16, b) << std::hex << "bf16 0x" << i;
      ASSERT_EQ(got & 0xFFFF, 0u) << std::hex << "bf16 0x" << i;
      continue;
    }
    const float want = static_cast<float>(DecodeBf16(b));  // exact: bf16 values are floats
    float gotf;
    std::memcpy(&gotf, &got, 4);
    ASSERT_EQ(std::signbit(gotf), std::signbit(want)) << std::hex << "bf16 0x" << i;
    if (Bf16IsInf(b)) {
      ASSERT_TRUE(std::isinf(gotf)) << std::hex << "bf16 0x" << i;
    } else {
      ASSERT_EQ(gotf, want) << std::hex << "bf16 0x" << i;
    }
  }
}

TEST(ConvertBf16, ToF16RoundsToNearestEvenForAllPatterns) {
  ASSERT_EQ(std::fegetround(), FE_TONEAREST);
  const auto src = AllBf16Patterns();
  std::vector<std::byte> dst(65536 * 2);
  ConvertBf16ToF16(src.data(), 65536, dst.data());
  int nans = 0, infs = 0, subnormals = 0, zeros = 0;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    const auto got = Load<std::uint16_t>(dst.data(), i);
    std::uint16_t want;
    if (Bf16IsNan(b)) {
      // Quiet NaN, sign kept, payload = the top mantissa bits (x86 F16C / soft-float behaviour).
      want = static_cast<std::uint16_t>((b & 0x8000) | 0x7E00 | ((b & 0x7F) << 3));
    } else if (Bf16IsInf(b)) {
      want = static_cast<std::uint16_t>((b & 0x8000) | 0x7C00);
    } else {
      want = RefHalf(DecodeBf16(b));
    }
    ASSERT_EQ(got, want) << std::hex << "bf16 0x" << i << " (" << DecodeBf16(b) << ")";
    nans += (got & 0x7C00) == 0x7C00 && (got & 0x3FF) != 0;
    infs += (got & 0x7FFF) == 0x7C00;
    subnormals += (got & 0x7C00) == 0 && (got & 0x3FF) != 0;
    zeros += (got & 0x7FFF) == 0;
  }
  // The interesting regions were all visited (guards against a vacuous loop).
  EXPECT_EQ(nans, 2 * 127);
  EXPECT_GT(infs, 2);  // +-inf and every finite bf16 >= 65520
  EXPECT_GT(subnormals, 100);
  EXPECT_GT(zeros, 2);
}

TEST(ConvertBf16, ToF16SpotValues) {
  auto conv = [](std::uint16_t b) {
    std::byte in[2], out[2];
    std::memcpy(in, &b, 2);
    ConvertBf16ToF16(in, 1, out);
    return Load<std::uint16_t>(out, 0);
  };
  EXPECT_EQ(conv(0x3F80), 0x3C00);  // 1.0
  EXPECT_EQ(conv(0xC000), 0xC000);  // -2.0
  EXPECT_EQ(conv(0x477F), 0x7BF8);  // 65280: representable
  EXPECT_EQ(conv(0x4780), 0x7C00);  // 65536: overflows to inf
  EXPECT_EQ(conv(0x3380), 0x0001);  // 2^-24: smallest subnormal
  EXPECT_EQ(conv(0x3300), 0x0000);  // 2^-25: tie, to even (zero)
  EXPECT_EQ(conv(0xB301), 0x8001);  // just above -2^-25: away from zero
  EXPECT_EQ(conv(0x8000), 0x8000);  // -0
  EXPECT_EQ(conv(0x7FC1), 0x7E08);  // NaN keeps payload bits, quiet
  EXPECT_EQ(conv(0xFF81), 0xFE08);  // signalling NaN becomes quiet, sign kept
}

#if defined(__FLT16_MAX__)
// A second, compiler-provided reference where g++ has _Float16 (x86-64 from GCC 12).
TEST(ConvertBf16, ToF16MatchesCompilerFloat16) {
  const auto src = AllBf16Patterns();
  std::vector<std::byte> dst(65536 * 2);
  ConvertBf16ToF16(src.data(), 65536, dst.data());
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    const std::uint32_t fbits = std::uint32_t{b} << 16;
    float f;
    std::memcpy(&f, &fbits, 4);
    const _Float16 h = static_cast<_Float16>(f);
    std::uint16_t want;
    std::memcpy(&want, &h, 2);
    // Exact for NaNs too: GCC's soft-float and F16C both quieten and keep the top payload bits.
    ASSERT_EQ(Load<std::uint16_t>(dst.data(), i), want) << std::hex << "bf16 0x" << i;
  }
}
#endif

TEST(ConvertBf16, UnalignedBuffers) {
  const auto all = AllBf16Patterns();
  std::vector<std::byte> src(1001 * 2 + 1), dst16(1001 * 2 + 1), dst32(1001 * 4 + 1);
  std::memcpy(src.data() + 1, all.data() + 2 * 0x3F00, 1001 * 2);
  ConvertBf16ToF16(src.data() + 1, 1001, dst16.data() + 1);
  ConvertBf16ToF32(src.data() + 1, 1001, dst32.data() + 1);
  std::vector<std::byte> ref16(1001 * 2), ref32(1001 * 4);
  ConvertBf16ToF16(all.data() + 2 * 0x3F00, 1001, ref16.data());
  ConvertBf16ToF32(all.data() + 2 * 0x3F00, 1001, ref32.data());
  EXPECT_EQ(std::memcmp(dst16.data() + 1, ref16.data(), ref16.size()), 0);
  EXPECT_EQ(std::memcmp(dst32.data() + 1, ref32.data(), ref32.size()), 0);
}

// ---- engine construction without a usable GPU ----------------------------------------------

TEST(CudaEngine, FailsCleanlyOrDescribesTheDevice) {
  auto r = MakeCudaCopyEngine(CudaEngineOptions{});
  if (!r.ok()) {
    // This machine has no usable GPU (or no CUDA in the build): an error value, one sentence.
    std::cout << "MakeCudaCopyEngine(cuda:0): " << r.error().message << "\n";
    EXPECT_EQ(r.error().code, Errc::kUnavailable) << r.error().message;
    EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
    if (CudaCompiledIn()) {
      EXPECT_EQ(r.error().message.rfind("--device cuda:0: ", 0), 0u) << r.error().message;
      EXPECT_NE(r.error().message.find("cudaError"), std::string::npos) << r.error().message;
    } else {
      EXPECT_NE(r.error().message.find("built without CUDA"), std::string::npos);
    }
    return;
  }
  EXPECT_NE((*r)->Describe().find("(cuda:0), 4 streams"), std::string::npos) << (*r)->Describe();
}

TEST(CudaEngine, NoSuchDeviceIsUnavailable) {
  auto r = MakeCudaCopyEngine(CudaEngineOptions{.device = 1000, .streams = 4});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, Errc::kUnavailable);
  if (CudaCompiledIn()) {
    EXPECT_NE(r.error().message.find("cuda:1000"), std::string::npos) << r.error().message;
  }
}

TEST(CudaEngine, BadOptionsAreRejected) {
  if (!CudaCompiledIn()) GTEST_SKIP() << "built without CUDA: every option gives kUnavailable";
  auto neg = MakeCudaCopyEngine(CudaEngineOptions{.device = -1, .streams = 4});
  ASSERT_FALSE(neg.ok());
  EXPECT_EQ(neg.error().code, Errc::kInvalidArgument);
  auto zero = MakeCudaCopyEngine(CudaEngineOptions{.device = 0, .streams = 0});
  ASSERT_FALSE(zero.ok());
  EXPECT_EQ(zero.error().code, Errc::kInvalidArgument);
  EXPECT_NE(zero.error().message.find("COLDSTART_CUDA_STREAMS"), std::string::npos);
}

// ---- the engine on a GPU (skipped without one) ---------------------------------------------

#define CS_ENGINE_OR_SKIP(var, nstreams)                                              \
  auto var##_made = MakeCudaCopyEngine(CudaEngineOptions{.device = 0, .streams = nstreams}); \
  if (!var##_made.ok()) GTEST_SKIP() << "no usable GPU: " << var##_made.error().message; \
  std::unique_ptr<CopyEngine> var = std::move(var##_made).value()

std::vector<std::byte> RandomBytes(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = static_cast<std::byte>(rng() & 0xFF);
  return v;
}

// Counts `done` calls per request so "exactly once" is checked, not assumed.
struct DoneLog {
  explicit DoneLog(std::size_t n) : calls(n), failures(n) {}
  std::function<void(Status)> For(std::size_t i) {
    return [this, i](Status s) {
      calls[i].fetch_add(1);
      if (!s.ok()) failures[i].fetch_add(1);
    };
  }
  void ExpectEachOnceOk() const {
    for (std::size_t i = 0; i < calls.size(); ++i) {
      EXPECT_EQ(calls[i].load(), 1) << "request " << i;
      EXPECT_EQ(failures[i].load(), 0) << "request " << i;
    }
  }
  std::vector<std::atomic<int>> calls, failures;
};

TEST(CudaEngineGpu, RoundTripOnSeveralStreams) {
  for (unsigned streams : {1u, 3u, 4u}) {
    CS_ENGINE_OR_SKIP(engine, streams);
    EXPECT_NE(engine->Describe().find("cuda:0"), std::string::npos);
    constexpr std::size_t kBytes = (8 << 20) + 12345;  // not a multiple of anything nice
    const auto data = RandomBytes(kBytes, streams);
    auto staging = engine->AllocateStaging(kBytes);
    ASSERT_TRUE(staging.ok()) << staging.error().message;
    std::memcpy(staging->data(), data.data(), kBytes);
    auto dev = engine->AllocateDevice(kBytes);
    ASSERT_TRUE(dev.ok()) << dev.error().message;
    // Uneven pieces at odd offsets, including empty and 1-byte copies.
    std::vector<std::size_t> cuts = {0, 0, 1, 7, 4096, 65537, 1 << 20, (3 << 20) + 3, kBytes};
    for (std::size_t off = (3 << 20) + 3; off + 300001 < kBytes; off += 300001) cuts.push_back(off);
    std::sort(cuts.begin(), cuts.end());
    DoneLog log(cuts.size() - 1);
    for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
      CopyRequest req{staging->data() + cuts[i], cuts[i + 1] - cuts[i], dev->ptr() + cuts[i]};
      ASSERT_TRUE(engine->Submit(req, log.For(i)).ok());
    }
    ASSERT_TRUE(engine->Drain().ok());
    log.ExpectEachOnceOk();
    std::vector<std::byte> back(kBytes);
    ASSERT_TRUE(engine->ReadBack(dev->ptr(), kBytes, back.data()).ok());
    EXPECT_EQ(std::memcmp(back.data(), data.data(), kBytes), 0) << streams << " streams";
  }
}

// The join event covers copies on every stream: waiting on it (no Drain) is enough to read the
// bytes back, and an event recorded before any copy completes at once.
TEST(CudaEngineGpu, JoinEventCoversEveryStream) {
  CS_ENGINE_OR_SKIP(engine, 4);
  auto empty = engine->RecordJoinEvent();
  ASSERT_TRUE(empty.ok()) << empty.error().message;
  ASSERT_TRUE(engine->WaitEvent(empty->ptr()).ok());
  constexpr std::size_t kBytes = 64 << 20, kPiece = 1 << 20;
  const auto data = RandomBytes(kBytes, 77);
  auto staging = engine->AllocateStaging(kBytes);
  ASSERT_TRUE(staging.ok()) << staging.error().message;
  std::memcpy(staging->data(), data.data(), kBytes);
  auto dev = engine->AllocateDevice(kBytes);
  ASSERT_TRUE(dev.ok()) << dev.error().message;
  DoneLog log(kBytes / kPiece);
  for (std::size_t i = 0; i < kBytes / kPiece; ++i)
    ASSERT_TRUE(engine->Submit({staging->data() + i * kPiece, kPiece, dev->ptr() + i * kPiece}, log.For(i)).ok());
  auto join = engine->RecordJoinEvent();
  ASSERT_TRUE(join.ok()) << join.error().message;
  ASSERT_TRUE(engine->WaitEvent(join->ptr()).ok());
  std::vector<std::byte> back(kBytes);
  ASSERT_TRUE(engine->ReadBack(dev->ptr(), kBytes, back.data()).ok());
  EXPECT_EQ(std::memcmp(back.data(), data.data(), kBytes), 0);
  ASSERT_TRUE(engine->Drain().ok());
  log.ExpectEachOnceOk();
}

TEST(CudaEngineGpu, ManyConcurrentSubmits) {
  CS_ENGINE_OR_SKIP(engine, 4);
  constexpr std::size_t kThreads = 4, kPerThread = 500, kPiece = 4096 + 17;
  constexpr std::size_t kBytes = kThreads * kPerThread * kPiece;
  const auto data = RandomBytes(kBytes, 7);
  auto staging = engine->AllocateStaging(kBytes);
  ASSERT_TRUE(staging.ok()) << staging.error().message;
  std::memcpy(staging->data(), data.data(), kBytes);
  auto dev = engine->AllocateDevice(kBytes);
  ASSERT_TRUE(dev.ok()) << dev.error().message;
  DoneLog log(kThreads * kPerThread);
  std::atomic<int> submit_failures{0};
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (std::size_t j = 0; j < kPerThread; ++j) {
        const std::size_t i = t * kPerThread + j, off = i * kPiece;
        if (!engine->Submit({staging->data() + off, kPiece, dev->ptr() + off}, log.For(i)).ok())
          submit_failures.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_TRUE(engine->Drain().ok());
  EXPECT_EQ(submit_failures.load(), 0);
  log.ExpectEachOnceOk();
  std::vector<std::byte> back(kBytes);
  ASSERT_TRUE(engine->ReadBack(dev->ptr(), kBytes, back.data()).ok());
  EXPECT_EQ(std::memcmp(back.data(), data.data(), kBytes), 0);
}

TEST(CudaEngineGpu, ConversionsAreBitIdenticalToTheCpuReference) {
  CS_ENGINE_OR_SKIP(engine, 2);
  const auto all = AllBf16Patterns();
  auto staging = engine->AllocateStaging(all.size());
  ASSERT_TRUE(staging.ok()) << staging.error().message;
  std::memcpy(staging->data(), all.data(), all.size());
  std::vector<std::byte> ref16(65536 * 2), ref32(65536 * 4);
  ConvertBf16ToF16(all.data(), 65536, ref16.data());
  ConvertBf16ToF32(all.data(), 65536, ref32.data());
  auto dev16 = engine->AllocateDevice(ref16.size() + 64);
  auto dev32 = engine->AllocateDevice(ref32.size() + 64);
  ASSERT_TRUE(dev16.ok() && dev32.ok());

  // Aligned destinations take the 4-per-thread kernel (an odd count also its tail); destinations
  // offset by an element take the one-per-thread kernel.
  struct Case {
    std::size_t src_skip, dst_skip;
  };
  for (Case c : {Case{0, 0}, Case{1, 0}, Case{3, 0}, Case{2, 0}, Case{1, 1}, Case{3, 3}}) {
    const std::size_t n = 65536 - c.src_skip;
    const std::byte* src = staging->data() + 2 * c.src_skip;
    const std::uintptr_t d16 = dev16->ptr() + 2 * c.dst_skip, d32 = dev32->ptr() + 4 * c.dst_skip;
    DoneLog log(2);
    ASSERT_TRUE(engine->Submit({src, 2 * n, d16, Conversion::kBf16ToF16}, log.For(0)).ok());
    ASSERT_TRUE(engine->Submit({src, 2 * n, d32, Conversion::kBf16ToF32}, log.For(1)).ok());
    ASSERT_TRUE(engine->Drain().ok());
    log.ExpectEachOnceOk();
    std::vector<std::byte> got16(2 * n), got32(4 * n);
    ASSERT_TRUE(engine->ReadBack(d16, got16.size(), got16.data()).ok());
    ASSERT_TRUE(engine->ReadBack(d32, got32.size(), got32.data()).ok());
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t ref = c.src_skip + i;
      ASSERT_EQ(Load<std::uint16_t>(got16.data(), i), Load<std::uint16_t>(ref16.data(), ref))
          << std::hex << "fp16 of bf16 0x" << ref << std::dec << ", case " << c.src_skip << "/"
          << c.dst_skip;
      ASSERT_EQ(Load<std::uint32_t>(got32.data(), i), Load<std::uint32_t>(ref32.data(), ref))
          << std::hex << "fp32 of bf16 0x" << ref << std::dec << ", case " << c.src_skip << "/"
          << c.dst_skip;
    }
  }
}

TEST(CudaEngineGpu, InvalidRequestsFailWithoutCallingDone) {
  CS_ENGINE_OR_SKIP(engine, 1);
  auto staging = engine->AllocateStaging(64);
  auto dev = engine->AllocateDevice(256);
  ASSERT_TRUE(staging.ok() && dev.ok());
  std::atomic<int> calls{0};
  auto done = [&](Status) { calls.fetch_add(1); };
  auto odd = engine->Submit({staging->data(), 3, dev->ptr(), Conversion::kBf16ToF16}, done);
  EXPECT_EQ(odd.ok() ? Errc::kInternal : odd.error().code, Errc::kInvalidArgument);
  auto misaligned =
      engine->Submit({staging->data(), 8, dev->ptr() + 2, Conversion::kBf16ToF32}, done);
  EXPECT_EQ(misaligned.ok() ? Errc::kInternal : misaligned.error().code, Errc::kInvalidArgument);
  EXPECT_TRUE(engine->Drain().ok());
  EXPECT_EQ(calls.load(), 0);
}

TEST(CudaEngineGpu, DoneMaySubmitAndDrainWaitsForEverything) {
  CS_ENGINE_OR_SKIP(engine, 2);
  constexpr std::size_t kPieces = 64, kPiece = 1 << 16;
  const auto data = RandomBytes(kPieces * kPiece, 11);
  auto staging = engine->AllocateStaging(data.size());
  auto dev = engine->AllocateDevice(data.size());
  ASSERT_TRUE(staging.ok() && dev.ok());
  std::memcpy(staging->data(), data.data(), data.size());
  EXPECT_TRUE(engine->Drain().ok());  // nothing in flight: returns at once
  // A chain: each done submits the next piece, so Drain must also wait for copies submitted
  // after it started waiting.
  std::atomic<std::size_t> completed{0};
  std::atomic<int> drain_from_callback_rejected{0};
  std::function<void(Status)> next;
  next = [&](Status s) {
    EXPECT_TRUE(s.ok());
    const std::size_t i = completed.fetch_add(1) + 1;
    if (i == 1 && !engine->Drain().ok()) drain_from_callback_rejected.fetch_add(1);
    if (i < kPieces) {
      EXPECT_TRUE(
          engine->Submit({staging->data() + i * kPiece, kPiece, dev->ptr() + i * kPiece}, next).ok());
    }
  };
  ASSERT_TRUE(engine->Submit({staging->data(), kPiece, dev->ptr()}, next).ok());
  ASSERT_TRUE(engine->Drain().ok());
  EXPECT_EQ(completed.load(), kPieces);
  EXPECT_EQ(drain_from_callback_rejected.load(), 1);
  std::vector<std::byte> back(data.size());
  ASSERT_TRUE(engine->ReadBack(dev->ptr(), back.size(), back.data()).ok());
  EXPECT_EQ(std::memcmp(back.data(), data.data(), data.size()), 0);
}

TEST(CudaEngineGpu, BuffersOutliveTheEngineAndDestructionDrains) {
  std::atomic<int> calls{0};
  StagingMemory staging;
  DeviceBuffer dev;
  {
    CS_ENGINE_OR_SKIP(engine, 4);
    auto s = engine->AllocateStaging(32 << 20);
    auto d = engine->AllocateDevice(32 << 20);
    ASSERT_TRUE(s.ok() && d.ok());
    staging = std::move(s).value();
    dev = std::move(d).value();
    for (int i = 0; i < 32; ++i) {
      ASSERT_TRUE(engine->Submit({staging.data() + (i << 20), 1 << 20, dev.ptr() + (i << 20)},
                                 [&](Status st) { calls.fetch_add(st.ok() ? 1 : 1000); })
                      .ok());
    }
  }  // no Drain: the destructor must wait for all 32
  EXPECT_EQ(calls.load(), 32);
  dev.Reset();  // freed through the captured device index, engine gone
  staging.Reset();
}

}  // namespace
}  // namespace coldstart::loader
