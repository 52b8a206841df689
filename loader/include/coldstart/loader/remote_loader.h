// Remote models (gs://, http(s)://): headers read with small ranged GETs, the layout built
// and validated exactly as for local files, then every data byte fetched by parallel ranged
// GETs straight into the host arena and each object verified against its CRC32C.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "coldstart/core/timeline.h"
#include "coldstart/fetch/remote.h"
#include "coldstart/loader/host_loader.h"
#include "coldstart/loader/model.h"

namespace coldstart::loader {

struct RemoteModel {
  std::shared_ptr<fetch::RemoteSession> session;
  std::vector<fetch::RemoteFile> files;    // parallel to layout.files
  ModelLayout layout;
  std::vector<std::string> header_bytes;   // bytes [0, data_start) of each file
  double plan_seconds = 0;
  Timeline timeline;                       // "listing", "headers"
};

// Lists the source, picks the shards (by the index when there is one) and reads their headers.
// With a disk cache, the index and the headers come from it when it holds them (the listing
// has just confirmed their generation): a model seen before opens with one listing request.
Result<RemoteModel> OpenRemoteModel(std::shared_ptr<fetch::RemoteSession> session, cache::DiskCache* cache = nullptr);

struct RemoteLoadStats {
  fetch::FetchStats fetch;
  bool verified_crc32c = false;  // every object was verified (CRC32C, or MD5 where it had none)
  unsigned verified_md5 = 0;     // objects verified by MD5 because the server had no CRC32C
  std::uint64_t cache_hit_bytes = 0, cache_filled_bytes = 0;  // with HostLoadOptions::cache
};

// A model as the user names it: a local file or folder (layout only), or a remote source
// (session, listing and headers: OpenRemoteModel).
struct OpenedModel {
  ModelLayout local;
  Timeline timeline;  // local: "headers"; remote: in remote->timeline
  std::optional<RemoteModel> remote;
  const ModelLayout& layout() const { return remote ? remote->layout : local; }
};
// Parses `source` (path, gs://, http(s)://) and opens it; `remote`/`env` are used for remote
// sources only.
Result<OpenedModel> OpenModel(std::string_view source, const fetch::RemoteOptions& remote, const Env& env,
                              cache::DiskCache* cache = nullptr);

// Whole-object CRC32C of each file whose data section `ranges` cover exactly: the CRC of the
// header bytes combined with each range's CRC in offset order, so nothing is read twice. Per
// file: verified, or not checkable (no CRC32C on the server, or not fully fetched). A mismatch
// is an Errc::kIntegrity error naming the object.
Result<std::vector<bool>> VerifyCrc32c(std::span<const fetch::RemoteFile> files,
                                       std::span<const std::string> header_bytes, const ModelLayout& layout,
                                       std::span<const fetch::FetchRange> ranges,
                                       std::span<const std::uint32_t> range_crc);

// What a finished load's source reports, as RemoteLoadStats.
RemoteLoadStats RemoteStatsOf(const class LoadHandle& handle);

// Fetches every tensor byte into one arena; fails with Errc::kIntegrity on a CRC32C mismatch.
Result<std::shared_ptr<HostModel>> LoadRemoteToHost(RemoteModel model, const HostLoadOptions& options,
                                                    RemoteLoadStats* stats = nullptr);

}  // namespace coldstart::loader
