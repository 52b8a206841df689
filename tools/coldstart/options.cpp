#include "options.h"

#include "cancel.h"

namespace coldstart::cli {

Result<loader::HostLoadOptions> MakeHostLoadOptions(const ReadFlags& flags) {
  loader::HostLoadOptions o;
  const Env env = Env::FromProcess();
  CS_RETURN_IF_ERROR(env.Validate());
  CS_RETURN_IF_ERROR(o.ApplyEnv(env));
  if (!flags.io_engine.empty()) {
    CS_ASSIGN_OR_RETURN(o.read.engine, fetch::ParseIoEngine(flags.io_engine));
  }
  if (!flags.direct_io.empty()) {
    CS_ASSIGN_OR_RETURN(o.read.direct, fetch::ParseDirectIo(flags.direct_io));
  }
  if (!flags.chunk.empty()) {
    auto c = ParseBytes(flags.chunk);
    if (!c.ok()) return std::move(c).error().WithContext("--chunk");
    o.read.chunk_bytes = *c;
    if (auto st = o.read.Validate(); !st.ok()) return std::move(st).error().WithContext("--chunk");
  }
  if (flags.threads) o.read.threads = flags.threads;
  if (flags.queue_depth) o.read.queue_depth = flags.queue_depth;
  CS_RETURN_IF_ERROR(o.read.Validate());
  return o;
}

Result<std::shared_ptr<cache::DiskCache>> OpenCache(const CacheFlags& flags, const Env& env) {
  // Asked for by a flag or by COLDSTART_CACHE_DIR; then the options as `cache` and `mount` make them.
  if (!flags.use && flags.dir.empty() && !env.Get("COLDSTART_CACHE_DIR")) return std::shared_ptr<cache::DiskCache>();
  CS_ASSIGN_OR_RETURN(auto o, MakeDiskCacheOptions(flags.dir));
  if (!flags.max_bytes.empty()) {
    auto b = ParseBytes(flags.max_bytes);
    if (!b.ok()) return std::move(b).error().WithContext("--cache-max-bytes");
    o.max_bytes = *b;
  }
  return cache::DiskCache::Open(std::move(o));
}

Result<fetch::RemoteOptions> MakeRemoteOptions(const RemoteFlags& flags) {
  fetch::RemoteOptions o;
  const Env env = Env::FromProcess();
  CS_RETURN_IF_ERROR(env.Validate());
  o.endpoint = flags.endpoint;
  o.auth.access_token = flags.access_token;
  o.auth.anonymous = flags.anonymous;
  CS_RETURN_IF_ERROR(o.ApplyEnv(env));
  o.http.extra_headers = flags.headers;
  for (const auto& h : flags.headers)
    if (h.find(':') == std::string::npos)
      return MakeError(Errc::kInvalidArgument, "--header '" + h + "' is not of the form 'Name: value'");
  if (flags.concurrency) o.fetch.concurrency = flags.concurrency;
  if (!flags.chunk.empty()) {
    auto c = ParseBytes(flags.chunk);
    if (!c.ok()) return std::move(c).error().WithContext("--remote-chunk");
    o.fetch.chunk_bytes = *c;
    if (auto st = o.fetch.Validate(); !st.ok()) return std::move(st).error().WithContext("--remote-chunk");
  }
  if (flags.http2) o.fetch.http2 = true;
  o.http.ca_file = o.fetch.ca_file = flags.cacert;
  o.fetch.retry = o.retry;
  CS_RETURN_IF_ERROR(o.fetch.Validate());
  return o;
}

Result<loader::OpenedModel> OpenModel(const std::string& source, const RemoteFlags& flags, cache::DiskCache* cache) {
  CS_ASSIGN_OR_RETURN(auto o, MakeRemoteOptions(flags));
  // The listing and header reads cannot be told to stop, and a stalled server keeps them
  // waiting up to the retry policy's limits (minutes). A signal meanwhile ends the process at
  // once, with the usual line and status: nothing has been written but disk-cache chunks, which
  // survive a kill -9 by design.
  ExitOnCancel exit_on_cancel("while listing the model and reading its headers");
  return loader::OpenModel(source, o, Env::FromProcess(), cache);
}

Result<std::shared_ptr<fetch::RemoteSession>> OpenRemote(const fetch::Source& source, const RemoteFlags& flags) {
  CS_ASSIGN_OR_RETURN(auto o, MakeRemoteOptions(flags));
  return fetch::RemoteSession::Open(source, o, Env::FromProcess());
}

Result<std::shared_ptr<cache::DiskCache>> SourceCache(const std::string& source, const CacheFlags& flags) {
  CS_ASSIGN_OR_RETURN(auto src, fetch::ParseSource(source));
  if (src.kind != fetch::SourceKind::kLocal) return OpenCache(flags, Env::FromProcess());
  if (flags.use || !flags.dir.empty() || !flags.max_bytes.empty())
    return MakeError(Errc::kInvalidArgument,
                     "--cache/--cache-dir keep gs:// and http(s):// objects; " + source + " is local and is read in place");
  return std::shared_ptr<cache::DiskCache>();
}

}  // namespace coldstart::cli
