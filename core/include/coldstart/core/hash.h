// Content hashes: SHA-256 (digests printed by `coldstart load --digest`) and MD5 (objects whose
// server keeps no CRC32C).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

namespace coldstart {

// Incremental digest over OpenSSL's EVP interface. Move-only; owns its EVP_MD_CTX.
class Hasher {
 public:
  enum class Algorithm { kSha256, kMd5 };
  explicit Hasher(Algorithm algorithm);
  Hasher(Hasher&&) noexcept;
  Hasher& operator=(Hasher&&) noexcept;
  ~Hasher();
  void Update(const void* data, std::size_t size);
  // Each finishes the digest; the object must not be updated afterwards.
  std::string HexDigest();
  std::string Base64Digest();  // as GCS's md5Hash

 private:
  std::string Finish();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

class Sha256 : public Hasher {
 public:
  Sha256() : Hasher(Algorithm::kSha256) {}
};

class Md5 : public Hasher {
 public:
  Md5() : Hasher(Algorithm::kMd5) {}
};

std::string Sha256Hex(std::span<const std::byte> data);

}  // namespace coldstart
