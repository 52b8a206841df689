// Move-only owners for the C handles fetch/ uses (STYLE.md, principle 3). Internal header.
#pragma once

#include <curl/curl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>

#include <memory>

namespace coldstart::fetch::detail {

template <auto Free>
struct FreeWith {
  template <typename T>
  void operator()(T* p) const {
    Free(p);
  }
};

using EasyPtr = std::unique_ptr<CURL, FreeWith<curl_easy_cleanup>>;
using MultiPtr = std::unique_ptr<CURLM, FreeWith<curl_multi_cleanup>>;
using SlistPtr = std::unique_ptr<curl_slist, FreeWith<curl_slist_free_all>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, FreeWith<EVP_PKEY_free>>;
using BioPtr = std::unique_ptr<BIO, FreeWith<BIO_free>>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, FreeWith<EVP_MD_CTX_free>>;

}  // namespace coldstart::fetch::detail
