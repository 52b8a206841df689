// Remote models (gs://, http(s)://): headers read with small ranged GETs, the layout built
// and validated exactly as for local files, then every data byte fetched by parallel ranged
// GETs straight into the host arena and each object verified against its CRC32C.
#pragma once

#include <memory>
#include <string>
#include <vector>

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
};

// Lists the source, picks the shards (by the index when there is one) and reads their headers.
Result<RemoteModel> OpenRemoteModel(std::shared_ptr<fetch::RemoteSession> session);

struct RemoteLoadStats {
  fetch::FetchStats fetch;
  bool verified_crc32c = false;  // every object was verified (CRC32C, or MD5 where it had none)
  unsigned verified_md5 = 0;     // objects verified by MD5 because the server had no CRC32C
};

// Fetches every tensor byte into one arena; fails with Errc::kIntegrity on a CRC32C mismatch.
Result<std::shared_ptr<HostModel>> LoadRemoteToHost(RemoteModel model, const HostLoadOptions& options,
                                                    RemoteLoadStats* stats = nullptr);

}  // namespace coldstart::loader
