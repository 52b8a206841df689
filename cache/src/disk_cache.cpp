#include "coldstart/cache/disk_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "coldstart/core/crc32c.h"
#include "coldstart/core/file_io.h"
#include "coldstart/core/hash.h"
#include "coldstart/core/little_endian.h"

namespace coldstart::cache {

void LinkEnvCache();  // cache_env.cpp

namespace {

// DIR/config: "coldstart-cache 1\nchunk_bytes N\n".
constexpr std::string_view kConfigMagic = "coldstart-cache";
constexpr int kFormatVersion = 1;
constexpr std::string_view kCacheDirTag =
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by coldstart (https://bford.info/cachedir/).\n";
constexpr std::string_view kListingMagic = "coldstart-listing 1";

// map: a 64-byte header, then one 16-byte slot per chunk. 16-byte slots at 16-byte offsets never
// straddle a sector, and a torn one fails its own CRC anyway.
constexpr char kMapMagic[8] = {'C', 'S', 'C', 'M', 'A', 'P', '0', '1'};
constexpr std::uint64_t kMapHeaderBytes = 64;
constexpr std::uint64_t kSlotBytes = 16;  // crc32c u32, marker u32, chunk index u32, slot crc u32
constexpr std::uint32_t kPresentMarker = 0x53455250;  // "PRES"

constexpr std::uint64_t kMinChunk = 4096, kMaxChunk = 1ull << 30;
// Temporary entry folders older than this are a crashed creator's; creating one takes
// milliseconds.
constexpr auto kStaleTemp = std::chrono::seconds(60);

// A file descriptor owner (move-only).
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

Fd OpenAt(int dirfd, const std::string& name, int flags, mode_t mode = 0644) {
  int fd;
  do fd = ::openat(dirfd, name.c_str(), flags | O_CLOEXEC | O_NOFOLLOW, mode);
  while (fd < 0 && errno == EINTR);
  return Fd(fd);
}

// Reads up to n bytes; *got tells how many (short only at end of file).
Status ReadAll(int fd, void* p, std::size_t n, std::uint64_t off, const std::string& what, std::size_t* got) {
  CS_ASSIGN_OR_RETURN(*got, ReadAt(fd, p, n, off, what));
  return OkStatus();
}

Result<std::string> ReadSmallFile(int dirfd, const std::string& name, const std::string& shown, std::size_t limit) {
  Fd fd = OpenAt(dirfd, name, O_RDONLY);
  if (!fd) return MakePathError(shown + ": cannot open", errno);
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t r = ::read(fd.get(), buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      return MakeSysError(Errc::kIo, shown + ": cannot read", errno);
    }
    if (r == 0) break;
    out.append(buf, static_cast<std::size_t>(r));
    if (out.size() > limit) return MakeError(Errc::kFormat, shown + ": larger than " + std::to_string(limit) + " bytes");
  }
  return out;
}

// Writes `bytes` to DIRFD/name through a unique temporary and a rename: readers see the old
// file or the new one, never half of one.
Status WriteFileAtomic(int dirfd, const std::string& shown_dir, const std::string& name, std::string_view bytes,
                       bool fsync) {
  std::string tmp = ".tmp-" + name + "-" + std::to_string(std::random_device{}());
  Fd fd = OpenAt(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL);
  if (!fd) return MakePathError(shown_dir + "/" + tmp + ": cannot create", errno);
  Status st = WriteAt(fd.get(), bytes.data(), bytes.size(), 0, shown_dir + "/" + tmp);
  if (st.ok() && fsync && ::fdatasync(fd.get()) != 0) st = MakePathError(shown_dir + "/" + tmp + ": cannot flush", errno);
  fd.reset();
  if (st.ok() && ::renameat(dirfd, tmp.c_str(), dirfd, name.c_str()) != 0)
    st = MakePathError(shown_dir + "/" + name + ": cannot rename into place", errno);
  if (!st.ok()) {
    ::unlinkat(dirfd, tmp.c_str(), 0);
    return st;
  }
  if (fsync) ::fsync(dirfd);
  return OkStatus();
}

std::string Escape(std::string_view s) {
  std::string out;
  for (char ch : s) {
    if (ch == '%') out += "%25";
    else if (ch == '\n') out += "%0A";
    else if (ch == '\r') out += "%0D";
    else out += ch;
  }
  return out;
}

bool Unescape(std::string_view s, std::string* out) {
  out->clear();
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      *out += s[i];
      continue;
    }
    std::string_view code = s.substr(i + 1, 2);
    if (code == "25") *out += '%';
    else if (code == "0A") *out += '\n';
    else if (code == "0D") *out += '\r';
    else return false;
    i += 2;
  }
  return true;
}

std::int64_t MtimeUnix(const struct stat& st) { return static_cast<std::int64_t>(st.st_mtim.tv_sec); }

bool SameFile(const struct stat& a, const struct stat& b) { return a.st_dev == b.st_dev && a.st_ino == b.st_ino; }

int FlockRetry(int fd, int op) {
  int r;
  do r = ::flock(fd, op);
  while (r != 0 && errno == EINTR);
  return r;
}

std::string RandomSuffix() {
  static std::atomic<std::uint64_t> counter{0};
  return std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1)) + "-" +
         std::to_string(std::random_device{}());
}

struct MapHeader {
  std::uint64_t chunk_bytes = 0, size = 0, chunks = 0;
  std::uint32_t key_crc = 0;
};

std::string EncodeMapHeader(const MapHeader& h) {
  unsigned char b[kMapHeaderBytes] = {};
  std::memcpy(b, kMapMagic, sizeof kMapMagic);
  PutU32(b + 8, kFormatVersion);
  PutU32(b + 12, static_cast<std::uint32_t>(kSlotBytes));
  PutU64(b + 16, h.chunk_bytes);
  PutU64(b + 24, h.size);
  PutU64(b + 32, h.chunks);
  PutU32(b + 40, h.key_crc);
  PutU32(b + 60, Crc32c(b, 60));
  return std::string(reinterpret_cast<const char*>(b), sizeof b);
}

Result<MapHeader> DecodeMapHeader(const unsigned char* b, std::size_t n, const std::string& shown) {
  if (n < kMapHeaderBytes || std::memcmp(b, kMapMagic, sizeof kMapMagic) != 0)
    return MakeError(Errc::kFormat, shown + ": not a coldstart cache map");
  if (GetU32(b + 60) != Crc32c(b, 60)) return MakeError(Errc::kFormat, shown + ": map header fails its CRC");
  if (GetU32(b + 8) != kFormatVersion || GetU32(b + 12) != kSlotBytes)
    return MakeError(Errc::kFormat, shown + ": map format " + std::to_string(GetU32(b + 8)) + " is not " +
                                        std::to_string(kFormatVersion));
  MapHeader h;
  h.chunk_bytes = GetU64(b + 16);
  h.size = GetU64(b + 24);
  h.chunks = GetU64(b + 32);
  h.key_crc = GetU32(b + 40);
  if (h.chunk_bytes < kMinChunk || h.chunk_bytes > kMaxChunk || h.chunks != (h.size + h.chunk_bytes - 1) / h.chunk_bytes)
    return MakeError(Errc::kFormat, shown + ": map header is inconsistent (chunk " + std::to_string(h.chunk_bytes) +
                                        ", size " + std::to_string(h.size) + ", chunks " + std::to_string(h.chunks) + ")");
  return h;
}

std::optional<std::uint32_t> DecodeSlot(const unsigned char* s, std::size_t c) {
  if (GetU32(s + 4) != kPresentMarker || GetU32(s + 8) != static_cast<std::uint32_t>(c) ||
      GetU32(s + 12) != Crc32c(s, 12))
    return std::nullopt;
  return GetU32(s);
}

std::string SourceHash(std::string_view text) {
  return Sha256Hex(std::span(reinterpret_cast<const std::byte*>(text.data()), text.size()));
}

class CacheImpl;

}  // namespace

// ---------------------------------------------------------------------------------------------

std::string ObjectKey::ToString() const {
  return "origin " + Escape(origin) + "\nname " + Escape(name) + "\nversion " + Escape(version) + "\nsize " +
         std::to_string(size) + "\n";
}

Result<ObjectKey> ObjectKey::Parse(const std::string& text) {
  ObjectKey k;
  std::string_view rest = text;
  const char* fields[] = {"origin ", "name ", "version ", "size "};
  std::string values[4];
  for (int i = 0; i < 4; ++i) {
    auto nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    std::string_view f = fields[i];
    if (nl == std::string_view::npos || line.substr(0, f.size()) != f || !Unescape(line.substr(f.size()), &values[i]))
      return MakeError(Errc::kFormat, "not a cache key (line " + std::to_string(i + 1) + ")");
    rest.remove_prefix(nl + 1);
  }
  if (!rest.empty()) return MakeError(Errc::kFormat, "not a cache key (text after the size)");
  auto size = ParseUint(values[3]);
  if (!size.ok() || values[3].empty() || values[3].find_first_not_of("0123456789") != std::string::npos)
    return MakeError(Errc::kFormat, "not a cache key (size '" + values[3] + "')");
  k.origin = std::move(values[0]);
  k.name = std::move(values[1]);
  k.version = std::move(values[2]);
  k.size = *size;
  return k;
}

Status DiskCacheOptions::ApplyEnv(const Env& env) {
  LinkEnvCache();
  if (auto v = env.Get("COLDSTART_CACHE_DIR")) {
    if (v->empty()) return MakeError(Errc::kInvalidArgument, "COLDSTART_CACHE_DIR: empty (unset it for the default folder)");
    dir = *v;
  }
  auto m = env.GetBytes("COLDSTART_CACHE_MAX_BYTES");
  if (!m.ok()) return std::move(m).error();
  if (*m) max_bytes = **m;
  return OkStatus();
}

Result<std::string> DefaultCacheDir(const Env& env) {
  LinkEnvCache();
  if (auto x = env.Get("XDG_CACHE_HOME"); x && !x->empty() && (*x)[0] == '/') return *x + "/coldstart";
  if (auto h = env.Get("HOME"); h && !h->empty()) return *h + "/.cache/coldstart";
  return MakeError(Errc::kInvalidArgument,
                   "no cache folder: neither XDG_CACHE_HOME (absolute) nor HOME is set; give --cache-dir or "
                   "COLDSTART_CACHE_DIR");
}

std::uint64_t CacheEntry::ChunkLength(std::size_t c) const {
  const std::uint64_t off = ChunkOffset(c);
  if (off >= size()) return 0;
  return std::min<std::uint64_t>(chunk_bytes(), size() - off);
}

// ---------------------------------------------------------------------------------------------

namespace {

class EntryImpl;

}  // namespace

struct ChunkClaim::Impl {
  std::shared_ptr<EntryImpl> owner;
  std::size_t chunk = 0;
};

namespace {

// The cache folder. Entries it opened are shared per key within the process, so their
// in-process claims see each other.
class CacheImpl final : public DiskCache, public std::enable_shared_from_this<CacheImpl> {
 public:
  CacheImpl(DiskCacheOptions o, Fd dirfd, Fd entries, Fd listings)
      : options_(std::move(o)), dirfd_(std::move(dirfd)), entries_fd_(std::move(entries)),
        listings_fd_(std::move(listings)) {}

  const std::string& dir() const override { return options_.dir; }
  std::uint64_t chunk_bytes() const override { return options_.chunk_bytes; }
  const DiskCacheOptions& options() const override { return options_; }

  Result<std::shared_ptr<CacheEntry>> OpenEntry(const ObjectKey& key) override { return Open(key, true); }
  Result<std::shared_ptr<CacheEntry>> FindEntry(const ObjectKey& key) override { return Open(key, false); }
  Status SaveListing(const std::string& source, const std::string& listing_json) override;
  Result<std::string> LoadListing(const std::string& source) override;
  Result<std::vector<EntryInfo>> List() override;
  std::uint64_t UsedBytes() override;
  Result<EvictReport> EvictToFit(std::uint64_t max_bytes) override;
  Result<bool> Remove(const ObjectKey& key) override {
    const std::string hash = SourceHash(key.ToString());
    {
      std::lock_guard lk(reg_mu_);
      if (auto it = open_.find(hash); it != open_.end() && !it->second.expired()) return false;  // open here
    }
    bool in_use = false;
    CS_RETURN_IF_ERROR(RemoveEntry(hash.substr(0, 2), hash, &in_use));
    return !in_use;
  }
  Result<VerifyReport> Verify() override;
  Result<EvictReport> Clear() override;

  // Called by an entry after each fill: keeps the cache under max_bytes.
  void AfterFill(std::uint64_t bytes);
  std::string EntryPath(const std::string& hash) const { return options_.dir + "/entries/" + hash.substr(0, 2) + "/" + hash; }

 private:
  Result<std::shared_ptr<CacheEntry>> Open(const ObjectKey& key, bool create);
  // nullptr: the entry vanished (evicted) while being opened; try again.
  Result<std::shared_ptr<EntryImpl>> OpenExisting(const ObjectKey& key, const std::string& text, const std::string& hash,
                                                  bool touch = true);
  // nullptr: someone else created it first; open theirs.
  Result<std::shared_ptr<EntryImpl>> Create(const ObjectKey& key, const std::string& text, const std::string& hash);
  // Removes one entry folder unless it is in use. Sets *in_use when it is.
  Status RemoveEntry(const std::string& xx, const std::string& name, bool* in_use);
  Result<EvictReport> Evict(std::uint64_t max_bytes, bool listings);
  void RemoveLeftovers();
  // Every entry folder: (XX, name).
  Result<std::vector<std::pair<std::string, std::string>>> EntryFolders();
  EntryInfo Inspect(const std::string& xx, const std::string& name);

  DiskCacheOptions options_;
  Fd dirfd_, entries_fd_, listings_fd_;
  std::mutex reg_mu_;
  std::map<std::string, std::weak_ptr<EntryImpl>> open_;  // GUARDED_BY(reg_mu_), by key hash
  std::mutex evict_mu_;                                    // one eviction at a time in-process
  // Present bytes as of the last scan plus this process's fills since (other processes' fills
  // are seen at the next scan).
  std::atomic<std::uint64_t> used_estimate_{0}, filled_since_scan_{0};
  std::atomic<bool> scanned_{false};
};

class EntryImpl final : public CacheEntry, public std::enable_shared_from_this<EntryImpl> {
 public:
  EntryImpl(std::shared_ptr<CacheImpl> cache, ObjectKey key, std::string dir, Fd dirfd, Fd use, Fd map, Fd data)
      : cache_(std::move(cache)), key_(std::move(key)), dir_(std::move(dir)), data_path_(dir_ + "/data"),
        dirfd_(std::move(dirfd)), use_(std::move(use)), map_(std::move(map)), data_(std::move(data)),
        chunk_bytes_(cache_->chunk_bytes()),
        chunks_(static_cast<std::size_t>((key_.size + chunk_bytes_ - 1) / chunk_bytes_)), filling_(chunks_, false) {}

  ~EntryImpl() override {
    // Last use is when the entry was let go too: a mount that read a model for an hour was
    // using it all that time.
    if (touch_) ::futimens(use_.get(), nullptr);
  }
  // Verify reads entries without making them recently used.
  void set_touch(bool touch) { touch_ = touch; }

  const ObjectKey& key() const override { return key_; }
  std::uint64_t size() const override { return key_.size; }
  std::uint64_t chunk_bytes() const override { return chunk_bytes_; }
  std::size_t chunk_count() const override { return chunks_; }
  const std::string& data_path() const override { return data_path_; }
  int data_fd() const override { return data_.get(); }
  const std::string& dir() const { return dir_; }
  std::uint64_t corrupt_chunks() const override { return corrupt_.load(); }

  bool Present(std::size_t c) const override { return SlotCrc(c).has_value(); }

  std::optional<std::uint32_t> SlotCrc(std::size_t c) const override {
    if (c >= chunks_) return std::nullopt;
    unsigned char s[kSlotBytes];
    std::size_t got = 0;
    if (!ReadAll(map_.get(), s, sizeof s, SlotOffset(c), dir_ + "/map", &got).ok() || got != sizeof s)
      return std::nullopt;
    return DecodeSlot(s, c);
  }

  std::uint64_t present_bytes() const override {
    std::uint64_t bytes = 0;
    ForEachPresent([&](std::size_t c, std::uint32_t) { bytes += ChunkLength(c); });
    return bytes;
  }

  bool Complete() const override {
    std::size_t n = 0;
    ForEachPresent([&](std::size_t, std::uint32_t) { ++n; });
    return n == chunks_;
  }

  // Calls f(c, crc) for each present chunk, per one read of the map.
  template <typename F>
  void ForEachPresent(F&& f) const {
    std::vector<unsigned char> slots(chunks_ * kSlotBytes);
    std::size_t got = 0;
    if (slots.empty() || !ReadAll(map_.get(), slots.data(), slots.size(), kMapHeaderBytes, dir_ + "/map", &got).ok())
      return;
    for (std::size_t c = 0; c < chunks_ && (c + 1) * kSlotBytes <= got; ++c)
      if (auto crc = DecodeSlot(slots.data() + c * kSlotBytes, c)) f(c, *crc);
  }

  Status ReadChunk(std::size_t c, std::byte* dst) override {
    if (c >= chunks_) return OutOfRange(c);
    auto slot = SlotCrc(c);
    if (!slot) return Absent(c);
    const auto len = static_cast<std::size_t>(ChunkLength(c));
    std::size_t got = 0;
    CS_RETURN_IF_ERROR(ReadAll(data_.get(), dst, len, ChunkOffset(c), data_path_, &got));
    if (got == len && Crc32c(dst, len) == *slot) return OkStatus();
    return Mismatch(c, dst);
  }

  Status CheckChunk(std::size_t c, std::uint32_t crc32c) override {
    if (c >= chunks_) return OutOfRange(c);
    auto slot = SlotCrc(c);
    if (!slot) return Absent(c);
    if (crc32c == *slot) return OkStatus();
    // The caller's bytes are wrong either way; whether the disk is, Mismatch finds out.
    auto st = Mismatch(c, nullptr);
    if (st.ok()) return MakeError(Errc::kNotFound, Name(c) + ": bytes read do not match their CRC32C; read them again");
    return st;
  }

  Result<ClaimState> Claim(std::size_t c, ChunkClaim* claim) override {
    if (c >= chunks_) return OutOfRange(c);
    if (claim == nullptr) return MakeError(Errc::kInvalidArgument, "Claim: no ChunkClaim to fill");
    claim->Release();
    std::lock_guard lk(mu_);
    if (filling_[c]) return ClaimState::kBusy;
    if (Present(c)) return ClaimState::kPresent;
    CS_ASSIGN_OR_RETURN(bool got, LockSlot(c, F_OFD_SETLK));
    if (!got) return ClaimState::kBusy;
    // The filler may have finished between the look at the slot and the lock.
    if (Present(c)) {
      UnlockSlot(c);
      return ClaimState::kPresent;
    }
    filling_[c] = true;
    ClaimImpl(*claim) = std::make_unique<ChunkClaim::Impl>(ChunkClaim::Impl{shared_from_this(), c});
    return ClaimState::kClaimed;
  }

  Status WaitChunk(std::size_t c, const std::function<bool()>& cancelled, std::chrono::milliseconds timeout) override {
    if (c >= chunks_) return OutOfRange(c);
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    const bool forever = timeout >= std::chrono::hours(24 * 365 * 100);
    const auto deadline = forever ? Clock::time_point::max() : start + timeout;
    // Another process's fill shows only in the map and its lock: poll, 2 ms at first (a chunk
    // on local disk lands in a few ms), backing off to 20 ms (a chunk on a 50 MB/s connection
    // takes ~160 ms, so 20 ms costs it <15% and 50 polls/s per waiter).
    auto poll = std::chrono::milliseconds(2);
    for (;;) {
      bool waited = false;
      {
        std::unique_lock lk(mu_);
        if (filling_[c]) {
          waited = true;
          // In this process: the filler's release wakes us at once.
          cv_.wait_until(lk, std::min(deadline, Clock::now() + std::chrono::milliseconds(20)),
                         [&] { return !filling_[c]; });
          if (!filling_[c]) return OkStatus();
        } else {
          if (Present(c)) return OkStatus();
          CS_ASSIGN_OR_RETURN(bool locked, LockSlot(c, F_OFD_GETLK));
          if (!locked) return OkStatus();  // nobody fills it: the caller claims it
        }
      }
      if (cancelled && cancelled()) return MakeError(Errc::kCancelled, Name(c) + ": wait cancelled");
      const auto now = Clock::now();
      if (now >= deadline)
        return MakeError(Errc::kTimeout, Name(c) + ": another process has been filling it for " +
                                             std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now - start).count()) +
                                             " ms");
      if (waited) continue;
      std::unique_lock lk(mu_);
      cv_.wait_until(lk, std::min(deadline, now + poll));
      poll = std::min(poll * 2, std::chrono::milliseconds(20));
    }
  }

  Status Fill(ChunkClaim claim, const std::vector<std::pair<const std::byte*, std::size_t>>& parts,
              std::uint32_t crc32c, bool crc_of_these_bytes) override {
    auto& impl = ClaimImpl(claim);
    if (!impl || impl->owner.get() != this)
      return MakeError(Errc::kInvalidArgument, dir_ + ": Fill without a claim on this entry");
    const std::size_t c = impl->chunk;
    const std::uint64_t len = ChunkLength(c);
    std::uint64_t total = 0;
    std::uint32_t crc = 0;
    for (const auto& [p, n] : parts) {
      total += n;
      if (!crc_of_these_bytes) crc = Crc32cExtend(crc, p, n);
    }
    if (crc_of_these_bytes) crc = crc32c;
    if (total != len)
      return MakeError(Errc::kInvalidArgument, Name(c) + ": Fill got " + std::to_string(total) + " bytes, the chunk has " +
                                                   std::to_string(len));
    // The slot promises these bytes have this CRC; never write a promise the bytes break (that
    // chunk would be read, found corrupt and fetched again forever). Costs one pass: 8 MiB in
    // ~1 ms here with SSE4.2 (9 GB/s), while writing those 8 MiB took 3-20 ms (0.36-2.5 GB/s,
    // page cache to virtio disk; dd wrote 300 MB/s at the time).
    if (crc != crc32c)
      return MakeError(Errc::kIntegrity, Name(c) + ": bytes given to Fill do not match the CRC32C given");
    std::uint64_t off = ChunkOffset(c);
    for (const auto& [p, n] : parts) {
      Status st = WriteAt(data_.get(), p, n, off, data_path_);
      if (!st.ok()) {
        // Give back the blocks written so far (a full disk is why we are here, often).
        ::fallocate(data_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(ChunkOffset(c)),
                    static_cast<off_t>(len));
        return std::move(st).error().WithContext(key_.name);
      }
      off += n;
    }
    // Data first, slot second: kill -9 in between leaves the chunk absent, never present with
    // the wrong bytes. With fsync, the same order holds on the disk after a power loss.
    if (cache_->options().fsync && ::fdatasync(data_.get()) != 0)
      return MakePathError(data_path_ + ": cannot flush", errno);
    unsigned char s[kSlotBytes];
    PutU32(s, crc32c);
    PutU32(s + 4, kPresentMarker);
    PutU32(s + 8, static_cast<std::uint32_t>(c));
    PutU32(s + 12, Crc32c(s, 12));
    CS_RETURN_IF_ERROR(WriteAt(map_.get(), s, sizeof s, SlotOffset(c), dir_ + "/map"));
    if (cache_->options().fsync && ::fdatasync(map_.get()) != 0) return MakePathError(dir_ + "/map: cannot flush", errno);
    claim.Release();
    cache_->AfterFill(len);
    return OkStatus();
  }

  // Called by ChunkClaim::Release.
  void ReleaseChunk(std::size_t c) {
    std::lock_guard lk(mu_);
    UnlockSlot(c);
    filling_[c] = false;
    cv_.notify_all();
  }

 private:
  static std::uint64_t SlotOffset(std::size_t c) { return kMapHeaderBytes + c * kSlotBytes; }
  std::string Name(std::size_t c) const { return key_.name + " (chunk " + std::to_string(c) + ")"; }
  Error OutOfRange(std::size_t c) const {
    return MakeError(Errc::kInvalidArgument, key_.name + ": chunk " + std::to_string(c) + " of " + std::to_string(chunks_));
  }
  Error Absent(std::size_t c) const { return MakeError(Errc::kNotFound, Name(c) + ": not in the cache"); }

  // F_OFD_SETLK: takes the write lock on slot c's bytes (true) or finds it held (false).
  // F_OFD_GETLK: true when another open file holds it.
  Result<bool> LockSlot(std::size_t c, int cmd) const {
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = static_cast<off_t>(SlotOffset(c));
    fl.l_len = static_cast<off_t>(kSlotBytes);
    fl.l_pid = 0;  // required by the OFD commands
    int r;
    do r = ::fcntl(map_.get(), cmd, &fl);
    while (r != 0 && errno == EINTR);
    if (cmd == F_OFD_GETLK) {
      if (r != 0) return MakeSysError(Errc::kIo, dir_ + "/map: cannot test a lock", errno);
      return fl.l_type != F_UNLCK;
    }
    if (r == 0) return true;
    if (errno == EAGAIN || errno == EACCES) return false;
    return MakeSysError(Errc::kIo, dir_ + "/map: cannot lock", errno);
  }

  void UnlockSlot(std::size_t c) const {
    struct flock fl {};
    fl.l_type = F_UNLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = static_cast<off_t>(SlotOffset(c));
    fl.l_len = static_cast<off_t>(kSlotBytes);
    int r;
    do r = ::fcntl(map_.get(), F_OFD_SETLK, &fl);
    while (r != 0 && errno == EINTR);
  }

  // Bytes read for chunk c did not match its slot. Under the chunk's locks (so no filler, here
  // or elsewhere, is rewriting it) read it again: still wrong means the disk is wrong: clear the
  // slot and count it. Right means it was refilled while we read: OK, and the good bytes are in
  // dst (when given).
  Status Mismatch(std::size_t c, std::byte* dst) {
    std::lock_guard lk(mu_);
    if (filling_[c]) return Absent(c);
    auto got_lock = LockSlot(c, F_OFD_SETLK);
    if (!got_lock.ok()) return std::move(got_lock).error();
    if (!*got_lock) return Absent(c);  // another process is filling it
    auto slot = SlotCrc(c);
    const auto len = static_cast<std::size_t>(ChunkLength(c));
    std::vector<std::byte> buf;
    if (dst == nullptr) buf.resize(len), dst = buf.data();
    std::size_t got = 0;
    Status st = slot ? ReadAll(data_.get(), dst, len, ChunkOffset(c), data_path_, &got) : Absent(c);
    if (st.ok() && got == len && Crc32c(dst, len) == *slot) {
      UnlockSlot(c);
      return OkStatus();
    }
    if (st.ok()) {
      unsigned char zero[kSlotBytes] = {};
      st = WriteAt(map_.get(), zero, sizeof zero, SlotOffset(c), dir_ + "/map");
      if (st.ok() && cache_->options().fsync) ::fdatasync(map_.get());
      if (st.ok()) {
        corrupt_.fetch_add(1);
        st = MakeError(Errc::kNotFound, Name(c) + ": bytes on disk do not match their CRC32C (cleared; fetch it again)");
      }
    }
    UnlockSlot(c);
    return st;
  }

  std::shared_ptr<CacheImpl> cache_;
  ObjectKey key_;
  std::string dir_, data_path_;
  Fd dirfd_, use_, map_, data_;  // use_: flock(LOCK_SH) while this object lives
  std::uint64_t chunk_bytes_;
  std::size_t chunks_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  // INVARIANT: filling_[c] <=> a ChunkClaim of this object holds chunk c (and the OFD lock on its
  // slot). Guarded by mu_; the OFD lock is taken and dropped under mu_ too, since this process's
  // locks on one open file do not exclude each other.
  std::vector<bool> filling_;
  std::atomic<std::uint64_t> corrupt_{0};
  bool touch_ = true;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

ChunkClaim::ChunkClaim() = default;
ChunkClaim::ChunkClaim(ChunkClaim&&) noexcept = default;
ChunkClaim& ChunkClaim::operator=(ChunkClaim&& o) noexcept {
  if (this != &o) {
    Release();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
ChunkClaim::~ChunkClaim() { Release(); }
std::size_t ChunkClaim::chunk() const { return impl_ ? impl_->chunk : 0; }
bool ChunkClaim::held() const { return impl_ != nullptr; }
void ChunkClaim::Release() {
  if (!impl_) return;
  auto impl = std::move(impl_);
  impl->owner->ReleaseChunk(impl->chunk);
}

namespace {

Result<std::shared_ptr<CacheEntry>> CacheImpl::Open(const ObjectKey& key, bool create) {
  const std::string text = key.ToString();
  const std::string hash = SourceHash(text);
  std::lock_guard lk(reg_mu_);
  if (auto it = open_.find(hash); it != open_.end()) {
    if (auto e = it->second.lock()) return std::shared_ptr<CacheEntry>(e);
  }
  // An entry being evicted vanishes under us; each pass either opens, creates, or saw it go.
  for (int attempt = 0; attempt < 100; ++attempt) {
    CS_ASSIGN_OR_RETURN(auto e, OpenExisting(key, text, hash));
    if (!e && create) {
      CS_ASSIGN_OR_RETURN(e, Create(key, text, hash));
    } else if (!e) {
      struct stat st;
      if (::stat(EntryPath(hash).c_str(), &st) != 0)
        return MakeError(Errc::kNotFound, key.name + ": not in the cache " + options_.dir);
      continue;
    }
    if (e) {
      if (open_.size() >= 256) std::erase_if(open_, [](const auto& kv) { return kv.second.expired(); });
      open_[hash] = e;
      return std::shared_ptr<CacheEntry>(e);
    }
  }
  return MakeError(Errc::kIo, EntryPath(hash) + ": the entry kept vanishing while being opened (eviction in a loop?)");
}

Result<std::shared_ptr<EntryImpl>> CacheImpl::OpenExisting(const ObjectKey& key, const std::string& text,
                                                           const std::string& hash, bool touch) {
  const std::string path = EntryPath(hash);
  Fd dfd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd) {
    if (errno == ENOENT) return std::shared_ptr<EntryImpl>();
    return MakePathError(path + ": cannot open", errno);
  }
  Fd use = OpenAt(dfd.get(), "use", O_RDWR);
  if (!use) {
    const int err = errno;
    struct stat a, b;
    // Being removed (the folder was renamed away), else an entry without its use file.
    if (err == ENOENT && (::fstat(dfd.get(), &a) != 0 || ::stat(path.c_str(), &b) != 0 || !SameFile(a, b)))
      return std::shared_ptr<EntryImpl>();
    if (err == ENOENT) return MakeError(Errc::kFormat, path + ": no use file; not served (`coldstart cache verify` removes it)");
    return MakePathError(path + "/use: cannot open", err);
  }
  // Blocks only while an evicter holds LOCK_EX, i.e. while it renames the folder away.
  if (FlockRetry(use.get(), LOCK_SH) != 0) return MakeSysError(Errc::kIo, path + "/use: cannot lock", errno);
  struct stat held, now;
  if (::fstat(use.get(), &held) != 0) return MakeSysError(Errc::kIo, path + "/use: cannot stat", errno);
  if (::stat((path + "/use").c_str(), &now) != 0 || !SameFile(held, now)) return std::shared_ptr<EntryImpl>();
  // From here the folder is ours to read: no evicter can take LOCK_EX while we hold LOCK_SH.
  // Entries are renamed into place whole, so a missing file here is damage, not a race.
  auto missing = [&](const char* file) {
    return MakeError(Errc::kFormat, path + ": has no " + file + " file; not served (`coldstart cache verify` removes it)");
  };
  auto stored = ReadSmallFile(dfd.get(), "key", path + "/key", 1 << 20);
  if (!stored.ok()) return stored.error().code == Errc::kNotFound ? missing("key") : std::move(stored).error();
  if (*stored != text)
    return MakeError(Errc::kFormat, path + ": holds the key of another object; not served (`coldstart cache verify` "
                                           "removes it)");
  Fd map = OpenAt(dfd.get(), "map", O_RDWR);
  if (!map) return errno == ENOENT ? missing("map") : MakePathError(path + "/map: cannot open", errno);
  unsigned char hb[kMapHeaderBytes];
  std::size_t got = 0;
  CS_RETURN_IF_ERROR(ReadAll(map.get(), hb, sizeof hb, 0, path + "/map", &got));
  CS_ASSIGN_OR_RETURN(MapHeader h, DecodeMapHeader(hb, got, path + "/map"));
  if (h.size != key.size || h.chunk_bytes != options_.chunk_bytes || h.key_crc != Crc32c(text))
    return MakeError(Errc::kFormat, path + "/map: header does not match the key or the cache's chunk size");
  Fd data = OpenAt(dfd.get(), "data", O_RDWR);
  if (!data) return errno == ENOENT ? missing("data") : MakePathError(path + "/data: cannot open", errno);
  struct stat ds;
  if (::fstat(data.get(), &ds) != 0) return MakeSysError(Errc::kIo, path + "/data: cannot stat", errno);
  if (static_cast<std::uint64_t>(ds.st_size) != key.size)
    return MakeError(Errc::kFormat, path + "/data: " + std::to_string(ds.st_size) + " bytes, the object has " +
                                        std::to_string(key.size));
  if (touch) ::futimens(use.get(), nullptr);  // last use: now
  auto e = std::make_shared<EntryImpl>(shared_from_this(), key, path, std::move(dfd), std::move(use), std::move(map),
                                       std::move(data));
  e->set_touch(touch);
  return e;
}

Result<std::shared_ptr<EntryImpl>> CacheImpl::Create(const ObjectKey& key, const std::string& text,
                                                     const std::string& hash) {
  const std::string xx = hash.substr(0, 2);
  if (::mkdirat(entries_fd_.get(), xx.c_str(), 0755) != 0 && errno != EEXIST)
    return MakePathError(options_.dir + "/entries/" + xx + ": cannot create", errno);
  Fd xfd = OpenAt(entries_fd_.get(), xx, O_RDONLY | O_DIRECTORY);
  if (!xfd) return MakePathError(options_.dir + "/entries/" + xx + ": cannot open", errno);
  // Built whole under a temporary name, then renamed into place: an entry at its final path
  // always has all four files.
  const std::string tmp = ".tmp-" + hash.substr(0, 16) + "-" + RandomSuffix();
  const std::string tmp_path = options_.dir + "/entries/" + xx + "/" + tmp;
  if (::mkdirat(xfd.get(), tmp.c_str(), 0755) != 0) return MakePathError(tmp_path + ": cannot create", errno);
  auto fail = [&](Error e) -> Result<std::shared_ptr<EntryImpl>> {
    std::error_code ec;
    std::filesystem::remove_all(tmp_path, ec);
    return e;
  };
  Fd dfd = OpenAt(xfd.get(), tmp, O_RDONLY | O_DIRECTORY);
  if (!dfd) return fail(MakePathError(tmp_path + ": cannot open", errno));
  const int excl = O_RDWR | O_CREAT | O_EXCL;
  Fd keyf = OpenAt(dfd.get(), "key", excl), map = OpenAt(dfd.get(), "map", excl), data = OpenAt(dfd.get(), "data", excl);
  Fd use = OpenAt(dfd.get(), "use", excl);
  if (!keyf || !map || !data || !use) return fail(MakePathError(tmp_path + ": cannot create its files", errno));
  Status st = WriteAt(keyf.get(), text.data(), text.size(), 0, tmp_path + "/key");
  MapHeader h{options_.chunk_bytes, key.size, (key.size + options_.chunk_bytes - 1) / options_.chunk_bytes, Crc32c(text)};
  const std::string header = EncodeMapHeader(h);
  if (st.ok()) st = WriteAt(map.get(), header.data(), header.size(), 0, tmp_path + "/map");
  // All slots zero (absent); data sparse until filled.
  if (st.ok() && ::ftruncate(map.get(), static_cast<off_t>(kMapHeaderBytes + h.chunks * kSlotBytes)) != 0)
    st = MakePathError(tmp_path + "/map: cannot size", errno);
  if (st.ok() && ::ftruncate(data.get(), static_cast<off_t>(key.size)) != 0)
    st = MakePathError(tmp_path + "/data: cannot size", errno);
  // With fsync the entry's files and sizes are on the disk before it is renamed into place: after
  // a power loss an entry is there whole or not at all.
  if (st.ok() && options_.fsync &&
      (::fsync(keyf.get()) != 0 || ::fsync(map.get()) != 0 || ::fsync(data.get()) != 0 || ::fsync(use.get()) != 0 ||
       ::fsync(dfd.get()) != 0))
    st = MakePathError(tmp_path + ": cannot flush", errno);
  if (!st.ok()) return fail(std::move(st).error());
  // Held across the rename so an evicter cannot remove the new entry before we open it.
  if (FlockRetry(use.get(), LOCK_SH) != 0) return fail(MakeSysError(Errc::kIo, tmp_path + "/use: cannot lock", errno));
  if (::renameat2(xfd.get(), tmp.c_str(), xfd.get(), hash.c_str(), RENAME_NOREPLACE) != 0) {
    const int err = errno;
    if (err == EEXIST || err == ENOTEMPTY) {
      std::error_code ec;
      std::filesystem::remove_all(tmp_path, ec);
      return std::shared_ptr<EntryImpl>();  // someone else created it: open theirs
    }
    return fail(MakePathError(EntryPath(hash) + ": cannot rename into place", err));
  }
  if (options_.fsync) ::fsync(xfd.get());
  CS_ASSIGN_OR_RETURN(auto e, OpenExisting(key, text, hash));
  return e;
}

void CacheImpl::AfterFill(std::uint64_t bytes) {
  const std::uint64_t cap = options_.max_bytes;
  if (cap == 0) return;
  const std::uint64_t est = used_estimate_.fetch_add(bytes) + bytes;
  const std::uint64_t since = filled_since_scan_.fetch_add(bytes) + bytes;
  // A scan reads every entry's map: 0.07 ms per entry of 2000 chunks here (201 entries in
  // 14 ms). Doing it after every 1/64 of the cap bounds what other processes' fills can
  // overshoot before someone notices, at a cost well under 1% of the fills.
  if (scanned_.load() && est <= cap && since < std::max(cap / 64, options_.chunk_bytes)) return;
  std::unique_lock lk(evict_mu_, std::try_to_lock);
  if (!lk.owns_lock()) return;  // another thread is evicting right now
  lk.unlock();
  // The fill succeeded whatever eviction does; an entry it could not remove is left for the
  // next scan (and reported by `coldstart cache evict`).
  (void)EvictToFit(cap);
}

Result<std::vector<std::pair<std::string, std::string>>> CacheImpl::EntryFolders() {
  std::vector<std::pair<std::string, std::string>> out;
  std::error_code ec;
  const std::string root = options_.dir + "/entries";
  for (std::filesystem::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string xx = it->path().filename().string();
    if (xx.size() != 2 || !it->is_directory()) continue;
    std::error_code ec2;
    for (std::filesystem::directory_iterator jt(it->path(), ec2), e2; !ec2 && jt != e2; jt.increment(ec2)) {
      std::string name = jt->path().filename().string();
      if (name.empty() || name[0] == '.') continue;  // temporaries and folders being removed
      out.emplace_back(xx, std::move(name));
    }
  }
  if (ec) return MakePathError(root + ": cannot list", ec.value());
  std::sort(out.begin(), out.end());
  return out;
}

EntryInfo CacheImpl::Inspect(const std::string& xx, const std::string& name) {
  EntryInfo info;
  info.path = options_.dir + "/entries/" + xx + "/" + name;
  Fd dfd(::open(info.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd) {
    info.problem = "cannot open: " + std::string(std::strerror(errno));
    return info;
  }
  Fd use = OpenAt(dfd.get(), "use", O_RDONLY);
  struct stat st;
  if (use && ::fstat(use.get(), &st) == 0) info.last_used_unix = MtimeUnix(st);
  if (use) {
    // In use = some open file holds LOCK_SH: our LOCK_EX|LOCK_NB fails.
    if (FlockRetry(use.get(), LOCK_EX | LOCK_NB) == 0) {
      FlockRetry(use.get(), LOCK_UN);
    } else {
      info.in_use = true;
    }
  }
  auto text = ReadSmallFile(dfd.get(), "key", info.path + "/key", 1 << 20);
  if (!text.ok()) {
    info.problem = text.error().ToString();
    return info;
  }
  auto key = ObjectKey::Parse(*text);
  if (!key.ok()) {
    info.problem = key.error().message;
    return info;
  }
  info.key = *key;
  if (SourceHash(*text) != name) {
    info.problem = "the folder's name is not the hash of its key";
    return info;
  }
  if (!use) {
    info.problem = "no use file";
    return info;
  }
  Fd map = OpenAt(dfd.get(), "map", O_RDONLY);
  std::vector<unsigned char> m;
  if (map && ::fstat(map.get(), &st) == 0) m.resize(static_cast<std::size_t>(std::min<off_t>(st.st_size, 1ll << 32)));
  std::size_t got = 0;
  if (!map || !ReadAll(map.get(), m.data(), m.size(), 0, info.path + "/map", &got).ok()) {
    info.problem = "map unreadable";
    return info;
  }
  auto h = DecodeMapHeader(m.data(), got, "map");
  if (!h.ok()) {
    info.problem = h.error().message;
    return info;
  }
  if (h->size != key->size || h->chunk_bytes != options_.chunk_bytes) {
    info.problem = "map header does not match the key or the cache's chunk size";
    return info;
  }
  if (::fstatat(dfd.get(), "data", &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
      static_cast<std::uint64_t>(st.st_size) != key->size) {
    info.problem = "data file missing or of the wrong size";
    return info;
  }
  info.chunks = h->chunks;
  for (std::uint64_t c = 0; c < h->chunks && kMapHeaderBytes + (c + 1) * kSlotBytes <= got; ++c) {
    if (DecodeSlot(m.data() + kMapHeaderBytes + c * kSlotBytes, static_cast<std::size_t>(c))) {
      ++info.chunks_present;
      info.present_bytes += std::min(h->chunk_bytes, h->size - c * h->chunk_bytes);
    }
  }
  return info;
}

Result<std::vector<EntryInfo>> CacheImpl::List() {
  CS_ASSIGN_OR_RETURN(auto folders, EntryFolders());
  std::vector<EntryInfo> out;
  for (const auto& [xx, name] : folders) {
    EntryInfo info = Inspect(xx, name);
    struct stat st;
    // Gone since the folder was listed (evicted): not an entry any more.
    if (!info.problem.empty() && ::stat(info.path.c_str(), &st) != 0) continue;
    out.push_back(std::move(info));
  }
  return out;
}

std::uint64_t CacheImpl::UsedBytes() {
  auto list = List();
  if (!list.ok()) return 0;
  std::uint64_t total = 0;
  for (const auto& e : *list) total += e.present_bytes;
  return total;
}

Status CacheImpl::RemoveEntry(const std::string& xx, const std::string& name, bool* in_use) {
  *in_use = false;
  const std::string path = options_.dir + "/entries/" + xx + "/" + name;
  Fd dfd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dfd) return errno == ENOENT ? OkStatus() : MakePathError(path + ": cannot open", errno);
  Fd use = OpenAt(dfd.get(), "use", O_RDONLY);
  if (use) {
    if (FlockRetry(use.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno == EWOULDBLOCK) {
        *in_use = true;
        return OkStatus();
      }
      return MakeSysError(Errc::kIo, path + "/use: cannot lock", errno);
    }
    struct stat held, now;
    if (::fstat(use.get(), &held) != 0 || ::stat((path + "/use").c_str(), &now) != 0 || !SameFile(held, now))
      return OkStatus();  // already replaced or removed by someone else
  }
  // Renamed away while we hold LOCK_EX: an opener blocked on LOCK_SH finds the path gone and
  // starts over; nobody ever opens a half-removed entry.
  const std::string gone = ".evicted-" + name.substr(0, 16) + "-" + RandomSuffix();
  const std::string xx_path = options_.dir + "/entries/" + xx;
  if (::rename(path.c_str(), (xx_path + "/" + gone).c_str()) != 0) return MakePathError(path + ": cannot move away", errno);
  std::error_code ec;
  std::filesystem::remove_all(xx_path + "/" + gone, ec);
  if (ec) return MakeSysError(ErrcFromErrno(ec.value()), xx_path + "/" + gone + ": cannot remove", ec.value());
  return OkStatus();
}

void CacheImpl::RemoveLeftovers() {
  const auto now = std::filesystem::file_time_type::clock::now();
  auto sweep = [&](const std::string& dir, bool entries) {
    std::error_code ec;
    for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string n = it->path().filename().string();
      std::error_code e2;
      const bool evicted = entries && n.rfind(".evicted-", 0) == 0;
      const bool stale_tmp = n.rfind(".tmp-", 0) == 0 && now - it->last_write_time(e2) > kStaleTemp && !e2;
      if (evicted || stale_tmp) std::filesystem::remove_all(it->path(), e2);
    }
  };
  std::error_code ec;
  for (std::filesystem::directory_iterator it(options_.dir + "/entries", ec), end; !ec && it != end; it.increment(ec))
    if (it->path().filename().string().size() == 2) sweep(it->path().string(), true);
  sweep(options_.dir + "/listings", false);
}

Result<EvictReport> CacheImpl::Evict(std::uint64_t max_bytes, bool listings) {
  std::lock_guard lk(evict_mu_);
  // One evicter at a time across processes too: the second one sees what the first left.
  Fd lock = OpenAt(dirfd_.get(), "evict.lock", O_RDWR | O_CREAT);
  if (!lock) return MakePathError(options_.dir + "/evict.lock: cannot open", errno);
  if (FlockRetry(lock.get(), LOCK_EX) != 0) return MakeSysError(Errc::kIo, options_.dir + "/evict.lock: cannot lock", errno);
  RemoveLeftovers();
  CS_ASSIGN_OR_RETURN(auto list, List());
  EvictReport report;
  std::uint64_t total = 0;
  for (const auto& e : list) total += e.present_bytes;
  // Entries that cannot be served go first, whatever the cap; then least recently used.
  std::stable_sort(list.begin(), list.end(), [](const EntryInfo& a, const EntryInfo& b) {
    if (a.problem.empty() != b.problem.empty()) return !a.problem.empty();
    return a.last_used_unix < b.last_used_unix;
  });
  for (const auto& e : list) {
    if (total <= max_bytes && e.problem.empty()) break;
    const auto slash = e.path.rfind('/');
    const std::string name = e.path.substr(slash + 1), xx = e.path.substr(slash - 2, 2);
    bool in_use = false;
    Status st = RemoveEntry(xx, name, &in_use);
    if (!st.ok()) {
      report.messages.push_back(st.error().ToString());
    } else if (in_use) {
      ++report.skipped_in_use;
    } else {
      ++report.entries_removed;
      report.bytes_freed += e.present_bytes;
      total -= e.present_bytes;
    }
  }
  if (listings) {
    std::error_code ec;
    for (std::filesystem::directory_iterator it(options_.dir + "/listings", ec), end; !ec && it != end; it.increment(ec)) {
      std::error_code e2;
      std::filesystem::remove_all(it->path(), e2);
      if (e2) report.messages.push_back(it->path().string() + ": cannot remove: " + e2.message());
    }
  }
  used_estimate_ = total;
  filled_since_scan_ = 0;
  scanned_ = true;
  return report;
}

Result<EvictReport> CacheImpl::EvictToFit(std::uint64_t max_bytes) { return Evict(max_bytes, false); }
Result<EvictReport> CacheImpl::Clear() { return Evict(0, true); }

Result<VerifyReport> CacheImpl::Verify() {
  CS_ASSIGN_OR_RETURN(auto folders, EntryFolders());
  VerifyReport report;
  std::vector<std::byte> buf(static_cast<std::size_t>(options_.chunk_bytes));
  for (const auto& [xx, name] : folders) {
    EntryInfo info = Inspect(xx, name);
    std::shared_ptr<EntryImpl> entry;
    if (info.problem.empty()) {
      const std::string text = info.key.ToString();
      auto e = OpenExisting(info.key, text, SourceHash(text), /*touch=*/false);
      if (!e.ok()) info.problem = e.error().message;
      else if (!*e) continue;  // evicted meanwhile
      else entry = *e;
    }
    ++report.entries;
    if (!entry) {
      ++report.corrupt_entries;
      bool in_use = false;
      Status st = RemoveEntry(xx, name, &in_use);
      report.messages.push_back(info.path + ": " + info.problem +
                                (!st.ok() ? "; cannot remove it: " + st.error().message
                                          : in_use ? "; in use, kept" : "; removed"));
      continue;
    }
    for (std::size_t c = 0; c < entry->chunk_count(); ++c) {
      if (!entry->Present(c)) continue;
      const std::uint64_t corrupt_before = entry->corrupt_chunks();
      Status st = entry->ReadChunk(c, buf.data());
      if (!st.ok() && st.error().code != Errc::kNotFound) return std::move(st).error();
      ++report.chunks_checked;
      report.bytes_checked += entry->ChunkLength(c);
      if (entry->corrupt_chunks() > corrupt_before) {
        ++report.corrupt_chunks;
        report.messages.push_back(st.error().message);
      }
    }
  }
  return report;
}

Status CacheImpl::SaveListing(const std::string& source, const std::string& listing_json) {
  const std::string content = std::string(kListingMagic) + "\n" + Escape(source) + "\n" + listing_json;
  return WriteFileAtomic(listings_fd_.get(), options_.dir + "/listings", SourceHash(source) + ".json", content,
                         options_.fsync);
}

Result<std::string> CacheImpl::LoadListing(const std::string& source) {
  const std::string name = SourceHash(source) + ".json";
  const std::string shown = options_.dir + "/listings/" + name;
  auto text = ReadSmallFile(listings_fd_.get(), name, shown, 256u << 20);
  if (!text.ok()) {
    if (text.error().code == Errc::kNotFound) return MakeError(Errc::kNotFound, source + ": no listing in the cache");
    return std::move(text).error();
  }
  const auto l1 = text->find('\n');
  const auto l2 = l1 == std::string::npos ? l1 : text->find('\n', l1 + 1);
  std::string stored;
  if (l2 == std::string::npos || text->compare(0, l1, kListingMagic) != 0 ||
      !Unescape(std::string_view(*text).substr(l1 + 1, l2 - l1 - 1), &stored))
    return MakeError(Errc::kFormat, shown + ": not a coldstart listing");
  if (stored != source) return MakeError(Errc::kFormat, shown + ": holds the listing of " + stored + ", not " + source);
  return text->substr(l2 + 1);
}

// DIR/config, created when missing (link(2) so two processes creating it at once agree on one).
Result<std::uint64_t> ReadOrCreateConfig(int dirfd, const DiskCacheOptions& o) {
  const std::string path = o.dir + "/config";
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto text = ReadSmallFile(dirfd, "config", path, 4096);
    if (text.ok()) {
      // "coldstart-cache 1\nchunk_bytes N\n"
      unsigned version = 0;
      unsigned long long chunk = 0;
      char magic[32] = {};
      int used = 0;
      if (std::sscanf(text->c_str(), "%31s %u\nchunk_bytes %llu\n%n", magic, &version, &chunk, &used) != 3 ||
          kConfigMagic != magic || static_cast<std::size_t>(used) != text->size())
        return MakeError(Errc::kFormat, o.dir + ": not a coldstart cache folder (its config is not one)");
      if (version != kFormatVersion)
        return MakeError(Errc::kFormat, o.dir + ": cache format " + std::to_string(version) + " (this coldstart reads " +
                                            std::to_string(kFormatVersion) + ")");
      if (chunk < kMinChunk || chunk > kMaxChunk || chunk % kMinChunk != 0)
        return MakeError(Errc::kFormat, path + ": chunk_bytes " + std::to_string(chunk) + " is out of range");
      return static_cast<std::uint64_t>(chunk);
    }
    if (text.error().code != Errc::kNotFound) return std::move(text).error();
    if (!o.create) return MakeError(Errc::kNotFound, o.dir + ": no coldstart cache here (no config)");
    // A folder with other things in it and no config is someone else's: never fill (or clear) it.
    // Unless the config is there now: another process created it since we looked (first opens
    // racing), and what else is there may be its own (its files, or its caller's): read it again.
    std::error_code ec;
    bool config_now = false;
    std::string foreign;
    for (std::filesystem::directory_iterator it(o.dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string n = it->path().filename().string();
      if (n == "config") config_now = true;
      else if (foreign.empty() && n != "entries" && n != "listings" && n != "CACHEDIR.TAG" && n != "evict.lock" &&
               n.rfind(".tmp-", 0) != 0)
        foreign = n;
    }
    if (config_now) continue;
    if (!foreign.empty())
      return MakeError(Errc::kFormat, o.dir + ": not a coldstart cache folder (it holds '" + foreign + "' and no config)");
    const std::string tmp = ".tmp-config-" + RandomSuffix();
    Fd fd = OpenAt(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL);
    if (!fd) return MakePathError(o.dir + "/" + tmp + ": cannot create", errno);
    const std::string body = std::string(kConfigMagic) + " " + std::to_string(kFormatVersion) + "\nchunk_bytes " +
                             std::to_string(o.chunk_bytes) + "\n";
    Status st = WriteAt(fd.get(), body.data(), body.size(), 0, o.dir + "/" + tmp);
    if (st.ok() && ::fsync(fd.get()) != 0) st = MakePathError(o.dir + "/" + tmp + ": cannot flush", errno);
    fd.reset();
    int err = 0;
    if (st.ok() && ::linkat(dirfd, tmp.c_str(), dirfd, "config", 0) != 0) err = errno;
    ::unlinkat(dirfd, tmp.c_str(), 0);
    if (!st.ok()) return std::move(st).error();
    if (err != 0 && err != EEXIST) return MakePathError(path + ": cannot create", err);
    // Created (or another process won the race): read what is there.
  }
  return MakeError(Errc::kIo, path + ": could not be read after it was created");
}

}  // namespace

Result<std::shared_ptr<DiskCache>> DiskCache::Open(DiskCacheOptions o) {
  LinkEnvCache();
  if (o.dir.empty()) return MakeError(Errc::kInvalidArgument, "disk cache: no folder given");
  if (o.chunk_bytes < kMinChunk || o.chunk_bytes > kMaxChunk || o.chunk_bytes % kMinChunk != 0)
    return MakeError(Errc::kInvalidArgument, "disk cache chunk size " + std::to_string(o.chunk_bytes) +
                                                 " is not a multiple of 4 KiB between 4 KiB and 1 GiB");
  while (o.dir.size() > 1 && o.dir.back() == '/') o.dir.pop_back();
  if (o.create) {
    std::error_code ec;
    std::filesystem::create_directories(o.dir, ec);
    if (ec) return MakeSysError(ErrcFromErrno(ec.value()), o.dir + ": cannot create the cache folder", ec.value());
  }
  Fd dirfd(::open(o.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dirfd) {
    if (errno == ENOENT) return MakeError(Errc::kNotFound, o.dir + ": no coldstart cache here");
    return MakePathError(o.dir + ": cannot open the cache folder", errno);
  }
  CS_ASSIGN_OR_RETURN(o.chunk_bytes, ReadOrCreateConfig(dirfd.get(), o));
  for (const char* sub : {"entries", "listings"})
    if (::mkdirat(dirfd.get(), sub, 0755) != 0 && errno != EEXIST)
      return MakePathError(o.dir + "/" + sub + ": cannot create", errno);
  if (::faccessat(dirfd.get(), "CACHEDIR.TAG", F_OK, 0) != 0) {
    // Backup tools skip folders with this tag; losing the race to write it is harmless.
    (void)WriteFileAtomic(dirfd.get(), o.dir, "CACHEDIR.TAG", kCacheDirTag, false);
  }
  Fd entries = OpenAt(dirfd.get(), "entries", O_RDONLY | O_DIRECTORY);
  if (!entries) return MakePathError(o.dir + "/entries: cannot open", errno);
  Fd listings = OpenAt(dirfd.get(), "listings", O_RDONLY | O_DIRECTORY);
  if (!listings) return MakePathError(o.dir + "/listings: cannot open", errno);
  return std::shared_ptr<DiskCache>(
      std::make_shared<CacheImpl>(std::move(o), std::move(dirfd), std::move(entries), std::move(listings)));
}

}  // namespace coldstart::cache
