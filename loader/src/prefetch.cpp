#include "coldstart/loader/prefetch.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "coldstart/core/crc32c.h"
#include "coldstart/core/hash.h"

namespace coldstart::loader {
void LinkEnvLoader();  // loader_env.cpp
}  // namespace coldstart::loader


namespace coldstart::loader {
namespace {

namespace fs = std::filesystem;
constexpr std::string_view kTempSuffix = ".coldstart-partial";

bool Matches(const std::vector<std::string>& globs, const std::string& name) {
  for (const auto& g : globs)
    if (::fnmatch(g.c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

Status PwriteAll(int fd, const std::byte* p, std::uint64_t len, std::uint64_t off, const std::string& path) {
  while (len > 0) {
    ssize_t n = ::pwrite(fd, p, len, static_cast<off_t>(off));
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeSysError(errno == ENOSPC || errno == EDQUOT ? Errc::kResourceExhausted : Errc::kIo,
                          path + ": write failed", errno);
    }
    p += n;
    off += static_cast<std::uint64_t>(n);
    len -= static_cast<std::uint64_t>(n);
  }
  return OkStatus();
}

Result<std::string> FileMd5Base64(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return MakeSysError(Errc::kIo, path + ": cannot open", errno);
  Md5 md5;
  std::vector<char> buf(4u << 20);
  ssize_t n;
  while ((n = ::read(fd, buf.data(), buf.size())) > 0) md5.Update(buf.data(), static_cast<std::size_t>(n));
  int err = errno;
  ::close(fd);
  if (n < 0) return MakeSysError(Errc::kIo, path + ": read failed", err);
  return md5.Base64Digest();
}

// One file being downloaded.
struct Target {
  const fetch::RemoteFile* remote = nullptr;
  std::string final_path, temp_path;
  int fd = -1;
  std::uint64_t remaining = 0;
  std::vector<std::pair<std::uint64_t, std::uint32_t>> crcs;  // (offset, crc) per range
  bool finished = false;
};

}  // namespace

Status PrefetchOptions::ApplyEnv(const Env& env) {
  LinkEnvLoader();
  CS_ASSIGN_OR_RETURN(auto f, env.GetBool("COLDSTART_PREFETCH_FSYNC"));
  if (f) fsync = *f;
  return OkStatus();
}

Result<std::uint32_t> FileCrc32c(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return MakeSysError(Errc::kIo, path + ": cannot open", errno);
  std::vector<char> buf(4u << 20);
  std::uint32_t crc = 0;
  ssize_t n;
  while ((n = ::read(fd, buf.data(), buf.size())) > 0) crc = Crc32cExtend(crc, buf.data(), static_cast<std::size_t>(n));
  int err = errno;
  ::close(fd);
  if (n < 0) return MakeSysError(Errc::kIo, path + ": read failed", err);
  return crc;
}

Result<PrefetchReport> Prefetch(fetch::RemoteSession& session, const std::string& dest, const PrefetchOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  PrefetchReport report;
  CS_ASSIGN_OR_RETURN(auto listing, session.List());
  std::vector<fetch::RemoteFile> files;
  for (auto& f : listing) {
    CS_RETURN_IF_ERROR(fetch::CheckDestinationName(f.name));
    if (!options.include.empty() && !Matches(options.include, f.name)) continue;
    if (Matches(options.exclude, f.name)) continue;
    files.push_back(std::move(f));
  }
  if (files.empty()) return MakeError(Errc::kNotFound, session.source().original + ": no files match the filters");

  std::error_code ec;
  fs::create_directories(dest, ec);
  if (ec) return MakeError(Errc::kIo, dest + ": cannot create folder: " + ec.message());

  // Decide what to download; skip files already present and verified.
  std::vector<Target> targets;
  for (const auto& f : files) {
    Target t;
    t.remote = &f;
    t.final_path = (fs::path(dest) / f.name).string();
    t.temp_path = t.final_path + std::string(kTempSuffix);
    struct stat st {};
    if (::stat(t.final_path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        static_cast<std::uint64_t>(st.st_size) == f.object.size) {
      bool same = false;
      if (f.crc32c) {
        auto crc = FileCrc32c(t.final_path);
        same = crc.ok() && *crc == *f.crc32c;
      } else if (!f.md5_base64.empty()) {
        auto md5 = FileMd5Base64(t.final_path);
        same = md5.ok() && *md5 == f.md5_base64;
      }
      if (same) {
        ++report.skipped;
        report.skipped_bytes += f.object.size;
        continue;
      }
    }
    targets.push_back(std::move(t));
  }
  auto cleanup = [&] {
    for (auto& t : targets) {
      if (t.fd >= 0) ::close(t.fd);
      t.fd = -1;
      if (!t.finished) ::unlink(t.temp_path.c_str());
    }
  };
  std::uint64_t total = 0;
  for (auto& t : targets) {
    fs::create_directories(fs::path(t.final_path).parent_path(), ec);
    t.fd = ::open(t.temp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (t.fd < 0) {
      Error e = MakeSysError(Errc::kIo, t.temp_path + ": cannot create", errno);
      cleanup();
      return e;
    }
    // Reserve the space now: a full disk fails here, not 40 GB into the download.
    if (t.remote->object.size > 0) {
      int rc = ::posix_fallocate(t.fd, 0, static_cast<off_t>(t.remote->object.size));
      if (rc != 0 && rc != EOPNOTSUPP && rc != EINVAL) {
        Error e = MakeSysError(rc == ENOSPC ? Errc::kResourceExhausted : Errc::kIo,
                               t.final_path + ": cannot reserve " + FormatBytes(static_cast<double>(t.remote->object.size)),
                               rc);
        cleanup();
        return e;
      }
    }
    t.remaining = t.remote->object.size;
    total += t.remote->object.size;
  }

  std::mutex mu;
  std::optional<Error> finish_error;
  auto finalize = [&](Target& t) -> Status {
    // On the finisher thread (the only writer of the report's counters until the fetch is
    // over), without mu, once all bytes of t are written.
    std::sort(t.crcs.begin(), t.crcs.end());
    std::uint32_t crc = 0;
    std::uint64_t pos = 0;
    for (std::size_t k = 0; k < t.crcs.size(); ++k) {
      std::uint64_t next = k + 1 < t.crcs.size() ? t.crcs[k + 1].first : t.remote->object.size;
      crc = Crc32cCombine(crc, t.crcs[k].second, next - t.crcs[k].first);
      pos = next;
    }
    (void)pos;
    if (t.remote->crc32c) {
      if (*t.remote->crc32c != crc)
        return MakeError(Errc::kIntegrity, t.remote->object.display + ": CRC32C mismatch (server says " +
                                               Crc32cToBase64(*t.remote->crc32c) + ", downloaded bytes give " +
                                               Crc32cToBase64(crc) + "); nothing was written under " + t.final_path);
      ++report.verified_crc32c;
    } else if (!t.remote->md5_base64.empty()) {
      auto md5 = FileMd5Base64(t.temp_path);  // MD5 cannot be combined: a second pass
      if (!md5.ok()) return std::move(md5).error();
      if (*md5 != t.remote->md5_base64)
        return MakeError(Errc::kIntegrity, t.remote->object.display + ": MD5 mismatch; nothing was written under " + t.final_path);
      ++report.verified_md5;
    } else {
      ++report.unverified;
    }
    if (options.fsync && ::fdatasync(t.fd) != 0) return MakeSysError(Errc::kIo, t.temp_path + ": fdatasync", errno);
    if (::close(t.fd) != 0) {
      t.fd = -1;
      return MakeSysError(Errc::kIo, t.temp_path + ": close", errno);
    }
    t.fd = -1;
    if (::rename(t.temp_path.c_str(), t.final_path.c_str()) != 0)
      return MakeSysError(Errc::kIo, t.final_path + ": rename", errno);
    t.finished = true;
    ++report.files;
    return OkStatus();
  };

  fetch::FetchOptions fo = session.options().fetch;
  std::vector<fetch::RemoteObject> objs;
  for (const auto& t : targets) objs.push_back(t.remote->object);
  auto ranges = fetch::ChunkObjects(objs, fo.chunk_bytes);

  // Files are flushed and renamed on their own thread, so a slow fdatasync never stalls the
  // fetch threads (it cost 35% of the wall time of a 256 MiB copy when done inline).
  std::deque<Target*> to_finish;
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

  fetch::RangeFetcher fetcher(fo);
  fetch::FetchCallbacks cb;
  // curl's receive buffer goes straight into the page cache of the temporary file.
  cb.sink = [&](std::size_t i, std::uint64_t off, const std::byte* data, std::size_t len) -> Status {
    const auto& r = ranges[i];
    Target& t = targets[r.object];
    return PwriteAll(t.fd, data, len, r.offset + off, t.temp_path);
  };
  cb.done = [&](std::size_t i, std::byte*, std::uint32_t crc) -> Status {
    const auto& r = ranges[i];
    Target& t = targets[r.object];
    // Start writeback of this range now, so the final fdatasync has little left to do.
    if (options.fsync && r.length > 0)
      ::sync_file_range(t.fd, static_cast<off_t>(r.offset), static_cast<off_t>(r.length), SYNC_FILE_RANGE_WRITE);
    std::lock_guard lk(mu);
    if (finish_error) return *finish_error;
    t.crcs.emplace_back(r.offset, crc);
    t.remaining -= r.length;
    if (t.remaining == 0) {
      to_finish.push_back(&t);
      finish_cv.notify_one();
    }
    return OkStatus();
  };
  cb.auth_header = [&session] { return session.AuthHeader(); };
  if (options.progress) cb.progress = [&](std::uint64_t done) { return options.progress(done, total); };
  auto st = fetcher.Fetch(objs, ranges, cb, &report.fetch);
  {
    std::lock_guard lk(mu);
    fetch_over = true;
    finish_cv.notify_one();
  }
  finisher.join();
  if (st.ok() && finish_error) st = std::move(*finish_error);
  if (!st.ok()) {
    cleanup();
    return session.Annotate(std::move(st).error());
  }
  cleanup();  // closes nothing on success; all finished
  report.bytes = report.fetch.bytes;
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return report;
}

}  // namespace coldstart::loader
