#include "coldstart/fetch/local_reader.h"

#include "coldstart/core/log.h"

#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <optional>
#include <thread>

namespace coldstart::fetch {
void LinkEnvFetch();  // fetch_env.cpp
}  // namespace coldstart::fetch


namespace coldstart::fetch {
namespace {

constexpr std::uint64_t kMaxChunk = 1ull << 30;  // an SQE's length is 32-bit

// One read the engines issue: at most chunk_bytes, either fully aligned (direct) or not.
struct Chunk {
  std::uint32_t file;
  bool direct;
  std::uint64_t offset;
  std::uint64_t length;
  std::byte* dest;
};

bool IsAligned(std::uint64_t v) { return v % kDirectAlign == 0; }

void AppendPieces(std::vector<Chunk>* out, std::uint32_t file, bool direct, std::uint64_t off,
                  std::uint64_t len, std::byte* dest, std::uint64_t chunk) {
  while (len > 0) {
    std::uint64_t n = std::min(len, chunk);
    out->push_back({file, direct, off, n, dest});
    off += n;
    dest += n;
    len -= n;
  }
}

// Splits ranges into chunks: the aligned middle of a range goes direct where its file has a
// direct descriptor and the range's dest is congruent to its offset; edges go buffered.
std::vector<Chunk> PlanChunks(const LocalFileSet& files, std::span<const ReadRange> ranges,
                              std::uint64_t chunk_bytes) {
  std::vector<Chunk> chunks;
  const std::uint64_t chunk = std::max<std::uint64_t>(kDirectAlign, chunk_bytes / kDirectAlign * kDirectAlign);
  for (const auto& r : ranges) {
    if (r.length == 0) continue;
    const auto& f = files.file(r.file);
    const auto addr = reinterpret_cast<std::uintptr_t>(r.dest);
    bool congruent = (addr % kDirectAlign) == (r.offset % kDirectAlign);
    if (f.direct_fd < 0 || !congruent || r.length < 2 * kDirectAlign) {
      AppendPieces(&chunks, r.file, false, r.offset, r.length, r.dest, chunk);
      continue;
    }
    std::uint64_t begin = (r.offset + kDirectAlign - 1) / kDirectAlign * kDirectAlign;
    std::uint64_t end = (r.offset + r.length) / kDirectAlign * kDirectAlign;
    std::byte* d = r.dest;
    if (begin > r.offset) AppendPieces(&chunks, r.file, false, r.offset, begin - r.offset, d, chunk);
    AppendPieces(&chunks, r.file, true, begin, end - begin, d + (begin - r.offset), chunk);
    if (r.offset + r.length > end)
      AppendPieces(&chunks, r.file, false, end, r.offset + r.length - end, d + (end - r.offset), chunk);
  }
  // Interleave files? No: keep file order so each file is read front to back, which suits
  // read-ahead on buffered edges and spinning/network disks alike.
  return chunks;
}

Error EofError(const LocalFileSet::File& f, std::uint64_t offset) {
  return MakeError(Errc::kIntegrity, f.path + ": unexpected end of file at byte " +
                                         std::to_string(offset) + " (file is " +
                                         std::to_string(f.size) +
                                         " bytes when opened; was it truncated while loading?)");
}

Error ReadError(const LocalFileSet::File& f, std::uint64_t offset, int err) {
  return MakeSysError(Errc::kIo, f.path + ": read at byte " + std::to_string(offset) + " failed", err);
}

// Shared by the workers of one Read() call.
struct Job {
  const LocalFileSet* files;
  std::vector<Chunk> chunks;
  std::atomic<std::size_t> next{0};
  std::atomic<std::uint64_t> done_bytes{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::condition_variable cv;
  std::optional<Error> error;  // first error wins (guarded by mu)
  unsigned running = 0;        // guarded by mu
  LocalReadStats stats;        // guarded by mu, merged by workers at exit

  bool NextChunk(Chunk* out) {
    if (stop.load(std::memory_order_relaxed)) return false;
    std::size_t i = next.fetch_add(1, std::memory_order_relaxed);
    if (i >= chunks.size()) return false;
    *out = chunks[i];
    return true;
  }
  void Fail(Error e) {
    std::lock_guard lk(mu);
    if (!error) error = std::move(e);
    stop = true;
  }
  void Merge(const LocalReadStats& s) {
    std::lock_guard lk(mu);
    stats.direct_bytes += s.direct_bytes;
    stats.requests += s.requests;
    stats.short_reads += s.short_reads;
    stats.retries += s.retries;
    stats.direct_fallbacks += s.direct_fallbacks;
    --running;
    cv.notify_all();
  }
};

void NameThread(const char* base, unsigned i) {
  char name[16];
  std::snprintf(name, sizeof name, "%s%u", base, i);
  pthread_setname_np(pthread_self(), name);
}

// A pread loop. Short reads continue, EINTR/EAGAIN retry, EINVAL on a direct read falls
// back to the buffered descriptor for the rest of the chunk.
void RunPread(Job* job) {
  LocalReadStats s;
  Chunk c;
  while (job->NextChunk(&c)) {
    const auto& f = job->files->file(c.file);
    std::uint64_t got = 0;
    bool direct = c.direct;
    while (got < c.length) {
      if (job->stop.load(std::memory_order_relaxed)) break;
      if (direct && (!IsAligned(c.length - got) || !IsAligned(c.offset + got))) direct = false;
      int fd = direct ? f.direct_fd : f.fd;
      ++s.requests;
      ssize_t n = ::pread(fd, c.dest + got, c.length - got, static_cast<off_t>(c.offset + got));
      if (n < 0) {
        int err = errno;
        if (err == EINTR || err == EAGAIN) {
          ++s.retries;
          continue;
        }
        if (direct && err == EINVAL) {
          ++s.direct_fallbacks;
          direct = false;
          continue;
        }
        job->Fail(ReadError(f, c.offset + got, err));
        break;
      }
      if (n == 0) {
        job->Fail(EofError(f, c.offset + got));
        break;
      }
      if (direct) s.direct_bytes += static_cast<std::uint64_t>(n);
      got += static_cast<std::uint64_t>(n);
      if (got < c.length) ++s.short_reads;
      job->done_bytes.fetch_add(static_cast<std::uint64_t>(n), std::memory_order_relaxed);
    }
  }
  job->Merge(s);
}

// One ring per thread. Each slot holds one chunk's remaining part; completions are matched
// by slot index in user_data. The ring is always drained before the worker returns, so the
// kernel never writes into caller memory after Read() has returned.
void RunUring(Job* job, io_uring& ring, unsigned depth) {
  LocalReadStats s;
  struct Slot {
    Chunk c;
    std::uint64_t got;
    bool direct;
    bool busy;
  };
  std::vector<Slot> slots(depth);
  unsigned inflight = 0;
  bool draining = false;

  auto submit = [&](unsigned i) {
    Slot& sl = slots[i];
    const auto& f = job->files->file(sl.c.file);
    if (sl.direct && (!IsAligned(sl.c.length - sl.got) || !IsAligned(sl.c.offset + sl.got)))
      sl.direct = false;
    // One SQE per busy slot and as many SQ entries as slots, so the queue cannot be full; if
    // it ever is, flush it to the kernel first.
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (sqe == nullptr) {
      io_uring_submit(&ring);
      sqe = io_uring_get_sqe(&ring);
    }
    if (sqe == nullptr) return false;
    io_uring_prep_read(sqe, sl.direct ? f.direct_fd : f.fd, sl.c.dest + sl.got,
                       static_cast<unsigned>(sl.c.length - sl.got), sl.c.offset + sl.got);
    io_uring_sqe_set_data64(sqe, i);
    ++s.requests;
    return true;
  };
  unsigned broken_waits = 0;

  for (;;) {
    if (!draining) {
      for (unsigned i = 0; i < depth; ++i) {
        if (slots[i].busy) continue;
        Chunk c;
        if (!job->NextChunk(&c)) break;
        slots[i] = Slot{c, 0, c.direct, true};
        if (!submit(i)) {
          slots[i].busy = false;
          job->Fail(MakeError(Errc::kInternal, "io_uring submission queue unexpectedly full"));
          draining = true;
          break;
        }
        ++inflight;
      }
    }
    if (inflight == 0) break;
    // Submit what is queued and wait for a completion. -EINTR, -EAGAIN and -EBUSY (the kernel
    // is short of memory, or the completion queue is full) are transient: reap and go again.
    int rc = io_uring_submit_and_wait(&ring, 1);
    if (rc == -EAGAIN || rc == -EBUSY) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      // Reads may still be running in the kernel and writing into caller memory, so this
      // worker must not return before they complete: stop taking work and keep reaping.
      if (broken_waits == 0) job->Fail(MakeSysError(Errc::kIo, "io_uring_submit_and_wait", -rc));
      draining = true;
      if (++broken_waits > 30000) {
        LogError(std::string("io_uring stopped completing reads (") + std::strerror(-rc) +
                 "); aborting rather than letting the kernel write into freed memory");
        std::abort();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    io_uring_cqe* cqe = nullptr;
    // Reap everything that is ready before submitting again.
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++seen;
      auto i = static_cast<unsigned>(io_uring_cqe_get_data64(cqe));
      Slot& sl = slots[i];
      const auto& f = job->files->file(sl.c.file);
      int res = cqe->res;
      bool resubmit = false;
      if (res < 0) {
        if (res == -EAGAIN || res == -EINTR) {
          ++s.retries;
          resubmit = true;
        } else if (sl.direct && res == -EINVAL) {
          ++s.direct_fallbacks;
          sl.direct = false;
          resubmit = true;
        } else {
          job->Fail(ReadError(f, sl.c.offset + sl.got, -res));
        }
      } else if (res == 0) {
        job->Fail(EofError(f, sl.c.offset + sl.got));
      } else {
        if (sl.direct) s.direct_bytes += static_cast<std::uint64_t>(res);
        sl.got += static_cast<std::uint64_t>(res);
        job->done_bytes.fetch_add(static_cast<std::uint64_t>(res), std::memory_order_relaxed);
        if (sl.got < sl.c.length) {
          ++s.short_reads;
          resubmit = true;
        }
      }
      if (job->stop.load(std::memory_order_relaxed)) {
        draining = true;
        resubmit = false;
      }
      if (resubmit && !submit(i)) {
        job->Fail(MakeError(Errc::kInternal, "io_uring submission queue unexpectedly full"));
        draining = true;
        resubmit = false;
      }
      if (resubmit) {
        // stays in flight
      } else {
        sl.busy = false;
        --inflight;
      }
    }
    io_uring_cq_advance(&ring, seen);
  }
  job->Merge(s);
}

// I/O threads that live as long as the reader: each owns its ring (set up once, not per
// read) and waits for the next job. One Read() at a time uses them.
class ThreadedReader final : public LocalReader {
 public:
  ThreadedReader(IoEngine engine, LocalReadOptions options)
      : engine_(engine), options_(options) {}
  ~ThreadedReader() override {
    {
      std::lock_guard lk(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }

  IoEngine engine() const override { return engine_; }

  Status Read(const LocalFileSet& files, std::span<const ReadRange> ranges,
              const ReadProgressFn& progress, LocalReadStats* stats) override {
    for (const auto& r : ranges) {
      if (r.file >= files.size())
        return MakeError(Errc::kInvalidArgument, "read range names file #" + std::to_string(r.file) +
                                                     " of " + std::to_string(files.size()));
      const auto& f = files.file(r.file);
      if (r.offset > f.size || r.length > f.size - r.offset)
        return MakeError(Errc::kIntegrity,
                         f.path + ": range [" + std::to_string(r.offset) + ", " +
                             std::to_string(r.offset + r.length) + ") lies past the end of the " +
                             std::to_string(f.size) + "-byte file");
      if (r.length > 0 && r.dest == nullptr)
        return MakeError(Errc::kInvalidArgument, "read range has no destination");
    }
    Job job;
    job.files = &files;
    job.chunks = PlanChunks(files, ranges, options_.chunk_bytes);
    std::uint64_t total = 0;
    for (const auto& c : job.chunks) total += c.length;

    unsigned n = std::max<unsigned>(1, std::min<unsigned>(options_.EffectiveThreads(),
                                                          static_cast<unsigned>(job.chunks.size())));
    job.running = n;
    std::lock_guard one_read(read_mu_);
    {
      std::lock_guard lk(mu_);
      while (threads_.size() < n) {
        const unsigned index = static_cast<unsigned>(threads_.size());
        threads_.emplace_back([this, index] { Loop(index); });
      }
      job_ = &job;
      participants_ = n;
      ++generation_;
    }
    cv_.notify_all();
    bool cancelled = false;
    {
      std::unique_lock lk(job.mu);
      while (job.running > 0) {
        job.cv.wait_for(lk, std::chrono::milliseconds(100));
        if (progress && !cancelled && !job.stop) {
          lk.unlock();
          bool go_on = progress(job.done_bytes.load());
          lk.lock();
          if (!go_on) {
            cancelled = true;
            job.stop = true;
          }
        }
      }
    }
    {
      // Every participant has merged: none touches `job` again.
      std::lock_guard lk(mu_);
      job_ = nullptr;
    }
    if (stats) {
      *stats = job.stats;
      stats->engine = engine_ == IoEngine::kUring ? "io_uring" : "pread";
      stats->threads = n;
      stats->bytes = job.done_bytes.load();
    }
    if (job.error) return std::move(*job.error);
    if (cancelled) return MakeError(Errc::kCancelled, "read cancelled by caller");
    if (job.done_bytes.load() != total)
      return MakeError(Errc::kInternal, "read finished with " + std::to_string(job.done_bytes.load()) +
                                            " of " + std::to_string(total) + " bytes");
    if (progress) progress(total);
    return OkStatus();
  }

  private:
  void Loop(unsigned index) {
    const bool uring = engine_ == IoEngine::kUring;
    NameThread(uring ? "cs-uring-" : "cs-pread-", index);
    io_uring ring;
    int ring_rc = uring ? io_uring_queue_init(options_.queue_depth, &ring, 0) : 0;
    std::uint64_t seen = 0;
    for (;;) {
      Job* job = nullptr;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return quit_ || generation_ != seen; });
        if (quit_) break;
        seen = generation_;
        if (index >= participants_) continue;
        job = job_;
      }
      if (!uring) {
        RunPread(job);
      } else if (ring_rc < 0) {
        job->Fail(MakeSysError(Errc::kUnavailable, "io_uring_queue_init", -ring_rc));
        job->Merge({});
      } else {
        RunUring(job, ring, options_.queue_depth);
      }
    }
    if (uring && ring_rc >= 0) io_uring_queue_exit(&ring);
  }

  IoEngine engine_;
  LocalReadOptions options_;
  std::mutex read_mu_;  // one Read() at a time on these threads
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;  // GUARDED_BY(mu_)
  Job* job_ = nullptr;                // GUARDED_BY(mu_)
  unsigned participants_ = 0;         // GUARDED_BY(mu_): threads 0..participants_-1 work on job_
  std::uint64_t generation_ = 0;      // GUARDED_BY(mu_): one per Read()
  bool quit_ = false;                 // GUARDED_BY(mu_)
};

}  // namespace

Result<IoEngine> ParseIoEngine(std::string_view text) {
  if (text == "auto") return IoEngine::kAuto;
  if (text == "uring" || text == "io_uring") return IoEngine::kUring;
  if (text == "pread") return IoEngine::kPread;
  return MakeError(Errc::kInvalidArgument, "I/O engine '" + std::string(text) +
                                               "' is not one of auto, uring, pread");
}

Result<DirectIo> ParseDirectIo(std::string_view text) {
  if (text == "auto") return DirectIo::kAuto;
  if (text == "on" || text == "1" || text == "true") return DirectIo::kOn;
  if (text == "off" || text == "0" || text == "false") return DirectIo::kOff;
  return MakeError(Errc::kInvalidArgument,
                   "direct I/O mode '" + std::string(text) + "' is not one of auto, on, off");
}

std::string_view IoEngineName(IoEngine e) {
  switch (e) {
    case IoEngine::kAuto: return "auto";
    case IoEngine::kUring: return "io_uring";
    case IoEngine::kPread: return "pread";
  }
  return "?";
}

Status LocalReadOptions::ApplyEnv(const Env& env) {
  LinkEnvFetch();
  if (auto v = env.Get("COLDSTART_IO_ENGINE")) {
    auto e = ParseIoEngine(*v);
    if (!e.ok()) return std::move(e).error().WithContext("COLDSTART_IO_ENGINE");
    engine = *e;
  }
  if (auto v = env.Get("COLDSTART_DIRECT_IO")) {
    auto d = ParseDirectIo(*v);
    if (!d.ok()) return std::move(d).error().WithContext("COLDSTART_DIRECT_IO");
    direct = *d;
  }
  CS_ASSIGN_OR_RETURN(auto chunk, env.GetBytes("COLDSTART_READ_CHUNK"));
  if (chunk) chunk_bytes = *chunk;
  CS_ASSIGN_OR_RETURN(auto depth, env.GetUint("COLDSTART_READ_QUEUE_DEPTH"));
  if (depth) queue_depth = static_cast<unsigned>(std::min<std::uint64_t>(*depth, 1u << 16));
  CS_ASSIGN_OR_RETURN(auto th, env.GetUint("COLDSTART_READ_THREADS"));
  if (th) threads = static_cast<unsigned>(std::min<std::uint64_t>(*th, 1u << 10));
  return Validate();
}

Status LocalReadOptions::Validate() const {
  if (chunk_bytes < kDirectAlign || chunk_bytes > kMaxChunk)
    return MakeError(Errc::kInvalidArgument, "read chunk " + FormatBytes(static_cast<double>(chunk_bytes)) +
                                                 " is outside 4 KiB .. 1 GiB");
  if (queue_depth < 1 || queue_depth > 4096)
    return MakeError(Errc::kInvalidArgument,
                     "read queue depth " + std::to_string(queue_depth) + " is outside 1 .. 4096");
  if (threads > 256)
    return MakeError(Errc::kInvalidArgument,
                     "read threads " + std::to_string(threads) + " is outside 0 .. 256");
  return OkStatus();
}

unsigned LocalReadOptions::EffectiveThreads() const {
  if (threads > 0) return threads;
  unsigned hw = std::thread::hardware_concurrency();
  return std::clamp(hw, 1u, 8u);
}

bool UringAvailable() {
  io_uring ring;
  if (io_uring_queue_init(2, &ring, 0) < 0) return false;
  io_uring_queue_exit(&ring);
  return true;
}

Result<std::unique_ptr<LocalReader>> LocalReader::Create(const LocalReadOptions& options) {
  CS_RETURN_IF_ERROR(options.Validate());
  IoEngine engine = options.engine;
  if (engine == IoEngine::kAuto) engine = UringAvailable() ? IoEngine::kUring : IoEngine::kPread;
  if (engine == IoEngine::kUring && !UringAvailable())
    return MakeError(Errc::kUnavailable,
                     "io_uring was requested but this kernel refuses it (disabled by sysctl "
                     "kernel.io_uring_disabled or a seccomp profile?); use --io-engine pread");
  return std::unique_ptr<LocalReader>(new ThreadedReader(engine, options));
}

Result<std::shared_ptr<LocalReader>> SharedLocalReader(const LocalReadOptions& options) {
  CS_RETURN_IF_ERROR(options.Validate());
  static std::mutex mu;
  static std::map<std::tuple<int, unsigned, unsigned, std::uint64_t>, std::shared_ptr<LocalReader>> readers;
  std::lock_guard lk(mu);
  IoEngine engine = options.engine;
  if (engine == IoEngine::kAuto) engine = UringAvailable() ? IoEngine::kUring : IoEngine::kPread;
  auto key = std::make_tuple(static_cast<int>(engine), options.queue_depth, options.EffectiveThreads(), options.chunk_bytes);
  auto& r = readers[key];
  if (!r) {
    LocalReadOptions o = options;
    o.engine = engine;
    CS_ASSIGN_OR_RETURN(auto made, LocalReader::Create(o));
    r = std::move(made);
  }
  return r;
}

Result<double> PageCacheResidency(int fd, std::uint64_t size) {
  if (size == 0) return 1.0;
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return MakeSysError(Errc::kIo, "mmap for mincore", errno);
  const long page = ::sysconf(_SC_PAGESIZE);
  std::size_t pages = (size + static_cast<std::uint64_t>(page) - 1) / static_cast<std::uint64_t>(page);
  std::vector<unsigned char> vec(pages);
  int rc = ::mincore(p, size, vec.data());
  int err = errno;
  ::munmap(p, size);
  if (rc != 0) return MakeSysError(Errc::kIo, "mincore", err);
  std::size_t resident = 0;
  for (unsigned char v : vec) resident += (v & 1);
  return static_cast<double>(resident) / static_cast<double>(pages);
}

Result<LocalFileSet> LocalFileSet::Open(std::vector<std::string> paths, DirectIo mode,
                                        const std::vector<FileIdentity>& expected) {
  if (!expected.empty() && expected.size() != paths.size())
    return MakeError(Errc::kInternal, "LocalFileSet::Open: " + std::to_string(expected.size()) +
                                          " identities for " + std::to_string(paths.size()) + " files");
  LocalFileSet set;
  set.files_.reserve(paths.size());
  for (std::size_t i = 0; i < paths.size(); ++i) {
    File f;
    f.path = std::move(paths[i]);
    f.fd = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (f.fd < 0) {
      int err = errno;
      return MakePathError(f.path + ": cannot open", err);
    }
    struct stat st {};
    if (::fstat(f.fd, &st) != 0) {
      int err = errno;
      ::close(f.fd);
      return MakeSysError(Errc::kIo, f.path + ": cannot stat", err);
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(f.fd);
      return MakeError(Errc::kInvalidArgument, f.path + ": not a regular file");
    }
    f.size = static_cast<std::uint64_t>(st.st_size);
    f.identity = FileIdentity::FromStat(st);
    if (!expected.empty() && expected[i].known() && !(expected[i] == f.identity)) {
      ::close(f.fd);
      return MakeError(Errc::kIntegrity, f.path + ": changed while loading (since its header was read: " +
                                             DescribeFileChange(expected[i], f.identity) + ")");
    }
    bool want_direct = mode == DirectIo::kOn;
    if (mode == DirectIo::kAuto && f.size >= (4ull << 20)) {
      // A warm page cache serves buffered reads at memory speed; O_DIRECT would go back to
      // the disk. Only files mostly absent from the cache are read direct.
      auto res = PageCacheResidency(f.fd, f.size);
      want_direct = res.ok() && *res < 0.5;
    }
    if (want_direct) {
      f.direct_fd = ::open(f.path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
      // tmpfs and some FUSE/NFS mounts refuse O_DIRECT (EINVAL): buffered it is.
    }
    set.files_.push_back(std::move(f));
  }
  return set;
}

Status LocalFileSet::CheckUnchanged() const {
  for (const auto& f : files_) {
    // The path first: a file replaced by a rename also shows a new ctime on the descriptor
    // (its link count dropped), and "replaced by another file" says more.
    struct stat st {};
    if (::stat(f.path.c_str(), &st) != 0)
      return MakeSysError(Errc::kIntegrity, f.path + ": changed while loading (the path no longer opens)", errno);
    FileIdentity now = FileIdentity::FromStat(st);
    if (!(now == f.identity))
      return MakeError(Errc::kIntegrity, f.path + ": changed while loading (" + DescribeFileChange(f.identity, now) + ")");
    if (::fstat(f.fd, &st) != 0) return MakePathError(f.path + ": cannot stat", errno);
    now = FileIdentity::FromStat(st);
    if (!(now == f.identity))
      return MakeError(Errc::kIntegrity, f.path + ": changed while loading (" + DescribeFileChange(f.identity, now) + ")");
  }
  return OkStatus();
}

LocalFileSet::LocalFileSet(LocalFileSet&& o) noexcept : files_(std::move(o.files_)) { o.files_.clear(); }

LocalFileSet& LocalFileSet::operator=(LocalFileSet&& o) noexcept {
  if (this != &o) {
    Close();
    files_ = std::move(o.files_);
    o.files_.clear();
  }
  return *this;
}

LocalFileSet::~LocalFileSet() { Close(); }

void LocalFileSet::Close() {
  for (auto& f : files_) {
    if (f.fd >= 0) ::close(f.fd);
    if (f.direct_fd >= 0) ::close(f.direct_fd);
    f.fd = f.direct_fd = -1;
  }
  files_.clear();
}

}  // namespace coldstart::fetch
