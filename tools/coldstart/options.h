#pragma once

#include "coldstart/cache/disk_cache.h"
#include "coldstart/fetch/remote.h"
#include "coldstart/loader/host_loader.h"
#include "coldstart/loader/remote_loader.h"
#include "commands.h"

namespace coldstart::cli {

// Defaults, then the environment (strictly), then flags: the precedence everywhere.
Result<loader::HostLoadOptions> MakeHostLoadOptions(const ReadFlags& flags);
Result<fetch::RemoteOptions> MakeRemoteOptions(const RemoteFlags& flags);
// Parses SRC; for remote sources opens the session (endpoint, credentials).
Result<std::shared_ptr<fetch::RemoteSession>> OpenRemote(const fetch::Source& source, const RemoteFlags& flags);
// The disk cache the flags (then COLDSTART_CACHE_DIR) ask for; nullptr when none is.
Result<std::shared_ptr<cache::DiskCache>> OpenCache(const CacheFlags& flags, const Env& env);
// The disk cache for loading `source` (load, run, serve): --cache/--cache-dir, else
// COLDSTART_CACHE_DIR. It keeps remote objects; asked for explicitly on a local source it is a
// usage error, from the environment it is simply not used (null).
Result<std::shared_ptr<cache::DiskCache>> SourceCache(const std::string& source, const CacheFlags& flags);
// Any SRC (path, gs://, http(s)://) with the remote flags: loader::OpenModel.
Result<loader::OpenedModel> OpenModel(const std::string& source, const RemoteFlags& flags, cache::DiskCache* cache = nullptr);
// The disk cache's options: defaults, COLDSTART_CACHE_*, then --cache-dir; with neither,
// $XDG_CACHE_HOME/coldstart or ~/.cache/coldstart (cmd_cache.cpp).
Result<cache::DiskCacheOptions> MakeDiskCacheOptions(const std::string& cache_dir);

}  // namespace coldstart::cli
