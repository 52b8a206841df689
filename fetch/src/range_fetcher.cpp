#include "coldstart/fetch/range_fetcher.h"

#include <curl/curl.h>
#include <pthread.h>

#include <algorithm>
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


class Transport;

// One batch of ranges submitted to the transport (a FetchJob to its caller). Its ranges are
// spread over the transport's threads; each thread admits a range only once the caller's
// `acquire` hands out a destination, so a full sink delays new ranges and never stalls ranges
// in flight.
struct Job final : FetchJob {
  std::span<const RemoteObject> objects;
  std::span<const FetchRange> ranges;
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
    // A new response (after a redirect or 100 Continue): forget the last one.
    t->status = 0;
    t->have_start = false;
    auto sp = line.find(' ');
    if (sp != std::string_view::npos) t->status = std::strtol(std::string(line.substr(sp + 1, 3)).c_str(), nullptr, 10);
    if (t->status == 200) {
      t->have_start = true;
      t->stream_pos = 0;
    }
  } else if (IEqualsPrefix(line, "content-range:")) {
    // "Content-Range: bytes 100-199/1000"
    std::string v = Trim(std::string(line.substr(14)));
    if (v.rfind("bytes ", 0) == 0) {
      char* end = nullptr;
      unsigned long long start = std::strtoull(v.c_str() + 6, &end, 10);
      if (end != v.c_str() + 6 && *end == '-') {
        t->have_start = true;
        t->stream_pos = start;
      }
    }
  } else if (IEqualsPrefix(line, "x-goog-generation:")) {
    t->seen_generation = std::strtoll(Trim(std::string(line.substr(18))).c_str(), nullptr, 10);
  }
  return size * n;
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
  const FetchRange& r = t->range();
  const std::uint64_t want = r.offset + t->received;
  const std::uint64_t end = r.offset + r.length;
  std::uint64_t pos = t->stream_pos;
  t->stream_pos += len;
  if (pos > want) {
    // The server skipped bytes we still need: never fill the hole with later bytes.
    t->fatal = MakeError(Errc::kNetwork, obj.display + ": server sent bytes from " + std::to_string(pos) +
                                             " but byte " + std::to_string(want) + " was next");
    return 0;
  }
  std::uint64_t skip = want - pos;  // bytes before what we want (e.g. a 200 with the whole object)
  if (skip >= len) {
    job->discarded.fetch_add(len, std::memory_order_relaxed);
    return len;
  }
  std::uint64_t take = std::min<std::uint64_t>(len - skip, end - want);
  if (job->cb.sink) {
    auto st = job->cb.sink(t->index, t->received, reinterpret_cast<const std::byte*>(data + skip), take);
    if (!st.ok()) {
      t->fatal = std::move(st).error();
      t->fatal_is_sink = true;
      return 0;
    }
  } else {
    std::memcpy(t->dest + t->received, data + skip, take);
  }
  t->crc = Crc32cExtend(t->crc, data + skip, take);
  t->received += take;
  job->bytes.fetch_add(take, std::memory_order_relaxed);
  if (skip + take < len) job->discarded.fetch_add(len - take, std::memory_order_relaxed);
  else if (skip > 0) job->discarded.fetch_add(skip, std::memory_order_relaxed);
  if (skip + take < len || (t->received == r.length && t->stream_pos < obj.size && t->status == 200)) {
    // We have our range and the server would send more: stop this transfer here.
    t->complete_early = true;
    return 0;
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
  curl_slist* h = nullptr;
  std::string range = "Range: bytes=" + std::to_string(r.offset + t->received) + "-" +
                      std::to_string(r.offset + r.length - 1);
  h = curl_slist_append(h, range.c_str());
  if (t->job->cb.auth_header) {
    auto auth = t->job->cb.auth_header();
    if (!auth.ok()) {
      curl_slist_free_all(h);
      return std::move(auth).error();
    }
    if (!auth->empty()) h = curl_slist_append(h, auth->c_str());
  }
  for (const auto& x : o.headers) h = curl_slist_append(h, x.c_str());
  t->headers.reset(h);
  t->status = 0;
  t->have_start = false;
  t->stream_pos = 0;
  t->complete_early = false;
  t->error_body.clear();
  t->fatal.reset();
  t->fatal_is_sink = false;
  t->seen_generation = 0;
  curl_easy_setopt(e, CURLOPT_URL, t->object().url.c_str());
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
  // Stall detection: less than 1 byte/s for stall_timeout seconds aborts (and retries) the range.
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, std::max(1L, static_cast<long>(o.retry.stall_timeout_s)));
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 512L * 1024);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  // HTTP/2: negotiated by ALPN over TLS; over cleartext (emulators, loopback benchmarks) only
  // with prior knowledge, since GCS-compatible servers do not offer h2c upgrades.
  const bool cleartext = t->object().url.rfind("http://", 0) == 0;
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
  Error e = MakeError(res == CURLE_OPERATION_TIMEDOUT ? Errc::kTimeout : Errc::kNetwork,
                      obj.display + ": " + curl_easy_strerror(res) +
                          (res == CURLE_OPERATION_TIMEDOUT ? " (stalled: no bytes for a while)" : "") + " after " +
                          std::to_string(t->received) + " of " + std::to_string(r.length) + " bytes of the range");
  e.curl_code = static_cast<int>(res);
  return e;
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
  auto open = [](const Job& j) { return !j.stop && j.inflight < j.opt.concurrency; };
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
  // Forgets a transfer's job; keeps its easy handle (and, when it finished cleanly, its connection).
  auto retire = [&](std::unique_ptr<Transfer> t) {
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
      auto pick = Next();
      if (!pick) break;
      Job* job = pick->job.get();
      const std::size_t i = pick->index;
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
      }
      auto t = std::make_unique<Transfer>();
      t->job = job;
      t->job_ref = std::move(pick->job);
      t->index = i;
      t->dest = dest;
      t->first_attempt = Clock::now();
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
      if (!err) {
        if (auto st = job->cb.done(t->index, t->dest, t->crc); !st.ok()) job->Fail(std::move(st).error());
        retire(std::move(t));
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
