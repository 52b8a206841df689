// The fake GCS server. Request flow for storage endpoints:
//   route -> validate names -> Prologue (stats, auth, first-byte delay, fault selection)
//   -> stat the file (generation, preconditions) -> metadata JSON, listing, or ServeMedia.
// Media bodies go out through an httplib content provider that reads slices with pread, so a
// multi-GiB object never sits in memory; the provider is also where body faults and the rate
// limit act.
//
// Deliberate simplifications against real GCS: metageneration is always 1; the object's bytes
// are the file's bytes (a generation bump does not change them); one fault per request (the
// first matching one, in the order added); a fault whose after_bytes lies beyond the body it
// matched is used up without effect; malformed Range headers get httplib's 416.
#include "coldstart/fake_gcs/server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "auth.h"
#include "coldstart/core/crc32c.h"
#include "coldstart/core/hash.h"
#include "coldstart/fetch/url.h"

namespace coldstart::fakegcs {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr std::string_view kProjectId = "coldstart-test";
constexpr std::string_view kClientEmail = "fake-gcs@coldstart-test.iam.gserviceaccount.com";
constexpr std::size_t kSliceBytes = 256 * 1024;  // per content-provider call; bounds memory per stream

// httplib::Server with the listening socket exposed: httplib's compiled-in accept backlog is
// 5, too small for clients that open 32+ connections at once (dropped SYNs retry after 1 s).
class HttpServer : public httplib::Server {
 public:
  int listen_fd() const { return svr_sock_; }
};

class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};

int SocketPort(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(ss).sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(ss).sin6_port);
  return -1;
}

// Calls fn(fd) for every connected socket of this process whose local port is `port` (so: a
// connection accepted by our server) and, when peer_port >= 0, whose peer uses that port.
// httplib hands handlers no socket; this is how a fault reaches the connection it must break,
// and how Stop() wakes workers parked in httplib's keep-alive wait.
void ForEachAcceptedSocket(int port, int peer_port, const std::function<void(int)>& fn) {
  std::unique_ptr<DIR, DirCloser> dir(::opendir("/proc/self/fd"));
  if (!dir) return;
  const int dir_fd = ::dirfd(dir.get());
  while (dirent* e = ::readdir(dir.get())) {
    int fd = -1;
    auto [p, ec] = std::from_chars(e->d_name, e->d_name + std::strlen(e->d_name), fd);
    if (ec != std::errc() || fd == dir_fd) continue;
    sockaddr_storage local{}, peer{};
    socklen_t len = sizeof(local);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) != 0 || SocketPort(local) != port) continue;
    len = sizeof(peer);
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) continue;  // the listener
    if (peer_port >= 0 && SocketPort(peer) != peer_port) continue;
    fn(fd);
  }
}

// Sends a TCP RST now without closing the descriptor (httplib still owns and closes it):
// connect(AF_UNSPEC) disconnects an established TCP socket with an active reset on Linux.
// SO_LINGER{1,0} alone would not do: httplib shuts the socket down (FIN) before closing it.
void ResetConnection(int fd) {
  sockaddr sa{};
  sa.sa_family = AF_UNSPEC;
  (void)::connect(fd, &sa, sizeof(sa));
}

std::string Rfc3339(std::int64_t micros) {
  std::time_t secs = static_cast<std::time_t>(micros / 1000000);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>((micros / 1000) % 1000));
  return buf;
}

std::string HttpDate(std::int64_t micros) {
  std::time_t secs = static_cast<std::time_t>(micros / 1000000);
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return buf;
}

std::string ContentTypeFor(std::string_view name) {
  auto ends = [&](std::string_view suffix) {
    return name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
  };
  if (ends(".json")) return "application/json";
  if (ends(".txt") || ends(".md")) return "text/plain";
  return "application/octet-stream";
}

std::optional<std::int64_t> ParseInt64(std::string_view s) {
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// GCS bucket names: 3-222 chars of [a-z0-9._-]; we only need "safe as one path component".
bool ValidBucket(std::string_view b) {
  if (b.empty() || b == "." || b == "..") return false;
  return std::all_of(b.begin(), b.end(), [](unsigned char c) {
    return std::islower(c) || std::isdigit(c) || c == '-' || c == '_' || c == '.';
  });
}

// Object names map onto paths under root/BUCKET; a "." or ".." segment could escape it.
bool ValidObject(std::string_view o) {
  if (o.empty() || o.find('\0') != std::string_view::npos) return false;
  std::size_t start = 0;
  while (start <= o.size()) {
    auto slash = o.find('/', start);
    auto seg = o.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (seg == "." || seg == "..") return false;
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return true;
}

enum class Api { kJson, kXml };

void SendError(httplib::Response& res, Api api, int status, const std::string& message,
               std::string_view reason = "") {
  res.status = status;
  if (api == Api::kXml) {
    std::string code = status == 404 ? "NoSuchKey" : status == 412 ? "PreconditionFailed"
                     : status == 401 ? "AuthenticationRequired" : status == 416 ? "InvalidRange"
                     : status == 400 ? "InvalidArgument" : "InternalError";
    res.set_content("<?xml version='1.0' encoding='UTF-8'?><Error><Code>" + code + "</Code><Message>" + message +
                        "</Message></Error>",
                    "application/xml; charset=UTF-8");
    return;
  }
  Json err = {{"code", status}, {"message", message}};
  if (!reason.empty()) err["errors"] = Json::array({{{"message", message}, {"domain", "global"}, {"reason", reason}}});
  res.set_content(Json{{"error", err}}.dump(), "application/json; charset=UTF-8");
}

void SendOauthError(httplib::Response& res, int status, std::string_view error, std::string_view description) {
  res.status = status;
  res.set_content(Json{{"error", error}, {"error_description", description}}.dump(), "application/json; charset=utf-8");
}

struct ActiveFault {
  FaultSpec spec;
  unsigned remaining;  // when spec.count > 0
};

struct ObjectInfo {
  std::string bucket, name, path;
  std::uint64_t size = 0;
  std::int64_t mtime_us = 0;
  std::int64_t generation = 0;
  std::string key() const { return bucket + "/" + name; }
};

struct Hashes {
  std::uint32_t crc32c = 0;
  std::string md5_b64;  // empty when md5 is off
};

// One cache slot per object: whoever arrives first hashes the file, others wait on `mu`
// instead of hashing the same GiB again.
struct HashSlot {
  std::mutex mu;
  bool valid = false;
  std::int64_t mtime_ns = 0;
  std::uint64_t size = 0;
  Hashes hashes;
};

struct GenState {
  std::int64_t mtime_us = 0;
  std::int64_t generation = 0;
};

struct ParsedRange {
  enum class Kind { kNone, kOk, kUnsatisfiable } kind = Kind::kNone;
  std::uint64_t first = 0, last = 0;
};

// "bytes=a-b", "bytes=a-", "bytes=-n"; multiple ranges are ignored like GCS does (full body).
ParsedRange ResolveRange(const std::string& header, std::uint64_t size) {
  ParsedRange r;
  std::string_view h = header;
  if (h.substr(0, 6) != "bytes=" || h.find(',') != std::string_view::npos) return r;
  h.remove_prefix(6);
  auto dash = h.find('-');
  if (dash == std::string_view::npos) return r;
  auto a = h.substr(0, dash), b = h.substr(dash + 1);
  if (a.empty()) {  // suffix: the last n bytes
    auto n = ParseInt64(b);
    if (!n || *n < 0) return r;
    if (*n == 0 || size == 0) return {ParsedRange::Kind::kUnsatisfiable};
    auto len = std::min<std::uint64_t>(static_cast<std::uint64_t>(*n), size);
    return {ParsedRange::Kind::kOk, size - len, size - 1};
  }
  auto first = ParseInt64(a);
  if (!first || *first < 0) return r;
  std::uint64_t last = size == 0 ? 0 : size - 1;
  if (!b.empty()) {
    auto l = ParseInt64(b);
    if (!l || *l < *first) return r;
    last = std::min<std::uint64_t>(static_cast<std::uint64_t>(*l), last);
  }
  if (static_cast<std::uint64_t>(*first) >= size) return {ParsedRange::Kind::kUnsatisfiable};
  return {ParsedRange::Kind::kOk, static_cast<std::uint64_t>(*first), last};
}

}  // namespace

struct Server::Impl {
  ServerOptions opt;
  HttpServer http;
  std::thread thread;
  int port = 0;
  std::atomic<bool> stopping{false};
  std::mutex stop_mu;

  // Credentials generated at Start (immutable afterwards).
  internal::PkeyPtr sa_key;
  std::string sa_key_id;
  std::string au_client_id, au_client_secret, au_refresh_token;

  mutable std::mutex mu;  // guards everything below
  std::vector<ActiveFault> faults;
  ServerStats stats;
  std::map<std::string, GenState> generations;
  std::set<std::string, std::less<>> issued_tokens;
  std::map<std::string, std::shared_ptr<HashSlot>> hash_cache;

  std::mutex link_mu;
  Clock::time_point link_next{};  // GUARDED_BY(link_mu): when the link is free again

  // Books `bytes` on the shared link: the moment they have gone out at the link's rate after
  // everything booked before them. Idle time is not saved up (no burst above the rate).
  Clock::time_point BookLink(std::size_t bytes) {
    std::lock_guard lock(link_mu);
    const auto now = Clock::now();
    if (link_next < now) link_next = now;
    link_next += std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(static_cast<double>(bytes) / opt.link_rate_limit_bytes_per_s));
    return link_next;
  }

  std::string endpoint() const { return "http://" + opt.host + ":" + std::to_string(port); }
  std::string token_uri() const { return endpoint() + "/token"; }

  // Sleeps in short steps so Stop() never waits behind a stall or a rate-limit pause.
  // Returns false when the server is stopping.
  bool SleepFor(double seconds) {
    auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
    while (Clock::now() < until) {
      if (stopping) return false;
      Clock::duration left = until - Clock::now();
      std::this_thread::sleep_for(std::min<Clock::duration>(left, std::chrono::milliseconds(10)));
    }
    return !stopping;
  }

  std::string MintToken() {
    std::string token = "ya29.fake-" + internal::RandomHex(24);
    std::lock_guard lock(mu);
    issued_tokens.insert(token);
    return token;
  }

  bool Authorized(const httplib::Request& req) {
    if (opt.required_token.empty()) return true;
    const std::string auth = req.get_header_value("Authorization");
    constexpr std::string_view kBearer = "Bearer ";
    if (auth.size() <= kBearer.size() || auth.compare(0, kBearer.size(), kBearer) != 0) return false;
    std::string_view token = std::string_view(auth).substr(kBearer.size());
    if (token == opt.required_token) return true;
    std::lock_guard lock(mu);
    return issued_tokens.find(token) != issued_tokens.end();
  }

  std::optional<FaultSpec> TakeFault(const std::string& key, bool media) {
    std::lock_guard lock(mu);
    for (auto it = faults.begin(); it != faults.end(); ++it) {
      if (it->spec.media_only && !media) continue;
      if (::fnmatch(it->spec.object_glob.c_str(), key.c_str(), 0) != 0) continue;
      FaultSpec hit = it->spec;
      if (hit.count != 0 && --it->remaining == 0) faults.erase(it);
      ++stats.faults_injected;
      return hit;
    }
    return std::nullopt;
  }

  // Common front of every storage request. Returns false when it already answered.
  bool Prologue(const httplib::Request& req, httplib::Response& res, Api api, const std::string& fault_key,
                bool media, std::optional<FaultSpec>* body_fault) {
    {
      std::lock_guard lock(mu);
      ++stats.requests;
    }
    if (!Authorized(req)) {
      res.set_header("WWW-Authenticate", "Bearer realm=\"https://accounts.google.com/\"");
      SendError(res, api, 401, "Invalid Credentials", "authError");
      return false;
    }
    if (opt.first_byte_delay_s > 0 && !SleepFor(opt.first_byte_delay_s)) return false;
    auto fault = TakeFault(fault_key, media);
    if (!fault) return true;
    switch (fault->kind) {
      case FaultSpec::Kind::kStatus:
        SendError(res, api, fault->status, "Injected fault: status " + std::to_string(fault->status) + " for " + fault_key,
                  fault->status == 429 ? "rateLimitExceeded" : fault->status >= 500 ? "backendError" : "");
        return false;
      case FaultSpec::Kind::kFirstByteDelay:
        return SleepFor(fault->seconds);
      default:
        *body_fault = fault;  // acts inside the body
        return true;
    }
  }

  // Stats the file behind BUCKET/OBJECT and assigns it a generation. kNotFound when absent.
  Result<ObjectInfo> Stat(std::string_view bucket, std::string_view object) {
    ObjectInfo info;
    info.bucket = bucket;
    info.name = object;
    info.path = opt.root + "/" + info.bucket + "/" + info.name;
    struct stat st{};
    if (::stat((opt.root + "/" + info.bucket).c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
      return MakeError(Errc::kNotFound, "The specified bucket does not exist.");
    if (::stat(info.path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
      return MakeError(Errc::kNotFound, "No such object: " + info.key());
    info.size = static_cast<std::uint64_t>(st.st_size);
    info.mtime_us = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000 + st.st_mtim.tv_nsec / 1000;
    std::lock_guard lock(mu);
    auto& g = generations[info.key()];
    if (g.generation == 0 || g.mtime_us != info.mtime_us) {
      // A changed mtime is a real overwrite; generations never go backwards.
      g.generation = std::max(info.mtime_us, g.generation + 1);
      g.mtime_us = info.mtime_us;
    }
    info.generation = g.generation;
    return info;
  }

  std::int64_t Bump(const std::string& key) {
    std::lock_guard lock(mu);
    auto& g = generations[key];
    g.generation += 1;
    return g.generation;
  }

  Result<Hashes> HashesOf(const ObjectInfo& info) {
    struct stat st{};
    if (::stat(info.path.c_str(), &st) != 0) return MakeSysError(Errc::kIo, "stat " + info.path, errno);
    const std::int64_t mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    std::shared_ptr<HashSlot> slot;
    {
      std::lock_guard lock(mu);
      auto& s = hash_cache[info.path];
      if (!s) s = std::make_shared<HashSlot>();
      slot = s;
    }
    std::lock_guard slot_lock(slot->mu);
    if (slot->valid && slot->mtime_ns == mtime_ns && slot->size == static_cast<std::uint64_t>(st.st_size))
      return slot->hashes;
    UniqueFd fd(::open(info.path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) return MakeSysError(Errc::kIo, "open " + info.path, errno);
    Md5 md5;
    std::vector<char> buf(1 << 20);
    std::uint32_t crc = 0;
    for (;;) {
      ssize_t n = ::read(fd.get(), buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return MakeSysError(Errc::kIo, "read " + info.path, errno);
      if (n == 0) break;
      crc = Crc32cExtend(crc, buf.data(), static_cast<std::size_t>(n));
      if (opt.md5) md5.Update(buf.data(), static_cast<std::size_t>(n));
    }
    Hashes h;
    h.crc32c = crc;
    if (opt.md5) h.md5_b64 = md5.Base64Digest();
    slot->valid = true;
    slot->mtime_ns = mtime_ns;
    slot->size = static_cast<std::uint64_t>(st.st_size);
    slot->hashes = h;
    return h;
  }

  Result<Json> ObjectJson(const ObjectInfo& info) {
    CS_ASSIGN_OR_RETURN(Hashes h, HashesOf(info));
    const std::string gen = std::to_string(info.generation);
    const std::string enc = fetch::UrlEncode(info.name);
    Json j = {
        {"kind", "storage#object"},
        {"id", info.key() + "/" + gen},
        {"selfLink", endpoint() + "/storage/v1/b/" + info.bucket + "/o/" + enc},
        {"mediaLink", endpoint() + "/download/storage/v1/b/" + info.bucket + "/o/" + enc + "?generation=" + gen + "&alt=media"},
        {"name", info.name},
        {"bucket", info.bucket},
        {"generation", gen},
        {"metageneration", "1"},
        {"contentType", ContentTypeFor(info.name)},
        {"storageClass", "STANDARD"},
        {"size", std::to_string(info.size)},
        {"crc32c", Crc32cToBase64(h.crc32c)},
        {"etag", Base64Encode(gen)},
        {"timeCreated", Rfc3339(info.mtime_us)},
        {"updated", Rfc3339(info.mtime_us)},
        {"timeStorageClassUpdated", Rfc3339(info.mtime_us)},
    };
    if (!h.md5_b64.empty()) j["md5Hash"] = h.md5_b64;
    return j;
  }

  std::string GoogHash(const Hashes& h) const {
    std::string v = "crc32c=" + Crc32cToBase64(h.crc32c);
    if (!h.md5_b64.empty()) v += ",md5=" + h.md5_b64;
    return v;
  }

  // ---- handlers ----------------------------------------------------------------------------

  void HandleList(const httplib::Request& req, httplib::Response& res) {
    const std::string bucket = req.matches[1];
    const std::string prefix = req.get_param_value("prefix");
    const std::string delimiter = req.get_param_value("delimiter");
    std::optional<FaultSpec> unused;
    if (!Prologue(req, res, Api::kJson, bucket + "/" + prefix, /*media=*/false, &unused)) return;
    if (!ValidBucket(bucket)) return SendError(res, Api::kJson, 400, "Invalid bucket name: '" + bucket + "'", "invalid");
    std::size_t max_results = 1000;
    if (req.has_param("maxResults")) {
      auto m = ParseInt64(req.get_param_value("maxResults"));
      if (!m || *m <= 0) return SendError(res, Api::kJson, 400, "Invalid value for maxResults", "invalid");
      max_results = std::min<std::size_t>(static_cast<std::size_t>(*m), 1000);
    }
    std::string after;  // resume strictly after this entry
    if (req.has_param("pageToken")) {
      auto t = Base64UrlDecode(req.get_param_value("pageToken"));
      if (!t.ok() || t->empty()) return SendError(res, Api::kJson, 400, "Invalid pageToken", "invalid");
      after = *t;
    }
    const std::string start_offset = req.get_param_value("startOffset");
    const std::string end_offset = req.get_param_value("endOffset");

    namespace fs = std::filesystem;
    const fs::path bucket_dir = fs::path(opt.root) / bucket;
    std::error_code ec;
    if (!fs::is_directory(bucket_dir, ec))
      return SendError(res, Api::kJson, 404, "The specified bucket does not exist.", "notFound");
    // Walk only the directory the prefix pins down ("a/b/c" -> bucket/a/b), not the bucket.
    // A prefix is only a string filter to GCS ("../" matches nothing), but its directory part
    // becomes a path here, so one with "." or ".." segments must not be walked.
    fs::path walk_dir = bucket_dir;
    bool walkable = true;
    if (auto slash = prefix.rfind('/'); slash != std::string::npos) {
      walkable = prefix[0] != '/' && ValidObject(prefix.substr(0, slash));  // "/x" would replace the path
      walk_dir /= prefix.substr(0, slash);
    }
    std::vector<std::string> names;
    if (walkable && fs::is_directory(walk_dir, ec)) {
      for (fs::recursive_directory_iterator it(walk_dir, ec), end; !ec && it != end; it.increment(ec)) {
        if (!it->is_regular_file(ec)) continue;
        std::string name = it->path().lexically_relative(bucket_dir).generic_string();
        if (name.compare(0, prefix.size(), prefix) != 0) continue;
        if (!start_offset.empty() && name < start_offset) continue;
        if (!end_offset.empty() && name >= end_offset) continue;
        names.push_back(std::move(name));
      }
    }
    // Entries in name order; a delimiter folds everything below "prefix...delim" into one
    // prefix entry. Items and prefixes share one sequence, as in GCS pagination.
    std::map<std::string, bool> entries;  // name -> is_prefix
    for (auto& name : names) {
      if (!delimiter.empty()) {
        auto d = name.find(delimiter, prefix.size());
        if (d != std::string::npos) {
          entries.emplace(name.substr(0, d + delimiter.size()), true);
          continue;
        }
      }
      entries.emplace(std::move(name), false);
    }
    Json items = Json::array(), prefixes = Json::array();
    auto it = after.empty() ? entries.begin() : entries.upper_bound(after);
    std::size_t taken = 0;
    std::string last;
    for (; it != entries.end() && taken < max_results; ++it, ++taken) {
      last = it->first;
      if (it->second) {
        prefixes.push_back(it->first);
        continue;
      }
      auto info = Stat(bucket, it->first);
      if (!info.ok()) continue;  // deleted while listing
      auto j = ObjectJson(*info);
      if (!j.ok()) return SendError(res, Api::kJson, 500, j.error().ToString());
      items.push_back(std::move(*j));
    }
    // GCS omits empty "items"/"prefixes" and the token on the last page; clients must cope.
    Json out = {{"kind", "storage#objects"}};
    if (!items.empty()) out["items"] = std::move(items);
    if (!prefixes.empty()) out["prefixes"] = std::move(prefixes);
    if (it != entries.end()) out["nextPageToken"] = Base64UrlEncode(last);
    res.status = 200;
    res.set_content(out.dump(), "application/json; charset=UTF-8");
  }

  // JSON API object: metadata, or the bytes with alt=media.
  void HandleJsonObject(const httplib::Request& req, httplib::Response& res) {
    const std::string bucket = req.matches[1];
    const std::string object = req.matches[2];
    const bool media = req.get_param_value("alt") == "media";
    std::optional<FaultSpec> fault;
    if (!Prologue(req, res, Api::kJson, bucket + "/" + object, media, &fault)) return;
    if (!ValidBucket(bucket) || !ValidObject(object))
      return SendError(res, Api::kJson, 400, "Invalid bucket or object name", "invalid");
    auto info = Stat(bucket, object);
    if (!info.ok()) return SendError(res, Api::kJson, 404, info.error().message, "notFound");
    if (req.has_param("generation")) {
      auto g = ParseInt64(req.get_param_value("generation"));
      if (!g) return SendError(res, Api::kJson, 400, "Invalid generation", "invalid");
      if (*g != info->generation)
        return SendError(res, Api::kJson, 404, "No such object: " + info->key() + "#" + std::to_string(*g), "notFound");
    }
    if (req.has_param("ifGenerationMatch")) {
      auto g = ParseInt64(req.get_param_value("ifGenerationMatch"));
      if (!g) return SendError(res, Api::kJson, 400, "Invalid ifGenerationMatch", "invalid");
      if (*g != info->generation)
        return SendError(res, Api::kJson, 412, "At least one of the pre-conditions you specified did not hold.", "conditionNotMet");
    }
    if (req.has_param("ifGenerationNotMatch")) {
      auto g = ParseInt64(req.get_param_value("ifGenerationNotMatch"));
      if (g && *g == info->generation) {
        res.status = 304;
        return;
      }
    }
    if (req.has_param("ifMetagenerationMatch") && req.get_param_value("ifMetagenerationMatch") != "1")
      return SendError(res, Api::kJson, 412, "At least one of the pre-conditions you specified did not hold.", "conditionNotMet");
    if (!media) {
      auto j = ObjectJson(*info);
      if (!j.ok()) return SendError(res, Api::kJson, 500, j.error().ToString());
      res.status = 200;
      res.set_content(j->dump(), "application/json; charset=UTF-8");
      return;
    }
    ServeMedia(req, res, Api::kJson, *info, fault, /*head=*/false);
  }

  // XML API: GET and HEAD /BUCKET/OBJECT.
  void HandleXmlObject(const httplib::Request& req, httplib::Response& res) {
    const std::string bucket = req.matches[1];
    const std::string object = req.matches[2];
    const bool head = req.method == "HEAD";
    std::optional<FaultSpec> fault;
    if (!Prologue(req, res, Api::kXml, bucket + "/" + object, !head, &fault)) return;
    if (!ValidBucket(bucket) || !ValidObject(object))
      return SendError(res, Api::kXml, 400, "Invalid bucket or object name");
    auto info = Stat(bucket, object);
    if (!info.ok()) return SendError(res, Api::kXml, 404, info.error().message);
    if (req.has_param("generation")) {
      auto g = ParseInt64(req.get_param_value("generation"));
      if (!g) return SendError(res, Api::kXml, 400, "Invalid generation");
      if (*g != info->generation) return SendError(res, Api::kXml, 404, "No such object: " + info->key());
    }
    if (req.has_header("x-goog-if-generation-match")) {
      auto g = ParseInt64(req.get_header_value("x-goog-if-generation-match"));
      if (!g) return SendError(res, Api::kXml, 400, "Invalid x-goog-if-generation-match");
      if (*g != info->generation)
        return SendError(res, Api::kXml, 412, "At least one of the pre-conditions you specified did not hold.");
    }
    if (req.has_header("x-goog-if-metageneration-match") && req.get_header_value("x-goog-if-metageneration-match") != "1")
      return SendError(res, Api::kXml, 412, "At least one of the pre-conditions you specified did not hold.");
    ServeMedia(req, res, Api::kXml, *info, fault, head);
  }

  void ServeMedia(const httplib::Request& req, httplib::Response& res, Api api, const ObjectInfo& info,
                  std::optional<FaultSpec> fault, bool head) {
    auto hashes = HashesOf(info);
    if (!hashes.ok()) return SendError(res, api, 500, hashes.error().ToString());
    res.set_header("x-goog-hash", GoogHash(*hashes));
    res.set_header("x-goog-generation", std::to_string(info.generation));
    res.set_header("x-goog-metageneration", "1");
    res.set_header("x-goog-stored-content-length", std::to_string(info.size));
    res.set_header("x-goog-stored-content-encoding", "identity");
    res.set_header("x-goog-storage-class", "STANDARD");
    res.set_header("Accept-Ranges", "bytes");
    res.set_header("Last-Modified", HttpDate(info.mtime_us));
    res.set_header("ETag", "\"" + Base64Encode(std::to_string(info.generation)) + "\"");

    std::uint64_t first = 0, length = info.size;
    res.status = 200;
    if (req.has_header("Range")) {
      auto r = ResolveRange(req.get_header_value("Range"), info.size);
      if (r.kind == ParsedRange::Kind::kUnsatisfiable) {
        res.set_header("Content-Range", "bytes */" + std::to_string(info.size));
        return SendError(res, api, 416, "The requested range cannot be satisfied.", "requestedRangeNotSatisfiable");
      }
      if (r.kind == ParsedRange::Kind::kOk) {
        first = r.first;
        length = r.last - r.first + 1;
        res.status = 206;
        res.set_header("Content-Range", "bytes " + std::to_string(r.first) + "-" + std::to_string(r.last) + "/" +
                                            std::to_string(info.size));
      }
    }
    const std::string content_type = ContentTypeFor(info.name);
    if (!head) {
      std::lock_guard lock(mu);
      ++stats.media_requests;
      ++stats.media_requests_per_object[info.key()];
      if (res.status == 206)
        stats.ranges_served.push_back(info.key() + " bytes=" + std::to_string(first) + "-" +
                                      std::to_string(first + length - 1));
    }
    if (length == 0) {  // httplib's content providers need a non-zero length
      res.set_content("", content_type);
      return;
    }
    UniqueFd fd;
    if (!head) {
      fd = UniqueFd(::open(info.path.c_str(), O_RDONLY | O_CLOEXEC));
      if (fd.get() < 0) return SendError(res, api, 500, "open " + info.path + ": " + std::strerror(errno));
    }
    auto stream = std::make_shared<MediaStream>(this, std::move(fd), first, info.key(), fault, req.remote_port);
    res.set_content_provider(static_cast<std::size_t>(length), content_type,
                             [stream](std::size_t offset, std::size_t len, httplib::DataSink& sink) {
                               return stream->Provide(offset, len, sink);
                             });
  }

  // One media response body in flight: its file, where it starts, its fault, its pacing.
  struct MediaStream {
    MediaStream(Impl* impl, UniqueFd fd, std::uint64_t start, std::string key, std::optional<FaultSpec> fault,
                int peer_port)
        : impl(impl), fd(std::move(fd)), start(start), key(std::move(key)), fault(std::move(fault)),
          peer_port(peer_port) {}

    Impl* impl;
    UniqueFd fd;
    std::uint64_t start;  // file offset of body byte 0
    std::string key;
    std::optional<FaultSpec> fault;
    int peer_port;
    std::vector<char> buf;
    std::optional<Clock::time_point> began;
    std::uint64_t sent = 0;

    // httplib calls this until the body is complete; false aborts the connection.
    bool Provide(std::size_t offset, std::size_t len, httplib::DataSink& sink) {
      if (impl->stopping) return false;
      const double rate = impl->opt.rate_limit_bytes_per_s;
      const double link_rate = impl->opt.link_rate_limit_bytes_per_s;
      std::size_t chunk = std::min(len, kSliceBytes);
      // ~50 slices a second keeps a rate-limited stream smooth rather than bursty.
      if (rate > 0) chunk = std::min(chunk, std::max<std::size_t>(1024, static_cast<std::size_t>(rate / 50)));
      if (link_rate > 0) chunk = std::min(chunk, std::max<std::size_t>(1024, static_cast<std::size_t>(link_rate / 200)));
      if (fault && fault->kind != FaultSpec::Kind::kCorrupt) {
        if (offset >= fault->after_bytes) return Break();
        chunk = std::min<std::size_t>(chunk, fault->after_bytes - offset);  // stop exactly at after_bytes
      }
      buf.resize(chunk);
      std::size_t got = 0;
      while (got < chunk) {
        ssize_t n = ::pread(fd.get(), buf.data() + got, chunk - got, static_cast<off_t>(start + offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;  // file shrank or I/O error: the client sees a short body
        got += static_cast<std::size_t>(n);
      }
      if (fault && fault->kind == FaultSpec::Kind::kCorrupt && fault->after_bytes >= offset &&
          fault->after_bytes < offset + chunk)
        buf[fault->after_bytes - offset] ^= 0x5a;
      if (rate > 0) {
        if (!began) began = Clock::now();
        auto due = *began + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(static_cast<double>(sent + chunk) / rate));
        auto wait = std::chrono::duration<double>(due - Clock::now()).count();
        if (wait > 0 && !impl->SleepFor(wait)) return false;
      }
      if (link_rate > 0) {
        auto wait = std::chrono::duration<double>(impl->BookLink(chunk) - Clock::now()).count();
        if (wait > 0 && !impl->SleepFor(wait)) return false;
      }
      if (!sink.write(buf.data(), chunk)) return false;
      sent += chunk;
      std::lock_guard lock(impl->mu);
      impl->stats.media_bytes_sent += chunk;
      return true;
    }

    // The body fault's moment has come (after_bytes sent).
    bool Break() {
      switch (fault->kind) {
        case FaultSpec::Kind::kReset:
          ForEachAcceptedSocket(impl->port, peer_port, ResetConnection);
          return false;
        case FaultSpec::Kind::kStall:
          impl->SleepFor(fault->seconds);
          return false;
        case FaultSpec::Kind::kGenerationChange:
          impl->Bump(key);
          return false;
        default:  // kCutBody: returning false makes httplib close the connection (FIN)
          return false;
      }
    }
  };

  void HandleToken(const httplib::Request& req, httplib::Response& res) {
    {
      std::lock_guard lock(mu);
      ++stats.requests;
      ++stats.token_requests;
    }
    const std::string grant = req.get_param_value("grant_type");
    if (grant == "urn:ietf:params:oauth:grant-type:jwt-bearer") {
      if (!sa_key) return SendOauthError(res, 400, "invalid_grant", "No service account key is configured on this fake.");
      internal::JwtExpectations want;
      want.key = sa_key.get();
      want.key_id = sa_key_id;
      want.issuer = std::string(kClientEmail);
      want.audience = token_uri();
      want.now = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
      auto ok = internal::VerifyJwtAssertion(req.get_param_value("assertion"), want);
      if (!ok.ok()) return SendOauthError(res, 400, "invalid_grant", ok.error().message);
    } else if (grant == "refresh_token") {
      if (au_client_id.empty() || req.get_param_value("client_id") != au_client_id ||
          req.get_param_value("client_secret") != au_client_secret)
        return SendOauthError(res, 401, "invalid_client", "The OAuth client was not found.");
      if (req.get_param_value("refresh_token") != au_refresh_token)
        return SendOauthError(res, 400, "invalid_grant", "Bad Request");
    } else {
      return SendOauthError(res, 400, "unsupported_grant_type", "Invalid grant_type: " + grant);
    }
    SendAccessToken(res);
  }

  void SendAccessToken(httplib::Response& res) {
    res.status = 200;
    res.set_content(Json{{"access_token", MintToken()}, {"expires_in", 3599}, {"token_type", "Bearer"}}.dump(),
                    "application/json; charset=utf-8");
  }

  // GCE metadata server: every request needs "Metadata-Flavor: Google" (SSRF protection).
  bool MetadataPrologue(const httplib::Request& req, httplib::Response& res) {
    {
      std::lock_guard lock(mu);
      ++stats.requests;
    }
    res.set_header("Metadata-Flavor", "Google");
    if (req.get_header_value("Metadata-Flavor") != "Google") {
      res.status = 403;
      res.set_content("Missing required header: Metadata-Flavor\n", "text/html; charset=UTF-8");
      return false;
    }
    return true;
  }

  Json StatsJson() const {
    std::lock_guard lock(mu);
    return Json{{"requests", stats.requests},
                {"media_requests", stats.media_requests},
                {"media_bytes_sent", stats.media_bytes_sent},
                {"token_requests", stats.token_requests},
                {"faults_injected", stats.faults_injected},
                {"media_requests_per_object", stats.media_requests_per_object},
                {"ranges_served", stats.ranges_served},
                {"faults_pending", faults.size()}};
  }

  void AddFault(FaultSpec f) {
    std::lock_guard lock(mu);
    unsigned remaining = f.count;
    faults.push_back({std::move(f), remaining});
  }

  void Routes() {
    using httplib::Request;
    using httplib::Response;
    // httplib applies Range to every response itself (slicing even error bodies); we answer
    // Range ourselves, so drop its parse before routing. The Request is a non-const local in
    // httplib's request loop, so writing through the const reference is well defined.
    http.set_pre_routing_handler([](const Request& req, Response&) {
      const_cast<Request&>(req).ranges.clear();
      return httplib::Server::HandlerResponse::Unhandled;
    });
    http.set_exception_handler([](const Request&, Response& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      SendError(res, Api::kJson, 500, "fake-gcs internal error: " + what);
    });

    http.Get(R"(/storage/v1/b/([^/]+)/o/?)", [this](const Request& q, Response& r) { HandleList(q, r); });
    http.Get(R"(/(?:download/)?storage/v1/b/([^/]+)/o/(.+))",
             [this](const Request& q, Response& r) { HandleJsonObject(q, r); });

    http.Post("/token", [this](const Request& q, Response& r) { HandleToken(q, r); });
    http.Get(R"(/computeMetadata/v1/?)", [this](const Request& q, Response& r) {
      if (MetadataPrologue(q, r)) r.set_content("instance/\nproject/\n", "application/text");
    });
    http.Get(R"(/computeMetadata/v1/instance/service-accounts/default/token)", [this](const Request& q, Response& r) {
      if (!MetadataPrologue(q, r)) return;
      {
        std::lock_guard lock(mu);
        ++stats.token_requests;
      }
      SendAccessToken(r);
    });
    http.Get(R"(/computeMetadata/v1/instance/service-accounts/default/email)", [this](const Request& q, Response& r) {
      if (MetadataPrologue(q, r)) r.set_content(std::string(kClientEmail), "application/text");
    });
    http.Get(R"(/computeMetadata/v1/project/project-id)", [this](const Request& q, Response& r) {
      if (MetadataPrologue(q, r)) r.set_content(std::string(kProjectId), "application/text");
    });

    http.Post("/_fake/faults", [this](const Request& q, Response& r) {
      auto f = FaultSpecFromJson(q.body);
      if (!f.ok()) {
        r.status = 400;
        r.set_content(Json{{"error", f.error().message}}.dump(), "application/json");
        return;
      }
      AddFault(std::move(*f));
      r.set_content(R"({"ok":true})", "application/json");
    });
    http.Delete("/_fake/faults", [this](const Request&, Response& r) {
      std::lock_guard lock(mu);
      faults.clear();
      r.set_content(R"({"ok":true})", "application/json");
    });
    http.Get("/_fake/stats", [this](const Request&, Response& r) { r.set_content(StatsJson().dump(), "application/json"); });
    http.Delete("/_fake/stats", [this](const Request&, Response& r) {
      std::lock_guard lock(mu);
      stats = ServerStats{};
      r.set_content(R"({"ok":true})", "application/json");
    });

    // XML API last: its pattern matches any two-segment path.
    http.Get(R"(/([^/]+)/(.+))", [this](const Request& q, Response& r) { HandleXmlObject(q, r); });
  }

  Status WriteCredentialFiles() {
    if (!opt.sa_key_out.empty()) {
      CS_ASSIGN_OR_RETURN(sa_key, internal::GenerateRsa2048());
      CS_ASSIGN_OR_RETURN(std::string pem, internal::PrivateKeyPem(sa_key.get()));
      sa_key_id = internal::RandomHex(20);
      Json key = {
          {"type", "service_account"},
          {"project_id", kProjectId},
          {"private_key_id", sa_key_id},
          {"private_key", pem},
          {"client_email", kClientEmail},
          {"client_id", "100000000000000000001"},
          {"auth_uri", "https://accounts.google.com/o/oauth2/auth"},
          {"token_uri", token_uri()},
          {"auth_provider_x509_cert_url", "https://www.googleapis.com/oauth2/v1/certs"},
          {"client_x509_cert_url", "https://www.googleapis.com/robot/v1/metadata/x509/fake-gcs"},
          {"universe_domain", "googleapis.com"},
      };
      CS_RETURN_IF_ERROR(WriteSecretFile(opt.sa_key_out, key.dump(2) + "\n"));
    }
    if (!opt.authorized_user_out.empty()) {
      au_client_id = internal::RandomHex(8) + ".apps.googleusercontent.com";
      au_client_secret = "GOCSPX-" + internal::RandomHex(12);
      au_refresh_token = "1//fake-" + internal::RandomHex(24);
      // Real ADC files carry no token_uri (clients use oauth2.googleapis.com); ours names the
      // fake so clients that honour the field (or a test override) reach it.
      Json au = {{"type", "authorized_user"},
                 {"client_id", au_client_id},
                 {"client_secret", au_client_secret},
                 {"refresh_token", au_refresh_token},
                 {"token_uri", token_uri()}};
      CS_RETURN_IF_ERROR(WriteSecretFile(opt.authorized_user_out, au.dump(2) + "\n"));
    }
    return OkStatus();
  }

  // 0600 like gcloud writes credentials; written whole to a temp name then renamed, so a
  // reader polling for the file never sees half of it.
  static Status WriteSecretFile(const std::string& path, const std::string& content) {
    const std::string tmp = path + ".tmp";
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    if (fd.get() < 0) return MakeSysError(Errc::kIo, "create " + tmp, errno);
    std::size_t done = 0;
    while (done < content.size()) {
      ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return MakeSysError(Errc::kIo, "write " + tmp, errno);
      done += static_cast<std::size_t>(n);
    }
    fd.reset();
    if (::rename(tmp.c_str(), path.c_str()) != 0) return MakeSysError(Errc::kIo, "rename to " + path, errno);
    return OkStatus();
  }

  void Stop() {
    std::lock_guard lock(stop_mu);
    if (!thread.joinable()) return;
    stopping = true;
    http.stop();
    // Workers idle in httplib's keep-alive wait would otherwise sit out its timeout.
    ForEachAcceptedSocket(port, -1, [](int fd) { ::shutdown(fd, SHUT_RDWR); });
    thread.join();
  }
};

Result<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  if (options.root.empty()) return MakeError(Errc::kInvalidArgument, "fake-gcs: root directory is required");
  std::error_code ec;
  if (!std::filesystem::is_directory(options.root, ec))
    return MakeError(Errc::kNotFound, "fake-gcs: root " + options.root + " is not a directory");
  if (options.threads == 0) return MakeError(Errc::kInvalidArgument, "fake-gcs: threads must be > 0");
  auto impl = std::make_unique<Impl>();
  impl->opt = std::move(options);
  Impl& s = *impl;

  const unsigned threads = s.opt.threads;
  s.http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s.http.set_keep_alive_max_count(100000);  // GCS keeps connections for many requests
  s.http.set_keep_alive_timeout(static_cast<time_t>(std::max(1.0, s.opt.keep_alive_timeout_s)));
  s.http.set_tcp_nodelay(true);
  s.Routes();

  if (s.opt.port == 0) {
    s.port = s.http.bind_to_any_port(s.opt.host);
    if (s.port <= 0) return MakeError(Errc::kIo, "fake-gcs: cannot bind " + s.opt.host + ":0");
  } else {
    if (!s.http.bind_to_port(s.opt.host, s.opt.port))
      return MakeError(Errc::kIo, "fake-gcs: cannot bind " + s.opt.host + ":" + std::to_string(s.opt.port));
    s.port = s.opt.port;
  }
  (void)::listen(s.http.listen_fd(), 1024);  // re-listen raises the backlog (see HttpServer)
  CS_RETURN_IF_ERROR(s.WriteCredentialFiles());

  s.thread = std::thread([&s] { s.http.listen_after_bind(); });
  // httplib's stop() is a no-op until the accept loop has started; waiting here makes an
  // immediate Stop() safe (and the accept loop is running once Start returns).
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (!s.http.is_running() && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (!s.http.is_running()) {
    // The loop failed to start; it has returned (or will, since the socket is closed).
    s.http.stop();
    if (s.thread.joinable()) s.thread.join();
    return MakeError(Errc::kInternal, "fake-gcs: the accept loop did not start");
  }
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { Stop(); }

int Server::port() const { return impl_->port; }
std::string Server::endpoint() const { return impl_->endpoint(); }
std::string Server::token_uri() const { return impl_->token_uri(); }
std::string Server::client_email() const { return std::string(kClientEmail); }
void Server::AddFault(FaultSpec f) { impl_->AddFault(std::move(f)); }
void Server::ClearFaults() {
  std::lock_guard lock(impl_->mu);
  impl_->faults.clear();
}
ServerStats Server::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}
void Server::ResetStats() {
  std::lock_guard lock(impl_->mu);
  impl_->stats = ServerStats{};
}
std::string Server::MintAccessToken() { return impl_->MintToken(); }

Result<std::int64_t> Server::Generation(std::string_view bucket, std::string_view object) {
  if (!ValidBucket(bucket) || !ValidObject(object)) return MakeError(Errc::kInvalidArgument, "invalid bucket or object name");
  CS_ASSIGN_OR_RETURN(ObjectInfo info, impl_->Stat(bucket, object));
  return info.generation;
}

Result<std::int64_t> Server::BumpGeneration(std::string_view bucket, std::string_view object) {
  CS_ASSIGN_OR_RETURN(std::int64_t g, Generation(bucket, object));
  (void)g;
  return impl_->Bump(std::string(bucket) + "/" + std::string(object));
}

void Server::Stop() { impl_->Stop(); }

}  // namespace coldstart::fakegcs
