#include "coldstart/fetch/file_writer.h"

#include "coldstart/core/file_io.h"

#include <liburing.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

namespace coldstart::fetch {
namespace {

Error WriteError(int err) {
  return MakeSysError(err == ENOSPC || err == EDQUOT ? Errc::kResourceExhausted : Errc::kIo, "write failed", err);
}

class PwriteWriter final : public FileWriter {
 public:
  void Submit(int fd, std::uint64_t offset, const std::byte* data, std::size_t len, std::function<void(Status)> done) override {
    done(WriteAt(fd, data, len, offset, "file write"));
  }
  const char* engine() const override { return "pwrite"; }
};

// Only the writer's own thread touches the ring: io_uring cancels a request the kernel handed to
// its workers when the thread that submitted it exits (ECANCELED, seen here with short-lived
// submitting threads), so submitters queue requests and wake the thread through an eventfd
// that the ring itself reads.
class UringWriter final : public FileWriter {
 public:
  static std::unique_ptr<FileWriter> Make(unsigned depth) {
    auto w = std::unique_ptr<UringWriter>(new UringWriter(depth));
    w->efd_ = ::eventfd(0, EFD_CLOEXEC);
    if (w->efd_ < 0) return nullptr;
    if (io_uring_queue_init(depth + 1, &w->ring_, 0) < 0) return nullptr;
    w->ring_ok_ = true;
    w->thread_ = std::thread([p = w.get()] { p->Run(); });
    return w;
  }
  ~UringWriter() override {
    if (thread_.joinable()) {
      {
        std::lock_guard lk(mu_);
        stop_ = true;
      }
      Wake();
      thread_.join();
    }
    if (ring_ok_) io_uring_queue_exit(&ring_);
    if (efd_ >= 0) ::close(efd_);
  }

  void Submit(int fd, std::uint64_t offset, const std::byte* data, std::size_t len, std::function<void(Status)> done) override {
    if (len == 0) {
      done(OkStatus());
      return;
    }
    {
      std::unique_lock lk(mu_);
      space_cv_.wait(lk, [&] { return outstanding_ < depth_; });
      ++outstanding_;
      queue_.push_back(new Request{fd, offset, data, len, std::move(done)});
    }
    Wake();
  }
  const char* engine() const override { return "io_uring"; }

 private:
  struct Request {
    int fd;
    std::uint64_t offset;
    const std::byte* data;
    std::size_t len;
    std::function<void(Status)> done;
  };
  explicit UringWriter(unsigned depth) : depth_(depth) {}

  void Wake() {
    const std::uint64_t one = 1;
    while (::write(efd_, &one, sizeof one) < 0 && errno == EINTR) {
    }
  }
  void ArmWake() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    io_uring_prep_read(sqe, efd_, &efd_value_, sizeof efd_value_, 0);
    io_uring_sqe_set_data(sqe, &efd_value_);
  }

  void Run() {
    pthread_setname_np(pthread_self(), "cs-uring-write");
    ArmWake();
    unsigned in_ring = 0;  // writes submitted and not completed
    std::deque<Request*> retry;  // short writes: the rest goes again
    for (;;) {
      {
        std::lock_guard lk(mu_);
        while (in_ring < depth_ && (!retry.empty() || !queue_.empty())) {
          Request* r;
          if (!retry.empty()) {
            r = retry.front();
            retry.pop_front();
          } else {
            r = queue_.front();
            queue_.pop_front();
          }
          io_uring_sqe* sqe = io_uring_get_sqe(&ring_);  // depth_ + 1 entries: never null
          io_uring_prep_write(sqe, r->fd, r->data, static_cast<unsigned>(std::min<std::size_t>(r->len, 1u << 30)), r->offset);
          io_uring_sqe_set_data(sqe, r);
          ++in_ring;
        }
        if (stop_ && outstanding_ == 0) return;
      }
      int rc = io_uring_submit_and_wait(&ring_, 1);
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      io_uring_cqe* cqe = nullptr;
      unsigned head, seen = 0;
      std::vector<std::pair<Request*, Status>> finished;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        ++seen;
        void* tag = io_uring_cqe_get_data(cqe);
        const int res = cqe->res;
        if (tag == &efd_value_) {
          ArmWake();
          continue;
        }
        auto* r = static_cast<Request*>(tag);
        --in_ring;
        if (res == -EINTR || res == -EAGAIN || (res > 0 && static_cast<std::size_t>(res) < r->len)) {
          if (res > 0) {
            r->data += res;
            r->offset += static_cast<std::uint64_t>(res);
            r->len -= static_cast<std::size_t>(res);
          }
          retry.push_back(r);
          continue;
        }
        finished.push_back({r, res < 0 ? Status(WriteError(-res)) : res == 0 ? Status(WriteError(EIO)) : OkStatus()});
      }
      io_uring_cq_advance(&ring_, seen);
      for (auto& [r, st] : finished) {
        auto done = std::move(r->done);
        delete r;
        done(std::move(st));
      }
      if (!finished.empty()) {
        {
          std::lock_guard lk(mu_);
          outstanding_ -= static_cast<unsigned>(finished.size());
        }
        space_cv_.notify_all();
      }
    }
  }

  const unsigned depth_;
  io_uring ring_{};
  bool ring_ok_ = false;
  int efd_ = -1;
  std::uint64_t efd_value_ = 0;   // the ring reads the eventfd into it (writer thread only)
  std::mutex mu_;
  std::condition_variable space_cv_;
  std::deque<Request*> queue_;    // GUARDED_BY(mu_): submitted, not yet in the ring
  unsigned outstanding_ = 0;      // GUARDED_BY(mu_): submitted and `done` not yet called
  bool stop_ = false;             // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace

std::unique_ptr<FileWriter> FileWriter::Make(bool use_uring, unsigned queue_depth) {
  if (use_uring)
    if (auto w = UringWriter::Make(std::max(queue_depth, 2u))) return w;
  return std::make_unique<PwriteWriter>();
}

FileWriter& FileWriter::Shared() {
  static std::unique_ptr<FileWriter> writer = Make(true);
  return *writer;
}

Status FileWriter::Write(int fd, std::uint64_t offset, const std::byte* data, std::size_t len) {
  std::promise<Status> p;
  auto f = p.get_future();
  Submit(fd, offset, data, len, [&p](Status s) { p.set_value(std::move(s)); });
  return f.get();
}

}  // namespace coldstart::fetch
