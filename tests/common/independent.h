// An independent reading of safetensors files for tests: nlohmann's DOM for the header and
// std::ifstream for the bytes, sharing no code with coldstart's parser or I/O engines.
#pragma once

#include <openssl/evp.h>

#include <cstdint>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace coldstart::testing {

inline std::string Sha256HexOf(const void* data, std::size_t n) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data, n, md, &len, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += kHex[md[i] >> 4];
    out += kHex[md[i] & 15];
  }
  return out;
}

// tensor name -> sha256 of its bytes, for one file.
inline std::map<std::string, std::string> IndependentDigests(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char len8[8];
  in.read(reinterpret_cast<char*>(len8), 8);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len8[i];
  std::string header(n, '\0');
  in.read(header.data(), static_cast<std::streamsize>(n));
  auto j = nlohmann::json::parse(header);
  std::map<std::string, std::string> out;
  for (auto& [name, info] : j.items()) {
    if (name == "__metadata__") continue;
    std::uint64_t b = info["data_offsets"][0], e = info["data_offsets"][1];
    std::string bytes(e - b, '\0');
    in.seekg(static_cast<std::streamoff>(8 + n + b));
    in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out[name] = Sha256HexOf(bytes.data(), bytes.size());
  }
  return out;
}

}  // namespace coldstart::testing
