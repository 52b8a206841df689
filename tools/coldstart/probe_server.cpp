#include "probe_server.h"

#include <httplib.h>

#include <cerrno>
#include <chrono>
#include <thread>

namespace coldstart::cli {
namespace {

class HttplibProbe final : public ProbeServer {
 public:
  explicit HttplibProbe(Answer answer) : answer_(std::move(answer)) {
    // A probe is one small request every few seconds: a couple of threads answer it; idle
    // keep-alive connections must not hold them (Cloud Run and kubelet reconnect anyway).
    server_.new_task_queue = [] { return new httplib::ThreadPool(2); };
    server_.set_keep_alive_timeout(1);
    // SO_REUSEADDR (a restarted container binds despite TIME_WAIT) but not httplib's default
    // SO_REUSEPORT: a port someone else listens on must be an error, not a shared port where
    // the kernel hands each probe to one of us at random.
    server_.set_socket_options([](int sock) {
      int yes = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    auto handler = [this](const httplib::Request&, httplib::Response& res) {
      auto [status, body] = answer_();
      res.status = status;
      res.set_header("Cache-Control", "no-store");
      res.set_content(body + "\n", "application/json");
    };
    server_.Get(".*", handler);
    server_.Post(".*", handler);
  }
  ~HttplibProbe() override {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }

  Status Listen(const std::string& host, int port) {
    errno = 0;
    if (port == 0) {
      port_ = server_.bind_to_any_port(host);
    } else if (server_.bind_to_port(host, port)) {
      port_ = port;
    }
    if (port_ <= 0) {
      const int err = errno;
      std::string what = "probe: cannot listen on " + host + ":" + std::to_string(port);
      return err ? MakeSysError(Errc::kIo, what, err) : MakeError(Errc::kIo, what);
    }
    thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "cs-probe");
      server_.listen_after_bind();
    });
    // stop() before the accept loop runs would be lost and the destructor would hang.
    for (int i = 0; i < 5000 && !server_.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!server_.is_running()) return MakeError(Errc::kInternal, "probe: the server thread did not start");
    return OkStatus();
  }

  int port() const override { return port_; }

 private:
  Answer answer_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

}  // namespace

Result<std::unique_ptr<ProbeServer>> ProbeServer::Start(const std::string& host, int port, Answer answer) {
  auto s = std::make_unique<HttplibProbe>(std::move(answer));
  CS_RETURN_IF_ERROR(s->Listen(host, port));
  return std::unique_ptr<ProbeServer>(std::move(s));
}

}  // namespace coldstart::cli
