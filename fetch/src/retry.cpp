#include "coldstart/fetch/retry.h"

#include <curl/curl.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <random>
#include <string>

namespace coldstart::fetch {
void LinkEnvFetch();  // fetch_env.cpp
}  // namespace coldstart::fetch


namespace coldstart::fetch {
namespace {

Status SecondsOption(const Env& env, std::string_view name, double* field) {
  CS_ASSIGN_OR_RETURN(auto v, env.GetSeconds(name));
  if (v) *field = *v;
  return OkStatus();
}

// curl failures that say "this request can never work", even though they surface as
// connection-level errors (Errc::kNetwork). Retrying them only delays the real message.
bool PermanentCurlCode(int code) {
  switch (code) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
    case CURLE_WRITE_ERROR:          // our write callback refused the data
    case CURLE_OUT_OF_MEMORY:
    case CURLE_ABORTED_BY_CALLBACK:  // our progress callback cancelled
    case CURLE_TOO_MANY_REDIRECTS:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_FILESIZE_EXCEEDED:
    case CURLE_LOGIN_DENIED:
      return true;
    default:
      return false;
  }
}

}  // namespace

Status RetryOptions::ApplyEnv(const Env& env) {
  LinkEnvFetch();
  CS_ASSIGN_OR_RETURN(auto attempts, env.GetUint("COLDSTART_RETRY_ATTEMPTS"));
  if (attempts) max_attempts = static_cast<unsigned>(std::min<std::uint64_t>(*attempts, 1u << 20));
  CS_RETURN_IF_ERROR(SecondsOption(env, "COLDSTART_RETRY_INITIAL", &initial_backoff_s));
  CS_RETURN_IF_ERROR(SecondsOption(env, "COLDSTART_RETRY_MAX_BACKOFF", &max_backoff_s));
  CS_RETURN_IF_ERROR(SecondsOption(env, "COLDSTART_RETRY_DEADLINE", &deadline_s));
  CS_RETURN_IF_ERROR(SecondsOption(env, "COLDSTART_STALL_TIMEOUT", &stall_timeout_s));
  CS_ASSIGN_OR_RETURN(auto rate, env.GetBytes("COLDSTART_STALL_MIN_RATE"));
  if (rate) stall_min_bytes_per_second = *rate;
  return Validate();
}

Status RetryOptions::Validate() const {
  auto bad = [](std::string m) { return MakeError(Errc::kInvalidArgument, std::move(m)); };
  if (max_attempts < 1 || max_attempts > 1000)
    return bad("retry attempts " + std::to_string(max_attempts) + " is outside 1 .. 1000");
  if (!(initial_backoff_s > 0) || !std::isfinite(initial_backoff_s))
    return bad("initial retry backoff must be above 0 s");
  if (!(max_backoff_s >= initial_backoff_s) || !std::isfinite(max_backoff_s))
    return bad("maximum retry backoff must be at least the initial backoff");
  if (!(multiplier >= 1) || !std::isfinite(multiplier))
    return bad("retry backoff multiplier must be at least 1");
  if (!(deadline_s > 0)) return bad("retry deadline must be above 0 s");
  if (!(stall_timeout_s > 0)) return bad("stall timeout must be above 0 s");
  if (stall_min_bytes_per_second < 1 || stall_min_bytes_per_second > (1ull << 30))
    return bad("stall minimum rate " + std::to_string(stall_min_bytes_per_second) + " B/s is outside 1 B/s .. 1 GiB/s");
  return OkStatus();
}

bool IsRetryable(const Error& e) {
  switch (e.code) {
    case Errc::kFormat:
    case Errc::kIntegrity:
    case Errc::kCancelled:
    case Errc::kInvalidArgument:
    case Errc::kInternal:
      return false;
    default:
      break;
  }
  if (e.http_status != 0) {
    return e.http_status == 408 || e.http_status == 429 ||
           (e.http_status >= 500 && e.http_status <= 599);
  }
  if (e.code == Errc::kTimeout) return true;
  if (e.code == Errc::kNetwork) return !PermanentCurlCode(e.curl_code);
  return false;
}

RetryPolicy::RetryPolicy(RetryOptions o, Jitter jitter) : o_(o), jitter_(std::move(jitter)) {
  if (!jitter_) {
    // Owned by this policy (and its copies), not a process-wide singleton; the mutex makes
    // NextDelay safe to call from many threads at once.
    struct Prng {
      std::mutex mu;
      std::mt19937_64 gen{std::random_device{}()};
      std::uniform_real_distribution<double> dist{0.0, 1.0};
    };
    auto prng = std::make_shared<Prng>();
    jitter_ = [prng] {
      std::lock_guard<std::mutex> lock(prng->mu);
      return prng->dist(prng->gen);
    };
  }
}

double RetryPolicy::BaseDelay(unsigned failed_attempts) const {
  unsigned n = std::max(failed_attempts, 1u);
  // pow overflows to +inf for huge n, which min() turns into the cap.
  double grown = o_.initial_backoff_s * std::pow(o_.multiplier, static_cast<double>(n - 1));
  return std::min(o_.max_backoff_s, grown);
}

std::optional<double> RetryPolicy::NextDelay(const Error& e, unsigned failed_attempts,
                                             double elapsed_s) const {
  if (!IsRetryable(e)) return std::nullopt;
  unsigned n = std::max(failed_attempts, 1u);
  if (n >= o_.max_attempts) return std::nullopt;
  double j = jitter_();
  if (!(j >= 0.0)) j = 0.0;                      // also catches NaN
  if (j >= 1.0) j = std::nextafter(1.0, 0.0);
  double base = BaseDelay(n);
  double delay = base * (0.5 + 0.5 * j);
  // 0.5 + 0.5 * j rounds to 1.0 for j within 2^-53 of 1; keep the documented [base/2, base).
  if (delay >= base) delay = std::nextafter(base, 0.0);
  if (elapsed_s + delay > o_.deadline_s) return std::nullopt;
  return delay;
}

}  // namespace coldstart::fetch
