// The ranged-read engine: many HTTP range GETs in flight over libcurl multi handles. One
// transport per process (created on first use, joined at exit or by ShutdownTransport()) owns
// the fetch threads, each with its curl multi handle and a pool of reused easy handles, so
// kept-alive connections are shared by listings' header reads, loads and prefetches alike.
// Every RangeFetcher::Start submits a job to it; a job's ranges are admitted only once the
// caller hands out their destination (never blocking the event loop: a full sink delays new
// ranges and never stalls ranges in flight), and ranges someone waits for now (Boost, or a job
// of FetchPriority::kNow) go ahead of background read-ahead. Bytes go from curl's receive
// buffer straight to the destination the caller hands out per range: no intermediate copy.
//
// Per range: the server's answer is placed by its Content-Range (a 200 with the whole object,
// or a 206 that starts elsewhere, never misplaces bytes); once a server answers a partial Range
// with the whole body, that object's later ranges are served in order from one such stream
// (see ObjectState in range_fetcher.cpp) instead of one full download each; redirects are
// followed and the final URL reused for the object's later ranges; a generation header that differs from
// the pinned one is an integrity error; failures retryable under RetryPolicy (408/429/5xx,
// resets, cut bodies, stalls) resume from the last byte received; the CRC32C of each range is
// computed as its bytes arrive, so callers can verify whole objects with Crc32cCombine.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "coldstart/core/env.h"
#include "coldstart/fetch/retry.h"
#include "coldstart/core/result.h"

namespace coldstart::fetch {

struct RemoteObject {
  std::string display;          // gs://bucket/object or the URL, for messages
  std::string url;              // media URL, generation pinned in the query where the API has it
  std::uint64_t size = 0;
  std::int64_t generation = 0;  // expected x-goog-generation; 0 = do not check
};

struct FetchOptions {
  // Ranged GETs in flight across all threads (COLDSTART_CONCURRENCY). Cloud storage caps each
  // connection well below a VM's NIC (GCS: tens of MB/s per stream), so throughput scales with
  // connections until the NIC or CPU saturates.
  unsigned concurrency = 32;
  unsigned threads = 0;                   // COLDSTART_FETCH_THREADS; 0 = min(cores, 4)
  std::uint64_t chunk_bytes = 16ull << 20; // COLDSTART_CHUNK: bytes per ranged GET
  bool http2 = false;                     // COLDSTART_HTTP2: HTTP/2 multiplexes streams over
                                          // one connection, which per-connection caps punish
  std::vector<std::string> headers;       // "K: V" on every request (--header)
  std::string user_agent;                 // empty = coldstart/VERSION
  double connect_timeout_s = 10;
  std::string ca_file;                    // PEM bundle to trust instead of the system's (--cacert)
  RetryOptions retry;

  Status ApplyEnv(const Env& env);
  Status Validate() const;
  unsigned EffectiveThreads() const;
};

struct FetchRange {
  std::uint32_t object = 0;  // index into the objects span
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};

struct FetchStats {
  std::uint64_t bytes = 0;            // bytes delivered to destinations
  std::uint64_t requests = 0;         // GETs issued (attempts)
  std::uint64_t retries = 0;
  std::uint64_t resumed_bytes = 0;    // bytes kept across a retry instead of fetched again
  std::uint64_t discarded_bytes = 0;  // bytes received outside the wanted range (200 answers)
  double first_byte_seconds = 0;
  double seconds = 0;
};

// What `acquire` returns for a range satisfied elsewhere (another process put it in the disk
// cache meanwhile): the range counts as complete, no GET is made and `done` is not called.
inline std::byte* const kRangeSkipped = reinterpret_cast<std::byte*>(std::uintptr_t{1});

struct FetchCallbacks {
  // Destination of range i (length bytes), asked right before its first request, on a fetch
  // thread. Must not block: it runs inside the event loop. nullptr means "no space yet": the
  // range waits (others proceed) and is asked again after FetchJob::Wake(), or within 50 ms.
  // kRangeSkipped: the range is satisfied elsewhere.
  std::function<std::byte*(std::size_t i)> acquire;
  // Instead of `acquire`: bytes of range i at `offset` within the range, handed over straight
  // from curl's receive buffer (e.g. pwrite into the destination file: no staging copy, no
  // buffer pool). Called on a fetch thread; bytes of one range arrive in order. An error
  // aborts the fetch. `done` then gets dest == nullptr.
  std::function<Status(std::size_t i, std::uint64_t offset, const std::byte* data, std::size_t len)> sink;
  // Range i is complete in `dest`, with the CRC32C of its bytes. Called on a fetch thread,
  // possibly concurrently for different ranges. An error aborts the fetch.
  std::function<Status(std::size_t i, std::byte* dest, std::uint32_t crc32c)> done;
  // "Authorization: Bearer ..." or "" (anonymous); asked before every request so refreshed
  // tokens are picked up.
  std::function<Result<std::string>()> auth_header;
  // On the thread in FetchJob::Wait() about every 100 ms with bytes delivered; false cancels.
  std::function<bool(std::uint64_t bytes)> progress;
  // Something the user should know that does not stop the fetch ("HOST ignores Range
  // requests; downloading OBJECT as one stream"). Called on a fetch thread; unset = one
  // "coldstart: warning: ..." line on stderr.
  std::function<void(const std::string& message)> warning;
};

enum class FetchPriority {
  kBackground,  // read-ahead, prefetch: takes the connections nobody waits on
  kNow,         // someone is blocked on these bytes (a tensor the runtime needs, a FUSE read)
};

// A batch of ranges on the transport. Thread-safe.
class FetchJob {
 public:
  virtual ~FetchJob() = default;
  // The sink has space again: ranges whose `acquire` returned nullptr are asked again now.
  virtual void Wake() = 0;
  // Someone waits for this range now: it starts before every range not boosted.
  virtual void Boost(std::size_t range) = 0;
  // Stops admitting ranges and abandons those in flight; Wait() returns kCancelled.
  virtual void Cancel() = 0;
  // Until every range is complete, or the job failed (first unrecoverable error; the rest are
  // abandoned) or was cancelled. Calls `progress` from this thread.
  virtual Status Wait(FetchStats* stats = nullptr) = 0;
  virtual bool Done() = 0;
  virtual std::uint64_t BytesDelivered() const = 0;
};

class RangeFetcher {
 public:
  explicit RangeFetcher(FetchOptions options);
  // Submits the ranges to the process's transport and returns at once. `objects` and `ranges`
  // must outlive the job (until Wait() returns).
  Result<std::shared_ptr<FetchJob>> Start(std::span<const RemoteObject> objects, std::span<const FetchRange> ranges,
                                          FetchCallbacks callbacks, FetchPriority priority = FetchPriority::kBackground);
  // Start() + Wait(): fetches every range; returns the first unrecoverable error.
  Status Fetch(std::span<const RemoteObject> objects, std::span<const FetchRange> ranges,
               const FetchCallbacks& callbacks, FetchStats* stats = nullptr);
  const FetchOptions& options() const { return options_; }

 private:
  FetchOptions options_;
};

struct TransportStats {
  unsigned threads = 0;               // fetch threads running
  std::uint64_t jobs_submitted = 0;   // since the transport started
  unsigned jobs_active = 0;
  std::uint64_t reused_handles = 0;   // transfers that reused a pooled easy handle (connection)
};
TransportStats GetTransportStats();
// Cancels every job and joins the fetch threads; the next Start() creates a new transport.
// Also done at exit.
void ShutdownTransport();

// Splits [0, size) of each object into chunk-sized ranges, largest objects first.
std::vector<FetchRange> ChunkObjects(std::span<const RemoteObject> objects, std::uint64_t chunk_bytes);

}  // namespace coldstart::fetch
