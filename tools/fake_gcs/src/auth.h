// Credentials for the fake: an RSA key pair standing in for a service account, RS256 JWT
// verification as Google's token endpoint does it, and random token material. Internal to
// coldstart_fake_gcs.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "coldstart/core/result.h"

namespace coldstart::fakegcs::internal {

struct PkeyDeleter {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;

Result<PkeyPtr> GenerateRsa2048();
// "-----BEGIN PRIVATE KEY-----" (unencrypted PKCS#8), the form Google puts in "private_key".
Result<std::string> PrivateKeyPem(EVP_PKEY* key);

struct JwtExpectations {
  EVP_PKEY* key = nullptr;      // public half verifies the signature
  std::string key_id;           // header "kid", when the client sends one, must match
  std::string issuer;           // "iss" == the service account's client_email
  std::string audience;         // "aud" == token_uri
  std::int64_t now = 0;         // unix seconds
};
// Checks an RS256 JWT bearer assertion the way oauth2.googleapis.com/token does: signature,
// alg, iss, aud, exp in the future, iat not in the future (60 s skew), lifetime <= 1 h, scope
// present. The error message is the error_description to send back.
Status VerifyJwtAssertion(std::string_view jwt, const JwtExpectations& want);

// Hex of `bytes` random bytes from OpenSSL's CSPRNG (tokens, key ids, secrets).
std::string RandomHex(std::size_t bytes);

}  // namespace coldstart::fakegcs::internal
