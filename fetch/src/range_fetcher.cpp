#include "coldstart/fetch/range_fetcher.h"

#include <curl/curl.h>
#include <pthread.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "coldstart/core/crc32c.h"
#include "coldstart/core/log.h"
#include "coldstart/fetch/content_range.h"
#include "coldstart/fetch/http.h"

#include "handles.h"

namespace coldstart::fetch {
void LinkEnvFetch();  // fetch_env.cpp
}  // namespace coldstart::fetch


namespace coldstart::fetch {
namespace {

using detail::EasyPtr;
using detail::MultiPtr;
using detail::SlistPtr;

using Clock = std::chrono::steady_clock;


// What the fetch threads learn about one object, shared by them (ranges of one object run on
// several threads).
struct ObjectState {
  std::mutex mu;
  // INVARIANT (mu): where the object's media URL redirects to, learnt from the first ranged GET
  // that followed a redirect and succeeded; later ranges go there directly (a CDN's signed
  // URL), skipping a round trip to the origin. Empty = not redirected (or forgotten after the
  // cached URL failed). cross_origin: it is another scheme/host/port, so no credentials go there.
  std::string effective_url;
  bool cross_origin = false;
  // INVARIANT (mu): the server answered a Range that was not the whole object with a 200 and
  // the whole body. Then one transfer at a time (`stream`) reads the body front to back and
  // serves the object's later ranges from it: those picked while it runs wait in `pending`
  // instead of each downloading the object again up to their end (218 full downloads of a
  // shard for one device load, before).
  bool ignores_range = false;
  struct Transfer* stream = nullptr;
  std::vector<std::size_t> pending;  // range indices, any order
};

// scheme://host:port of a URL, lower-case, without userinfo: what curl compares before it sends
// credentials to a redirect's target.
std::string Origin(std::string_view url) {
  auto sep = url.find("://");
  if (sep == std::string_view::npos) return {};
  std::string scheme(url.substr(0, sep));
  std::string_view rest = url.substr(sep + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (auto at = rest.rfind('@'); at != std::string_view::npos) rest.remove_prefix(at + 1);
  std::string out = scheme + "://" + std::string(rest);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const auto bracket = rest.rfind(']');  // IPv6 literal: a port colon comes after it
  const bool has_port = rest.find(':', bracket == std::string_view::npos ? 0 : bracket) != std::string_view::npos;
  if (!has_port) out += scheme == "https" ? ":443" : ":80";
  return out;
}

bool IsCredentialHeader(std::string_view h) {
  auto lower_starts = [&](std::string_view p) {
    if (h.size() < p.size()) return false;
    for (std::size_t i = 0; i < p.size(); ++i)
      if (std::tolower(static_cast<unsigned char>(h[i])) != p[i]) return false;
    return true;
  };
  return lower_starts("authorization:") || lower_starts("cookie:");
}

class Transport;

// One batch of ranges submitted to the transport (a FetchJob to its caller). Its ranges are
// spread over the transport's threads; each thread admits a range only once the caller's
// `acquire` hands out a destination, so a full sink delays new ranges and never stalls ranges
// in flight.
struct Job final : FetchJob {
  std::span<const RemoteObject> objects;
  std::span<const FetchRange> ranges;
  std::unique_ptr<ObjectState[]> object_state;  // one per object
  FetchCallbacks cb;
  FetchOptions opt;
  RetryPolicy policy;
  FetchPriority priority = FetchPriority::kBackground;
  Clock::time_point start;
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<bool> stop{false};
  std::atomic<bool> cancelled{false};
  std::atomic<bool> first_byte_seen{false};
  std::atomic<std::uint64_t> discarded{0};
  std::atomic<std::int64_t> first_byte_ns{0};
  std::atomic<std::uint64_t> requests{0}, retries{0}, resumed_bytes{0};

  // Scheduling state, guarded by the transport's mutex.
  // INVARIANT: a range index is in at most one of {not yet taken (>= next), deferred, urgent
  // with started[i] == 0, taken}; `inflight` counts ranges taken and not yet completed or
  // returned to `deferred`.
  std::size_t next = 0;
  std::deque<std::size_t> deferred;  // acquire had no space: retried after Wake()
  std::deque<std::size_t> urgent;    // Boost()ed, not started yet
  std::vector<std::uint8_t> started;
  bool blocked = false;              // an acquire failed since the last Wake()
  Clock::time_point blocked_since;
  unsigned inflight = 0;
  std::size_t completed = 0;
  // Of `inflight`, ranges waiting in an object's stream `pending` list: they hold no
  // connection, so they do not count against the job's concurrency.
  std::atomic<unsigned> on_stream{0};

  std::mutex mu;  // guards error, finished
  std::condition_variable cv;
  std::optional<Error> error;
  bool finished = false;
  std::shared_ptr<Transport> transport;

  explicit Job(RetryOptions r) : policy(std::move(r)) {}

  void Fail(Error e) {
    {
      std::lock_guard lk(mu);
      if (!error) error = std::move(e);
    }
    stop = true;
  }

  void Wake() override;
  void Boost(std::size_t range) override;
  void Cancel() override;
  Status Wait(FetchStats* stats) override;
  bool Done() override {
    std::lock_guard lk(mu);
    return finished;
  }
  std::uint64_t BytesDelivered() const override { return bytes.load(std::memory_order_relaxed); }
};

// One range in flight (or waiting to retry).
struct Transfer {
  std::size_t index = 0;
  std::byte* dest = nullptr;
  std::uint64_t received = 0;  // bytes of the range already in dest (kept across retries)
  std::uint32_t crc = 0;
  unsigned failed = 0;
  Clock::time_point first_attempt;
  Clock::time_point retry_at;
  // Per attempt:
  EasyPtr easy;
  SlistPtr headers;
  long status = 0;
  bool have_start = false;     // Content-Range start known (or a 200: stream starts at 0)
  std::uint64_t stream_pos = 0;  // object offset of the next byte the server sends
  bool complete_early = false; // we stopped the transfer after our last byte
  std::string error_body;      // first bytes of a non-2xx body, for the message
  bool via_effective_url = false;  // this attempt went to the object's cached redirect target
  bool bypass_effective_url = false;  // the cached target failed this range once: use the origin
  bool is_stream = false;      // the object's whole-body stream (ObjectState::stream == this)
  bool stream_checked = false; // this response was looked at for an ignored Range
  std::optional<Error> fatal;  // detected in a callback (generation change, gap)
  bool fatal_is_sink = false;  // the sink failed (disk full...): never retried
  std::int64_t seen_generation = 0;
  Job* job = nullptr;
  std::shared_ptr<Job> job_ref;  // keeps the batch alive while this transfer exists

  const FetchRange& range() const { return job->ranges[index]; }
  const RemoteObject& object() const { return job->objects[range().object]; }
};

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\r' || s.back() == '\n' || s.back() == ' ')) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && s[i] == ' ') ++i;
  return s.substr(i);
}

bool IEqualsPrefix(std::string_view line, std::string_view name) {
  if (line.size() < name.size()) return false;
  for (std::size_t i = 0; i < name.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(line[i])) != name[i]) return false;
  return true;
}

std::size_t OnHeader(char* data, std::size_t size, std::size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  std::string_view line(data, size * n);
  if (line.substr(0, 5) == "HTTP/") {
    // A new response (after a redirect or 100 Continue): forget the last one, its body too.
    t->status = 0;
    t->have_start = false;
    t->error_body.clear();
    t->seen_generation = 0;
    t->stream_checked = false;
    auto sp = line.find(' ');
    if (sp != std::string_view::npos && line.size() >= sp + 4) {
      const auto code = line.substr(sp + 1, 3);
      if (std::all_of(code.begin(), code.end(), [](char c) { return c >= '0' && c <= '9'; }))
        t->status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
    }
    if (t->status == 200) {
      t->have_start = true;
      t->stream_pos = 0;
    }
  } else if (t->status >= 200 && t->status < 300 && IEqualsPrefix(line, "content-range:")) {
    // "Content-Range: bytes 100-199/1000"; a value we cannot read places nothing.
    auto cr = ParseContentRange(line.substr(14));
    const auto& obj = t->object();
    if (!cr || cr->unsatisfied) {
      t->fatal = MakeError(Errc::kFormat, obj.display + ": malformed Content-Range '" +
                                              Trim(std::string(line.substr(14, 80))) + "'");
      return 0;
    }
    if (cr->size && *cr->size != obj.size) {
      t->fatal = MakeError(Errc::kIntegrity, obj.display + ": server says the object is " + std::to_string(*cr->size) +
                                                 " bytes, listed as " + std::to_string(obj.size) + " (changed?)");
      return 0;
    }
    t->have_start = true;
    t->stream_pos = cr->first;
  } else if (t->status >= 200 && t->status < 300 && IEqualsPrefix(line, "x-goog-generation:")) {
    auto g = ParseGeneration(line.substr(18));
    if (!g) {
      t->fatal = MakeError(Errc::kFormat, t->object().display + ": malformed x-goog-generation '" +
                                              Trim(std::string(line.substr(18, 40))) + "'");
      return 0;
    }
    t->seen_generation = *g;
  }
  return size * n;
}

// "host[:port]" of a URL, for messages.
std::string HostOf(std::string_view url) {
  auto sep = url.find("://");
  std::string_view rest = sep == std::string_view::npos ? url : url.substr(sep + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  if (auto at = rest.rfind('@'); at != std::string_view::npos) rest.remove_prefix(at + 1);
  return std::string(rest);
}

// A 200 with the whole body answered a Range that was not the whole object: the server ignores
// Range. Said once per object; the first such transfer becomes the object's stream unless one
// is running.
void NoticeIgnoredRange(Transfer* t) {
  Job* job = t->job;
  const auto& obj = t->object();
  ObjectState& os = job->object_state[t->range().object];
  bool warn = false;
  {
    std::lock_guard lk(os.mu);
    warn = !os.ignores_range;
    os.ignores_range = true;
    if (os.stream == nullptr) {
      os.stream = t;
      t->is_stream = true;
    }
  }
  if (!warn) return;
  std::string msg = HostOf(obj.url) + " ignores Range requests; downloading " + obj.display + " as one stream";
  if (job->cb.warning) job->cb.warning(msg);
  else LogWarning(msg);
}

// Counts a range completed by a stream towards its job (defined with the transport below).
void RangeCompleted(Job* job);

// The stream `t` finished its range: hands it to `done` and moves on to the waiting range that
// starts first at or after the stream's position. false = none waits there (the stream ends).
Result<bool> NextStreamRange(Transfer* t) {
  Job* job = t->job;
  ObjectState& os = job->object_state[t->range().object];
  std::size_t next = 0;
  {
    std::lock_guard lk(os.mu);
    auto best = os.pending.end();
    for (auto it = os.pending.begin(); it != os.pending.end(); ++it) {
      const std::uint64_t o = job->ranges[*it].offset;
      if (o >= t->stream_pos && (best == os.pending.end() || o < job->ranges[*best].offset)) best = it;
    }
    if (best == os.pending.end()) return false;
    next = *best;
    os.pending.erase(best);
  }
  // The next range's destination first: when the sink is full the stream ends here (the range
  // goes back to the job and a later transfer continues), since acquire must never block.
  std::byte* dest = nullptr;
  if (job->cb.acquire) {
    dest = job->cb.acquire(next);
    if (dest == nullptr) {
      std::lock_guard lk(os.mu);
      os.pending.push_back(next);
      return false;
    }
    if (dest == kRangeSkipped) {
      // Satisfied elsewhere: it never rides this stream. The stream's own range completes
      // and the stream ends; the object's other waiting ranges get a transfer of their own.
      --job->on_stream;
      RangeCompleted(job);
      return false;
    }
  }
  if (auto st = job->cb.done(t->index, t->dest, t->crc); !st.ok()) {
    // `next` goes back to wait (and is dropped with the failed job).
    std::lock_guard lk(os.mu);
    os.pending.push_back(next);
    return std::move(st).error();
  }
  --job->on_stream;  // `next` rides on this stream's connection now
  RangeCompleted(job);
  t->index = next;
  t->received = 0;
  t->crc = 0;
  t->failed = 0;
  t->first_attempt = Clock::now();
  t->dest = dest;
  return true;
}

// Range i waits for its object's running stream instead of a GET of its own, if there is one;
// if the object is known to ignore Range and none runs, `t` becomes its stream.
bool QueueOnStream(Job* job, std::size_t i) {
  ObjectState& os = job->object_state[job->ranges[i].object];
  std::lock_guard lk(os.mu);
  if (os.stream == nullptr) return false;
  os.pending.push_back(i);
  ++job->on_stream;
  return true;
}

void ClaimStreamIfIgnored(Transfer* t) {
  ObjectState& os = t->job->object_state[t->range().object];
  std::lock_guard lk(os.mu);
  if (os.ignores_range && os.stream == nullptr) {
    os.stream = t;
    t->is_stream = true;
  }
}

// The stream ended (its last range is done): ranges still waiting get transfers of their own
// (one of which becomes the next stream).
void ReleaseStream(Transfer* t, std::deque<std::size_t>* orphans) {
  ObjectState& os = t->job->object_state[t->range().object];
  std::lock_guard lk(os.mu);
  if (os.stream == t) os.stream = nullptr;
  t->is_stream = false;
  std::sort(os.pending.begin(), os.pending.end(),
            [&](std::size_t a, std::size_t b) { return t->job->ranges[a].offset < t->job->ranges[b].offset; });
  orphans->insert(orphans->end(), os.pending.begin(), os.pending.end());
  t->job->on_stream -= static_cast<unsigned>(os.pending.size());
  os.pending.clear();
}

std::size_t OnBody(char* data, std::size_t size, std::size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::size_t len = size * n;
  if (t->status < 200 || t->status >= 300) {
    if (t->error_body.size() < 4096) t->error_body.append(data, std::min<std::size_t>(len, 4096 - t->error_body.size()));
    return len;
  }
  const auto& obj = t->object();
  if (obj.generation != 0 && t->seen_generation != 0 && t->seen_generation != obj.generation) {
    t->fatal = MakeError(Errc::kIntegrity, obj.display + ": object changed while downloading (generation " +
                                               std::to_string(obj.generation) + " became " +
                                               std::to_string(t->seen_generation) + ")");
    return 0;
  }
  if (!t->have_start) {
    t->fatal = MakeError(Errc::kNetwork, obj.display + ": server answered a ranged GET with status " +
                                             std::to_string(t->status) + " and no Content-Range");
    return 0;
  }
  Job* job = t->job;
  if (!job->first_byte_seen.exchange(true))
    job->first_byte_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - job->start).count();
  if (t->status == 200 && !t->stream_checked) {
    t->stream_checked = true;
    if (t->range().offset != 0 || t->range().length != obj.size) NoticeIgnoredRange(t);
  }
  std::size_t off = 0;  // bytes of `data` consumed
  while (off < len) {
    const FetchRange& r = t->range();
    const std::uint64_t want = r.offset + t->received;
    const std::uint64_t end = r.offset + r.length;
    const std::uint64_t pos = t->stream_pos;
    if (pos > want) {
      // The server skipped bytes we still need: never fill the hole with later bytes.
      t->fatal = MakeError(Errc::kNetwork, obj.display + ": server sent bytes from " + std::to_string(pos) +
                                               " but byte " + std::to_string(want) + " was next");
      return 0;
    }
    const std::uint64_t left = len - off;
    const std::uint64_t skip = want - pos;  // bytes before what we want (e.g. a 200 with the whole object)
    if (skip >= left) {
      job->discarded.fetch_add(left, std::memory_order_relaxed);
      t->stream_pos += left;
      return len;
    }
    const char* p = data + off + skip;
    const std::uint64_t take = std::min<std::uint64_t>(left - skip, end - want);
    if (job->cb.sink) {
      auto st = job->cb.sink(t->index, t->received, reinterpret_cast<const std::byte*>(p), take);
      if (!st.ok()) {
        t->fatal = std::move(st).error();
        t->fatal_is_sink = true;
        return 0;
      }
    } else {
      std::memcpy(t->dest + t->received, p, take);
    }
    t->crc = Crc32cExtend(t->crc, p, take);
    t->received += take;
    t->stream_pos += skip + take;
    off += skip + take;
    job->bytes.fetch_add(take, std::memory_order_relaxed);
    if (skip > 0) job->discarded.fetch_add(skip, std::memory_order_relaxed);
    if (t->received < r.length) continue;
    if (t->is_stream) {
      auto next = NextStreamRange(t);
      if (!next.ok()) {
        t->fatal = std::move(next).error();
        t->fatal_is_sink = true;  // a callback failed: not the network's fault
        return 0;
      }
      if (*next) continue;  // serving the next waiting range from the same body
    }
    if (off < len || (t->stream_pos < obj.size && t->status == 200)) {
      // We have our range and the server would send more: stop this transfer here.
      job->discarded.fetch_add(len - off, std::memory_order_relaxed);
      t->complete_early = true;
      return 0;
    }
  }
  return len;
}

void NameThread(unsigned i) {
  char name[16];
  std::snprintf(name, sizeof name, "cs-fetch-%u", i);
  pthread_setname_np(pthread_self(), name);
}

// Sets up (or re-sets up) the easy handle of `t` for its next attempt.
Status Prepare(Transfer* t, CURLM* multi) {
  const FetchOptions& o = t->job->opt;
  if (!t->easy) {
    t->easy.reset(curl_easy_init());
    if (!t->easy) return MakeError(Errc::kResourceExhausted, "curl_easy_init failed");
  }
  CURL* e = t->easy.get();
  const FetchRange& r = t->range();
  // The object's redirect target when one is known, else its URL (curl follows redirects).
  std::string url = t->object().url;
  bool cross_origin = false;
  t->via_effective_url = false;
  if (!t->bypass_effective_url) {
    ObjectState& os = t->job->object_state[r.object];
    std::lock_guard lk(os.mu);
    if (!os.effective_url.empty()) {
      url = os.effective_url;
      cross_origin = os.cross_origin;
      t->via_effective_url = true;
    }
  }
  curl_slist* h = nullptr;
  std::string range = "Range: bytes=" + std::to_string(r.offset + t->received) + "-" +
                      std::to_string(r.offset + r.length - 1);
  h = curl_slist_append(h, range.c_str());
  // Going straight to another origin: send it no credentials, as curl does when it follows a
  // redirect there itself (no CURLOPT_UNRESTRICTED_AUTH).
  if (t->job->cb.auth_header && !cross_origin) {
    auto auth = t->job->cb.auth_header();
    if (!auth.ok()) {
      curl_slist_free_all(h);
      return std::move(auth).error();
    }
    if (!auth->empty()) h = curl_slist_append(h, auth->c_str());
  }
  for (const auto& x : o.headers)
    if (!cross_origin || !IsCredentialHeader(x)) h = curl_slist_append(h, x.c_str());
  t->headers.reset(h);
  t->status = 0;
  t->have_start = false;
  t->stream_pos = 0;
  t->complete_early = false;
  t->error_body.clear();
  t->fatal.reset();
  t->fatal_is_sink = false;
  t->seen_generation = 0;
  curl_easy_setopt(e, CURLOPT_URL, url.c_str());  // curl copies it
  // Downloads are often redirected to a CDN or a signed URL. curl drops Authorization (and
  // Cookie) when a redirect changes host or port; 10 hops is plenty for any real server.
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(e, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(e, CURLOPT_USERAGENT, o.user_agent.empty() ? DefaultUserAgent().c_str() : o.user_agent.c_str());
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &OnBody);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_PRIVATE, t);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(o.connect_timeout_s * 1000));
  // Stall detection: averaging less than stall_min_bytes_per_second over stall_timeout seconds
  // aborts (and retries) the range; a trickle is as dead as silence.
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT,
                   static_cast<long>(std::min<std::uint64_t>(o.retry.stall_min_bytes_per_second, 1ull << 30)));
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, std::max(1L, static_cast<long>(o.retry.stall_timeout_s)));
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 512L * 1024);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  // HTTP/2: negotiated by ALPN over TLS; over cleartext (emulators, loopback benchmarks) only
  // with prior knowledge, since GCS-compatible servers do not offer h2c upgrades.
  const bool cleartext = url.rfind("http://", 0) == 0;
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                   !o.http2 ? CURL_HTTP_VERSION_1_1
                            : (cleartext ? CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE : CURL_HTTP_VERSION_2TLS));
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, o.http2 ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, nullptr);  // identity: ranges are of stored bytes
  if (!o.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, o.ca_file.c_str());
  if (curl_multi_add_handle(multi, e) != CURLM_OK) return MakeError(Errc::kInternal, "curl_multi_add_handle failed");
  return OkStatus();
}

// The outcome of a finished attempt: nullopt = range complete.
std::optional<Error> Evaluate(Transfer* t, CURLcode res) {
  const FetchRange& r = t->range();
  const auto& obj = t->object();
  if (t->fatal) return *t->fatal;
  // Every byte arrived from a 2xx answer: done, whatever curl said afterwards (a reset after
  // the last byte, a lost chunked terminator). Retrying would ask for an empty range.
  if (t->received == r.length && t->status >= 200 && t->status < 300) return std::nullopt;
  if (t->received == r.length && (res == CURLE_OK || t->complete_early)) return std::nullopt;
  if (res == CURLE_TOO_MANY_REDIRECTS) {
    Error e = MakeError(Errc::kNetwork, obj.display + ": more than 10 redirects");
    e.curl_code = static_cast<int>(res);
    return e;
  }
  if (t->status >= 300 || (res == CURLE_OK && t->status < 200)) {
    Error e = HttpError(t->status, obj.display, t->error_body);
    if (t->status == 416)
      e = MakeError(Errc::kIntegrity, obj.display + ": range " + std::to_string(r.offset) + "-" +
                                          std::to_string(r.offset + r.length - 1) + " is past the end of the object (size changed?)");
    return e;
  }
  if (res == CURLE_OK) {
    Error e = MakeError(Errc::kNetwork, obj.display + ": response body ended after " + std::to_string(t->received) +
                                            " of " + std::to_string(r.length) + " bytes of the range");
    return e;
  }
  std::string why = curl_easy_strerror(res);
  if (res == CURLE_OPERATION_TIMEDOUT) {
    // No total timeout is set: a timeout after connecting is the low-speed (stall) check.
    curl_off_t connect_us = 0;
    curl_easy_getinfo(t->easy.get(), CURLINFO_CONNECT_TIME_T, &connect_us);
    const RetryOptions& ro = t->job->opt.retry;
    char window[32];
    std::snprintf(window, sizeof window, "%g s", std::max(1.0, std::floor(ro.stall_timeout_s)));
    if (connect_us > 0)
      why = "stalled: below " + FormatBytes(static_cast<double>(ro.stall_min_bytes_per_second)) + "/s for " + window;
    else
      why = "connection timed out";
  }
  Error e = MakeError(res == CURLE_OPERATION_TIMEDOUT ? Errc::kTimeout : Errc::kNetwork,
                      obj.display + ": " + why + " after " + std::to_string(t->received) + " of " +
                          std::to_string(r.length) + " bytes of the range");
  e.curl_code = static_cast<int>(res);
  return e;
}

// After a successful attempt that went to the object's own URL: if curl followed redirects,
// later ranges of the object go to where they led.
void RememberRedirect(Transfer* t) {
  long redirects = 0;
  char* effective = nullptr;
  if (curl_easy_getinfo(t->easy.get(), CURLINFO_REDIRECT_COUNT, &redirects) != CURLE_OK || redirects <= 0) return;
  if (curl_easy_getinfo(t->easy.get(), CURLINFO_EFFECTIVE_URL, &effective) != CURLE_OK || effective == nullptr) return;
  ObjectState& os = t->job->object_state[t->range().object];
  std::lock_guard lk(os.mu);
  os.effective_url = effective;
  os.cross_origin = Origin(effective) != Origin(t->object().url);
}

void ForgetRedirect(Transfer* t) {
  ObjectState& os = t->job->object_state[t->range().object];
  std::lock_guard lk(os.mu);
  os.effective_url.clear();
  os.cross_origin = false;
}

// The process's HTTP transport: fetch threads, each owning a curl multi handle and a pool of
// easy handles whose kept-alive connections outlive any one fetch, and the scheduler that
// feeds them ranges from every submitted job. Created on first use, shut down at exit.
class Transport {
 public:
  static std::shared_ptr<Transport> Get(unsigned threads);
  ~Transport() { Shutdown(); }

  void Submit(const std::shared_ptr<Job>& job);
  void Wake(Job* job);
  void Boost(Job* job, std::size_t range);
  void Cancel(Job* job);
  void Shutdown();
  TransportStats Stats();

 private:
  struct Pick {
    std::shared_ptr<Job> job;
    std::size_t index = 0;
  };
  void EnsureThreads(unsigned n);
  void WakeWorkers();  // mu_ held
  void Worker(unsigned index);
  std::optional<Pick> Next();
  void Returned(Job* job, std::size_t i);
  void Completed(Job* job);
  void Dropped(Job* job);

 public:
  void RangeDone(Job* job) { Completed(job); }  // a range an object's stream finished

 private:
  void MaybeFinish(Job* job);  // mu_ held
  unsigned SlotsPerThread();

  std::mutex mu_;
  std::vector<std::shared_ptr<Job>> jobs_;  // GUARDED_BY(mu_): submitted, not finished
  std::vector<std::thread> threads_;        // GUARDED_BY(mu_)
  std::vector<CURLM*> multis_;              // GUARDED_BY(mu_): for curl_multi_wakeup
  bool shutdown_ = false;                   // GUARDED_BY(mu_)
  unsigned rr_ = 0;                         // round-robin start among jobs of one priority
  std::uint64_t jobs_submitted_ = 0, reused_handles_ = 0;
};

std::mutex g_transport_mu;
std::shared_ptr<Transport> g_transport;  // destroyed at exit: joins the threads

std::shared_ptr<Transport> Transport::Get(unsigned threads) {
  std::lock_guard lk(g_transport_mu);
  if (!g_transport) g_transport = std::make_shared<Transport>();
  g_transport->EnsureThreads(threads);
  return g_transport;
}

void Transport::EnsureThreads(unsigned n) {
  std::lock_guard lk(mu_);
  if (shutdown_) return;
  while (threads_.size() < n) {
    const unsigned index = static_cast<unsigned>(threads_.size());
    threads_.emplace_back([this, index] { Worker(index); });
  }
}

void Transport::WakeWorkers() {
  for (CURLM* m : multis_) curl_multi_wakeup(m);
}

void Transport::Submit(const std::shared_ptr<Job>& job) {
  std::lock_guard lk(mu_);
  job->started.assign(job->ranges.size(), 0);
  ++jobs_submitted_;
  if (shutdown_) {
    job->Fail(MakeError(Errc::kCancelled, "the fetch transport is shut down"));
  } else {
    jobs_.push_back(job);
  }
  MaybeFinish(job.get());
  WakeWorkers();
}

void Transport::Wake(Job* job) {
  std::lock_guard lk(mu_);
  job->blocked = false;
  WakeWorkers();
}

void Transport::Boost(Job* job, std::size_t range) {
  std::lock_guard lk(mu_);
  if (range >= job->started.size()) return;
  if (!job->started[range]) {
    job->urgent.push_back(range);
  } else if (auto it = std::find(job->deferred.begin(), job->deferred.end(), range); it != job->deferred.end()) {
    job->deferred.erase(it);
    job->deferred.push_front(range);
  }
  WakeWorkers();
}

void Transport::Cancel(Job* job) {
  std::lock_guard lk(mu_);
  job->stop = true;
  MaybeFinish(job);
  WakeWorkers();
}

void Transport::MaybeFinish(Job* job) {
  const bool all = job->completed == job->ranges.size();
  if (!all && !(job->stop && job->inflight == 0)) return;
  {
    std::lock_guard jl(job->mu);
    if (job->finished) return;
    job->finished = true;
  }
  job->cv.notify_all();
  jobs_.erase(std::remove_if(jobs_.begin(), jobs_.end(), [&](const auto& j) { return j.get() == job; }), jobs_.end());
}

std::optional<Transport::Pick> Transport::Next() {
  std::lock_guard lk(mu_);
  if (jobs_.empty() || shutdown_) return std::nullopt;
  auto take = [&](const std::shared_ptr<Job>& j, std::size_t i) {
    j->started[i] = 1;
    ++j->inflight;
    return Pick{j, i};
  };
  auto open = [](const Job& j) { return !j.stop && j.inflight - j.on_stream.load() < j.opt.concurrency; };
  // The jobs share one connection budget (the largest concurrency any asks for), whatever the
  // number of fetch threads: a second job competes for these connections, kNow first.
  unsigned budget = 0, used = 0;
  for (const auto& j : jobs_) {
    budget = std::max(budget, j->opt.concurrency);
    used += j->inflight - j->on_stream.load();
  }
  if (used >= budget) return std::nullopt;
  // A range someone waits for now goes first, whatever its job's priority.
  for (const auto& j : jobs_) {
    if (!open(*j)) continue;
    while (!j->urgent.empty()) {
      const std::size_t i = j->urgent.front();
      j->urgent.pop_front();
      if (!j->started[i]) return take(j, i);
    }
  }
  const auto now = Clock::now();
  const std::size_t n = jobs_.size();
  for (FetchPriority prio : {FetchPriority::kNow, FetchPriority::kBackground}) {
    for (std::size_t k = 0; k < n; ++k) {
      const auto& j = jobs_[(rr_ + k) % n];
      if (j->priority != prio || !open(*j)) continue;
      // A job whose sink is full waits for Wake(), with a slow poll as a safety net.
      if (j->blocked && now - j->blocked_since < std::chrono::milliseconds(50)) continue;
      if (!j->deferred.empty()) {
        const std::size_t i = j->deferred.front();
        j->deferred.pop_front();
        ++j->inflight;
        rr_ = static_cast<unsigned>((rr_ + k + 1) % n);
        return Pick{j, i};
      }
      while (j->next < j->ranges.size()) {
        const std::size_t i = j->next++;
        if (j->started[i]) continue;
        rr_ = static_cast<unsigned>((rr_ + k + 1) % n);
        return take(j, i);
      }
    }
  }
  return std::nullopt;
}

void Transport::Returned(Job* job, std::size_t i) {
  std::lock_guard lk(mu_);
  job->deferred.push_front(i);
  --job->inflight;
  job->blocked = true;
  job->blocked_since = Clock::now();
  MaybeFinish(job);
}

void Transport::Completed(Job* job) {
  std::lock_guard lk(mu_);
  ++job->completed;
  --job->inflight;
  MaybeFinish(job);
}

void Transport::Dropped(Job* job) {
  std::lock_guard lk(mu_);
  --job->inflight;
  MaybeFinish(job);
}

unsigned Transport::SlotsPerThread() {
  std::lock_guard lk(mu_);
  // The jobs share one connection budget, the largest any of them asks for: a second job does
  // not open more connections, it competes for these (kNow first).
  std::uint64_t total = 0;
  for (const auto& j : jobs_) total = std::max<std::uint64_t>(total, j->opt.concurrency);
  const std::uint64_t n = std::max<std::size_t>(1, threads_.size());
  return static_cast<unsigned>(std::max<std::uint64_t>(1, (total + n - 1) / n));
}

void Transport::Shutdown() {
  std::vector<std::thread> threads;
  {
    std::lock_guard lk(mu_);
    if (shutdown_ && threads_.empty()) return;
    shutdown_ = true;
    for (const auto& j : jobs_) {
      j->Fail(MakeError(Errc::kCancelled, "the fetch transport is shut down"));
    }
    WakeWorkers();
    threads.swap(threads_);
  }
  for (auto& t : threads) t.join();
  std::lock_guard lk(mu_);
  for (const auto& j : std::vector<std::shared_ptr<Job>>(jobs_)) MaybeFinish(j.get());
}

TransportStats Transport::Stats() {
  std::lock_guard lk(mu_);
  return TransportStats{static_cast<unsigned>(threads_.size()), jobs_submitted_, static_cast<unsigned>(jobs_.size()),
                        reused_handles_};
}

void Transport::Worker(unsigned index) {
  NameThread(index);
  MultiPtr multi(curl_multi_init());
  {
    std::lock_guard lk(mu_);
    multis_.push_back(multi.get());
  }
  std::vector<std::unique_ptr<Transfer>> idle;   // easy handles kept for connection reuse
  std::vector<std::unique_ptr<Transfer>> active;
  std::deque<std::unique_ptr<Transfer>> waiting; // backing off before a retry
  // Ranges left waiting by an object's stream that ended: already taken (in flight) for their job.
  std::deque<std::pair<std::shared_ptr<Job>, std::size_t>> orphans;
  auto release_stream = [&](Transfer* t) {
    std::deque<std::size_t> left;
    ReleaseStream(t, &left);
    for (std::size_t i : left) orphans.emplace_back(t->job_ref, i);
  };
  // Forgets a transfer's job; keeps its easy handle (and, when it finished cleanly, its connection).
  auto retire = [&](std::unique_ptr<Transfer> t) {
    if (t->is_stream) release_stream(t.get());
    t->job = nullptr;
    t->job_ref.reset();
    t->headers.reset();
    if (t->easy && idle.size() < 64) idle.push_back(std::move(t));
  };
  auto start = [&](std::unique_ptr<Transfer> t) -> bool {
    if (!t->easy && !idle.empty()) {
      t->easy = std::move(idle.back()->easy);
      idle.pop_back();
      std::lock_guard lk(mu_);
      ++reused_handles_;
    }
    if (auto st = Prepare(t.get(), multi.get()); !st.ok()) {
      Job* job = t->job;
      job->Fail(std::move(st).error());
      retire(std::move(t));
      Dropped(job);
      return false;
    }
    t->job->requests.fetch_add(1, std::memory_order_relaxed);
    active.push_back(std::move(t));
    return true;
  };
  for (;;) {
    bool shutting_down;
    {
      std::lock_guard lk(mu_);
      shutting_down = shutdown_;
    }
    // Transfers of stopped jobs (failed, cancelled) end here; their destinations are released.
    for (auto it = active.begin(); it != active.end();) {
      if (!(*it)->job->stop && !shutting_down) {
        ++it;
        continue;
      }
      curl_multi_remove_handle(multi.get(), (*it)->easy.get());
      Job* job = (*it)->job;
      (*it)->easy.reset();  // mid-transfer: its connection is not reusable
      retire(std::move(*it));
      it = active.erase(it);
      Dropped(job);
    }
    for (auto it = waiting.begin(); it != waiting.end();) {
      if (!(*it)->job->stop && !shutting_down) {
        ++it;
        continue;
      }
      Job* job = (*it)->job;
      retire(std::move(*it));
      it = waiting.erase(it);
      Dropped(job);
    }
    for (auto it = orphans.begin(); it != orphans.end();) {
      if (!it->first->stop && !shutting_down) {
        ++it;
        continue;
      }
      Job* job = it->first.get();
      it = orphans.erase(it);
      Dropped(job);
    }
    if (shutting_down) break;
    auto now = Clock::now();
    const unsigned slots = SlotsPerThread();
    // Retries whose backoff elapsed come first, then new ranges.
    while (active.size() < slots && !waiting.empty() && waiting.front()->retry_at <= now) {
      auto t = std::move(waiting.front());
      waiting.pop_front();
      start(std::move(t));
    }
    // Ranges waiting to retry keep their destination, so they count against the slots.
    while (active.size() + waiting.size() < slots) {
      std::optional<Pick> pick;
      if (!orphans.empty()) {
        pick = Pick{std::move(orphans.front().first), orphans.front().second};
        orphans.pop_front();
      } else {
        pick = Next();
      }
      if (!pick) break;
      Job* job = pick->job.get();
      const std::size_t i = pick->index;
      // A range of an object whose server ignores Range waits for that object's stream.
      if (job->ranges[i].length > 0 && QueueOnStream(job, i)) continue;
      if (job->ranges[i].length == 0) {
        if (auto st = job->cb.done(i, nullptr, 0); !st.ok()) job->Fail(std::move(st).error());
        Completed(job);
        continue;
      }
      std::byte* dest = nullptr;
      if (job->cb.acquire) {
        // Never blocks: no space now means the range waits for the job's Wake().
        dest = job->cb.acquire(i);
        if (dest == nullptr) {
          Returned(job, i);
          continue;
        }
        if (dest == kRangeSkipped) {  // satisfied elsewhere (the disk cache): no GET
          Completed(job);
          continue;
        }
      }
      auto t = std::make_unique<Transfer>();
      t->job = job;
      t->job_ref = std::move(pick->job);
      t->index = i;
      t->dest = dest;
      t->first_attempt = Clock::now();
      ClaimStreamIfIgnored(t.get());
      start(std::move(t));
    }
    int running = 0;
    if (!active.empty()) curl_multi_perform(multi.get(), &running);
    int timeout_ms = 100;
    if (!waiting.empty()) {
      auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(waiting.front()->retry_at - Clock::now()).count();
      timeout_ms = static_cast<int>(std::clamp<long long>(wait, 0, 100));
    }
    {
      // A blocked job is polled every 50 ms even if its sink never calls Wake().
      std::lock_guard lk(mu_);
      for (const auto& j : jobs_)
        if (j->blocked) timeout_ms = std::min(timeout_ms, 50);
    }
    curl_multi_poll(multi.get(), nullptr, 0, timeout_ms, nullptr);
    if (!active.empty()) curl_multi_perform(multi.get(), &running);
    CURLMsg* msg;
    int left = 0;
    while ((msg = curl_multi_info_read(multi.get(), &left)) != nullptr) {
      if (msg->msg != CURLMSG_DONE) continue;
      CURL* e = msg->easy_handle;
      CURLcode res = msg->data.result;
      curl_multi_remove_handle(multi.get(), e);
      auto it = std::find_if(active.begin(), active.end(), [&](const auto& t) { return t->easy.get() == e; });
      if (it == active.end()) continue;
      std::unique_ptr<Transfer> t = std::move(*it);
      active.erase(it);
      Job* job = t->job;
      auto err = Evaluate(t.get(), res);
      if (!err && !t->via_effective_url) RememberRedirect(t.get());
      if (err && t->via_effective_url && !t->fatal_is_sink) {
        // The cached target stopped working (a signed URL expired, the CDN node went away):
        // forget it and ask the origin again at once; only the origin's answer counts.
        ForgetRedirect(t.get());
        t->bypass_effective_url = true;
        t->easy.reset();
        t->retry_at = Clock::now();
        waiting.push_front(std::move(t));
        continue;
      }
      if (!err) {
        if (auto st = job->cb.done(t->index, t->dest, t->crc); !st.ok()) job->Fail(std::move(st).error());
        retire(std::move(t));  // an object's stream hands its waiting ranges to `orphans`
        Completed(job);
        continue;
      }
      ++t->failed;
      double elapsed = std::chrono::duration<double>(Clock::now() - t->first_attempt).count();
      auto delay = t->fatal_is_sink ? std::nullopt : job->policy.NextDelay(*err, t->failed, elapsed);
      if (!delay) {
        if (t->failed > 1 && IsRetryable(*err))
          err->message += " (gave up after " + std::to_string(t->failed) + " attempts)";
        job->Fail(std::move(*err));
        t->easy.reset();
        retire(std::move(t));
        Dropped(job);
        continue;
      }
      job->retries.fetch_add(1, std::memory_order_relaxed);
      job->resumed_bytes.fetch_add(t->received, std::memory_order_relaxed);
      // A broken connection is not reused.
      t->easy.reset();
      t->retry_at = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(*delay));
      auto pos = std::find_if(waiting.begin(), waiting.end(), [&](const auto& w) { return w->retry_at > t->retry_at; });
      waiting.insert(pos, std::move(t));
    }
  }
  for (auto& t : active) curl_multi_remove_handle(multi.get(), t->easy.get());
  active.clear();
  std::lock_guard lk(mu_);
  multis_.erase(std::remove(multis_.begin(), multis_.end(), multi.get()), multis_.end());
}

void RangeCompleted(Job* job) { job->transport->RangeDone(job); }

void Job::Wake() {
  if (transport) transport->Wake(this);
}
void Job::Boost(std::size_t range) {
  if (transport) transport->Boost(this, range);
}
void Job::Cancel() {
  cancelled = true;
  if (transport) transport->Cancel(this);
}

Status Job::Wait(FetchStats* out) {
  bool progress_cancelled = false;
  {
    std::unique_lock lk(mu);
    while (!finished) {
      cv.wait_for(lk, std::chrono::milliseconds(100));
      if (cb.progress && !progress_cancelled && !stop && !finished) {
        lk.unlock();
        const bool go = cb.progress(bytes.load());
        if (!go) {
          progress_cancelled = true;
          Cancel();
        }
        lk.lock();
      }
    }
  }
  if (out) {
    out->bytes = bytes.load();
    out->requests = requests.load();
    out->retries = retries.load();
    out->resumed_bytes = resumed_bytes.load();
    out->discarded_bytes = discarded.load();
    out->first_byte_seconds = static_cast<double>(first_byte_ns.load()) / 1e9;
    out->seconds = std::chrono::duration<double>(Clock::now() - start).count();
  }
  std::lock_guard lk(mu);
  if (error) return *error;
  if (cancelled) return MakeError(Errc::kCancelled, "fetch cancelled by caller");
  if (cb.progress) cb.progress(bytes.load());
  return OkStatus();
}
}  // namespace

Status FetchOptions::ApplyEnv(const Env& env) {
  LinkEnvFetch();
  CS_ASSIGN_OR_RETURN(auto c, env.GetUint("COLDSTART_CONCURRENCY"));
  if (c) concurrency = static_cast<unsigned>(std::min<std::uint64_t>(*c, 1u << 12));
  CS_ASSIGN_OR_RETURN(auto t, env.GetUint("COLDSTART_FETCH_THREADS"));
  if (t) threads = static_cast<unsigned>(std::min<std::uint64_t>(*t, 1u << 10));
  CS_ASSIGN_OR_RETURN(auto ch, env.GetBytes("COLDSTART_CHUNK"));
  if (ch) chunk_bytes = *ch;
  CS_ASSIGN_OR_RETURN(auto h2, env.GetBool("COLDSTART_HTTP2"));
  if (h2) http2 = *h2;
  CS_RETURN_IF_ERROR(retry.ApplyEnv(env));
  return Validate();
}

Status FetchOptions::Validate() const {
  if (concurrency < 1 || concurrency > 1024)
    return MakeError(Errc::kInvalidArgument, "concurrency " + std::to_string(concurrency) + " is outside 1 .. 1024");
  if (chunk_bytes < (64u << 10) || chunk_bytes > (1ull << 30))
    return MakeError(Errc::kInvalidArgument, "chunk size " + FormatBytes(static_cast<double>(chunk_bytes)) +
                                                 " is outside 64 KiB .. 1 GiB");
  if (threads > 64) return MakeError(Errc::kInvalidArgument, "fetch threads " + std::to_string(threads) + " is outside 0 .. 64");
  return retry.Validate();
}

unsigned FetchOptions::EffectiveThreads() const {
  unsigned t = threads ? threads : std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
  return std::max(1u, std::min(t, concurrency));
}

RangeFetcher::RangeFetcher(FetchOptions options) : options_(std::move(options)) { (void)CurlGlobalInit(); }

Result<std::shared_ptr<FetchJob>> RangeFetcher::Start(std::span<const RemoteObject> objects,
                                                      std::span<const FetchRange> ranges, FetchCallbacks callbacks,
                                                      FetchPriority priority) {
  CS_RETURN_IF_ERROR(options_.Validate());
  for (const auto& r : ranges) {
    if (r.object >= objects.size()) return MakeError(Errc::kInvalidArgument, "fetch range names a missing object");
    const auto& o = objects[r.object];
    if (r.offset > o.size || r.length > o.size - r.offset)
      return MakeError(Errc::kInvalidArgument, o.display + ": range past the end of the object");
  }
  if (!callbacks.done) return MakeError(Errc::kInvalidArgument, "fetch needs a done callback");
  if (!callbacks.acquire && !callbacks.sink)
    return MakeError(Errc::kInvalidArgument, "fetch needs an acquire or a sink callback");
  auto job = std::make_shared<Job>(options_.retry);
  job->objects = objects;
  job->object_state = std::make_unique<ObjectState[]>(objects.size());
  job->ranges = ranges;
  job->cb = std::move(callbacks);
  job->opt = options_;
  job->priority = priority;
  job->start = Clock::now();
  job->transport = Transport::Get(options_.EffectiveThreads());
  job->transport->Submit(job);
  return std::shared_ptr<FetchJob>(job);
}

Status RangeFetcher::Fetch(std::span<const RemoteObject> objects, std::span<const FetchRange> ranges,
                           const FetchCallbacks& callbacks, FetchStats* stats) {
  CS_ASSIGN_OR_RETURN(auto job, Start(objects, ranges, callbacks));
  return job->Wait(stats);
}

void ShutdownTransport() {
  std::shared_ptr<Transport> t;
  {
    std::lock_guard lk(g_transport_mu);
    t = std::move(g_transport);
  }
  if (t) t->Shutdown();
}

TransportStats GetTransportStats() {
  std::shared_ptr<Transport> t;
  {
    std::lock_guard lk(g_transport_mu);
    t = g_transport;
  }
  return t ? t->Stats() : TransportStats{};
}

std::vector<FetchRange> ChunkObjects(std::span<const RemoteObject> objects, std::uint64_t chunk_bytes) {
  std::vector<std::uint32_t> order(objects.size());
  for (std::uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return objects[a].size > objects[b].size; });
  std::vector<FetchRange> out;
  for (auto i : order) {
    const std::uint64_t size = objects[i].size;
    if (size == 0) {
      out.push_back({i, 0, 0});
      continue;
    }
    for (std::uint64_t off = 0; off < size; off += chunk_bytes) out.push_back({i, off, std::min(chunk_bytes, size - off)});
  }
  return out;
}

}  // namespace coldstart::fetch

