// Content hashes: SHA-256 (digests printed by `coldstart load --digest`).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

namespace coldstart::fetch {

// Incremental SHA-256 over OpenSSL's EVP interface. Move-only; owns its EVP_MD_CTX.
class Sha256 {
 public:
  Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  ~Sha256();
  void Update(const void* data, std::size_t size);
  std::string HexDigest();  // finishes; the object must not be updated afterwards

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string Sha256Hex(std::span<const std::byte> data);

// Incremental MD5, for objects whose server keeps no CRC32C (GCS composite objects have only
// CRC32C; some HTTP servers only an MD5). Digest in base64, as GCS's md5Hash.
class Md5 {
 public:
  Md5();
  Md5(Md5&&) noexcept;
  Md5& operator=(Md5&&) noexcept;
  ~Md5();
  void Update(const void* data, std::size_t size);
  std::string Base64Digest();  // finishes

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace coldstart::fetch
