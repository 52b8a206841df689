// What `coldstart mount` and `coldstart preload --mount` put under the mount point: the files
// of a source (gs://, http(s):// folder, local folder) with their cache keys, and the Origin that
// reads their bytes (the process's fetch transport for remote sources, local reads otherwise).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "coldstart/cache/disk_cache.h"
#include "coldstart/cache/mount.h"
#include "coldstart/core/env.h"
#include "coldstart/core/result.h"
#include "coldstart/fetch/remote.h"

namespace coldstart::loader {

// The cache key of a remote file: origin (bucket and endpoint, or scheme://host:port), object
// name, version (GCS generation; HTTP ETag, else Last-Modified) and size.
cache::ObjectKey CacheKeyFor(const fetch::RemoteSession& session, const fetch::RemoteFile& file);
// Whether a key tells versions apart (it has a generation, ETag or Last-Modified). Loads and
// prefetches never cache an object without one: a rewrite of the same size would be served
// stale.
inline bool Cacheable(const cache::ObjectKey& key) { return !key.version.empty(); }

// The listing as the disk cache records it for `source` (the URL as the user gave it), for
// offline use by mounts and loads alike (DiskCache::SaveListing).
std::string RecordedListing(const std::string& source, const fetch::RemoteSession& session,
                            const std::vector<fetch::RemoteFile>& files);
// The files of the listing recorded for `source` that the cache holds completely, when it holds
// every file `required` names (all when unset); else `why` (the reason the origin was not used)
// with what the cache lacks.
Result<std::vector<cache::MountFile>> CompleteRecordedListing(cache::DiskCache& cache, const std::string& source,
                                                              const Error& why,
                                                              const std::function<bool(const std::string&)>& required = {});

struct MountSource {
  std::vector<cache::MountFile> files;
  std::shared_ptr<cache::Origin> origin;
  std::string listing_json;  // what the cache records for offline use (DiskCache::SaveListing)
  bool offline = false;      // the origin could not be reached: files come from the recorded
                             // listing and only a complete cached copy can be served
};

// Lists `source` (when it cannot be reached and `cache` holds a complete copy of the listing
// it recorded, uses that, with a warning through `warn`).
Result<MountSource> OpenMountSource(const std::string& source, const fetch::RemoteOptions& options, const Env& env,
                                    cache::DiskCache* cache, const std::function<void(const std::string&)>& warn);

}  // namespace coldstart::loader
