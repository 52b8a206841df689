// The environment variables fetch/ reads, registered with core's registry (`coldstart env`
// prints them). Name, default, why.
#include "coldstart/core/env.h"

#include <array>

namespace coldstart::fetch {
namespace {

constexpr std::array kVars = {
    // fetch/: local reads
    EnvVarInfo{"COLDSTART_IO_ENGINE", "auto",
               "auto|uring|pread. auto probes io_uring and falls back to pread threads when "
               "the kernel or a seccomp profile refuses it."},
    EnvVarInfo{"COLDSTART_DIRECT_IO", "auto",
               "auto|on|off. auto reads a file with O_DIRECT unless most of it is already in the "
               "page cache (checked with mincore): cold NVMe reads skip a copy, warm reads stay "
               "memory-speed."},
    EnvVarInfo{"COLDSTART_READ_CHUNK", "8MiB",
               "Size of one local read request. 8 MiB saturated virtio and NVMe disks in our "
               "runs; smaller chunks cost CPU per byte, larger ones delay the first tensor."},
    EnvVarInfo{"COLDSTART_READ_QUEUE_DEPTH", "8",
               "Reads in flight per I/O thread (io_uring SQ entries)."},
    EnvVarInfo{"COLDSTART_READ_THREADS", "0",
               "I/O threads for local reads; 0 = one per core, at most 8. Warm page-cache reads "
               "are memory copies done by the submitting thread, so they scale with threads."},
    // fetch/: remote ranged reads
    EnvVarInfo{"COLDSTART_CONCURRENCY", "32",
               "Ranged GETs in flight. Cloud storage serves each connection at tens of MB/s; "
               "with a 50 MB/s cap, 32 connections reached 1.43 GB/s of a 2-core machine's "
               "~2.2 GB/s (bench/RESULTS.md), 64 gained little and cost CPU."},
    EnvVarInfo{"COLDSTART_FETCH_THREADS", "0",
               "Threads driving the curl multi handles; 0 = one per core, at most 4."},
    EnvVarInfo{"COLDSTART_CHUNK", "16MiB",
               "Bytes per ranged GET. Large enough that request latency (~30 ms to GCS) is "
               "amortised, small enough to spread a shard over many connections."},
    EnvVarInfo{"COLDSTART_HTTP2", "0",
               "Use HTTP/2 (multiplexed streams on one connection). Off by default: per-"
               "connection caps make separate HTTP/1.1 connections faster."},
    // fetch/: remote sources (gs://, http(s)://)
    EnvVarInfo{"COLDSTART_ENDPOINT", "https://storage.googleapis.com",
               "GCS JSON API endpoint, same as --endpoint (which wins). Use it for a private or "
               "regional endpoint; credentials are still sent to it."},
    EnvVarInfo{"STORAGE_EMULATOR_HOST", "(unset)",
               "Google client libraries' emulator switch: host:port or URL of a GCS emulator "
               "(http:// assumed). Used when no endpoint is given; requests are anonymous "
               "unless an access token is given."},
    EnvVarInfo{"COLDSTART_ACCESS_TOKEN", "(unset)",
               "OAuth access token for GCS, same as --access-token (which wins); tried before "
               "any credentials file. Never printed.", true},
    EnvVarInfo{"GOOGLE_APPLICATION_CREDENTIALS", "(unset)",
               "Path of a service_account or authorized_user JSON key, as in every Google "
               "client library; tried after an explicit token. Malformed = error."},
    EnvVarInfo{"CLOUDSDK_CONFIG", "$HOME/.config/gcloud",
               "gcloud's config folder; its application_default_credentials.json (from `gcloud "
               "auth application-default login`) is tried after GOOGLE_APPLICATION_CREDENTIALS."},
    EnvVarInfo{"HOME", "(from the login)",
               "Used to find gcloud's config folder when CLOUDSDK_CONFIG is unset, and the disk "
               "cache's default folder (~/.cache/coldstart) when XDG_CACHE_HOME is unset."},
    EnvVarInfo{"GCE_METADATA_HOST", "metadata.google.internal",
               "host[:port] of the GCE/GKE metadata server, the last credentials source before "
               "anonymous (also how tests point it at a local fake)."},
    EnvVarInfo{"COLDSTART_METADATA", "auto",
               "auto|off. auto asks the metadata server for a token when no other credentials "
               "are found (a ~1 s probe off Google Cloud); off skips it and goes anonymous."},
    EnvVarInfo{"COLDSTART_RETRY_ATTEMPTS", "8",
               "Attempts per remote request, the first included. 8 rides out a ~30 s outage "
               "with the default backoff."},
    EnvVarInfo{"COLDSTART_RETRY_INITIAL", "200ms",
               "Backoff before the second attempt; doubles per failure, with equal jitter (a "
               "delay is 50-100% of the base) so many loaders do not retry in lockstep."},
    EnvVarInfo{"COLDSTART_RETRY_MAX_BACKOFF", "10s",
               "Cap on one backoff delay."},
    EnvVarInfo{"COLDSTART_RETRY_DEADLINE", "10m",
               "No new attempt of a request this long after its first attempt."},
    EnvVarInfo{"COLDSTART_STALL_TIMEOUT", "20s",
               "A transfer that receives no bytes (or less than COLDSTART_STALL_MIN_RATE per "
               "second) for this long is abandoned and retried: faster than waiting for TCP to "
               "notice a dead connection."},
    EnvVarInfo{"COLDSTART_STALL_MIN_RATE", "16KiB",
               "Bytes per second a transfer must average over the stall timeout, else it is "
               "stalled (abandoned and retried): a server trickling a byte a second is not "
               "alive. 32 connections on a 10 Mbit/s link still get ~40 KB/s each; set 1 to "
               "only catch transfers that receive nothing."},
};

}  // namespace

const EnvRegistrar kFetchEnvRegistrar{"fetch", 10, kVars};

// Called from the module's ApplyEnv functions: a call the compiler cannot drop, so the linker
// keeps this object (and its registrar) in every program that reads the module's options.
void LinkEnvFetch() {}

}  // namespace coldstart::fetch
