#include "coldstart/core/hash.h"

#include <openssl/evp.h>

#include <new>

#include "coldstart/core/crc32c.h"

namespace coldstart {

struct Hasher::Impl {
  EVP_MD_CTX* ctx = nullptr;
  ~Impl() { EVP_MD_CTX_free(ctx); }
};

Hasher::Hasher(Algorithm algorithm) : impl_(std::make_unique<Impl>()) {
  impl_->ctx = EVP_MD_CTX_new();
  const EVP_MD* md = algorithm == Algorithm::kSha256 ? EVP_sha256() : EVP_md5();
  // Allocation failure here is an out-of-memory condition we cannot report as a value from
  // a constructor; std::bad_alloc is the honest signal.
  if (impl_->ctx == nullptr || EVP_DigestInit_ex(impl_->ctx, md, nullptr) != 1) throw std::bad_alloc();
}
Hasher::Hasher(Hasher&&) noexcept = default;
Hasher& Hasher::operator=(Hasher&&) noexcept = default;
Hasher::~Hasher() = default;

void Hasher::Update(const void* data, std::size_t size) {
  if (size > 0) EVP_DigestUpdate(impl_->ctx, data, size);
}

std::string Hasher::Finish() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(impl_->ctx, md, &len);
  return std::string(reinterpret_cast<const char*>(md), len);
}

std::string Hasher::HexDigest() {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string raw = Finish(), out(2 * raw.size(), '0');
  for (std::size_t i = 0; i < raw.size(); ++i) {
    auto b = static_cast<unsigned char>(raw[i]);
    out[2 * i] = kHex[b >> 4];
    out[2 * i + 1] = kHex[b & 15];
  }
  return out;
}

std::string Hasher::Base64Digest() { return Base64Encode(Finish()); }

std::string Sha256Hex(std::span<const std::byte> data) {
  Sha256 h;
  h.Update(data.data(), data.size());
  return h.HexDigest();
}

}  // namespace coldstart
