// Google credentials for GCS, found in the order Google's client libraries use
// ("Application Default Credentials"):
//
//   1. an explicit access token (--access-token, else COLDSTART_ACCESS_TOKEN)
//   2. the JSON key file named by GOOGLE_APPLICATION_CREDENTIALS
//        type "service_account": a self-made RS256 JWT (OpenSSL) exchanged at token_uri
//        type "authorized_user": a refresh token exchanged at token_uri
//   3. gcloud's application-default credentials file
//        ($CLOUDSDK_CONFIG or $HOME/.config/gcloud, application_default_credentials.json)
//   4. the GCE/GKE/Cloud Run metadata server (GCE_METADATA_HOST or metadata.google.internal),
//      unless COLDSTART_METADATA=off; probed with a ~1 s timeout
//   5. anonymous (public buckets)
//
// --anonymous skips the search; an emulator endpoint is anonymous unless a token is given.
// A credentials file that exists but is malformed is an error naming the file and the
// problem, never a silent fall-through to the next source.
//
// Secrets (access tokens, refresh tokens, client secrets, private keys, signed assertions)
// never appear in an error message or in Describe().
#pragma once

#include <memory>
#include <string>

#include "coldstart/core/env.h"
#include "coldstart/fetch/http.h"
#include "coldstart/fetch/retry.h"
#include "coldstart/core/result.h"

namespace coldstart::fetch {

// OAuth scope coldstart asks for: it only ever reads objects.
inline constexpr std::string_view kGcsReadOnlyScope = "https://www.googleapis.com/auth/devstorage.read_only";
inline constexpr std::string_view kGoogleTokenUri = "https://oauth2.googleapis.com/token";
inline constexpr std::string_view kDefaultMetadataHost = "metadata.google.internal";

struct AuthOptions {
  std::string access_token;  // --access-token, else COLDSTART_ACCESS_TOKEN
  bool anonymous = false;    // --anonymous: send no credentials at all (wins over a token)
  bool emulator = false;     // endpoint is an emulator: anonymous unless a token is given
  // Token and metadata-server requests are retried like data (RemoteSession passes its own).
  RetryOptions retry;

  // Fills access_token from COLDSTART_ACCESS_TOKEN when no flag set it. The other variables
  // (GOOGLE_APPLICATION_CREDENTIALS, CLOUDSDK_CONFIG, HOME, GCE_METADATA_HOST,
  // COLDSTART_METADATA) say where credentials are and are read by ResolveCredentials.
  Status ApplyEnv(const Env& env);
};

// Thread-safe: many loader threads may ask for the header at once. The first token is fetched
// by the first caller (the others wait for it); later tokens are fetched by a background thread
// ahead of expiry, so the header is returned from memory without network I/O while a token is
// valid. The thread is joined on destruction.
class Credentials {
 public:
  virtual ~Credentials() = default;
  // "Authorization: Bearer ..." or "" for anonymous. The token is cached and refreshed in the
  // background 5 minutes before expiry (at half its life when it lives under 10 minutes);
  // token requests are retried under AuthOptions::retry. While the cached token is valid it is
  // returned even if a background refresh failed; once it has expired, the caller fetches.
  virtual Result<std::string> AuthorizationHeader() = 0;
  // For people: where the credentials came from, e.g.
  // "service account key /path/key.json (sa@p.iam.gserviceaccount.com)". Never a secret.
  virtual std::string Describe() const = 0;
  // "access-token" | "service-account" | "authorized-user" | "gcloud-adc" |
  // "metadata-server" | "anonymous"
  virtual std::string Kind() const = 0;
};

// Tokens are refreshed this long before they expire.
inline constexpr double kTokenRefreshMarginS = 300;

// `http` supplies user agent, HTTP version and timeouts for token requests; its
// extra_headers are NOT sent to token endpoints or the metadata server (they are meant for
// the storage endpoint). Only the resolution itself touches the network for the metadata
// server probe; token requests happen on the first AuthorizationHeader().
Result<std::shared_ptr<Credentials>> ResolveCredentials(const AuthOptions& o, const Env& env,
                                                        const HttpOptions& http);

// Loads one credentials JSON file (service_account or authorized_user), for tests and for a
// future --credentials flag. `kind` overrides Kind() (ResolveCredentials passes
// "gcloud-adc" for gcloud's file); empty = by type.
Result<std::shared_ptr<Credentials>> LoadCredentialsFile(const std::string& path,
                                                         const HttpOptions& http,
                                                         std::string_view kind = {},
                                                         const RetryOptions& retry = {});

}  // namespace coldstart::fetch
