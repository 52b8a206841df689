// The process-wide fetch transport: non-blocking admission, priorities, cancellation and the
// connection pool shared by every job. Against a loopback httplib server only.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "coldstart/core/crc32c.h"
#include "coldstart/fetch/range_fetcher.h"
#include "loopback_server.h"

namespace coldstart::fetch {
namespace {

struct Served {
  std::string body;
  std::mutex mu;
  std::vector<std::uint64_t> starts;  // Range start of every GET, in arrival order
  std::set<std::string> peers;        // remote ports: one per TCP connection
  std::atomic<int> delay_ms{0};
  // Last: stopped (its handler threads joined) before the state they write is destroyed.
  coldstart::testing::LoopbackServer loop;

  explicit Served(std::size_t size, std::uint64_t seed = 1) : body(size, '\0') {
    std::mt19937_64 rng(seed);
    for (auto& c : body) c = static_cast<char>(rng());
    loop.server().set_keep_alive_max_count(100000);  // httplib closes after 5 requests by default
    loop.server().set_keep_alive_timeout(1);  // the transport keeps its connections: let stop() be quick
    loop.server().Get("/obj", [this](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard lk(mu);
        starts.push_back(req.ranges.empty() ? 0 : static_cast<std::uint64_t>(req.ranges[0].first));
        peers.insert(std::to_string(req.remote_port));
      }
      if (int d = delay_ms.load()) std::this_thread::sleep_for(std::chrono::milliseconds(d));
      res.set_content(body, "application/octet-stream");  // httplib applies the Range
    });
    loop.Start();
  }
  RemoteObject object() { return {"obj", loop.url("/obj"), body.size(), 0}; }
};

FetchOptions Options(unsigned concurrency, std::uint64_t chunk) {
  FetchOptions fo;
  fo.concurrency = concurrency;
  fo.chunk_bytes = chunk;
  fo.threads = 2;
  return fo;
}

// A sink with room for `slots` ranges at a time: acquire says "no space yet" beyond that, and
// the fetch must neither fail nor stall; Wake() after each release lets the next range in.
TEST(Transport, FullSinkDelaysNewRangesWithoutBlockingTheLoop) {
  Served s(4 << 20);
  RemoteObject obj = s.object();
  auto fo = Options(8, 64 << 10);
  auto ranges = ChunkObjects(std::span(&obj, 1), fo.chunk_bytes);
  std::string out(s.body.size(), '\0');
  std::mutex mu;
  unsigned held = 0, peak = 0, refused = 0;
  constexpr unsigned kSlots = 2;
  std::shared_ptr<FetchJob> job;
  std::mutex job_mu;
  FetchCallbacks cb;
  cb.acquire = [&](std::size_t i) -> std::byte* {
    std::lock_guard lk(mu);
    if (held == kSlots) {
      ++refused;
      return nullptr;
    }
    peak = std::max(peak, ++held);
    return reinterpret_cast<std::byte*>(out.data() + ranges[i].offset);
  };
  cb.done = [&](std::size_t i, std::byte*, std::uint32_t crc) {
    EXPECT_EQ(crc, Crc32c(s.body.data() + ranges[i].offset, ranges[i].length));
    {
      std::lock_guard lk(mu);
      --held;
    }
    std::lock_guard lk(job_mu);
    if (job) job->Wake();
    return OkStatus();
  };
  auto started = RangeFetcher(fo).Start(std::span(&obj, 1), ranges, cb);
  ASSERT_TRUE(started.ok());
  {
    std::lock_guard lk(job_mu);
    job = *started;
  }
  FetchStats st;
  auto w = job->Wait(&st);
  ASSERT_TRUE(w.ok()) << w.error().message;
  EXPECT_TRUE(out == s.body);
  EXPECT_LE(peak, kSlots);
  EXPECT_GT(refused, 0u);  // the sink really was full at times
  EXPECT_EQ(st.bytes, s.body.size());
}

// A range whose bytes came from elsewhere (the disk cache) is skipped: no GET, no `done`, and
// the job still completes.
TEST(Transport, SkippedRangesAreNeverFetched) {
  Served s(1 << 20);
  RemoteObject obj = s.object();
  auto fo = Options(4, 64 << 10);
  auto ranges = ChunkObjects(std::span(&obj, 1), fo.chunk_bytes);
  ASSERT_EQ(ranges.size(), 16u);
  std::string out(s.body.size(), '\0');
  std::atomic<int> dones{0};
  FetchCallbacks cb;
  cb.acquire = [&](std::size_t i) -> std::byte* {
    if (i % 3 == 0) return kRangeSkipped;
    return reinterpret_cast<std::byte*>(out.data() + ranges[i].offset);
  };
  cb.done = [&](std::size_t i, std::byte*, std::uint32_t) {
    EXPECT_NE(i % 3, 0u) << "done called for a skipped range";
    ++dones;
    return OkStatus();
  };
  FetchStats st;
  ASSERT_TRUE(RangeFetcher(fo).Fetch(std::span(&obj, 1), ranges, cb, &st).ok());
  EXPECT_EQ(dones.load(), 10);
  std::lock_guard lk(s.mu);
  EXPECT_EQ(s.starts.size(), 10u);
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    const bool fetched = std::find(s.starts.begin(), s.starts.end(), ranges[i].offset) != s.starts.end();
    EXPECT_EQ(fetched, i % 3 != 0) << i;
    if (i % 3 != 0) {
      EXPECT_EQ(out.substr(ranges[i].offset, ranges[i].length), s.body.substr(ranges[i].offset, ranges[i].length));
    }
  }
}

// Boosted ranges start before everything else still queued.
TEST(Transport, BoostedRangesGoFirst) {
  Served s(2 << 20);
  s.delay_ms = 20;
  RemoteObject obj = s.object();
  auto fo = Options(1, 64 << 10);  // one at a time: arrival order is start order
  fo.threads = 1;
  auto ranges = ChunkObjects(std::span(&obj, 1), fo.chunk_bytes);
  ASSERT_EQ(ranges.size(), 32u);
  std::string out(s.body.size(), '\0');
  FetchCallbacks cb;
  cb.acquire = [&](std::size_t i) { return reinterpret_cast<std::byte*>(out.data() + ranges[i].offset); };
  cb.done = [](std::size_t, std::byte*, std::uint32_t) { return OkStatus(); };
  auto job = RangeFetcher(fo).Start(std::span(&obj, 1), ranges, cb);
  ASSERT_TRUE(job.ok());
  (*job)->Boost(31);
  (*job)->Boost(30);
  ASSERT_TRUE((*job)->Wait().ok());
  EXPECT_TRUE(out == s.body);
  std::lock_guard lk(s.mu);
  ASSERT_EQ(s.starts.size(), 32u);
  // At most the first one or two ranges were admitted before the boosts arrived.
  auto pos31 = std::find(s.starts.begin(), s.starts.end(), ranges[31].offset) - s.starts.begin();
  auto pos30 = std::find(s.starts.begin(), s.starts.end(), ranges[30].offset) - s.starts.begin();
  EXPECT_LE(pos31, 2);
  EXPECT_EQ(pos30, pos31 + 1);
}

// A kNow job submitted while a background job is queued gets its ranges through first.
TEST(Transport, NowPriorityJobOvertakesBackgroundJob) {
  Served s(2 << 20);
  s.delay_ms = 10;
  RemoteObject obj = s.object();
  auto fo = Options(1, 64 << 10);
  fo.threads = 1;
  auto ranges = ChunkObjects(std::span(&obj, 1), fo.chunk_bytes);
  std::string bg(s.body.size(), '\0'), now(s.body.size(), '\0');
  std::atomic<int> bg_done_before_now{0}, now_done{0};
  FetchCallbacks bcb;
  bcb.acquire = [&](std::size_t i) { return reinterpret_cast<std::byte*>(bg.data() + ranges[i].offset); };
  bcb.done = [&](std::size_t, std::byte*, std::uint32_t) {
    if (now_done.load() < 4) ++bg_done_before_now;
    return OkStatus();
  };
  std::vector<FetchRange> urgent(ranges.begin(), ranges.begin() + 4);
  FetchCallbacks ncb;
  ncb.acquire = [&](std::size_t i) { return reinterpret_cast<std::byte*>(now.data() + urgent[i].offset); };
  ncb.done = [&](std::size_t, std::byte*, std::uint32_t) {
    ++now_done;
    return OkStatus();
  };
  auto b = RangeFetcher(fo).Start(std::span(&obj, 1), ranges, bcb, FetchPriority::kBackground);
  ASSERT_TRUE(b.ok());
  auto n = RangeFetcher(fo).Start(std::span(&obj, 1), urgent, ncb, FetchPriority::kNow);
  ASSERT_TRUE(n.ok());
  ASSERT_TRUE((*n)->Wait().ok());
  const int before = bg_done_before_now.load();
  ASSERT_TRUE((*b)->Wait().ok());
  EXPECT_TRUE(bg == s.body);
  EXPECT_EQ(now.substr(0, 4 << 16), s.body.substr(0, 4 << 16));
  // The background job had 32 ranges queued; the urgent 4 needed at most a couple to drain.
  EXPECT_LE(before, 3);
}

// Cancel abandons ranges in flight and queued; Wait says cancelled; the transport stays usable.
TEST(Transport, CancelStopsAJobAndTheTransportServesTheNext) {
  Served s(4 << 20);
  s.delay_ms = 50;
  RemoteObject obj = s.object();
  auto fo = Options(2, 64 << 10);
  auto ranges = ChunkObjects(std::span(&obj, 1), fo.chunk_bytes);
  std::string out(s.body.size(), '\0');
  std::atomic<int> done{0};
  FetchCallbacks cb;
  cb.acquire = [&](std::size_t i) { return reinterpret_cast<std::byte*>(out.data() + ranges[i].offset); };
  cb.done = [&](std::size_t, std::byte*, std::uint32_t) {
    ++done;
    return OkStatus();
  };
  auto job = RangeFetcher(fo).Start(std::span(&obj, 1), ranges, cb);
  ASSERT_TRUE(job.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(120));
  (*job)->Cancel();
  auto st = (*job)->Wait();
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::kCancelled);
  EXPECT_LT(done.load(), static_cast<int>(ranges.size()));
  s.delay_ms = 0;
  std::string again(s.body.size(), '\0');
  cb.acquire = [&](std::size_t i) { return reinterpret_cast<std::byte*>(again.data() + ranges[i].offset); };
  ASSERT_TRUE(RangeFetcher(fo).Fetch(std::span(&obj, 1), ranges, cb).ok());
  EXPECT_TRUE(again == s.body);
}

// Consecutive fetches reuse the transport's pooled connections instead of opening new ones.
TEST(Transport, ConnectionsOutliveOneFetch) {
  Served s(1 << 20);
  RemoteObject obj = s.object();
  auto fo = Options(4, 64 << 10);
  auto ranges = ChunkObjects(std::span(&obj, 1), fo.chunk_bytes);
  std::string out(s.body.size(), '\0');
  FetchCallbacks cb;
  cb.acquire = [&](std::size_t i) { return reinterpret_cast<std::byte*>(out.data() + ranges[i].offset); };
  cb.done = [](std::size_t, std::byte*, std::uint32_t) { return OkStatus(); };
  for (int k = 0; k < 5; ++k) ASSERT_TRUE(RangeFetcher(fo).Fetch(std::span(&obj, 1), ranges, cb).ok());
  std::lock_guard lk(s.mu);
  EXPECT_EQ(s.starts.size(), 5 * ranges.size());
  // 80 GETs over at most a handful of connections (4 in flight, 2 threads).
  EXPECT_LE(s.peers.size(), 8u) << "connections were not reused across fetches";
  EXPECT_GT(GetTransportStats().reused_handles, 0u);
}

// Shutdown joins the threads; a later fetch starts a new transport.
TEST(Transport, ShutdownAndRestart) {
  Served s(256 << 10);
  RemoteObject obj = s.object();
  auto fo = Options(2, 64 << 10);
  auto ranges = ChunkObjects(std::span(&obj, 1), fo.chunk_bytes);
  std::string out(s.body.size(), '\0');
  FetchCallbacks cb;
  cb.acquire = [&](std::size_t i) { return reinterpret_cast<std::byte*>(out.data() + ranges[i].offset); };
  cb.done = [](std::size_t, std::byte*, std::uint32_t) { return OkStatus(); };
  ASSERT_TRUE(RangeFetcher(fo).Fetch(std::span(&obj, 1), ranges, cb).ok());
  EXPECT_GE(GetTransportStats().threads, 1u);
  ShutdownTransport();
  EXPECT_EQ(GetTransportStats().threads, 0u);
  out.assign(out.size(), '\0');
  ASSERT_TRUE(RangeFetcher(fo).Fetch(std::span(&obj, 1), ranges, cb).ok());
  EXPECT_TRUE(out == s.body);
}

}  // namespace
}  // namespace coldstart::fetch
