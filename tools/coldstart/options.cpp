#include "options.h"

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
  }
  if (flags.threads) o.read.threads = flags.threads;
  if (flags.queue_depth) o.read.queue_depth = flags.queue_depth;
  CS_RETURN_IF_ERROR(o.read.Validate());
  return o;
}

}  // namespace coldstart::cli
