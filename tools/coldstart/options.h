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
// Any SRC (path, gs://, http(s)://) with the remote flags: loader::OpenModel.
Result<loader::OpenedModel> OpenModel(const std::string& source, const RemoteFlags& flags);
// The disk cache's options: defaults, COLDSTART_CACHE_*, then --cache-dir; with neither,
// $XDG_CACHE_HOME/coldstart or ~/.cache/coldstart (cmd_cache.cpp).
Result<cache::DiskCacheOptions> MakeDiskCacheOptions(const std::string& cache_dir);

}  // namespace coldstart::cli
