// Retry policy for remote reads and requests: which errors are worth another attempt and how
// long to wait before it. Pure: no clock, no sleeping, no I/O; the caller measures elapsed
// time and sleeps, which keeps the schedule exactly testable.
//
// Schedule ("exponential backoff with equal jitter", as in kvikio and google-cloud-cpp):
//   base(n)  = min(max_backoff_s, initial_backoff_s * multiplier^(n-1))   for the n-th failure
//   delay(n) = base(n) * (0.5 + 0.5 * jitter()),  jitter() uniform in [0, 1)
// so a delay lies in [base/2, base): never zero (a fleet of loaders that all failed at once
// does not hammer the server again in lockstep) and never more than the cap. With the
// defaults the bases are 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10, 10 ... seconds.
//
// Give up when the error is not retryable, when `max_attempts` attempts have failed, or when
// the next attempt would start later than `deadline_s` after the first one.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include "coldstart/core/env.h"
#include "coldstart/core/result.h"

namespace coldstart::fetch {

struct RetryOptions {
  unsigned max_attempts = 8;       // COLDSTART_RETRY_ATTEMPTS: attempts in total, first included
  double initial_backoff_s = 0.2;  // COLDSTART_RETRY_INITIAL
  double max_backoff_s = 10;       // COLDSTART_RETRY_MAX_BACKOFF
  double multiplier = 2;
  double deadline_s = 600;         // COLDSTART_RETRY_DEADLINE: no new attempt after this much
                                   // time since the first
  double stall_timeout_s = 20;     // COLDSTART_STALL_TIMEOUT: no bytes for this long = stalled
                                   // transfer (enforced by the engine, not by RetryPolicy)
  // COLDSTART_STALL_MIN_RATE: a transfer averaging fewer bytes per second than this over
  // stall_timeout_s is stalled too, so a server that trickles a byte a second is abandoned
  // and retried instead of holding a connection for hours. 16 KiB/s: a healthy GCS stream
  // moves tens of MB/s, and even 32 connections sharing a 10 Mbit/s link get ~40 KB/s each;
  // below it a 16 MiB range would take over 17 minutes, worse than a fresh connection.
  std::uint64_t stall_min_bytes_per_second = 16u << 10;

  // Overrides fields from COLDSTART_RETRY_* / COLDSTART_STALL_TIMEOUT; fails on malformed
  // values and then on Validate().
  Status ApplyEnv(const Env& env);
  Status Validate() const;
};

// True for failures that another attempt may cure: HTTP 408, 429 and 5xx; Errc::kNetwork
// (connection reset or refused, broken stream, partial body) and Errc::kTimeout (including
// stalls). False for other HTTP statuses (400, 401, 403, 404, 412 ...), for format and
// integrity errors, cancellation, and for curl failures that will fail the same way again
// (malformed URL, unsupported protocol, TLS certificate rejected, too many redirects,
// our own callback aborting the transfer).
bool IsRetryable(const Error& e);

class RetryPolicy {
 public:
  // Returns a value in [0, 1). Injectable so tests pin the schedule; values outside [0, 1)
  // are clamped.
  using Jitter = std::function<double()>;

  // An empty `jitter` gets a private, mutex-guarded PRNG seeded from std::random_device, so
  // one policy can be shared by every worker thread of an engine.
  explicit RetryPolicy(RetryOptions o, Jitter jitter = {});

  // After `failed_attempts` (>= 1; 0 is treated as 1) failures, the last being `e`, with
  // `elapsed_s` seconds since the first attempt started: the delay in seconds before the next
  // attempt, or nullopt to give up.
  std::optional<double> NextDelay(const Error& e, unsigned failed_attempts, double elapsed_s) const;

  // base(n) above, without jitter: the upper bound of the n-th delay.
  double BaseDelay(unsigned failed_attempts) const;

  const RetryOptions& options() const { return o_; }

 private:
  RetryOptions o_;
  Jitter jitter_;
};

}  // namespace coldstart::fetch
