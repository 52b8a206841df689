#include "coldstart/cache/partial_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <mutex>
#include <random>
#include <thread>

#include "coldstart/core/crc32c.h"
#include "coldstart/core/file_io.h"
#include "coldstart/core/little_endian.h"
#include "coldstart/core/env.h"
#include "coldstart/core/hash.h"

namespace coldstart::cache {
namespace {

constexpr std::string_view kLockSuffix = ".coldstart-lock";
constexpr std::string_view kPartialInfix = ".coldstart-partial.";
constexpr std::string_view kResumeSuffix = ".coldstart-resume";
constexpr std::string_view kOldSuffix = ".coldstart-partial";  // before unique names
constexpr char kMagic[8] = {'C', 'S', 'P', 'A', 'R', 'T', '0', '1'};
constexpr std::size_t kRecordBytes = 24;  // offset u64, length u64, crc u32, check u32
constexpr std::uint64_t kMaxRecordFile = 64ull << 20;

struct Names {
  std::string dir, name;
  std::string Path(std::string_view base) const { return dir + "/" + std::string(base); }
  std::string LockPath() const { return Path("." + name + std::string(kLockSuffix)); }
  std::string ResumePath() const { return Path("." + name + std::string(kResumeSuffix)); }
  std::string PartialPrefix() const { return "." + name + std::string(kPartialInfix); }
  std::string ResumeTempPrefix() const { return "." + name + std::string(kResumeSuffix) + "."; }
};

Names Split(const std::string& final_path) {
  auto slash = final_path.rfind('/');
  if (slash == std::string::npos) return {".", final_path};
  return {slash == 0 ? "/" : final_path.substr(0, slash), final_path.substr(slash + 1)};
}

Errc ErrcForOpen(int err) {
  if (err == EACCES || err == EPERM || err == EROFS) return Errc::kPermissionDenied;
  if (err == ENOSPC || err == EDQUOT) return Errc::kResourceExhausted;
  return Errc::kIo;
}

Error OpenError(const std::string& path, int err) {
  if (err == ELOOP) return MakeSysError(Errc::kIo, path + ": is a symbolic link; refusing to follow it", err);
  return MakeSysError(ErrcForOpen(err), path + ": cannot create", err);
}


std::string EncodeHeader(std::uint64_t size, const std::string& identity, const std::string& partial_name) {
  std::string h(kMagic, sizeof kMagic);
  unsigned char b[8];
  PutU64(b, size);
  h.append(reinterpret_cast<char*>(b), 8);
  PutU32(b, static_cast<std::uint32_t>(identity.size()));
  h.append(reinterpret_cast<char*>(b), 4);
  h += identity;
  PutU32(b, static_cast<std::uint32_t>(partial_name.size()));
  h.append(reinterpret_cast<char*>(b), 4);
  h += partial_name;
  PutU32(b, Crc32c(h));
  h.append(reinterpret_cast<char*>(b), 4);
  return h;
}

void EncodeRecord(unsigned char* p, const FileRange& r) {
  PutU64(p, r.offset);
  PutU64(p + 8, r.length);
  PutU32(p + 16, r.crc32c);
  PutU32(p + 20, Crc32c(p, 20));
}

struct ResumeRecord {
  std::uint64_t size = 0;
  std::string identity, partial_name;
  std::vector<FileRange> ranges;
};

// nullopt when absent, unreadable or malformed (all mean: nothing to resume).
std::optional<ResumeRecord> ReadResumeRecord(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct stat st {};
  std::string bytes;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) <= kMaxRecordFile) {
    bytes.resize(static_cast<std::size_t>(st.st_size));
    auto got = ReadAt(fd, bytes.data(), bytes.size(), 0, path);
    bytes.resize(got.ok() ? *got : 0);
  }
  ::close(fd);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  std::size_t n = bytes.size(), pos = 0;
  auto need = [&](std::size_t k) { return n - pos >= k; };
  if (!need(8 + 8 + 4) || std::memcmp(p, kMagic, 8) != 0) return std::nullopt;
  ResumeRecord r;
  r.size = GetU64(p + 8);
  pos = 16;
  std::uint32_t len = GetU32(p + pos);
  pos += 4;
  if (!need(len + 4)) return std::nullopt;
  r.identity.assign(bytes, pos, len);
  pos += len;
  len = GetU32(p + pos);
  pos += 4;
  if (!need(len + 4)) return std::nullopt;
  r.partial_name.assign(bytes, pos, len);
  pos += len;
  if (GetU32(p + pos) != Crc32c(p, pos)) return std::nullopt;
  pos += 4;
  for (; need(kRecordBytes); pos += kRecordBytes) {
    const unsigned char* q = p + pos;
    if (GetU32(q + 20) != Crc32c(q, 20)) break;  // a torn append: what follows is not trusted
    r.ranges.push_back({GetU64(q), GetU64(q + 8), GetU32(q + 16)});
  }
  return r;
}

std::string HexSuffix(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::uint64_t DefaultRandom() {
  static std::mutex mu;
  static std::random_device rd;
  std::lock_guard lk(mu);
  return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}

// Creates DIR/PREFIX<random> with O_EXCL|O_NOFOLLOW: a name taken by anything (a planted
// symlink included) is skipped, never opened.
Result<std::pair<int, std::string>> CreateUnique(const Names& n, const std::string& prefix, int flags,
                                                 const std::function<std::uint64_t()>& random) {
  for (int attempt = 0; attempt < 64; ++attempt) {
    std::string base = prefix + HexSuffix(random ? random() : DefaultRandom());
    std::string path = n.Path(base);
    int fd = ::open(path.c_str(), flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) return std::make_pair(fd, base);
    if (errno != EEXIST) return OpenError(path, errno);
  }
  return MakeError(Errc::kIo, n.Path(prefix + "*") + ": no free temporary name after 64 tries");
}

std::vector<std::string> ListFolder(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) out.emplace_back(e->d_name);
  ::closedir(d);
  return out;
}

bool StartsWith(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }
bool EndsWith(std::string_view s, std::string_view p) { return s.size() >= p.size() && s.substr(s.size() - p.size()) == p; }

// CRC32C (and MD5) of a file's bytes, read through a mapping: no copy out of the page cache.
struct DiskSums {
  std::uint32_t crc = 0;
  std::string md5;
};
Result<DiskSums> ReadBack(int fd, std::uint64_t offset, std::uint64_t len, bool md5, const std::string& path) {
  DiskSums s;
  std::optional<Md5> h;
  if (md5) h.emplace();
  constexpr std::uint64_t kWindow = 64ull << 20;
  const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> buf;
  for (std::uint64_t pos = offset; pos < offset + len;) {
    const std::uint64_t start = pos / page * page;
    const std::uint64_t want = std::min(kWindow, offset + len - pos);
    const std::uint64_t map_len = pos - start + want;
    void* m = ::mmap(nullptr, map_len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, static_cast<off_t>(start));
    const unsigned char* p = nullptr;
    if (m != MAP_FAILED) {
      p = static_cast<const unsigned char*>(m) + (pos - start);
    } else {  // e.g. a file system without mmap: read instead
      buf.resize(want);
      CS_ASSIGN_OR_RETURN(std::size_t got, ReadAt(fd, buf.data(), want, pos, path));
      if (got != want) return MakeError(Errc::kIntegrity, path + ": shorter than expected on disk");
      p = buf.data();
    }
    s.crc = Crc32cExtend(s.crc, p, want);
    if (h) h->Update(p, want);
    if (m != MAP_FAILED) ::munmap(m, map_len);
    pos += want;
  }
  if (h) s.md5 = h->Base64Digest();
  return s;
}

void SyncFolder(const std::string& dir) {
  int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0) return;
  ::fsync(d);
  ::close(d);
}

}  // namespace

// ---- FileLock ----

namespace {
// One attempt: opened and locked (fd >= 0), busy (-1, errno EWOULDBLOCK) or an error.
Result<int> LockOnce(const std::string& lock_path, bool* busy) {
  *busy = false;
  for (;;) {
    int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return OpenError(lock_path, errno);
    int rc;
    do rc = ::flock(fd, LOCK_EX | LOCK_NB);
    while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK) {
        *busy = true;
        return -1;
      }
      return MakeSysError(Errc::kIo, lock_path + ": flock", err);
    }
    // The holder before us unlinks the file while still holding it: ours may be a dead one.
    struct stat a {}, b {};
    if (::fstat(fd, &a) == 0 && ::lstat(lock_path.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
      return fd;
    ::close(fd);
  }
}
}  // namespace

Result<FileLock> FileLock::Acquire(const std::string& final_path, const LockOptions& options) {
  FileLock l;
  l.final_path_ = final_path;
  l.lock_path_ = Split(final_path).LockPath();
  for (;;) {
    bool busy = false;
    CS_ASSIGN_OR_RETURN(int fd, LockOnce(l.lock_path_, &busy));
    if (!busy) {
      l.fd_ = fd;
      return l;
    }
    if (!options.wait) return MakeError(Errc::kUnavailable, final_path + ": another process is writing it");
    if (!l.waited_) {
      l.waited_ = true;
      if (options.on_wait) options.on_wait();
    }
    if (options.cancelled && options.cancelled())
      return MakeError(Errc::kCancelled, final_path + ": cancelled while waiting for another process writing it");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

Result<std::optional<FileLock>> FileLock::TryAcquire(const std::string& final_path) {
  FileLock l;
  l.final_path_ = final_path;
  l.lock_path_ = Split(final_path).LockPath();
  bool busy = false;
  CS_ASSIGN_OR_RETURN(int fd, LockOnce(l.lock_path_, &busy));
  if (busy) return std::optional<FileLock>();
  l.fd_ = fd;
  return std::optional<FileLock>(std::move(l));
}

FileLock::FileLock(FileLock&& o) noexcept
    : final_path_(std::move(o.final_path_)), lock_path_(std::move(o.lock_path_)), fd_(o.fd_), waited_(o.waited_) {
  o.fd_ = -1;
}

FileLock& FileLock::operator=(FileLock&& o) noexcept {
  if (this != &o) {
    Release();
    final_path_ = std::move(o.final_path_);
    lock_path_ = std::move(o.lock_path_);
    fd_ = o.fd_;
    waited_ = o.waited_;
    o.fd_ = -1;
  }
  return *this;
}

FileLock::~FileLock() { Release(); }

void FileLock::Release() {
  if (fd_ < 0) return;
  ::unlink(lock_path_.c_str());  // while held: a waiter re-checks the name and opens a fresh one
  ::close(fd_);
  fd_ = -1;
}

// ---- PartialFile ----

struct PartialFile::Impl {
  FileLock lock;
  Names names;
  std::string final_path, partial_path, resume_path;
  std::uint64_t size = 0;
  std::string identity;
  PartialFileOptions options;
  int fd = -1;
  int record_fd = -1;                // appends; -1 when not resumable
  std::vector<FileRange> kept;       // immutable after Open
  std::uint64_t kept_bytes = 0;
  std::mutex mu;
  std::vector<FileRange> done;       // GUARDED_BY(mu): ranges finished in this run
  bool closed = false;               // committed or abandoned

  void RemoveFiles() {
    if (!partial_path.empty()) ::unlink(partial_path.c_str());
    ::unlink(resume_path.c_str());
  }
  void CloseFds() {
    if (fd >= 0) ::close(fd);
    if (record_fd >= 0) ::close(record_fd);
    fd = record_fd = -1;
  }
};

PartialFile::PartialFile() = default;
PartialFile::PartialFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PartialFile::PartialFile(PartialFile&&) noexcept = default;
PartialFile& PartialFile::operator=(PartialFile&& o) noexcept {
  if (this != &o) {
    if (impl_) Abandon(true);
    impl_ = std::move(o.impl_);
  }
  return *this;
}
PartialFile::~PartialFile() {
  if (impl_) Abandon(true);
}

Result<PartialFile> PartialFile::Open(FileLock lock, std::uint64_t size, std::string identity, PartialFileOptions options) {
  if (!lock.held()) return MakeError(Errc::kInvalidArgument, "PartialFile::Open needs a held FileLock");
  auto impl = std::make_unique<Impl>();
  Impl& s = *impl;
  s.final_path = lock.final_path();
  s.lock = std::move(lock);
  s.names = Split(s.final_path);
  s.resume_path = s.names.ResumePath();
  s.size = size;
  s.identity = std::move(identity);
  s.options = std::move(options);
  const std::string prefix = s.names.PartialPrefix();

  // An earlier run's bytes, when they belong to this very object.
  std::string kept_name;
  if (s.options.resume && !s.identity.empty()) {
    auto rec = ReadResumeRecord(s.resume_path);
    if (rec && rec->size == size && rec->identity == s.identity && StartsWith(rec->partial_name, prefix) &&
        rec->partial_name.find('/') == std::string::npos) {
      const std::string path = s.names.Path(rec->partial_name);
      int fd = ::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
      struct stat st {};
      if (fd >= 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) == size) {
        // Trust a range only once its bytes on disk give its CRC again (a power loss may have
        // kept the record and lost the data).
        std::sort(rec->ranges.begin(), rec->ranges.end(), [](auto& a, auto& b) { return a.offset < b.offset; });
        std::uint64_t end = 0;
        for (const auto& r : rec->ranges) {
          if (r.length == 0 || r.offset < end || r.offset > size || r.length > size - r.offset) continue;
          auto sums = ReadBack(fd, r.offset, r.length, false, path);
          if (!sums.ok() || sums->crc != r.crc32c) continue;
          s.kept.push_back(r);
          s.kept_bytes += r.length;
          end = r.offset + r.length;
        }
        s.fd = fd;
        s.partial_path = path;
        kept_name = rec->partial_name;
      } else if (fd >= 0) {
        ::close(fd);
      }
    }
  }
  // Under the lock nobody else works on NAME: any other partial or record of it is garbage.
  for (const auto& e : ListFolder(s.names.dir)) {
    if ((StartsWith(e, prefix) && e != kept_name) || StartsWith(e, s.names.ResumeTempPrefix()))
      ::unlink(s.names.Path(e).c_str());
  }
  if (s.fd < 0) {
    ::unlink(s.resume_path.c_str());
    CS_ASSIGN_OR_RETURN(auto created, CreateUnique(s.names, prefix, O_RDWR, s.options.random));
    s.fd = created.first;
    s.partial_path = s.names.Path(created.second);
    kept_name = created.second;
    int rc = s.options.preallocate && size > 0 ? ::posix_fallocate(s.fd, 0, static_cast<off_t>(size)) : EOPNOTSUPP;
    if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL) {
      s.CloseFds();
      s.RemoveFiles();
      return MakeSysError(rc == ENOSPC || rc == EDQUOT ? Errc::kResourceExhausted : Errc::kIo,
                          s.final_path + ": cannot reserve " + FormatBytes(static_cast<double>(size)), rc);
    }
    if (rc != 0 && ::ftruncate(s.fd, static_cast<off_t>(size)) != 0) {
      int err = errno;
      s.CloseFds();
      s.RemoveFiles();
      return MakeSysError(ErrcForOpen(err), s.partial_path + ": cannot set its size", err);
    }
  }
  if (!s.identity.empty()) {
    // A fresh record holding only the ranges just re-verified, swapped in atomically; then
    // appended to as ranges finish.
    std::string bytes = EncodeHeader(size, s.identity, kept_name);
    for (const auto& r : s.kept) {
      unsigned char rec[kRecordBytes];
      EncodeRecord(rec, r);
      bytes.append(reinterpret_cast<char*>(rec), kRecordBytes);
    }
    auto created = CreateUnique(s.names, s.names.ResumeTempPrefix(), O_WRONLY | O_APPEND, s.options.random);
    Status st = OkStatus();
    if (!created.ok()) {
      st = std::move(created).error();
    } else {
      s.record_fd = created->first;
      const std::string tmp = s.names.Path(created->second);
      if (::write(s.record_fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))
        st = MakeSysError(Errc::kIo, tmp + ": write failed", errno);
      else if (::rename(tmp.c_str(), s.resume_path.c_str()) != 0)
        st = MakeSysError(Errc::kIo, s.resume_path + ": rename failed", errno);
      if (!st.ok()) ::unlink(tmp.c_str());
    }
    if (!st.ok()) {
      s.CloseFds();
      s.RemoveFiles();
      return std::move(st).error();
    }
  }
  return PartialFile(std::move(impl));
}

const std::vector<FileRange>& PartialFile::kept_ranges() const { return impl_->kept; }
std::uint64_t PartialFile::kept_bytes() const { return impl_->kept_bytes; }
const std::string& PartialFile::final_path() const { return impl_->final_path; }
const std::string& PartialFile::partial_path() const { return impl_->partial_path; }
std::uint64_t PartialFile::size() const { return impl_->size; }
int PartialFile::fd() const { return impl_->fd; }

std::vector<std::pair<std::uint64_t, std::uint64_t>> PartialFile::missing_ranges() const {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  std::uint64_t pos = 0;
  for (const auto& r : impl_->kept) {
    if (r.offset > pos) out.emplace_back(pos, r.offset - pos);
    pos = r.offset + r.length;
  }
  if (pos < impl_->size) out.emplace_back(pos, impl_->size - pos);
  return out;
}

Status PartialFile::Write(std::uint64_t offset, const std::byte* data, std::size_t len) {
  return WriteAt(impl_->fd, data, len, offset, impl_->partial_path);
}

Status PartialFile::RangeDone(std::uint64_t offset, std::uint64_t len, std::uint32_t crc32c) {
  Impl& s = *impl_;
  // Start writeback of this range now, so the final fdatasync has little left to do.
  if (s.options.fsync && len > 0)
    ::sync_file_range(s.fd, static_cast<off_t>(offset), static_cast<off_t>(len), SYNC_FILE_RANGE_WRITE);
  FileRange r{offset, len, crc32c};
  std::lock_guard lk(s.mu);
  s.done.push_back(r);
  if (s.record_fd >= 0 && len > 0) {
    unsigned char rec[kRecordBytes];
    EncodeRecord(rec, r);
    if (::write(s.record_fd, rec, kRecordBytes) != static_cast<ssize_t>(kRecordBytes))
      return MakeSysError(Errc::kIo, s.resume_path + ": write failed", errno);
  }
  return OkStatus();
}

bool PartialFile::resumable() const {
  if (!impl_ || impl_->closed || impl_->record_fd < 0) return false;
  std::lock_guard lk(impl_->mu);
  return !impl_->kept.empty() || !impl_->done.empty();
}

void PartialFile::Abandon(bool keep_for_resume) {
  if (!impl_ || impl_->closed) return;
  const bool keep = keep_for_resume && resumable();
  impl_->CloseFds();
  if (!keep) impl_->RemoveFiles();
  impl_->lock.Release();
  impl_->closed = true;
}

Result<Verified> PartialFile::Commit(const ExpectedChecksums& expected,
                                     const std::function<Status(int fd, std::uint64_t size)>& validate) {
  Impl& s = *impl_;
  if (s.closed) return MakeError(Errc::kInternal, s.final_path + ": committed or abandoned already");
  auto fail = [&](Error e) -> Error {
    s.CloseFds();
    s.RemoveFiles();
    s.lock.Release();
    s.closed = true;
    return e;
  };
  const std::string nothing = "; nothing was written under " + s.final_path;
  std::vector<FileRange> all;
  {
    std::lock_guard lk(s.mu);
    all = s.kept;
    all.insert(all.end(), s.done.begin(), s.done.end());
  }
  std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.offset < b.offset; });
  std::uint32_t received = 0;
  std::uint64_t pos = 0;
  for (const auto& r : all) {
    if (r.length == 0) continue;
    if (r.offset != pos)
      return fail(MakeError(Errc::kInternal, s.partial_path + ": bytes " + std::to_string(pos) + ".." +
                                                 std::to_string(r.offset) + " were never written" + nothing));
    received = Crc32cCombine(received, r.crc32c, r.length);
    pos += r.length;
  }
  if (pos != s.size)
    return fail(MakeError(Errc::kInternal, s.partial_path + ": " + std::to_string(pos) + " of " +
                                               std::to_string(s.size) + " bytes were written" + nothing));
  if (expected.crc32c && *expected.crc32c != received)
    return fail(MakeError(Errc::kIntegrity, "CRC32C mismatch (server says " + Crc32cToBase64(*expected.crc32c) +
                                                ", downloaded bytes give " + Crc32cToBase64(received) + ")" + nothing));
  const bool md5 = !expected.crc32c && !expected.md5_base64.empty();
  auto disk = ReadBack(s.fd, 0, s.size, md5, s.partial_path);
  if (!disk.ok()) return fail(std::move(disk).error());
  if (disk->crc != received)
    return fail(MakeError(Errc::kIntegrity, s.partial_path + ": the bytes on disk differ from the bytes received (CRC32C " +
                                                Crc32cToBase64(disk->crc) + " on disk, " + Crc32cToBase64(received) +
                                                " received): something else wrote to it" + nothing));
  if (md5 && disk->md5 != expected.md5_base64)
    return fail(MakeError(Errc::kIntegrity, "MD5 mismatch (server says " + expected.md5_base64 + ", the file gives " +
                                                disk->md5 + ")" + nothing));
  if (validate) {
    Status st = validate(s.fd, s.size);
    if (!st.ok()) return fail(std::move(st).error());
  }
  if (s.options.fsync && ::fdatasync(s.fd) != 0) return fail(MakeSysError(Errc::kIo, s.partial_path + ": fdatasync", errno));
  int fd = s.fd;
  s.fd = -1;
  if (::close(fd) != 0) return fail(MakeSysError(Errc::kIo, s.partial_path + ": close", errno));
  if (::rename(s.partial_path.c_str(), s.final_path.c_str()) != 0)
    return fail(MakeSysError(ErrcForOpen(errno), s.final_path + ": rename", errno));
  if (s.options.fsync) SyncFolder(s.names.dir);
  s.partial_path.clear();  // renamed: RemoveFiles must not touch the final name's old path
  s.CloseFds();
  ::unlink(s.resume_path.c_str());
  s.lock.Release();
  s.closed = true;
  return expected.crc32c ? Verified::kCrc32c : md5 ? Verified::kMd5 : Verified::kReceivedBytes;
}

Result<unsigned> PartialFile::RemoveStale(const std::string& folder, const std::function<bool(const std::string&)>& wanted) {
  // NAME -> its leftovers in this folder.
  std::map<std::string, std::vector<std::string>> stale;
  for (const auto& e : ListFolder(folder)) {
    std::string name;
    if (e.size() > 1 && e[0] == '.') {
      auto p = e.find(kPartialInfix);
      if (p != std::string::npos && p > 1) {
        name = e.substr(1, p - 1);
      } else if (p = e.find(kResumeSuffix); p != std::string::npos && p > 1 &&
                                             (p + kResumeSuffix.size() == e.size() || e[p + kResumeSuffix.size()] == '.')) {
        name = e.substr(1, p - 1);
      }
    }
    if (name.empty() && EndsWith(e, kOldSuffix) && e.size() > kOldSuffix.size()) {
      // The old fixed-name scheme (NAME.coldstart-partial): never resumable, always garbage.
      stale[e.substr(0, e.size() - kOldSuffix.size())].push_back(e);
      continue;
    }
    if (name.empty() || wanted(name)) continue;
    stale[name].push_back(e);
  }
  unsigned removed = 0;
  for (const auto& [name, entries] : stale) {
    CS_ASSIGN_OR_RETURN(auto lock, FileLock::TryAcquire(folder + "/" + name));
    if (!lock) continue;  // a running process owns it
    for (const auto& e : entries)
      if (::unlink((folder + "/" + e).c_str()) == 0) ++removed;
  }
  return removed;
}

}  // namespace coldstart::cache
