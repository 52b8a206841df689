#include "auth.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <nlohmann/json.hpp>
#include <vector>

#include "coldstart/core/crc32c.h"

namespace coldstart::fakegcs::internal {
namespace {

struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

std::string OpensslError(std::string_view what) {
  char buf[256] = {0};
  ERR_error_string_n(ERR_get_error(), buf, sizeof(buf));
  return std::string(what) + ": " + buf;
}

Error Invalid(std::string message) { return MakeError(Errc::kPermissionDenied, std::move(message)); }

}  // namespace

Result<PkeyPtr> GenerateRsa2048() {
  PkeyPtr key(EVP_RSA_gen(2048));
  if (!key) return MakeError(Errc::kInternal, OpensslError("RSA-2048 key generation failed"));
  return key;
}

Result<std::string> PrivateKeyPem(EVP_PKEY* key) {
  std::unique_ptr<BIO, BioDeleter> bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return MakeError(Errc::kInternal, OpensslError("writing the private key as PEM failed"));
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(len));
}

Status VerifyJwtAssertion(std::string_view jwt, const JwtExpectations& want) {
  auto dot1 = jwt.find('.');
  auto dot2 = dot1 == std::string_view::npos ? dot1 : jwt.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || jwt.find('.', dot2 + 1) != std::string_view::npos)
    return Invalid("Invalid JWT: not three dot-separated parts.");
  auto header_b64 = jwt.substr(0, dot1);
  auto claims_b64 = jwt.substr(dot1 + 1, dot2 - dot1 - 1);
  auto header_raw = Base64UrlDecode(header_b64);
  auto claims_raw = Base64UrlDecode(claims_b64);
  auto sig = Base64UrlDecode(jwt.substr(dot2 + 1));
  if (!header_raw.ok() || !claims_raw.ok() || !sig.ok()) return Invalid("Invalid JWT: bad base64url.");
  auto header = nlohmann::json::parse(*header_raw, nullptr, /*allow_exceptions=*/false);
  auto claims = nlohmann::json::parse(*claims_raw, nullptr, /*allow_exceptions=*/false);
  if (!header.is_object() || !claims.is_object()) return Invalid("Invalid JWT: header or claims are not JSON objects.");
  if (header.value("alg", "") != "RS256") return Invalid("Invalid JWT: alg must be RS256.");
  if (header.contains("kid") && (!header["kid"].is_string() || header["kid"].get<std::string>() != want.key_id))
    return Invalid("Invalid JWT Signature: unknown key id.");

  // Signature first: claims of an unauthenticated token are not worth reporting on.
  std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, want.key) != 1)
    return MakeError(Errc::kInternal, OpensslError("EVP_DigestVerifyInit"));
  std::string_view signed_part = jwt.substr(0, dot2);
  int ok = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig->data()), sig->size(),
                            reinterpret_cast<const unsigned char*>(signed_part.data()), signed_part.size());
  ERR_clear_error();  // a failed verification leaves an error on the thread's queue
  if (ok != 1) return Invalid("Invalid JWT Signature.");

  auto str = [&](const char* k) { return claims.contains(k) && claims[k].is_string() ? claims[k].get<std::string>() : std::string(); };
  if (str("iss") != want.issuer) return Invalid("Invalid JWT: iss does not name the service account.");
  if (str("aud") != want.audience) return Invalid("Invalid JWT: aud must be the token_uri " + want.audience + ".");
  if (!claims.contains("exp") || !claims["exp"].is_number() || !claims.contains("iat") || !claims["iat"].is_number())
    return Invalid("Invalid JWT: exp and iat are required.");
  auto exp = claims["exp"].get<std::int64_t>();
  auto iat = claims["iat"].get<std::int64_t>();
  if (exp <= want.now) return Invalid("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.");
  if (iat > want.now + 60 || exp - iat > 3600 || exp < iat)
    return Invalid("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.");
  if (str("scope").empty()) return Invalid("Invalid JWT: scope is required (invalid_scope).");
  return OkStatus();
}

std::string RandomHex(std::size_t bytes) {
  std::vector<unsigned char> raw(bytes);
  if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1) {
    // RAND_bytes only fails without entropy; a test server can live with a weaker source.
    for (auto& c : raw) c = static_cast<unsigned char>(std::rand());
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes * 2);
  for (unsigned char c : raw) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

}  // namespace coldstart::fakegcs::internal
