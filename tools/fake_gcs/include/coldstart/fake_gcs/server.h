// A fake Google Cloud Storage server on loopback, for tests and benchmarks that must never
// touch the internet. It serves a local directory tree (root/BUCKET/OBJECT...) through the
// parts of the GCS JSON API, XML API, GCE metadata server and OAuth2 token endpoint that
// coldstart's fetch layer uses, and injects faults on demand (status codes, resets, cut or
// stalled or corrupted bodies, overwrites mid-download, slow first bytes) so retry, resume
// and integrity code paths can be exercised deterministically.
//
// Behaviour mirrors real GCS where coldstart depends on it (string-typed "size"/"generation",
// base64 big-endian crc32c, 206/416 range semantics, 404 vs 412 for generation pins); see
// server.cpp for the deliberate simplifications.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "coldstart/core/result.h"

namespace coldstart::fakegcs {

struct FaultSpec {
  enum class Kind {
    kStatus,            // answer `status` with a JSON (or XML) error body
    kReset,             // after `after_bytes` body bytes, reset the TCP connection (RST)
    kCutBody,           // after `after_bytes` body bytes, close the connection cleanly (FIN)
    kStall,             // after `after_bytes` body bytes, send nothing for `seconds`, then close
    kCorrupt,           // flip one byte at body offset `after_bytes` (headers keep the true hashes)
    kGenerationChange,  // after `after_bytes`, bump the object's generation and cut the body
    kFirstByteDelay,    // wait `seconds` before answering (headers included)
  };
  Kind kind = Kind::kStatus;
  int status = 503;              // kStatus: answer this status with a JSON error body
  std::uint64_t after_bytes = 0; // kCutBody/kReset/kStall/kCorrupt/kGenerationChange: body offset
  double seconds = 0;            // kStall: stop sending for this long (then close); kFirstByteDelay
  std::string object_glob = "*"; // fnmatch (no FNM_PATHNAME: '*' crosses '/') on "BUCKET/OBJECT";
                                 // listings match "BUCKET/PREFIX"
  unsigned count = 1;            // how many matching requests it hits; 0 = every one
  bool media_only = true;        // only media downloads (alt=media / XML GET), not listing/metadata
};

// "status" | "reset" | "cut" | "stall" | "corrupt" | "generation" | "first_byte_delay".
std::string_view FaultKindName(FaultSpec::Kind kind);
Result<FaultSpec::Kind> ParseFaultKind(std::string_view name);
// CLI form: "kind=status,status=503,count=2,object=*/model-*". Keys: kind, status,
// after (or after_bytes; accepts "1MiB"), seconds (accepts "500ms"), object (or object_glob),
// count, media_only (true/false).
Result<FaultSpec> ParseFaultSpec(std::string_view text);
// JSON form used by POST /_fake/faults: the FaultSpec field names, kind as a string
// ("object" is accepted for "object_glob").
Result<FaultSpec> FaultSpecFromJson(std::string_view json_text);

struct ServerOptions {
  std::string root;             // directory: root/BUCKET/OBJECT... (objects may contain '/')
  std::string host = "127.0.0.1";
  int port = 0;                 // 0 = ephemeral
  std::string required_token;   // if set, storage endpoints need "Authorization: Bearer <token>"
                                // (or a token this server issued), else 401
  double rate_limit_bytes_per_s = 0;  // per connection, media bodies only; 0 = unlimited
  double link_rate_limit_bytes_per_s = 0;  // all media bodies together (one token bucket with no
                                           // burst: a link's capacity); 0 = unlimited
  double first_byte_delay_s = 0;      // every storage API request (JSON and XML), before headers
  unsigned threads = 64;        // worker threads; one per open connection (clients open 32+)
  std::string sa_key_out;       // if set: generate an RSA-2048 key pair, write a service-account
                                // JSON key file here whose token_uri is this server's /token;
                                // the server accepts JWTs signed by it
  std::string authorized_user_out;  // if set: write an authorized_user JSON (client_id,
                                    // client_secret, refresh_token, type, token_uri) whose
                                    // refresh-token exchange this server accepts at /token
  bool md5 = true;              // false: omit md5Hash / md5= (as GCS does for composite objects),
                                // which saves a full MD5 pass over multi-GiB fixtures
  double keep_alive_timeout_s = 2;  // idle keep-alive connections are closed after this
};

struct ServerStats {
  std::uint64_t requests = 0;        // storage + metadata + token requests (not /_fake control)
  std::uint64_t media_requests = 0;  // alt=media and XML GET answered with a body (200/206)
  std::uint64_t media_bytes_sent = 0;
  std::uint64_t token_requests = 0;  // POST /token and metadata-server token requests
  std::uint64_t faults_injected = 0;
  std::map<std::string, std::uint64_t> media_requests_per_object;  // "BUCKET/OBJECT" -> count
  std::vector<std::string> ranges_served;  // 206 answers: "BUCKET/OBJECT bytes=a-b" (resolved)
};

class Server {
 public:
  // Binds, writes the optional credential files, and starts serving on a background thread;
  // the socket is listening when this returns.
  static Result<std::unique_ptr<Server>> Start(ServerOptions options);

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server();  // Stop()

  int port() const;
  std::string endpoint() const;   // "http://127.0.0.1:PORT"
  std::string token_uri() const;  // endpoint() + "/token"
  std::string client_email() const;  // the service account's (and metadata server's) email

  void AddFault(FaultSpec f);
  void ClearFaults();
  ServerStats stats() const;
  void ResetStats();

  // A fresh access token that the storage endpoints accept (as if obtained from /token).
  std::string MintAccessToken();
  // Current generation of BUCKET/OBJECT (starts at the file's mtime in microseconds).
  Result<std::int64_t> Generation(std::string_view bucket, std::string_view object);
  // Simulates an overwrite: the object's generation increases, its bytes stay. Returns it.
  Result<std::int64_t> BumpGeneration(std::string_view bucket, std::string_view object);

  // Stops accepting, ends in-flight transfers (stalls and rate-limit sleeps included) and
  // joins the serving threads. Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace coldstart::fakegcs
