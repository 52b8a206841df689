// The read-only FUSE file system of `coldstart mount` (libfuse3 low-level API).
//
// Threads: the FUSE session loop (fuse_session_loop_mt: a worker per request in progress, so
// many readers in many processes are served at once and a waiting read() blocks only its own
// worker), one read-ahead scheduler, and a few fill threads that write fetched chunks into the
// disk cache (done callbacks of the Origin run on its threads, e.g. the transport's event
// loops, which must never block on a 8 MiB pwrite).
//
// A chunk's bytes go through a ChunkMemory buffer: fetched into it (Origin::Read), or read from
// the cache and checked against the slot's CRC32C (CacheEntry::ReadChunk). Verified buffers stay
// in an LRU so the consecutive reads the kernel makes of an 8 MiB chunk (1 MiB each with the
// 4 MiB read-ahead window set at mount, else 128 KiB) read and check it once; a read within one
// chunk is answered straight from its buffer. Every buffer alive (LRU, in flight, held by a reader) is counted against
// MountOptions::memory_bytes; read-ahead may use at most seven eighths of it, so a reader
// always finds room once other readers let go (each reader holds one buffer at a time).
//
// Inode numbers are node indexes + FUSE_ROOT_ID (the root is node 0), never pointers: the
// tree is built once from the listing and never changes while mounted.
#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 12)
#include <fuse3/fuse_lowlevel.h>

#include "coldstart/cache/mount.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "coldstart/core/relative_path.h"

extern char** environ;

namespace coldstart::cache {

Result<ReadAhead> ParseReadAhead(const std::string& text) {
  if (text == "all") return ReadAhead::kAll;
  if (text == "open") return ReadAhead::kOpen;
  if (text == "none") return ReadAhead::kNone;
  return MakeError(Errc::kInvalidArgument, "read-ahead '" + text + "' is not one of all, open, none");
}

namespace {

using Clock = std::chrono::steady_clock;

// Files never change while mounted (a new generation is a new mount), so the kernel may keep
// names, attributes and pages as long as it likes.
constexpr double kAttrTimeout = 86400;
constexpr unsigned kFillThreads = 2;
constexpr unsigned kMaxFuseThreads = 64;
// How long read-ahead waits for readers to consume chunks before it evicts one nobody has read
// (ChunkMemory::Allocate): long enough for a reader that keeps up, short enough that read-ahead
// stalls only briefly behind a reader that has stopped.
constexpr std::chrono::milliseconds kReadAheadPatience{50};
// A reader that read within this long counts as reading now (for kReadAheadPatience).
constexpr std::chrono::milliseconds kReaderActive{250};
// Chunks read back from the disk cache ahead of a reader (ReadBackAhead).
constexpr std::size_t kReadBackAhead = 4;
// Threads reading back: two keep two of the disk's reads in flight when the cache's pages are not in
// memory (as the kernel's read-ahead does for a local file).
constexpr unsigned kReadBackThreads = 2;

// Which chunk of which file: file << 32 | chunk.
using ChunkKey = std::uint64_t;
ChunkKey KeyOf(std::size_t file, std::size_t chunk) {
  return (static_cast<std::uint64_t>(file) << 32) | static_cast<std::uint32_t>(chunk);
}

// Chunk buffers: those in use and a pool of free ones. Shared with every buffer's deleter (which
// hands its bytes back to the pool), so it holds no buffers that are in use.
// INVARIANT: used + pooled <= the budget; every array is `capacity` bytes.
struct Account {
  std::mutex mu;
  std::condition_variable cv;
  std::uint64_t used = 0;                              // GUARDED_BY(mu): in buffers alive
  std::vector<std::unique_ptr<std::byte[]>> pool;      // GUARDED_BY(mu)
};

struct Buffer {
  std::unique_ptr<std::byte[]> bytes;
  std::size_t len = 0;
  // Bytes handed to readers from this buffer (a chunk read once, in order, reaches len).
  std::atomic<std::uint64_t> served{0};
};
using BufferPtr = std::shared_ptr<Buffer>;

// Chunk buffers within a byte budget, and the LRU of verified chunks. Freed buffers are kept
// for the next chunk: a fresh 8 MiB allocation is mmap'd, faulted in and zeroed page by page
// (clear_page and page faults were ~12% of a warm read's CPU).
//
// Which chunk goes when memory is full (EvictOneLocked) follows how model loaders read: each
// file once, in order, with read-ahead running ahead of them in the same order. Plain LRU kept
// exactly the wrong chunks: those a reader had just finished (each read moves its chunk to the
// front) and it evicted the read-ahead chunks nearest the reader, so once read-ahead led by more
// than the budget, every chunk was read back from the disk cache (a copy and a CRC32C per byte:
// ~30% of a cold mount's CPU). Now: chunks fully served first (least recently used first), then
// chunks nobody has read yet, newest first (the furthest ahead of the reader; their bytes are
// in the disk cache), then partly served ones, least recently used first.
class ChunkMemory {
 public:
  ChunkMemory(std::uint64_t budget, std::size_t capacity)
      : budget_(budget), capacity_(capacity), account_(std::make_shared<Account>()) {}

  std::uint64_t budget() const { return budget_; }

  // A buffer of `len` (<= the chunk size) bytes once at most `limit` bytes (this one included)
  // are in use, evicting verified chunks nobody holds (EvictOneLocked's order). nullptr when
  // `deadline` passed or `stop` was set first. `patience`: how long to wait for readers to free
  // memory before a chunk nobody has read yet is evicted for this one (read-ahead waits a
  // little for the reader instead of pushing out what it is about to read); max: never.
  BufferPtr Allocate(std::size_t len, std::uint64_t limit, Clock::time_point deadline, const std::atomic<bool>& stop,
                     std::chrono::milliseconds patience = std::chrono::milliseconds(0)) {
    std::unique_lock lk(account_->mu);
    std::unique_ptr<std::byte[]> bytes;
    const auto impatient_at = patience == std::chrono::milliseconds::max() ? Clock::time_point::max() : Clock::now() + patience;
    for (;;) {
      Account& a = *account_;
      if (a.used + capacity_ <= limit) {
        if (!a.pool.empty()) {
          bytes = std::move(a.pool.back());
          a.pool.pop_back();
          break;
        }
        if (a.used + capacity_ * (a.pool.size() + 1) <= budget_) break;  // room for a new one
      }
      const bool may_evict_unread = Clock::now() >= impatient_at;
      if (EvictOneLocked(lk, may_evict_unread)) continue;
      if (stop.load() || Clock::now() >= deadline) return nullptr;
      a.cv.wait_until(lk, std::min({deadline, Clock::now() + std::chrono::milliseconds(100),
                                    may_evict_unread ? Clock::time_point::max() : impatient_at}));
    }
    account_->used += capacity_;
    lk.unlock();
    if (!bytes) bytes = std::make_unique_for_overwrite<std::byte[]>(capacity_);
    auto* b = new Buffer{std::move(bytes), len};
    return BufferPtr(b, [account = account_, cap = capacity_](Buffer* p) {
      {
        std::lock_guard l(account->mu);
        account->used -= cap;
        account->pool.push_back(std::move(p->bytes));
      }
      account->cv.notify_all();
      delete p;
    });
  }

  bool Contains(ChunkKey key) {
    std::lock_guard lk(account_->mu);
    return index_.contains(key);
  }

  BufferPtr Find(ChunkKey key) {
    std::lock_guard lk(account_->mu);
    auto it = index_.find(key);
    if (it == index_.end()) return nullptr;
    lru_.splice(lru_.begin(), lru_, it->second);
    return it->second->second;
  }

  void Put(ChunkKey key, BufferPtr buf) {
    BufferPtr replaced;  // freed after the lock is released (its deleter takes it)
    std::lock_guard lk(account_->mu);
    if (auto it = index_.find(key); it != index_.end()) {
      replaced = std::exchange(it->second->second, std::move(buf));
      lru_.splice(lru_.begin(), lru_, it->second);
      return;
    }
    lru_.emplace_front(key, std::move(buf));
    index_[key] = lru_.begin();
  }

  void Drop(ChunkKey key) {
    BufferPtr gone;  // freed after the lock is released (its deleter takes it)
    std::lock_guard lk(account_->mu);
    if (auto it = index_.find(key); it != index_.end()) {
      gone = std::move(it->second->second);
      lru_.erase(it->second);
      index_.erase(it);
    }
  }

  void Clear() {
    std::list<std::pair<ChunkKey, BufferPtr>> gone;
    {
      std::lock_guard lk(account_->mu);
      gone.swap(lru_);
      index_.clear();
    }
    gone.clear();
    std::lock_guard lk(account_->mu);
    account_->pool.clear();
  }

  void WakeAll() { account_->cv.notify_all(); }

 private:
  // Drops one chunk that only the LRU holds, in the order the class comment gives. Called with
  // the lock held; the buffer's deleter takes the lock, so the lock is released around the free.
  bool EvictOneLocked(std::unique_lock<std::mutex>& lk, bool may_evict_unread) {
    // Under the lock nobody can take a new reference (Find holds it), so a count of one means
    // only the LRU holds a buffer.
    auto evictable = [](const BufferPtr& b) { return b.use_count() == 1; };
    auto consumed = [](const BufferPtr& b) { return b->served.load() >= b->len; };
    auto unread = [](const BufferPtr& b) { return b->served.load() == 0; };
    auto victim = lru_.end();
    for (auto it = lru_.rbegin(); it != lru_.rend() && victim == lru_.end(); ++it)
      if (evictable(it->second) && consumed(it->second)) victim = std::next(it).base();
    // Without may_evict_unread, only finished chunks go: a partly read one is the chunk a
    // reader is in the middle of.
    for (auto it = lru_.begin(); it != lru_.end() && victim == lru_.end() && may_evict_unread; ++it)
      if (evictable(it->second) && unread(it->second)) victim = it;
    for (auto it = lru_.rbegin(); it != lru_.rend() && victim == lru_.end() && may_evict_unread; ++it)
      if (evictable(it->second)) victim = std::next(it).base();
    if (victim == lru_.end()) return false;
    BufferPtr gone = std::move(victim->second);
    index_.erase(victim->first);
    lru_.erase(victim);
    lk.unlock();
    gone.reset();
    lk.lock();
    return true;
  }

  const std::uint64_t budget_;
  const std::size_t capacity_;
  std::shared_ptr<Account> account_;
  // Guarded by account_->mu.
  std::list<std::pair<ChunkKey, BufferPtr>> lru_;
  std::unordered_map<ChunkKey, std::list<std::pair<ChunkKey, BufferPtr>>::iterator> index_;
};

// One chunk being fetched by this mount (for a reader or for read-ahead).
struct Fetch {
  std::size_t file = 0, chunk = 0;
  ChunkKey key = 0;
  bool read_ahead = false;
  // Not a fetch: a reader reading the chunk back from the disk cache, so that other readers of
  // it wait for that one read (a failure sends them round again).
  bool read_back = false;
  ChunkClaim claim;
  BufferPtr buf;
  // Set by the Origin's done callback (before the fill queue sees it).
  Status origin_status;
  std::uint32_t crc32c = 0;
  // Set once the chunk is filled (or failed); then `done`.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;  // GUARDED_BY(mu)
  Status status;      // GUARDED_BY(mu): the origin's verdict
};

struct Node {
  std::string name;  // last path component ("" for the root)
  std::uint32_t parent = 0;
  bool dir = false;
  std::size_t file = 0;  // files: index into the mount's files
  std::map<std::string, std::uint32_t, std::less<>> children;  // directories
  std::vector<std::uint32_t> order;  // children in readdir order (by name)
};

// Wakes the thread inside fuse_session_loop_mt: it waits on a semaphore for a worker to end, and
// sem_wait returns (EINTR) on a signal with a handler. It then sees the session exited and
// cancels its workers, which are blocked reading /dev/fuse while files under a detached mount
// are still open (the kernel only ends those reads once the last file is closed). Installed
// only where the signal's disposition is the default (an embedding program's own is kept).
int WakeSignal() {
  static const int sig = [] {
    const int s = SIGRTMIN + 5;
    struct sigaction old {};
    if (::sigaction(s, nullptr, &old) != 0 || old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO) != 0) return 0;
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: sem_wait must return
    return ::sigaction(s, &sa, nullptr) == 0 ? s : 0;
  }();
  return sig;
}

// Runs PROGRAM ARGS... and waits; its exit status, or -1 when it could not be started.
int RunProgram(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  const int rc = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Detaches the mount at `mountpoint` now, even while files under it are open (those keep
// working until closed): `fusermount3 -uz` as any user, umount2(MNT_DETACH) as root without it.
Status LazyUnmount(const std::string& mountpoint) {
  if (RunProgram({"fusermount3", "-u", "-z", "--", mountpoint}) == 0) return OkStatus();
  if (::umount2(mountpoint.c_str(), MNT_DETACH) == 0) return OkStatus();
  return MakeSysError(Errc::kIo, "cannot unmount " + mountpoint + " (fusermount3 -uz and umount2 both failed)", errno);
}

// The kernel reads ahead 128 KiB at a time on a new FUSE mount, one request each. A 4 MiB window
// lets it send 1 MiB requests (libfuse negotiates 256 pages): reading 130 MiB through a warm
// mount took 130 requests instead of 1253, 734 MB/s instead of 514. Only root may change it
// (sysfs); elsewhere the default stays.
void RaiseKernelReadAhead(dev_t dev) {
  const std::string path = "/sys/class/bdi/" + std::to_string(::major(dev)) + ":" + std::to_string(::minor(dev)) +
                           "/read_ahead_kb";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  (void)!::write(fd, "4096", 4);
  ::close(fd);
}

class MountImpl;
MountImpl* Self(fuse_req_t req) { return static_cast<MountImpl*>(fuse_req_userdata(req)); }

class MountImpl final : public Mount {
 public:
  MountImpl(std::vector<MountFile> files, std::shared_ptr<DiskCache> cache, std::shared_ptr<Origin> origin,
            MountOptions options)
      : files_(std::move(files)),
        cache_(std::move(cache)),
        origin_(std::move(origin)),
        options_(std::move(options)),
        chunk_bytes_(cache_->chunk_bytes()),
        // At least three chunks: one for read-ahead, two for readers.
        memory_(std::max<std::uint64_t>(options_.memory_bytes, 3 * chunk_bytes_), static_cast<std::size_t>(chunk_bytes_)) {
    // Readers keep an eighth (at least two chunks): each holds one buffer at a time.
    const std::uint64_t reserve = std::max<std::uint64_t>(2 * chunk_bytes_, memory_.budget() / 8);
    read_ahead_limit_ = memory_.budget() > reserve + chunk_bytes_ ? memory_.budget() - reserve : chunk_bytes_;
  }

  ~MountImpl() override { Shutdown(); }

  Status Init();
  Status Wait() override;
  void Stop() override;
  MountProgress progress() const override;

  // FUSE handlers (each replies exactly once).
  void OnInit(fuse_conn_info* conn);
  void OnLookup(fuse_req_t req, fuse_ino_t parent, const char* name);
  void OnGetattr(fuse_req_t req, fuse_ino_t ino);
  void OnOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void OnReaddir(fuse_req_t req, fuse_ino_t ino, std::size_t size, off_t off);
  void OnOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
  void OnRead(fuse_req_t req, fuse_ino_t ino, std::size_t size, off_t off, fuse_file_info* fi);
  void OnStatfs(fuse_req_t req);
  void OnAccess(fuse_req_t req, fuse_ino_t ino, int mask);

 private:
  Status BuildTree();
  const Node* NodeOf(fuse_ino_t ino) const {
    if (ino < FUSE_ROOT_ID || ino - FUSE_ROOT_ID >= nodes_.size()) return nullptr;
    return &nodes_[ino - FUSE_ROOT_ID];
  }
  static fuse_ino_t InoOf(std::uint32_t node) { return FUSE_ROOT_ID + node; }
  struct stat StatOf(std::uint32_t node) const;
  std::string Describe(std::size_t file) const;
  void Log(const std::string& line) const;

  std::uint64_t ChunkLen(std::size_t file, std::size_t c) const {
    return std::min<std::uint64_t>(chunk_bytes_, files_[file].size - c * chunk_bytes_);
  }
  std::size_t ChunkCount(std::size_t file) const {
    return static_cast<std::size_t>((files_[file].size + chunk_bytes_ - 1) / chunk_bytes_);
  }
  bool Known(std::size_t file, std::size_t c) const { return present_[file][c].load(std::memory_order_acquire) != 0; }
  void MarkPresent(std::size_t file, std::size_t c);
  void MarkAbsent(std::size_t file, std::size_t c);

  // A reader got n more bytes of b.
  void Served(Buffer& b, std::uint64_t n);
  // Chunk c of `file`, verified, once it is in the cache (fetching it first when nobody is).
  Status ChunkBuffer(std::size_t file, std::size_t c, Clock::time_point deadline, BufferPtr* out);
  // Reads chunk c, which the cache holds, back into memory and checks it. One read per chunk:
  // callers that come while it runs wait for it (FindFetch) and are told kBusy.
  enum class ReadBackResult { kDone, kBusy, kNoMemory, kAbsent, kFailed };
  ReadBackResult ReadBack(std::size_t file, std::size_t c, Clock::time_point deadline, BufferPtr* out, Status* error,
                          std::chrono::milliseconds patience = std::chrono::milliseconds(0));
  // A reader reached chunk c: the next kReadBackAhead chunks of the file that the cache holds
  // and memory does not are read back on their own thread, so the next chunk's disk read
  // overlaps this one's copies.
  void ReadBackAhead(std::size_t file, std::size_t c);
  void ReadBackLoop();
  // Starts fetching a claimed chunk into `buf`.
  std::shared_ptr<Fetch> StartFetch(std::size_t file, std::size_t c, ChunkClaim claim, BufferPtr buf, bool read_ahead);
  std::shared_ptr<Fetch> FindFetch(ChunkKey key);
  // Waits until the fetch is filled (or failed); false when the deadline passed or we stop.
  bool WaitFetch(Fetch& f, Clock::time_point deadline);
  void FillLoop();
  void FinishFetch(const std::shared_ptr<Fetch>& f);

  void WantFile(std::size_t file);  // read-ahead
  // Wakes the scheduler after a change of state it reads without its lock (stop_, urgent_waiting_).
  void WakeReadAhead() {
    { std::lock_guard lk(ra_mu_); }
    ra_cv_.notify_all();
    { std::lock_guard lk(rb_mu_); }
    rb_cv_.notify_all();
  }
  void ReadAheadLoop();
  void ReadAheadChunk(std::unique_lock<std::mutex>& lk, std::size_t file, std::size_t c, bool deferred);

  void LoopMain();
  void Shutdown();

  std::vector<MountFile> files_;
  std::shared_ptr<DiskCache> cache_;
  std::shared_ptr<Origin> origin_;
  MountOptions options_;
  const std::uint64_t chunk_bytes_;
  ChunkMemory memory_;
  std::uint64_t read_ahead_limit_ = 0;

  std::vector<Node> nodes_;  // immutable after Init
  std::vector<std::shared_ptr<CacheEntry>> entries_;
  // Per file and chunk: known to be present (set once seen present, cleared on a bad read).
  std::vector<std::unique_ptr<std::atomic<std::uint8_t>[]>> present_;
  uid_t uid_ = 0;
  gid_t gid_ = 0;
  std::uint64_t total_bytes_ = 0;

  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> bytes_cached_{0}, bytes_fetched_{0}, reads_{0}, read_errors_{0}, bytes_read_back_{0};
  std::atomic<Clock::rep> last_read_{0};  // Clock time of the last read(), for read-ahead's patience
  std::atomic<unsigned> urgent_waiting_{0};  // readers waiting for their own origin fetch
  std::atomic<bool> fill_error_logged_{false};

  // Fetches in flight, and the fill queue.
  std::mutex fetch_mu_;
  std::condition_variable fetch_cv_;
  std::unordered_map<ChunkKey, std::shared_ptr<Fetch>> fetches_;  // GUARDED_BY(fetch_mu_)
  std::deque<std::shared_ptr<Fetch>> fill_queue_;                  // GUARDED_BY(fetch_mu_)
  std::size_t outstanding_ = 0;                                    // GUARDED_BY(fetch_mu_): started, not finished
  bool fill_stop_ = false;                                         // GUARDED_BY(fetch_mu_)
  std::vector<std::thread> fill_threads_;

  // Read-ahead. INVARIANT: a file is in `ra_queue_` at most once (ra_wanted_); `ra_inflight_`
  // counts read-ahead fetches started and not finished.
  mutable std::mutex ra_mu_;
  std::condition_variable ra_cv_;
  std::deque<std::size_t> ra_queue_;   // files to scan, in order
  std::size_t ra_next_chunk_ = 0;      // of ra_queue_.front()
  std::deque<ChunkKey> ra_deferred_;   // chunks someone else was filling
  std::vector<std::uint8_t> ra_wanted_, ra_failed_;
  unsigned ra_inflight_ = 0;
  unsigned ra_max_inflight_ = 1;
  unsigned ra_failures_ = 0;
  bool ra_done_ = true;
  std::thread ra_thread_;
  std::mutex rb_mu_;
  std::condition_variable rb_cv_;
  std::deque<ChunkKey> rb_queue_;  // GUARDED_BY(rb_mu_): chunks for ReadBackLoop
  std::vector<std::thread> rb_threads_;

  // The FUSE session.
  fuse_session* se_ = nullptr;
  bool mounted_ = false;
  std::thread loop_thread_;
  std::mutex loop_mu_;
  std::condition_variable loop_cv_;
  bool loop_done_ = false;  // GUARDED_BY(loop_mu_)
  int loop_result_ = 0;     // GUARDED_BY(loop_mu_)
  std::mutex stop_mu_;
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> unmounted_{false};
  bool shut_down_ = false;
};

void MountImpl::Log(const std::string& line) const {
  if (options_.log) {
    options_.log(line);
  } else {
    std::fprintf(stderr, "coldstart: %s\n", line.c_str());
  }
}

std::string MountImpl::Describe(std::size_t file) const {
  const auto& f = files_[file];
  return f.name + " (" + f.key.origin + " " + f.key.name + ")";
}

Status MountImpl::BuildTree() {
  nodes_.clear();
  nodes_.push_back(Node{"", 0, true, 0, {}, {}});
  for (std::size_t i = 0; i < files_.size(); ++i) {
    const std::string& name = files_[i].name;
    CS_RETURN_IF_ERROR(CheckRelativePath(name, "file name", "the mount point"));
    std::uint32_t dir = 0;
    std::size_t start = 0;
    for (;;) {
      const std::size_t slash = name.find('/', start);
      const std::string part = name.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
      if (part.size() > 255) return MakeError(Errc::kInvalidArgument, "file name '" + name + "' has a component over 255 bytes");
      const bool last = slash == std::string::npos;
      auto it = nodes_[dir].children.find(part);
      if (it != nodes_[dir].children.end()) {
        const Node& existing = nodes_[it->second];
        if (last || !existing.dir)
          return MakeError(Errc::kInvalidArgument, "the listing names '" + name + "' twice (or as both a file and a folder)");
        dir = it->second;
      } else {
        if (nodes_.size() >= (1ull << 31)) return MakeError(Errc::kInvalidArgument, "too many files to mount");
        const auto idx = static_cast<std::uint32_t>(nodes_.size());
        nodes_.push_back(Node{part, dir, !last, i, {}, {}});
        nodes_[dir].children.emplace(part, idx);
        dir = idx;
      }
      if (last) break;
      start = slash + 1;
    }
  }
  for (auto& n : nodes_)
    for (const auto& [name, idx] : n.children) n.order.push_back(idx);
  return OkStatus();
}

struct stat MountImpl::StatOf(std::uint32_t node) const {
  struct stat st {};
  const Node& n = nodes_[node];
  st.st_ino = InoOf(node);
  st.st_uid = uid_;
  st.st_gid = gid_;
  st.st_blksize = 4096;
  if (n.dir) {
    st.st_mode = S_IFDIR | 0555;
    st.st_nlink = 2;
    for (auto c : n.order)
      if (nodes_[c].dir) ++st.st_nlink;
  } else {
    const auto& f = files_[n.file];
    st.st_mode = S_IFREG | 0444;
    st.st_nlink = 1;
    st.st_size = static_cast<off_t>(f.size);
    st.st_blocks = static_cast<blkcnt_t>((f.size + 511) / 512);
    st.st_mtim.tv_sec = st.st_ctim.tv_sec = st.st_atim.tv_sec = f.mtime_unix;
  }
  return st;
}

void MountImpl::MarkPresent(std::size_t file, std::size_t c) {
  if (present_[file][c].exchange(1, std::memory_order_acq_rel) == 0) bytes_cached_ += ChunkLen(file, c);
}

void MountImpl::MarkAbsent(std::size_t file, std::size_t c) {
  if (present_[file][c].exchange(0, std::memory_order_acq_rel) != 0) bytes_cached_ -= ChunkLen(file, c);
}

Status MountImpl::Init() {
  if (options_.mountpoint.empty()) return MakeError(Errc::kInvalidArgument, "no mount point given");
  if (!origin_) return MakeError(Errc::kInvalidArgument, "mount needs an origin");
  CS_RETURN_IF_ERROR(BuildTree());
  uid_ = ::getuid();
  gid_ = ::getgid();
  entries_.resize(files_.size());
  present_.resize(files_.size());
  for (std::size_t i = 0; i < files_.size(); ++i) {
    auto& f = files_[i];
    if (f.key.size != f.size)
      return MakeError(Errc::kInvalidArgument, f.name + ": the cache key's size differs from the file's");
    auto e = cache_->OpenEntry(f.key);
    if (!e.ok()) return std::move(e).error().WithContext(f.name);
    entries_[i] = std::move(e).value();
    total_bytes_ += f.size;
    const std::size_t n = ChunkCount(i);
    present_[i] = std::make_unique<std::atomic<std::uint8_t>[]>(n);
    for (std::size_t c = 0; c < n; ++c) {
      present_[i][c].store(0);
      if (entries_[i]->Present(c)) MarkPresent(i, c);
    }
  }
  ra_wanted_.assign(files_.size(), 0);
  ra_failed_.assign(files_.size(), 0);
  const unsigned by_memory = static_cast<unsigned>(std::max<std::uint64_t>(1, read_ahead_limit_ / chunk_bytes_));
  ra_max_inflight_ = std::max(1u, std::min(origin_->MaxInFlight(), by_memory));

  // A FUSE server that died (kill -9) leaves its mount answering ENOTCONN. stat() alone may
  // not tell: the kernel answers it from cached attributes; statfs always asks the server.
  struct stat st {};
  struct statvfs sv {};
  if (::stat(options_.mountpoint.c_str(), &st) != 0 || ::statvfs(options_.mountpoint.c_str(), &sv) != 0) {
    const int err = errno;
    if (err != ENOTCONN) return MakePathError("mount point " + options_.mountpoint, err);
    CS_RETURN_IF_ERROR(LazyUnmount(options_.mountpoint));
    Log("replaced a stale mount at " + options_.mountpoint + " (its process had died)");
    if (::stat(options_.mountpoint.c_str(), &st) != 0)
      return MakePathError("mount point " + options_.mountpoint + " (after removing a stale mount)", errno);
  }
  if (!S_ISDIR(st.st_mode)) return MakeError(Errc::kInvalidArgument, "mount point " + options_.mountpoint + " is not a folder");

  static const fuse_lowlevel_ops kOps = [] {
    fuse_lowlevel_ops o{};
    o.init = [](void* self, fuse_conn_info* conn) { static_cast<MountImpl*>(self)->OnInit(conn); };
    o.lookup = [](fuse_req_t r, fuse_ino_t p, const char* n) { Self(r)->OnLookup(r, p, n); };
    o.forget = [](fuse_req_t r, fuse_ino_t, uint64_t) { fuse_reply_none(r); };  // inodes are permanent
    o.getattr = [](fuse_req_t r, fuse_ino_t i, fuse_file_info*) { Self(r)->OnGetattr(r, i); };
    o.opendir = [](fuse_req_t r, fuse_ino_t i, fuse_file_info* fi) { Self(r)->OnOpendir(r, i, fi); };
    o.readdir = [](fuse_req_t r, fuse_ino_t i, size_t s, off_t off, fuse_file_info*) { Self(r)->OnReaddir(r, i, s, off); };
    o.releasedir = [](fuse_req_t r, fuse_ino_t, fuse_file_info*) { fuse_reply_err(r, 0); };
    o.open = [](fuse_req_t r, fuse_ino_t i, fuse_file_info* fi) { Self(r)->OnOpen(r, i, fi); };
    o.read = [](fuse_req_t r, fuse_ino_t i, size_t s, off_t off, fuse_file_info* fi) { Self(r)->OnRead(r, i, s, off, fi); };
    o.release = [](fuse_req_t r, fuse_ino_t, fuse_file_info*) { fuse_reply_err(r, 0); };
    o.flush = [](fuse_req_t r, fuse_ino_t, fuse_file_info*) { fuse_reply_err(r, 0); };
    o.fsync = [](fuse_req_t r, fuse_ino_t, int, fuse_file_info*) { fuse_reply_err(r, 0); };
    o.statfs = [](fuse_req_t r, fuse_ino_t) { Self(r)->OnStatfs(r); };
    o.access = [](fuse_req_t r, fuse_ino_t i, int mask) { Self(r)->OnAccess(r, i, mask); };
    // Everything that would change the tree or a file: read-only file system.
    o.setattr = [](fuse_req_t r, fuse_ino_t, struct stat*, int, fuse_file_info*) { fuse_reply_err(r, EROFS); };
    o.mknod = [](fuse_req_t r, fuse_ino_t, const char*, mode_t, dev_t) { fuse_reply_err(r, EROFS); };
    o.mkdir = [](fuse_req_t r, fuse_ino_t, const char*, mode_t) { fuse_reply_err(r, EROFS); };
    o.unlink = [](fuse_req_t r, fuse_ino_t, const char*) { fuse_reply_err(r, EROFS); };
    o.rmdir = [](fuse_req_t r, fuse_ino_t, const char*) { fuse_reply_err(r, EROFS); };
    o.symlink = [](fuse_req_t r, const char*, fuse_ino_t, const char*) { fuse_reply_err(r, EROFS); };
    o.rename = [](fuse_req_t r, fuse_ino_t, const char*, fuse_ino_t, const char*, unsigned) { fuse_reply_err(r, EROFS); };
    o.link = [](fuse_req_t r, fuse_ino_t, fuse_ino_t, const char*) { fuse_reply_err(r, EROFS); };
    o.write = [](fuse_req_t r, fuse_ino_t, const char*, size_t, off_t, fuse_file_info*) { fuse_reply_err(r, EROFS); };
    o.create = [](fuse_req_t r, fuse_ino_t, const char*, mode_t, fuse_file_info*) { fuse_reply_err(r, EROFS); };
    o.setxattr = [](fuse_req_t r, fuse_ino_t, const char*, const char*, size_t, int) { fuse_reply_err(r, EROFS); };
    o.removexattr = [](fuse_req_t r, fuse_ino_t, const char*) { fuse_reply_err(r, EROFS); };
    o.fallocate = [](fuse_req_t r, fuse_ino_t, int, off_t, off_t, fuse_file_info*) { fuse_reply_err(r, EROFS); };
    o.copy_file_range = [](fuse_req_t r, fuse_ino_t, off_t, fuse_file_info*, fuse_ino_t, off_t, fuse_file_info*, size_t,
                           int) { fuse_reply_err(r, EROFS); };
    return o;
  }();

  // "ro": the kernel itself refuses writes (EROFS) before they reach us; default_permissions:
  // it checks the 0444/0555 modes, which matters with allow_other.
  std::string fsname;
  for (char ch : options_.fs_name.empty() ? std::string("coldstart") : options_.fs_name)
    fsname += (ch == ',' || ch == '\\' || ch == ' ') ? '_' : ch;
  std::string opts = "ro,default_permissions,fsname=" + fsname + ",subtype=coldstart";
  if (options_.allow_other) opts += ",allow_other";
  std::vector<std::string> argv_text = {"coldstart", "-o", opts};
  std::vector<char*> argv;
  for (auto& a : argv_text) argv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  se_ = fuse_session_new(&args, &kOps, sizeof kOps, this);
  if (se_ == nullptr) return MakeError(Errc::kUnavailable, "cannot create a FUSE session (options: " + opts + ")");
  if (fuse_session_mount(se_, options_.mountpoint.c_str()) != 0) {
    fuse_session_destroy(se_);
    se_ = nullptr;
    return MakeError(Errc::kUnavailable, "cannot mount a FUSE file system at " + options_.mountpoint +
                                             " (needs /dev/fuse and fusermount3, or CAP_SYS_ADMIN" +
                                             std::string(options_.allow_other ? "; allow_other needs user_allow_other in /etc/fuse.conf" : "") +
                                             ")");
  }
  mounted_ = true;

  for (unsigned i = 0; i < kFillThreads; ++i) fill_threads_.emplace_back([this] { FillLoop(); });
  ra_thread_ = std::thread([this] { ReadAheadLoop(); });
  for (unsigned i = 0; i < kReadBackThreads; ++i) rb_threads_.emplace_back([this] { ReadBackLoop(); });
  loop_thread_ = std::thread([this] { LoopMain(); });

  // Returns once the kernel has finished FUSE_INIT with our loop and answers for the root.
  if (::stat(options_.mountpoint.c_str(), &st) != 0 || st.st_ino != FUSE_ROOT_ID) {
    const int err = errno;
    return MakeSysError(Errc::kIo, "the FUSE mount at " + options_.mountpoint + " does not answer", err);
  }
  RaiseKernelReadAhead(st.st_dev);
  if (options_.read_ahead == ReadAhead::kAll)
    for (std::size_t i = 0; i < files_.size(); ++i) WantFile(i);
  return OkStatus();
}

void MountImpl::LoopMain() {
  pthread_setname_np(pthread_self(), "cs-fuse");
  fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(cfg, kMaxFuseThreads);
  fuse_loop_cfg_set_clone_fd(cfg, 0);
  const int rc = fuse_session_loop_mt(se_, cfg);
  fuse_loop_cfg_destroy(cfg);
  {
    std::lock_guard lk(loop_mu_);
    loop_done_ = true;
    loop_result_ = rc;
  }
  loop_cv_.notify_all();
}

void MountImpl::OnInit(fuse_conn_info* conn) {
  // The files never change: do not drop cached pages because an mtime "changed".
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
}

void MountImpl::OnLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  const Node* p = NodeOf(parent);
  if (p == nullptr || !p->dir) {
    fuse_reply_err(req, p == nullptr ? ENOENT : ENOTDIR);
    return;
  }
  auto it = p->children.find(std::string_view(name));
  if (it == p->children.end()) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param e{};
  e.ino = InoOf(it->second);
  e.generation = 1;
  e.attr = StatOf(it->second);
  e.attr_timeout = kAttrTimeout;
  e.entry_timeout = kAttrTimeout;
  fuse_reply_entry(req, &e);
}

void MountImpl::OnGetattr(fuse_req_t req, fuse_ino_t ino) {
  if (NodeOf(ino) == nullptr) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st = StatOf(static_cast<std::uint32_t>(ino - FUSE_ROOT_ID));
  fuse_reply_attr(req, &st, kAttrTimeout);
}

void MountImpl::OnOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  const Node* n = NodeOf(ino);
  if (n == nullptr || !n->dir) {
    fuse_reply_err(req, n == nullptr ? ENOENT : ENOTDIR);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY) {
    fuse_reply_err(req, EROFS);
    return;
  }
  fi->cache_readdir = 1;
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

void MountImpl::OnReaddir(fuse_req_t req, fuse_ino_t ino, std::size_t size, off_t off) {
  const Node* n = NodeOf(ino);
  if (n == nullptr || !n->dir) {
    fuse_reply_err(req, n == nullptr ? ENOENT : ENOTDIR);
    return;
  }
  // Entry i (0 ".", 1 "..", then the children) has offset i + 1: the offset of the next one.
  std::vector<char> buf(size);
  std::size_t used = 0;
  const std::size_t count = 2 + n->order.size();
  for (std::size_t i = static_cast<std::size_t>(std::max<off_t>(off, 0)); i < count; ++i) {
    struct stat st {};
    std::string name;
    if (i < 2) {
      name = i == 0 ? "." : "..";
      st.st_ino = i == 0 ? ino : InoOf(n->parent);
      st.st_mode = S_IFDIR;
    } else {
      const std::uint32_t c = n->order[i - 2];
      name = nodes_[c].name;
      st.st_ino = InoOf(c);
      st.st_mode = nodes_[c].dir ? S_IFDIR : S_IFREG;
    }
    const std::size_t need = fuse_add_direntry(req, buf.data() + used, size - used, name.c_str(), &st, static_cast<off_t>(i + 1));
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void MountImpl::OnOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  const Node* n = NodeOf(ino);
  if (n == nullptr) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  if (n->dir) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC) != 0) {
    fuse_reply_err(req, EROFS);
    return;
  }
  fi->fh = n->file;
  // The kernel's page cache serves re-reads and mmap; the bytes never change under it.
  fi->keep_cache = 1;
  // Nothing to flush on close (read-only). Without FLUSH a process that serves this mount and
  // dies with a file of it open (a test, an embedding program) does not wait on itself.
  fi->noflush = 1;
  if (options_.read_ahead == ReadAhead::kOpen) WantFile(n->file);
  fuse_reply_open(req, fi);
}

void MountImpl::OnStatfs(fuse_req_t req) {
  struct statvfs sv {};
  sv.f_bsize = 4096;
  sv.f_frsize = 4096;
  sv.f_blocks = (total_bytes_ + 4095) / 4096;
  sv.f_files = nodes_.size();
  sv.f_namemax = 255;
  sv.f_flag = ST_RDONLY;
  fuse_reply_statfs(req, &sv);
}

void MountImpl::OnAccess(fuse_req_t req, fuse_ino_t ino, int mask) {
  if (NodeOf(ino) == nullptr) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_reply_err(req, (mask & W_OK) != 0 ? EROFS : 0);
}

void MountImpl::OnRead(fuse_req_t req, fuse_ino_t ino, std::size_t size, off_t off, fuse_file_info* fi) {
  ++reads_;
  last_read_ = Clock::now().time_since_epoch().count();
  const Node* n = NodeOf(ino);
  if (n == nullptr || n->dir) {
    fuse_reply_err(req, n == nullptr ? ENOENT : EISDIR);
    return;
  }
  const std::size_t file = n->file;
  const std::uint64_t fsize = files_[file].size;
  const auto offset = static_cast<std::uint64_t>(std::max<off_t>(off, 0));
  if (offset >= fsize || size == 0) {
    fuse_reply_buf(req, nullptr, 0);
    return;
  }
  const std::uint64_t end = std::min<std::uint64_t>(fsize, offset + size);
  const auto deadline = Clock::now() + options_.read_deadline;
  auto fail = [&](const Error& e) {
    ++read_errors_;
    Log("read of " + Describe(file) + " at " + std::to_string(offset) + " (+" + std::to_string(end - offset) +
        " bytes) failed: " + e.ToString());
    fuse_reply_err(req, EIO);
  };
  const std::size_t first = static_cast<std::size_t>(offset / chunk_bytes_);
  const std::size_t last = static_cast<std::size_t>((end - 1) / chunk_bytes_);
  // A reader moving into a chunk (a loader reads in order): read the next ones back meanwhile.
  if (offset % chunk_bytes_ == 0 || last != first) ReadBackAhead(file, last);
  if (last == first) {
    // Within one chunk (nearly every read): straight from the verified buffer to the kernel.
    BufferPtr b;
    Status st = ChunkBuffer(file, first, deadline, &b);
    if (!st.ok()) return fail(st.error());
    fuse_reply_buf(req, reinterpret_cast<const char*>(b->bytes.get() + (offset - first * chunk_bytes_)),
                   static_cast<std::size_t>(end - offset));
    Served(*b, end - offset);
    return;
  }
  // Across chunks: one at a time (a reader never holds two buffers while it waits for memory).
  thread_local std::vector<std::byte> out;
  out.resize(static_cast<std::size_t>(end - offset));
  for (std::uint64_t pos = offset; pos < end;) {
    const std::size_t c = static_cast<std::size_t>(pos / chunk_bytes_);
    const std::uint64_t cstart = c * chunk_bytes_;
    const std::uint64_t cend = std::min(end, cstart + ChunkLen(file, c));
    BufferPtr b;
    Status st = ChunkBuffer(file, c, deadline, &b);
    if (!st.ok()) return fail(st.error());
    std::memcpy(out.data() + (pos - offset), b->bytes.get() + (pos - cstart), static_cast<std::size_t>(cend - pos));
    Served(*b, cend - pos);
    pos = cend;
  }
  fuse_reply_buf(req, reinterpret_cast<const char*>(out.data()), out.size());
}

void MountImpl::Served(Buffer& b, std::uint64_t n) {
  const std::uint64_t before = b.served.fetch_add(n);
  // Fully read now: read-ahead waiting for memory may take its place (ChunkMemory::Allocate).
  if (before < b.len && before + n >= b.len) memory_.WakeAll();
}

Status MountImpl::ChunkBuffer(std::size_t file, std::size_t c, Clock::time_point deadline, BufferPtr* out) {
  const ChunkKey key = KeyOf(file, c);
  const auto len = static_cast<std::size_t>(ChunkLen(file, c));
  CacheEntry& entry = *entries_[file];
  auto timed_out = [&] {
    return MakeError(Errc::kTimeout, "gave up after the read deadline of " +
                                         std::to_string(options_.read_deadline.count()) + " ms (chunk " + std::to_string(c) + ")");
  };
  unsigned origin_failures = 0;
  for (;;) {
    if (stop_.load()) return MakeError(Errc::kCancelled, "the file system is being unmounted");
    if (Clock::now() >= deadline) return timed_out();
    if (BufferPtr b = memory_.Find(key)) {
      *out = std::move(b);
      return OkStatus();
    }
    // Filled by this mount right now: wait for it rather than for the cache's lock.
    if (auto f = FindFetch(key)) {
      if (!WaitFetch(*f, deadline)) continue;  // deadline or stop: said above
      std::lock_guard lk(f->mu);
      if (!f->status.ok()) {
        if (f->read_back) continue;  // its reader said why; look again
        // A read-ahead fetch that failed is tried once more for this reader.
        if (!f->read_ahead || ++origin_failures > 1) return f->status;
        continue;
      }
      *out = f->buf;
      return OkStatus();
    }
    if (entry.Present(c)) {
      Status error = OkStatus();
      switch (ReadBack(file, c, deadline, out, &error)) {
        case ReadBackResult::kDone: return OkStatus();
        case ReadBackResult::kBusy:
        case ReadBackResult::kNoMemory: continue;  // wait above, or the deadline
        case ReadBackResult::kFailed: return error;
        case ReadBackResult::kAbsent: break;        // fetched below
      }
    }
    ChunkClaim claim;
    auto state = entry.Claim(c, &claim);
    if (!state.ok()) return std::move(state).error();
    if (*state == ClaimState::kPresent) continue;
    if (*state == ClaimState::kBusy) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return timed_out();
      Status st = entry.WaitChunk(c, [this] { return stop_.load(); }, std::min(left, std::chrono::milliseconds(1000)));
      if (!st.ok() && st.error().code != Errc::kTimeout) return st;
      continue;
    }
    // Ours to fill: straight to the origin, ahead of read-ahead.
    BufferPtr b = memory_.Allocate(len, memory_.budget(), deadline, stop_);
    if (!b) continue;
    ++urgent_waiting_;
    auto f = StartFetch(file, c, std::move(claim), std::move(b), /*read_ahead=*/false);
    const bool finished = WaitFetch(*f, deadline);
    if (--urgent_waiting_ == 0) WakeReadAhead();
    if (!finished) continue;
    std::lock_guard lk(f->mu);
    if (!f->status.ok()) return f->status;
    *out = f->buf;
    return OkStatus();
  }
}

MountImpl::ReadBackResult MountImpl::ReadBack(std::size_t file, std::size_t c, Clock::time_point deadline,
                                              BufferPtr* out, Status* error, std::chrono::milliseconds patience) {
  // One read-back per chunk: the kernel sends several reads of one chunk at once (its
  // read-ahead), and each used to read the whole chunk back and check it (2.3 GiB read back for
  // a 1 GiB model).
  const ChunkKey key = KeyOf(file, c);
  const auto len = static_cast<std::size_t>(ChunkLen(file, c));
  CacheEntry& entry = *entries_[file];
  auto rb = std::make_shared<Fetch>();
  rb->file = file;
  rb->chunk = c;
  rb->key = key;
  rb->read_back = true;
  {
    std::lock_guard lk(fetch_mu_);
    if (!fetches_.try_emplace(key, rb).second) return ReadBackResult::kBusy;  // being fetched or read back
  }
  auto finish = [&](Status st, BufferPtr buf) {
    {
      std::lock_guard lk(rb->mu);
      rb->buf = std::move(buf);
      rb->status = std::move(st);
      rb->done = true;
    }
    rb->cv.notify_all();
    std::lock_guard lk(fetch_mu_);
    if (auto it = fetches_.find(key); it != fetches_.end() && it->second == rb) fetches_.erase(it);
  };
  // Read back ahead of a reader (patience max), it stays within read-ahead's share of memory.
  const std::uint64_t limit = patience == std::chrono::milliseconds::max() ? read_ahead_limit_ : memory_.budget();
  BufferPtr b = memory_.Allocate(len, limit, deadline, stop_, patience);
  if (!b) {
    finish(MakeError(Errc::kTimeout, "no memory for the chunk before the deadline"), nullptr);
    return ReadBackResult::kNoMemory;
  }
  const std::uint64_t corrupt_before = entry.corrupt_chunks();
  Status st = entry.ReadChunk(c, b->bytes.get());
  if (st.ok()) {
    bytes_read_back_ += len;
    MarkPresent(file, c);
    memory_.Put(key, b);
    finish(OkStatus(), b);
    *out = std::move(b);
    return ReadBackResult::kDone;
  }
  finish(st, nullptr);
  if (st.error().code != Errc::kNotFound) {
    *error = std::move(st);
    return ReadBackResult::kFailed;
  }
  // Absent after all, or its bytes on disk did not match the slot (now cleared): to be fetched.
  MarkAbsent(file, c);
  if (entry.corrupt_chunks() != corrupt_before)
    Log(Describe(file) + ": chunk " + std::to_string(c) + " in the cache did not match its checksum; fetching it again");
  return ReadBackResult::kAbsent;
}

void MountImpl::ReadBackAhead(std::size_t file, std::size_t c) {
  {
    // While read-ahead fetches, memory is its: chunks read back ahead would push out (or be
    // pushed out by) chunks on their way from the origin.
    std::lock_guard lk(ra_mu_);
    if (ra_inflight_ > 0) return;
  }
  bool queued = false;
  for (std::size_t k = c + 1; k <= c + kReadBackAhead && k < ChunkCount(file); ++k) {
    const ChunkKey key = KeyOf(file, k);
    if (!entries_[file]->Present(k) || memory_.Contains(key) || FindFetch(key)) continue;
    std::lock_guard lk(rb_mu_);
    if (std::find(rb_queue_.begin(), rb_queue_.end(), key) != rb_queue_.end()) continue;
    rb_queue_.push_back(key);
    queued = true;
  }
  if (queued) rb_cv_.notify_one();
}

void MountImpl::ReadBackLoop() {
  pthread_setname_np(pthread_self(), "cs-mount-rb");
  std::unique_lock lk(rb_mu_);
  for (;;) {
    rb_cv_.wait(lk, [&] { return stop_.load() || !rb_queue_.empty(); });
    if (stop_.load()) return;
    const ChunkKey key = rb_queue_.front();
    rb_queue_.pop_front();
    lk.unlock();
    const auto file = static_cast<std::size_t>(key >> 32);
    const auto c = static_cast<std::size_t>(key & 0xffffffffu);
    // Never waits for memory, and only pushes out chunks readers have finished: a chunk read
    // back ahead must not take the place of one a reader is about to read. When memory is
    // full, the reader reads it back itself.
    if (!memory_.Contains(key)) {
      BufferPtr ignored;
      Status error = OkStatus();
      (void)ReadBack(file, c, Clock::now(), &ignored, &error, std::chrono::milliseconds::max());  // failures: its reader sees them
    }
    lk.lock();
  }
}

std::shared_ptr<Fetch> MountImpl::StartFetch(std::size_t file, std::size_t c, ChunkClaim claim, BufferPtr buf,
                                             bool read_ahead) {
  auto f = std::make_shared<Fetch>();
  f->file = file;
  f->chunk = c;
  f->key = KeyOf(file, c);
  f->read_ahead = read_ahead;
  f->claim = std::move(claim);
  f->buf = std::move(buf);
  {
    std::lock_guard lk(fetch_mu_);
    fetches_[f->key] = f;
    ++outstanding_;
  }
  origin_->Read(file, c * chunk_bytes_, ChunkLen(file, c), f->buf->bytes.get(), !read_ahead,
                [this, f](Status st, std::uint32_t crc) {
                  f->origin_status = std::move(st);
                  f->crc32c = crc;
                  {
                    std::lock_guard lk(fetch_mu_);
                    fill_queue_.push_back(f);
                  }
                  fetch_cv_.notify_all();
                });
  return f;
}

std::shared_ptr<Fetch> MountImpl::FindFetch(ChunkKey key) {
  std::lock_guard lk(fetch_mu_);
  auto it = fetches_.find(key);
  return it == fetches_.end() ? nullptr : it->second;
}

bool MountImpl::WaitFetch(Fetch& f, Clock::time_point deadline) {
  std::unique_lock lk(f.mu);
  while (!f.done) {
    if (stop_.load() || Clock::now() >= deadline) return false;
    f.cv.wait_until(lk, std::min(deadline, Clock::now() + std::chrono::milliseconds(100)));
  }
  return true;
}

void MountImpl::FillLoop() {
  pthread_setname_np(pthread_self(), "cs-mount-fill");
  std::unique_lock lk(fetch_mu_);
  for (;;) {
    fetch_cv_.wait(lk, [&] { return fill_stop_ || !fill_queue_.empty(); });
    if (fill_queue_.empty()) return;
    auto f = std::move(fill_queue_.front());
    fill_queue_.pop_front();
    lk.unlock();
    FinishFetch(f);
    lk.lock();
  }
}

void MountImpl::FinishFetch(const std::shared_ptr<Fetch>& f) {
  Status status = f->origin_status;
  auto publish = [&f](Status st) {
    {
      std::lock_guard lk(f->mu);
      f->status = std::move(st);
      f->done = true;
    }
    f->cv.notify_all();
  };
  if (status.ok()) {
    // Readers get the bytes at once (they carry the CRC32C the transport computed as they
    // arrived); the cache write follows on this thread. Waiting for the write first put a
    // page-cache copy of 8 MiB between every fetched chunk and its reader.
    const auto len = static_cast<std::size_t>(ChunkLen(f->file, f->chunk));
    bytes_fetched_ += len;
    memory_.Put(f->key, f->buf);
    publish(OkStatus());
    Status st = entries_[f->file]->Fill(std::move(f->claim), f->buf->bytes.get(), f->crc32c,
                                        /*crc_of_these_bytes=*/true);  // the transport's, as they arrived
    if (st.ok()) {
      MarkPresent(f->file, f->chunk);
    } else if (!fill_error_logged_.exchange(true)) {
      // The bytes are good; only the cache could not keep them (disk full). Readers are
      // still served, from memory.
      Log("cannot write to the cache at " + cache_->dir() + " (" + st.error().ToString() +
          "); serving fetched bytes from memory");
    }
  } else {
    f->claim.Release();
    if (f->read_ahead && !stop_.load()) {
      bool first = false;
      {
        std::lock_guard lk(ra_mu_);
        if (!ra_failed_[f->file]) {
          ra_failed_[f->file] = 1;
          ++ra_failures_;
          first = true;
        }
      }
      if (first) Log("read-ahead of " + Describe(f->file) + " failed: " + status.error().ToString());
    }
    publish(std::move(status));
  }
  {
    std::lock_guard lk(fetch_mu_);
    if (auto it = fetches_.find(f->key); it != fetches_.end() && it->second == f) fetches_.erase(it);
    --outstanding_;
  }
  fetch_cv_.notify_all();
  if (f->read_ahead) {
    std::lock_guard lk(ra_mu_);
    --ra_inflight_;
  }
  ra_cv_.notify_all();
}

void MountImpl::WantFile(std::size_t file) {
  {
    std::lock_guard lk(ra_mu_);
    if (ra_wanted_[file]) return;
    ra_wanted_[file] = 1;
    ra_queue_.push_back(file);
    ra_done_ = false;
  }
  ra_cv_.notify_all();
}

// Claims and fetches chunks in file order, at most ra_max_inflight_ at once, never starting one
// while a reader waits for the origin (readers go first). Chunks someone else is filling are
// looked at again once the queue is through (they may have been given up).
void MountImpl::ReadAheadLoop() {
  pthread_setname_np(pthread_self(), "cs-mount-ra");
  std::unique_lock lk(ra_mu_);
  while (!stop_.load()) {
    if (!ra_queue_.empty()) {
      const std::size_t file = ra_queue_.front();
      if (ra_failed_[file] || ra_next_chunk_ >= ChunkCount(file)) {
        ra_queue_.pop_front();
        ra_next_chunk_ = 0;
        continue;
      }
      const std::size_t c = ra_next_chunk_++;
      if (Known(file, c)) continue;
      ReadAheadChunk(lk, file, c, false);
      continue;
    }
    if (!ra_deferred_.empty()) {
      if (ra_inflight_ > 0) {
        ra_cv_.wait_for(lk, std::chrono::milliseconds(100));
        continue;
      }
      const ChunkKey key = ra_deferred_.front();
      ra_deferred_.pop_front();
      const auto file = static_cast<std::size_t>(key >> 32);
      const auto c = static_cast<std::size_t>(key & 0xffffffffu);
      if (ra_failed_[file] || Known(file, c)) continue;
      ReadAheadChunk(lk, file, c, true);
      continue;
    }
    if (ra_inflight_ == 0) ra_done_ = true;
    ra_cv_.wait(lk, [&] { return stop_.load() || !ra_queue_.empty() || (ra_inflight_ == 0 && !ra_done_); });
  }
}

void MountImpl::ReadAheadChunk(std::unique_lock<std::mutex>& lk, std::size_t file, std::size_t c, bool deferred) {
  ra_cv_.wait(lk, [&] { return stop_.load() || (ra_inflight_ < ra_max_inflight_ && urgent_waiting_.load() == 0); });
  if (stop_.load()) return;
  lk.unlock();
  const ChunkKey key = KeyOf(file, c);
  auto relock = [&] { lk.lock(); };
  auto defer = [&] {
    lk.lock();
    ra_deferred_.push_back(key);
  };
  // A reader here fetches this chunk now: look again once it is done (it may fail).
  if (auto f = FindFetch(key)) {
    if (deferred) (void)WaitFetch(*f, Clock::now() + std::chrono::seconds(1));
    return defer();
  }
  // The buffer first, so a claimed chunk never waits for memory.
  // Waiting is only worth it while someone reads: with nobody reading (the mount is up before
  // the server starts), read-ahead fills the cache at the origin's full speed.
  const bool reader_active = Clock::now() - Clock::time_point(Clock::duration(last_read_.load())) < kReaderActive;
  BufferPtr b = memory_.Allocate(static_cast<std::size_t>(ChunkLen(file, c)), read_ahead_limit_, Clock::time_point::max(),
                                 stop_, reader_active ? kReadAheadPatience : std::chrono::milliseconds(0));
  if (!b) return relock();
  ChunkClaim claim;
  auto state = entries_[file]->Claim(c, &claim);
  if (!state.ok()) {
    Log("read-ahead of " + Describe(file) + " failed: " + state.error().ToString());
    lk.lock();
    if (!ra_failed_[file]) ++ra_failures_;
    ra_failed_[file] = 1;
    return;
  }
  if (*state == ClaimState::kPresent) {
    MarkPresent(file, c);
    return relock();
  }
  if (*state == ClaimState::kBusy) {
    b.reset();
    // Someone else (another process, or a reader here) fills it; once the queue is through,
    // wait for them and check (they may give up or die).
    if (deferred) (void)entries_[file]->WaitChunk(c, [this] { return stop_.load(); }, std::chrono::milliseconds(1000));
    return defer();
  }
  lk.lock();
  ++ra_inflight_;
  lk.unlock();
  StartFetch(file, c, std::move(claim), std::move(b), /*read_ahead=*/true);
  lk.lock();
}

MountProgress MountImpl::progress() const {
  MountProgress p;
  p.bytes_total = total_bytes_;
  p.bytes_cached = bytes_cached_.load();
  p.bytes_fetched = bytes_fetched_.load();
  p.reads = reads_.load();
  p.read_errors = read_errors_.load();
  p.bytes_read_back = bytes_read_back_.load();
  std::lock_guard lk(ra_mu_);
  p.read_ahead_done = ra_done_;
  p.read_ahead_failures = ra_failures_;
  return p;
}

Status MountImpl::Wait() {
  int rc = 0;
  {
    std::unique_lock lk(loop_mu_);
    loop_cv_.wait(lk, [&] { return loop_done_; });
    rc = loop_result_;
  }
  // Unmounted from outside (`fusermount3 -u`): read-ahead has no reader left to serve.
  stop_ = true;
  WakeReadAhead();
  memory_.WakeAll();
  if (rc != 0 && !stop_requested_.load())
    return MakeSysError(Errc::kIo, "the FUSE session at " + options_.mountpoint + " failed", -rc);
  return OkStatus();
}

void MountImpl::Stop() {
  // A second caller returns once the first is done (Shutdown joins the loop thread after).
  std::lock_guard stop_lk(stop_mu_);
  if (stop_requested_.exchange(true)) return;
  stop_ = true;
  WakeReadAhead();
  memory_.WakeAll();
  if (se_ != nullptr) fuse_session_exit(se_);
  bool loop_done;
  {
    std::lock_guard lk(loop_mu_);
    loop_done = loop_done_;
  }
  if (mounted_ && !loop_done && !unmounted_.exchange(true)) {
    // Lazy: open files do not keep us from going; the loop ends once the kernel lets go.
    if (Status st = LazyUnmount(options_.mountpoint); !st.ok()) Log(st.error().ToString());
  }
  if (origin_) origin_->CancelAll();
  // Files still open under the detached mount keep the connection, and the loop's reads of
  // /dev/fuse, alive: wake the loop so it cancels them (see WakeSignal). Closing the device
  // afterwards (Shutdown) aborts the connection; those files then read ENOTCONN.
  if (!loop_thread_.joinable()) return;
  std::unique_lock lk(loop_mu_);
  if (loop_cv_.wait_for(lk, std::chrono::milliseconds(500), [&] { return loop_done_; })) return;
  const int sig = WakeSignal();
  const auto give_up = Clock::now() + std::chrono::seconds(5);
  while (!loop_done_ && Clock::now() < give_up) {
    if (sig != 0 && loop_thread_.joinable()) ::pthread_kill(loop_thread_.native_handle(), sig);
    loop_cv_.wait_for(lk, std::chrono::milliseconds(100), [&] { return loop_done_; });
  }
  if (!loop_done_) Log("the FUSE session at " + options_.mountpoint + " did not end; files may still be open under it");
}

void MountImpl::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  Stop();
  if (loop_thread_.joinable()) loop_thread_.join();
  if (ra_thread_.joinable()) {
    ra_cv_.notify_all();
    ra_thread_.join();
  }
  rb_cv_.notify_all();
  for (auto& t : rb_threads_) t.join();
  {
    // Every Origin::Read calls done exactly once; wait for them all (CancelAll hurried them).
    std::unique_lock lk(fetch_mu_);
    fetch_cv_.wait(lk, [&] { return outstanding_ == 0; });
    fill_stop_ = true;
  }
  fetch_cv_.notify_all();
  for (auto& t : fill_threads_) t.join();
  if (se_ != nullptr) {
    // Unmounts unless already unmounted (it checks the device first), then closes it.
    if (mounted_) fuse_session_unmount(se_);
    fuse_session_destroy(se_);
    se_ = nullptr;
  }
  memory_.Clear();
  // Entries of this mount alone (objects with no version) go with it.
  for (std::size_t i = 0; i < files_.size() && i < entries_.size(); ++i) {
    if (!files_[i].ephemeral || !entries_[i]) continue;
    entries_[i].reset();
    auto removed = cache_->Remove(files_[i].key);
    if (!removed.ok() || !*removed)
      Log("could not remove this mount's own cache entry of " + Describe(i) + " (" +
          (removed.ok() ? std::string("another process has it open") : removed.error().ToString()) +
          "); `coldstart cache evict` or the size cap removes it later");
  }
}

}  // namespace

Result<std::unique_ptr<Mount>> Mount::Start(std::vector<MountFile> files, std::shared_ptr<DiskCache> cache,
                                            std::shared_ptr<Origin> origin, MountOptions options) {
  if (!cache) return MakeError(Errc::kInvalidArgument, "mount needs a disk cache");
  auto m = std::make_unique<MountImpl>(std::move(files), std::move(cache), std::move(origin), std::move(options));
  CS_RETURN_IF_ERROR(m->Init());
  return std::unique_ptr<Mount>(std::move(m));
}

}  // namespace coldstart::cache
