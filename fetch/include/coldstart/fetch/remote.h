// Listing and metadata for remote sources: gs:// through the GCS JSON API, http(s):// through
// plain GETs. Produces RemoteFile entries that the range engine downloads and verifies.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "coldstart/fetch/auth.h"
#include "coldstart/fetch/http.h"
#include "coldstart/fetch/range_fetcher.h"
#include "coldstart/fetch/url.h"
#include "coldstart/core/result.h"

namespace coldstart::fetch {

struct RemoteFile {
  std::string name;                // relative to the source folder ("model-00001-of-00002.safetensors")
  RemoteObject object;             // display, media URL (generation pinned), size, generation
  std::optional<std::uint32_t> crc32c;
  std::string md5_base64;          // when the server has no CRC32C
  // Which version of the object this is, for cache keys: the GCS generation (decimal); for
  // plain HTTP the ETag, else Last-Modified, else "" (the server offers no validator).
  std::string version;
  // Last modification, seconds since the epoch, 0 when unknown: HTTP Last-Modified; for GCS
  // the generation, which is the time the version was written in microseconds.
  std::int64_t mtime_unix = 0;
};

struct RemoteOptions {
  std::string endpoint;            // --endpoint; else STORAGE_EMULATOR_HOST; else googleapis
  AuthOptions auth;
  HttpOptions http;                // user agent, --header, timeouts for small requests
  FetchOptions fetch;              // the range engine
  RetryOptions retry;              // for listing/metadata requests
  unsigned list_page_size = 1000;  // objects per listing page (GCS's maximum)
  Status ApplyEnv(const Env& env); // COLDSTART_ENDPOINT, auth, fetch and retry variables
};

// Everything needed to talk to one source: credentials, the small-request client and the
// endpoint. Thread-safe.
class RemoteSession {
 public:
  static Result<std::shared_ptr<RemoteSession>> Open(const Source& source, const RemoteOptions& options, const Env& env);

  // A folder: every object under gs://B/PREFIX/ (recursively), or the files an http(s) folder's
  // index names (+ config and tokenizer files when present). A single object/URL: that file.
  Result<std::vector<RemoteFile>> List();
  // One file of the source by relative name (http folders; gs single objects).
  Result<RemoteFile> Stat(const std::string& name);

  const Source& source() const { return source_; }
  const GcsEndpoint& endpoint() const { return endpoint_; }  // gs:// sources
  const RemoteOptions& options() const { return options_; }
  std::string DescribeCredentials() const;
  // Adds the identity to permission errors from the range engine ("credentials used: ...").
  Error Annotate(Error e) const;
  // "Authorization: Bearer ..." or "" (for the range engine).
  Result<std::string> AuthHeader();
  // Small GET of a whole (small) file, e.g. the index, with retries.
  Result<std::string> GetSmall(const RemoteFile& f, std::uint64_t max_bytes);

 private:
  Result<HttpResponse> SendWithRetry(HttpRequest req, const std::string& what);
  Result<std::vector<RemoteFile>> ListGcs();
  Result<std::vector<RemoteFile>> ListHttp();
  Result<RemoteFile> StatGcsObject(const std::string& object, const std::string& name);
  Result<RemoteFile> StatHttp(const std::string& url, const std::string& name);
  Error DescribeHttpError(long status, const std::string& what, const std::string& body);

  Source source_;
  RemoteOptions options_;
  GcsEndpoint endpoint_;
  std::shared_ptr<Credentials> creds_;
  std::mutex mu_;  // HttpClient is single-threaded
  std::unique_ptr<HttpClient> http_;
};

// Whether a relative object name is safe to create under a destination folder.
Status CheckDestinationName(std::string_view name);

}  // namespace coldstart::fetch
