// coldstart-fake-gcs: the fake GCS server as a process, for scripts and manual runs.
// Prints "listening on http://HOST:PORT" once connections are accepted, serves until
// SIGINT/SIGTERM, then stops cleanly (exit 0).
#include <signal.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <string>
#include <tuple>
#include <vector>

#include "coldstart/core/env.h"
#include "coldstart/fake_gcs/server.h"

int main(int argc, char** argv) {
  namespace fg = coldstart::fakegcs;
  CLI::App app{"Fake Google Cloud Storage server on loopback, for coldstart tests"};
  fg::ServerOptions opt;
  std::string rate, link_rate, delay;
  std::vector<std::string> fault_texts;
  app.add_option("--root", opt.root, "Directory served as ROOT/BUCKET/OBJECT")->required()->check(CLI::ExistingDirectory);
  app.add_option("--port", opt.port, "Port (0 = pick a free one)")->capture_default_str();
  app.add_option("--host", opt.host, "Address to bind")->capture_default_str();
  app.add_option("--token", opt.required_token, "Require 'Authorization: Bearer TOKEN' (or a token this server issued)");
  app.add_option("--rate-limit", rate, "Per-connection media rate, bytes/s (e.g. 4MiB)");
  app.add_option("--link-rate-limit", link_rate, "Media rate of all connections together, bytes/s (e.g. 100MB)");
  app.add_option("--first-byte-delay", delay, "Delay before answering storage requests (e.g. 200ms)");
  app.add_option("--threads", opt.threads, "Worker threads (one per open connection)")->capture_default_str();
  app.add_option("--write-sa-key", opt.sa_key_out, "Write a service-account JSON key whose JWTs /token accepts");
  app.add_option("--write-authorized-user", opt.authorized_user_out, "Write an authorized_user JSON accepted by /token");
  app.add_flag("!--no-md5", opt.md5, "Omit md5Hash (saves hashing multi-GiB objects)");
  app.add_option("--fault", fault_texts, "Fault, e.g. kind=status,status=503,count=2,object=*/model-* (repeatable)");
  CLI11_PARSE(app, argc, argv);

  for (auto [text, out, flag] : {std::tuple{&rate, &opt.rate_limit_bytes_per_s, "--rate-limit"},
                                 std::tuple{&link_rate, &opt.link_rate_limit_bytes_per_s, "--link-rate-limit"}}) {
    if (text->empty()) continue;
    auto r = coldstart::ParseBytes(*text);
    if (!r.ok()) {
      std::cerr << "coldstart-fake-gcs: " << flag << ": " << r.error().ToString() << "\n";
      return 2;
    }
    *out = static_cast<double>(*r);
  }
  if (!delay.empty()) {
    auto d = coldstart::ParseSeconds(delay);
    if (!d.ok()) {
      std::cerr << "coldstart-fake-gcs: --first-byte-delay: " << d.error().ToString() << "\n";
      return 2;
    }
    opt.first_byte_delay_s = *d;
  }
  std::vector<fg::FaultSpec> faults;
  for (const auto& t : fault_texts) {
    auto f = fg::ParseFaultSpec(t);
    if (!f.ok()) {
      std::cerr << "coldstart-fake-gcs: --fault " << t << ": " << f.error().ToString() << "\n";
      return 2;
    }
    faults.push_back(std::move(*f));
  }

  // Block the signals before any thread exists so every server thread inherits the mask and
  // only sigwait below receives them. A shell starting us in the background (no job control)
  // leaves SIGINT ignored, and an ignored signal never reaches sigwait: restore the default.
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  auto server = fg::Server::Start(opt);
  if (!server.ok()) {
    std::cerr << "coldstart-fake-gcs: " << server.error().ToString() << "\n";
    return 1;
  }
  for (auto& f : faults) (*server)->AddFault(std::move(f));
  std::cout << "listening on " << (*server)->endpoint() << std::endl;  // flushed: scripts wait for it

  int sig = 0;
  sigwait(&sigs, &sig);
  (*server)->Stop();
  return 0;
}
