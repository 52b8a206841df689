// The files and the Origin behind `coldstart mount` (see mount_source.h).
#include "coldstart/loader/mount_source.h"

#include "coldstart/core/file_io.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <list>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "coldstart/core/crc32c.h"
#include "coldstart/core/relative_path.h"
#include "coldstart/fetch/range_fetcher.h"

namespace coldstart::loader {
namespace {

// Reads through the process's transport: one job per Read, its one range landing straight in
// the caller's buffer. A job reports success through its done callback; a failure only through
// Wait(), so a reaper thread looks at unfinished jobs every few milliseconds and reports
// those that ended without done.
class RemoteOrigin final : public cache::Origin {
 public:
  RemoteOrigin(std::shared_ptr<fetch::RemoteSession> session, std::vector<fetch::RemoteObject> objects)
      : session_(std::move(session)), objects_(std::move(objects)), fetcher_(session_->options().fetch) {
    reaper_ = std::thread([this] { ReapLoop(); });
  }

  ~RemoteOrigin() override {
    CancelAll();
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    reaper_.join();
  }

  void Read(std::size_t file, std::uint64_t offset, std::uint64_t len, std::byte* dst, bool urgent,
            std::function<void(Status, std::uint32_t)> done) override {
    auto p = std::make_shared<Pending>();
    p->range = fetch::FetchRange{0, offset, len};
    p->done = std::move(done);
    if (file >= objects_.size()) {
      p->done(MakeError(Errc::kInternal, "origin read of a file index past the listing"), 0);
      return;
    }
    fetch::FetchCallbacks cb;
    cb.acquire = [dst](std::size_t) { return dst; };
    // `raw` lives until the reaper saw the job finish, after its last callback.
    Pending* raw = p.get();
    cb.done = [raw](std::size_t, std::byte*, std::uint32_t crc) -> Status {
      if (!raw->reported.exchange(true)) raw->done(OkStatus(), crc);
      return OkStatus();
    };
    cb.auth_header = [s = session_] { return s->AuthHeader(); };
    std::lock_guard lk(mu_);  // the reaper must not look at `p` before its job is set
    auto job = fetcher_.Start(std::span(&objects_[file], 1), std::span(&p->range, 1), std::move(cb),
                              urgent ? fetch::FetchPriority::kNow : fetch::FetchPriority::kBackground);
    if (!job.ok()) {
      p->reported = true;
      p->done(session_->Annotate(std::move(job).error()), 0);
      return;
    }
    p->job = std::move(job).value();
    if (cancelled_all_) p->job->Cancel();
    pending_.push_back(std::move(p));
    cv_.notify_all();
  }

  unsigned MaxInFlight() const override { return fetcher_.options().concurrency; }

  void CancelAll() override {
    std::lock_guard lk(mu_);
    cancelled_all_ = true;
    for (auto& p : pending_) p->job->Cancel();
  }

 private:
  struct Pending {
    fetch::FetchRange range;
    std::shared_ptr<fetch::FetchJob> job;
    std::function<void(Status, std::uint32_t)> done;
    std::atomic<bool> reported{false};
  };

  void ReapLoop() {
    pthread_setname_np(pthread_self(), "cs-origin-reap");
    std::unique_lock lk(mu_);
    for (;;) {
      if (pending_.empty()) {
        if (stop_) return;
        cv_.wait(lk, [&] { return stop_ || !pending_.empty(); });
        continue;
      }
      cv_.wait_for(lk, std::chrono::milliseconds(5));
      std::vector<std::shared_ptr<Pending>> finished;
      for (auto it = pending_.begin(); it != pending_.end();) {
        if ((*it)->job->Done()) {
          finished.push_back(std::move(*it));
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
      lk.unlock();
      for (auto& p : finished) {
        Status st = p->job->Wait();
        if (!p->reported.exchange(true)) {
          if (st.ok()) st = MakeError(Errc::kInternal, "a fetch ended without delivering its range");
          p->done(session_->Annotate(std::move(st).error()), 0);
        }
        p->job.reset();
      }
      lk.lock();
    }
  }

  std::shared_ptr<fetch::RemoteSession> session_;
  const std::vector<fetch::RemoteObject> objects_;
  fetch::RangeFetcher fetcher_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::list<std::shared_ptr<Pending>> pending_;  // GUARDED_BY(mu_): jobs not seen finished
  bool stop_ = false;                            // GUARDED_BY(mu_)
  bool cancelled_all_ = false;                   // GUARDED_BY(mu_)
  std::thread reaper_;
};

// A local folder: pread on a few threads of its own (reads someone waits for first). Each read
// checks the file is still the version the listing saw.
class LocalOrigin final : public cache::Origin {
 public:
  static constexpr unsigned kThreads = 4;

  struct File {
    std::string path;
    int fd = -1;
    struct stat st {};
  };

  explicit LocalOrigin(std::vector<File> files) : files_(std::move(files)) {
    for (unsigned i = 0; i < kThreads; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~LocalOrigin() override {
    CancelAll();
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
    for (auto& f : files_) ::close(f.fd);
  }

  void Read(std::size_t file, std::uint64_t offset, std::uint64_t len, std::byte* dst, bool urgent,
            std::function<void(Status, std::uint32_t)> done) override {
    {
      std::lock_guard lk(mu_);
      Task t{file, offset, len, dst, std::move(done)};
      if (urgent) {
        urgent_.push_back(std::move(t));
      } else {
        background_.push_back(std::move(t));
      }
    }
    cv_.notify_one();
  }
  unsigned MaxInFlight() const override { return kThreads; }
  void CancelAll() override {
    std::deque<Task> gone;
    {
      std::lock_guard lk(mu_);
      for (auto* q : {&urgent_, &background_})
        while (!q->empty()) {
          gone.push_back(std::move(q->front()));
          q->pop_front();
        }
    }
    for (auto& t : gone) t.done(MakeError(Errc::kCancelled, files_[t.file].path + ": read cancelled"), 0);
  }

 private:
  struct Task {
    std::size_t file;
    std::uint64_t offset, len;
    std::byte* dst;
    std::function<void(Status, std::uint32_t)> done;
  };

  void Loop() {
    pthread_setname_np(pthread_self(), "cs-mount-local");
    for (;;) {
      Task t;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !urgent_.empty() || !background_.empty(); });
        auto& q = !urgent_.empty() ? urgent_ : background_;
        if (q.empty()) return;
        t = std::move(q.front());
        q.pop_front();
      }
      std::uint32_t crc = 0;
      Status st = ReadTask(t, &crc);
      t.done(std::move(st), crc);
    }
  }

  Status ReadTask(const Task& t, std::uint32_t* crc) {
    const File& f = files_[t.file];
    struct stat now {};
    if (::fstat(f.fd, &now) != 0) return MakePathError(f.path, errno);
    if (now.st_size != f.st.st_size || now.st_mtim.tv_sec != f.st.st_mtim.tv_sec ||
        now.st_mtim.tv_nsec != f.st.st_mtim.tv_nsec)
      return MakeError(Errc::kIntegrity, f.path + " changed since the mount listed it (remount to see the new version)");
    CS_ASSIGN_OR_RETURN(std::size_t got, ReadAt(f.fd, t.dst, static_cast<std::size_t>(t.len), t.offset, f.path));
    if (got != t.len) return MakeError(Errc::kIntegrity, f.path + " ended early (it shrank since it was listed)");
    *crc = Crc32c(t.dst, static_cast<std::size_t>(t.len));
    return OkStatus();
  }

  std::vector<File> files_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> urgent_, background_;  // GUARDED_BY(mu_)
  bool stop_ = false;                     // GUARDED_BY(mu_)
  std::vector<std::thread> threads_;
};

// Used offline: every file is complete in the cache, so only a corrupt chunk would need it.
class UnreachableOrigin final : public cache::Origin {
 public:
  explicit UnreachableOrigin(Error why) : why_(std::move(why)) {}
  void Read(std::size_t, std::uint64_t, std::uint64_t, std::byte*, bool,
            std::function<void(Status, std::uint32_t)> done) override {
    done(why_, 0);
  }
  unsigned MaxInFlight() const override { return 1; }

 private:
  Error why_;
};

nlohmann::ordered_json ListingJson(const std::string& source, const std::vector<cache::MountFile>& files) {
  nlohmann::ordered_json j;
  j["source"] = source;
  j["files"] = nlohmann::json::array();
  for (const auto& f : files)
    j["files"].push_back({{"name", f.name},
                          {"size", f.size},
                          {"mtime", f.mtime_unix},
                          {"origin", f.key.origin},
                          {"object", f.key.name},
                          {"version", f.key.version}});
  return j;
}

// The files of a listing recorded by ListingJson; every field checked.
Result<std::vector<cache::MountFile>> ParseListing(const std::string& text, const std::string& what) {
  auto bad = [&](const std::string& why) { return MakeError(Errc::kFormat, what + ": " + why); };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object() || !j.contains("files") || !j["files"].is_array()) return bad("not a recorded listing");
  std::vector<cache::MountFile> out;
  for (const auto& f : j["files"]) {
    if (!f.is_object()) return bad("a file entry is not an object");
    for (const char* k : {"name", "origin", "object", "version"})
      if (!f.contains(k) || !f[k].is_string()) return bad(std::string("a file entry has no string \"") + k + "\"");
    if (!f.contains("size") || !f["size"].is_number_unsigned()) return bad("a file entry has no unsigned \"size\"");
    if (!f.contains("mtime") || !f["mtime"].is_number_integer()) return bad("a file entry has no integer \"mtime\"");
    cache::MountFile m;
    m.name = f["name"].get<std::string>();
    CS_RETURN_IF_ERROR(CheckRelativePath(m.name, "file name", what));
    m.size = f["size"].get<std::uint64_t>();
    m.mtime_unix = f["mtime"].get<std::int64_t>();
    m.key = cache::ObjectKey{f["origin"].get<std::string>(), f["object"].get<std::string>(), f["version"].get<std::string>(),
                             m.size};
    out.push_back(std::move(m));
  }
  if (out.empty()) return bad("no files");
  return out;
}

// The origin could not be reached: the recorded listing, when the cache holds all of it.
Result<MountSource> OfflineSource(const std::string& source, cache::DiskCache& cache, const Error& why,
                                  const std::function<void(const std::string&)>& warn) {
  CS_ASSIGN_OR_RETURN(auto files, CompleteRecordedListing(cache, source, why));
  MountSource out;
  out.files = std::move(files);
  out.listing_json = ListingJson(source, out.files).dump();
  out.offline = true;
  out.origin = std::make_shared<UnreachableOrigin>(why);
  if (warn)
    warn("cannot reach " + source + " (" + why.ToString() + "); serving the complete copy recorded in the cache at " +
         cache.dir());
  return out;
}

Result<MountSource> LocalSource(const std::string& source, const std::string& path) {
  std::error_code ec;
  const auto root = std::filesystem::weakly_canonical(path, ec);
  struct stat st {};
  if (ec || ::stat(root.c_str(), &st) != 0) return MakePathError(path, ec ? ec.value() : errno);
  std::vector<std::pair<std::string, std::string>> names;  // (relative name, path)
  if (S_ISREG(st.st_mode)) {
    names.emplace_back(root.filename().string(), root.string());
  } else if (S_ISDIR(st.st_mode)) {
    std::filesystem::recursive_directory_iterator it(root, std::filesystem::directory_options::none, ec), end;
    if (ec) return MakePathError(path, ec.value());
    for (; it != end; it.increment(ec)) {
      if (ec) return MakePathError(path, ec.value());
      if (!it->is_regular_file(ec)) continue;  // folders are implied by their files; links to files are followed
      names.emplace_back(std::filesystem::relative(it->path(), root).string(), it->path().string());
    }
    if (ec) return MakePathError(path, ec.value());
    std::sort(names.begin(), names.end());
  } else {
    return MakeError(Errc::kInvalidArgument, path + " is neither a file nor a folder");
  }
  if (names.empty()) return MakeError(Errc::kNotFound, path + ": no files to mount");
  std::vector<LocalOrigin::File> opened;
  MountSource out;
  for (const auto& [name, p] : names) {
    LocalOrigin::File f;
    f.path = p;
    f.fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (f.fd < 0 || ::fstat(f.fd, &f.st) != 0) {
      const int err = errno;
      if (f.fd >= 0) ::close(f.fd);
      for (auto& o : opened) ::close(o.fd);
      return MakePathError(p, err);
    }
    cache::MountFile m;
    m.name = name;
    m.size = static_cast<std::uint64_t>(f.st.st_size);
    m.mtime_unix = f.st.st_mtim.tv_sec;
    // A rewrite changes the mtime (and usually the inode): a new entry, never a mix.
    m.key = cache::ObjectKey{"file://", p,
                             std::to_string(f.st.st_mtim.tv_sec) + "." + std::to_string(f.st.st_mtim.tv_nsec) + "-" +
                                 std::to_string(f.st.st_ino),
                             m.size};
    out.files.push_back(std::move(m));
    opened.push_back(std::move(f));
  }
  out.listing_json = ListingJson(source, out.files).dump();
  out.origin = std::make_shared<LocalOrigin>(std::move(opened));
  return out;
}

}  // namespace

std::string RecordedListing(const std::string& source, const fetch::RemoteSession& session,
                            const std::vector<fetch::RemoteFile>& files) {
  std::vector<cache::MountFile> m;
  for (const auto& f : files) m.push_back({f.name, f.object.size, f.mtime_unix, CacheKeyFor(session, f)});
  return ListingJson(source, m).dump();
}

Result<std::vector<cache::MountFile>> CompleteRecordedListing(cache::DiskCache& cache, const std::string& source,
                                                              const Error& why,
                                                              const std::function<bool(const std::string&)>& required) {
  auto unusable = [&](const std::string& detail) {
    Error e = why;
    e.message += " (and the cache at " + cache.dir() + " cannot stand in: " + detail + ")";
    return e;
  };
  auto text = cache.LoadListing(source);
  if (!text.ok()) return unusable(text.error().code == Errc::kNotFound ? "it has no listing of this source" : text.error().ToString());
  auto files = ParseListing(*text, "the listing recorded in " + cache.dir());
  if (!files.ok()) return unusable(files.error().ToString());
  std::vector<cache::MountFile> complete;
  for (auto& f : *files) {
    auto e = cache.FindEntry(f.key);
    if (e.ok() && (*e)->Complete()) {
      complete.push_back(std::move(f));
    } else if (!required || required(f.name)) {
      return unusable(f.name + " is not complete in it");
    }
  }
  return complete;
}

cache::ObjectKey CacheKeyFor(const fetch::RemoteSession& session, const fetch::RemoteFile& file) {
  cache::ObjectKey key;
  key.version = file.version;
  key.size = file.object.size;
  const fetch::Source& src = session.source();
  if (src.kind == fetch::SourceKind::kGcs) {
    key.origin = "gs://" + src.bucket + "@" + session.endpoint().base;
    const std::string prefix = "gs://" + src.bucket + "/";
    key.name = file.object.display.rfind(prefix, 0) == 0 ? file.object.display.substr(prefix.size()) : file.object.display;
  } else {
    // scheme://host[:port]/path: no credentials, query (signatures change) or fragment.
    const std::string url = fetch::RedactUrl(file.object.url);
    const std::size_t scheme = url.find("://");
    const std::size_t path = url.find('/', scheme == std::string::npos ? 0 : scheme + 3);
    key.origin = path == std::string::npos ? url : url.substr(0, path);
    key.name = path == std::string::npos ? "/" : url.substr(path);
  }
  return key;
}

Result<MountSource> OpenMountSource(const std::string& source, const fetch::RemoteOptions& options, const Env& env,
                                    cache::DiskCache* cache, const std::function<void(const std::string&)>& warn) {
  CS_ASSIGN_OR_RETURN(fetch::Source src, fetch::ParseSource(source));
  if (src.kind == fetch::SourceKind::kLocal) return LocalSource(source, src.path);
  auto session = fetch::RemoteSession::Open(src, options, env);
  Result<std::vector<fetch::RemoteFile>> listed =
      session.ok() ? (*session)->List() : Result<std::vector<fetch::RemoteFile>>(session.error());
  if (!listed.ok()) {
    const Errc code = listed.error().code;
    // The network error, with why the cache cannot stand in when it cannot.
    if (cache != nullptr && (code == Errc::kNetwork || code == Errc::kTimeout))
      return OfflineSource(source, *cache, listed.error(), warn);
    return std::move(listed).error();
  }
  MountSource out;
  std::vector<fetch::RemoteObject> objects;
  std::string nonce;  // one per mount, for objects with no version
  for (auto& f : *listed) {
    cache::MountFile m;
    m.name = f.name;
    m.size = f.object.size;
    m.mtime_unix = f.mtime_unix;
    m.key = CacheKeyFor(**session, f);
    if (!Cacheable(m.key)) {
      // No generation, ETag or Last-Modified: a later mount could not tell a rewrite of the same
      // size from what is cached, so this mount's entry is its own and goes when it ends.
      if (nonce.empty()) {
        std::random_device rd;
        char buf[17];
        std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
        nonce = buf;
      }
      m.key.version = "unversioned-" + nonce;
      m.ephemeral = true;
      if (warn)
        warn(f.object.display + " has no version (ETag or Last-Modified); it is cached for this mount only");
    }
    out.files.push_back(std::move(m));
    objects.push_back(std::move(f.object));
  }
  out.listing_json = ListingJson(source, out.files).dump();
  out.origin = std::make_shared<RemoteOrigin>(std::move(session).value(), std::move(objects));
  return out;
}

}  // namespace coldstart::loader
