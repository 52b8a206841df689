#include "coldstart/loader/prefetch.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <set>
#include <span>
#include <thread>

#include "coldstart/cache/partial_file.h"
#include "coldstart/core/crc32c.h"
#include "coldstart/core/file_io.h"
#include "coldstart/core/hash.h"
#include "coldstart/core/log.h"
#include "coldstart/loader/mount_source.h"
#include "coldstart/loader/safetensors.h"

namespace coldstart::loader {
void LinkEnvLoader();  // loader_env.cpp
}  // namespace coldstart::loader


namespace coldstart::loader {
namespace {

namespace fs = std::filesystem;

bool Matches(const std::vector<std::string>& globs, const std::string& name) {
  for (const auto& g : globs)
    if (::fnmatch(g.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

// A 4 MiB read loop over a local file; `cancelled` is polled between reads.
Status ReadFileLoop(const std::string& path, const std::function<bool()>& cancelled,
                    const std::function<void(const char*, std::size_t)>& feed) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return MakeSysError(Errc::kIo, path + ": cannot open", errno);
  std::vector<char> buf(4u << 20);
  ssize_t n;
  while ((n = ::read(fd, buf.data(), buf.size())) > 0) {
    feed(buf.data(), static_cast<std::size_t>(n));
    if (cancelled && cancelled()) {
      ::close(fd);
      return MakeError(Errc::kCancelled, path + ": cancelled");
    }
  }
  int err = errno;
  ::close(fd);
  if (n < 0) return MakeSysError(Errc::kIo, path + ": read failed", err);
  return OkStatus();
}

// Whether the file under the final name is already this object (then it is skipped).
Result<bool> AlreadyPresent(const std::string& path, const fetch::RemoteFile& f, const std::function<bool()>& cancelled) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || static_cast<std::uint64_t>(st.st_size) != f.object.size)
    return false;
  if (f.crc32c) {
    std::uint32_t crc = 0;
    Status s = ReadFileLoop(path, cancelled, [&](const char* p, std::size_t n) { crc = Crc32cExtend(crc, p, n); });
    if (!s.ok()) return s.error().code == Errc::kCancelled ? Result<bool>(std::move(s).error()) : Result<bool>(false);
    return crc == *f.crc32c;
  }
  if (!f.md5_base64.empty()) {
    Md5 md5;
    Status s = ReadFileLoop(path, cancelled, [&](const char* p, std::size_t n) { md5.Update(p, n); });
    if (!s.ok()) return s.error().code == Errc::kCancelled ? Result<bool>(std::move(s).error()) : Result<bool>(false);
    return md5.Base64Digest() == f.md5_base64;
  }
  return false;  // nothing to compare with: fetched again
}

// What the bytes of a partial file belong to: a changed object must never resume from them.
// Empty (never resumed) when the server gives neither a generation nor a checksum.
std::string Identity(const fetch::RemoteFile& f) {
  if (f.object.generation == 0 && !f.crc32c && f.md5_base64.empty()) return "";
  return "url=" + f.object.url + ";generation=" + std::to_string(f.object.generation) +
         ";size=" + std::to_string(f.object.size) +
         ";crc32c=" + (f.crc32c ? Crc32cToBase64(*f.crc32c) : "") + ";md5=" + f.md5_base64;
}

// A folder we may not create is the README's exit 7, not a generic I/O error.
Errc FolderErrc(const std::error_code& ec) {
  return ec.value() == EACCES || ec.value() == EPERM || ec.value() == EROFS ? Errc::kPermissionDenied : Errc::kIo;
}

bool IsSafetensorsName(const std::string& name) {
  constexpr std::string_view kExt = ".safetensors";
  return name.size() >= kExt.size() && name.compare(name.size() - kExt.size(), kExt.size(), kExt) == 0;
}

// The header of a downloaded `.safetensors` file, read from the temporary file before the rename:
// an HTML error page or any other body is never saved as a model.
Status CheckSafetensorsHeader(int fd, std::uint64_t size) {
  auto read_at = [fd](void* dst, std::size_t len, std::uint64_t off) -> Status {
    CS_ASSIGN_OR_RETURN(std::size_t got, ReadAt(fd, dst, len, off, "header"));
    if (got != len) return MakeError(Errc::kIo, "unexpected end of file");
    return OkStatus();
  };
  std::array<std::byte, 8> prefix{};
  if (size >= 8) CS_RETURN_IF_ERROR(read_at(prefix.data(), 8, 0));
  CS_ASSIGN_OR_RETURN(std::uint64_t n, ParseHeaderLength(std::span<const std::byte>(prefix.data(), size >= 8 ? 8 : 0), size));
  std::string json(n, '\0');
  CS_RETURN_IF_ERROR(read_at(json.data(), json.size(), 8));
  CS_ASSIGN_OR_RETURN(auto header, ParseHeader(json, size));
  (void)header;
  return OkStatus();
}

// One file being downloaded.
struct Target {
  const fetch::RemoteFile* remote = nullptr;
  cache::PartialFile file;
  std::uint64_t remaining = 0;  // bytes still to fetch; GUARDED_BY(mu) in Prefetch
  bool finished = false;        // committed (finisher thread)
  std::shared_ptr<cache::CacheEntry> entry;  // with a disk cache
  // With a cache entry: what is left to fetch (whole cache chunks), the rest was copied.
  std::optional<std::vector<std::pair<std::uint64_t, std::uint64_t>>> fetch_ranges;
};

// Copies the chunks the cache holds (checked) into t's partial file; the others are left for
// the fetch. Returns the bytes copied.
Result<std::uint64_t> CopyFromCache(Target& t, const std::function<bool()>& cancelled) {
  cache::CacheEntry& e = *t.entry;
  std::vector<std::byte> buf(e.chunk_bytes());
  std::uint64_t copied = 0;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> rest;
  for (std::size_t k = 0; k < e.chunk_count(); ++k) {
    if (cancelled && cancelled()) return MakeError(Errc::kCancelled, "prefetch cancelled");
    const std::uint64_t off = e.ChunkOffset(k), len = e.ChunkLength(k);
    auto crc = e.SlotCrc(k);
    if (crc && e.ReadChunk(k, buf.data()).ok()) {
      CS_RETURN_IF_ERROR(t.file.Write(off, buf.data(), len));
      CS_RETURN_IF_ERROR(t.file.RangeDone(off, len, *crc));
      copied += len;
    } else if (!rest.empty() && rest.back().first + rest.back().second == off) {
      rest.back().second += len;
    } else {
      rest.push_back({off, len});
    }
  }
  t.fetch_ranges = std::move(rest);
  return copied;
}

// After t's file was verified and renamed: its chunks the cache lacks, read back from the file.
std::uint64_t FillCacheFromFile(cache::CacheEntry& e, const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  std::vector<std::byte> buf(e.chunk_bytes());
  std::uint64_t filled = 0;
  for (std::size_t k = 0; k < e.chunk_count(); ++k) {
    cache::ChunkClaim claim;
    auto st = e.Claim(k, &claim);
    if (!st.ok() || *st != cache::ClaimState::kClaimed) continue;
    const std::uint64_t len = e.ChunkLength(k);
    auto got = ReadAt(fd, buf.data(), len, e.ChunkOffset(k), path);
    if (!got.ok() || *got != len) break;
    if (auto f = e.Fill(std::move(claim), buf.data(), Crc32c(buf.data(), len), true); !f.ok()) {
      LogWarning("disk cache: " + f.error().ToString() + "; " + path + " is not cached");
      break;
    }
    filled += len;
  }
  ::close(fd);
  return filled;
}

}  // namespace

Status PrefetchOptions::ApplyEnv(const Env& env) {
  LinkEnvLoader();
  CS_ASSIGN_OR_RETURN(auto f, env.GetBool("COLDSTART_PREFETCH_FSYNC"));
  if (f) fsync = *f;
  return OkStatus();
}

Result<std::uint32_t> FileCrc32c(const std::string& path) {
  std::uint32_t crc = 0;
  CS_RETURN_IF_ERROR(ReadFileLoop(path, {}, [&](const char* p, std::size_t n) { crc = Crc32cExtend(crc, p, n); }));
  return crc;
}

Result<PrefetchReport> Prefetch(fetch::RemoteSession& session, const std::string& dest, const PrefetchOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  PrefetchReport report;
  auto cancelled = [&options] { return options.cancelled && options.cancelled(); };
  CS_ASSIGN_OR_RETURN(auto listing, session.List());
  std::set<std::string> listed;
  std::vector<fetch::RemoteFile> files;
  for (auto& f : listing) {
    CS_RETURN_IF_ERROR(fetch::CheckDestinationName(f.name));
    listed.insert(f.name);
    if (!options.include.empty() && !Matches(options.include, f.name)) continue;
    if (Matches(options.exclude, f.name)) continue;
    files.push_back(std::move(f));
  }
  if (files.empty()) return MakeError(Errc::kNotFound, session.source().original + ": no files match the filters");
  // One order for every process: locks are taken in it, so two prefetches never deadlock.
  std::sort(files.begin(), files.end(), [](const auto& a, const auto& b) { return a.name < b.name; });

  std::error_code ec;
  fs::create_directories(dest, ec);
  if (ec) return MakeError(FolderErrc(ec), dest + ": cannot create folder: " + ec.message());

  // Leftovers of objects no longer in the source (in the folders this listing writes to).
  std::set<std::string> folders{""};
  for (const auto& f : files) {
    auto slash = f.name.rfind('/');
    folders.insert(slash == std::string::npos ? "" : f.name.substr(0, slash));
  }
  for (const auto& sub : folders) {
    const std::string dir = sub.empty() ? dest : (fs::path(dest) / sub).string();
    const std::string prefix = sub.empty() ? "" : sub + "/";
    auto n = cache::PartialFile::RemoveStale(dir, [&](const std::string& name) { return listed.count(prefix + name) > 0; });
    if (n.ok()) report.stale_removed += *n;
  }

  cache::PartialFileOptions popts;
  popts.fsync = options.fsync;
  cache::LockOptions lopts;
  lopts.cancelled = cancelled;

  // Decide what to download: under each file's lock, skip files already present and verified,
  // and resume the others from what an earlier run verified.
  std::deque<Target> targets;  // stable addresses
  std::uint64_t total = 0;
  auto give_up = [&](Error e) -> Error {
    for (auto& t : targets) t.file.Abandon(true);
    return e;
  };
  for (const auto& f : files) {
    const std::string final_path = (fs::path(dest) / f.name).string();
    if (cancelled()) return give_up(MakeError(Errc::kCancelled, "prefetch cancelled"));
    fs::create_directories(fs::path(final_path).parent_path(), ec);
    if (ec) return give_up(MakeError(FolderErrc(ec), fs::path(final_path).parent_path().string() + ": cannot create folder: " + ec.message()));
    lopts.on_wait = [&] {
      if (options.on_lock_wait) options.on_lock_wait(final_path);
    };
    auto lock = cache::FileLock::Acquire(final_path, lopts);
    if (!lock.ok()) return give_up(std::move(lock).error());
    if (lock->waited()) ++report.lock_waits;
    auto present = AlreadyPresent(final_path, f, cancelled);
    if (!present.ok()) return give_up(std::move(present).error());
    if (*present) {
      ++report.skipped;
      report.skipped_bytes += f.object.size;
      continue;  // the lock is released here
    }
    auto pf = cache::PartialFile::Open(std::move(lock).value(), f.object.size, Identity(f), popts);
    if (!pf.ok()) return give_up(std::move(pf).error());
    Target& t = targets.emplace_back();
    t.remote = &f;
    t.file = std::move(pf).value();
    if (t.file.kept_bytes() > 0) {
      report.resumed_bytes += t.file.kept_bytes();
      ++report.resumed_files;
    }
    t.remaining = f.object.size - t.file.kept_bytes();
    const auto key = options.cache ? CacheKeyFor(session, f) : cache::ObjectKey{};
    if (options.cache && !Cacheable(key)) {
      LogWarning(f.object.display + " has no version (generation, ETag or Last-Modified); it is not cached");
    } else if (options.cache && t.file.kept_bytes() == 0) {
      auto e = options.cache->OpenEntry(key);
      if (!e.ok()) {
        LogWarning("disk cache " + options.cache->dir() + ": " + e.error().ToString() + "; " + f.name + " is not cached");
      } else {
        t.entry = *e;
        auto copied = CopyFromCache(t, cancelled);
        if (!copied.ok()) return give_up(std::move(copied).error());
        t.remaining -= *copied;
        report.cache_hit_bytes += *copied;
      }
    }
    total += t.remaining;
  }

  std::mutex mu;
  std::optional<Error> finish_error;
  auto finalize = [&](Target& t) -> Status {
    // On the finisher thread (the only writer of the report's counters until the fetch is
    // over), without mu, once all bytes of t are written.
    cache::ExpectedChecksums want;
    want.crc32c = t.remote->crc32c;
    want.md5_base64 = t.remote->md5_base64;
    std::function<Status(int, std::uint64_t)> validate;
    if (IsSafetensorsName(t.remote->name)) {
      validate = [&t](int fd, std::uint64_t size) -> Status {
        Status st = CheckSafetensorsHeader(fd, size);
        if (st.ok()) return st;
        Error e = std::move(st).error();
        return MakeError(Errc::kFormat, "not a safetensors file (" + e.message + "); nothing was written under " +
                                            t.file.final_path());
      };
    }
    auto v = t.file.Commit(want, validate);
    if (!v.ok()) return std::move(v).error().WithContext(t.remote->object.display);
    switch (*v) {
      case cache::Verified::kCrc32c: ++report.verified_crc32c; break;
      case cache::Verified::kMd5: ++report.verified_md5; break;
      case cache::Verified::kReceivedBytes: ++report.unverified; break;
    }
    t.finished = true;
    ++report.files;
    if (t.entry) report.cache_filled_bytes += FillCacheFromFile(*t.entry, t.file.final_path());
    return OkStatus();
  };

  // Only the missing ranges, cut into chunks, largest objects first (as ChunkObjects orders).
  fetch::FetchOptions fo = session.options().fetch;
  const std::uint64_t chunk = std::max<std::uint64_t>(1, fo.chunk_bytes);
  std::vector<fetch::RemoteObject> objs;
  std::vector<Target*> by_object;
  for (auto& t : targets) {
    objs.push_back(t.remote->object);
    by_object.push_back(&t);
  }
  std::vector<std::uint32_t> order(objs.size());
  for (std::uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return objs[a].size > objs[b].size; });
  std::vector<fetch::FetchRange> ranges;
  std::deque<Target*> to_finish;
  for (auto i : order) {
    Target& t = *by_object[i];
    if (t.remaining == 0) to_finish.push_back(&t);  // empty, or every byte kept from an earlier run (or the cache)
    for (auto [off, len] : t.fetch_ranges ? *t.fetch_ranges : t.file.missing_ranges())
      for (std::uint64_t p = off; p < off + len; p += chunk) ranges.push_back({i, p, std::min(chunk, off + len - p)});
  }

  // Files are flushed and renamed on their own thread, so a slow fdatasync never stalls the
  // fetch threads (it cost 35% of the wall time of a 256 MiB copy when done inline).
  std::condition_variable finish_cv;
  bool fetch_over = false;
  std::thread finisher([&] {
    pthread_setname_np(pthread_self(), "cs-finish");
    std::unique_lock lk(mu);
    for (;;) {
      finish_cv.wait(lk, [&] { return !to_finish.empty() || fetch_over; });
      if (to_finish.empty()) return;
      Target* t = to_finish.front();
      to_finish.pop_front();
      lk.unlock();  // fetch threads keep delivering while this file is flushed
      Status st = finalize(*t);
      lk.lock();
      if (!st.ok() && !finish_error) finish_error = std::move(st).error();
    }
  });

  Status st = OkStatus();
  if (!ranges.empty()) {
    fetch::RangeFetcher fetcher(fo);
    fetch::FetchCallbacks cb;
    // curl's receive buffer goes straight into the page cache of the temporary file.
    cb.sink = [&](std::size_t i, std::uint64_t off, const std::byte* data, std::size_t len) -> Status {
      const auto& r = ranges[i];
      return by_object[r.object]->file.Write(r.offset + off, data, len);
    };
    cb.done = [&](std::size_t i, std::byte*, std::uint32_t crc) -> Status {
      const auto& r = ranges[i];
      Target& t = *by_object[r.object];
      CS_RETURN_IF_ERROR(t.file.RangeDone(r.offset, r.length, crc));
      std::lock_guard lk(mu);
      if (finish_error) return *finish_error;
      t.remaining -= r.length;
      if (t.remaining == 0) {
        to_finish.push_back(&t);
        finish_cv.notify_one();
      }
      return OkStatus();
    };
    cb.auth_header = [&session] { return session.AuthHeader(); };
    cb.progress = [&](std::uint64_t done) {
      if (options.progress && !options.progress(done, total)) return false;
      return !cancelled();
    };
    st = fetcher.Fetch(objs, ranges, cb, &report.fetch);
  }
  {
    std::lock_guard lk(mu);
    fetch_over = true;
    finish_cv.notify_one();
  }
  finisher.join();
  if (st.ok() && finish_error) st = std::move(*finish_error);
  if (!st.ok()) {
    // Unfinished files keep their verified ranges for the next run when they can be resumed
    // (a file whose bytes proved wrong was removed by its Commit).
    unsigned kept = 0;
    std::uint64_t kept_bytes = 0;
    for (auto& t : targets) {
      if (t.finished) continue;
      if (t.file.resumable()) {
        ++kept;
        kept_bytes += t.file.size();
      }
      t.file.Abandon(true);
    }
    Error e = std::move(st).error();
    if (e.code == Errc::kCancelled) {
      e.message = "prefetch cancelled: " + std::to_string(report.files) + " file" + (report.files == 1 ? "" : "s") +
                  " completed; " +
                  (kept ? std::to_string(kept) + " partial file" + (kept == 1 ? "" : "s") + " kept in " + dest +
                              " for the next run to resume"
                        : std::string("no partial files kept"));
      (void)kept_bytes;
      return e;
    }
    return session.Annotate(std::move(e));
  }
  report.bytes = report.fetch.bytes;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace coldstart::loader
