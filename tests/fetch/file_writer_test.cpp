// The io_uring write service (and its pwrite fallback): every byte lands where it was sent,
// from many submitting threads at once, short writes and all; errors reach `done` exactly once.
#include "coldstart/fetch/file_writer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "../common/temp_dir.h"

namespace coldstart::fetch {
namespace {

using coldstart::testing::TempDir;

class FileWriterTest : public ::testing::TestWithParam<bool> {};

TEST_P(FileWriterTest, ConcurrentOutOfOrderWritesLandInPlace) {
  auto w = FileWriter::Make(GetParam(), 8);
  if (GetParam() && std::string(w->engine()) != "io_uring") GTEST_SKIP() << "io_uring is not available here";
  TempDir dir;
  const std::string path = dir / "f";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  constexpr std::size_t kPiece = 64 * 1024 + 13, kPieces = 200;
  std::mt19937_64 rng(11);
  std::vector<std::byte> data(kPiece * kPieces);
  for (auto& b : data) b = static_cast<std::byte>(rng());
  std::vector<std::size_t> order(kPieces);
  for (std::size_t i = 0; i < kPieces; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<std::atomic<int>> calls(kPieces);
  std::atomic<int> failures{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      for (std::size_t k = static_cast<std::size_t>(t); k < kPieces; k += 4) {
        const std::size_t i = order[k];
        w->Submit(fd, i * kPiece, data.data() + i * kPiece, kPiece, [&, i](Status s) {
          calls[i].fetch_add(1);
          if (!s.ok()) {
            failures.fetch_add(1);
            ADD_FAILURE() << s.error().ToString();
          }
        });
      }
    });
  for (auto& t : ts) t.join();
  // A synchronous write after the queued ones: returns once it is written.
  const std::byte tail[3] = {std::byte{1}, std::byte{2}, std::byte{3}};
  ASSERT_TRUE(w->Write(fd, data.size(), tail, 3).ok());
  w.reset();  // joins: every queued write has completed
  for (std::size_t i = 0; i < kPieces; ++i) EXPECT_EQ(calls[i].load(), 1) << i;
  EXPECT_EQ(failures.load(), 0);
  std::vector<std::byte> back(data.size() + 3);
  ASSERT_EQ(::pread(fd, back.data(), back.size(), 0), static_cast<ssize_t>(back.size()));
  EXPECT_EQ(std::memcmp(back.data(), data.data(), data.size()), 0);
  EXPECT_EQ(std::memcmp(back.data() + data.size(), tail, 3), 0);
  ::close(fd);
}

TEST_P(FileWriterTest, ErrorsReachDoneOnce) {
  auto w = FileWriter::Make(GetParam(), 4);
  TempDir dir;
  const std::string path = dir / "ro";
  int fd = ::open(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0644);  // not writable: EBADF
  ASSERT_GE(fd, 0);
  const std::byte b[16] = {};
  auto st = w->Write(fd, 0, b, sizeof b);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, Errc::kIo);
  EXPECT_EQ(st.error().sys_errno, EBADF);
  std::atomic<int> calls{0};
  w->Submit(fd, 0, b, 0, [&](Status s) {  // empty: done at once, OK
    EXPECT_TRUE(s.ok());
    ++calls;
  });
  EXPECT_EQ(calls.load(), 1);
  ::close(fd);
}

INSTANTIATE_TEST_SUITE_P(Engines, FileWriterTest, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "io_uring" : "pwrite"; });

TEST(FileWriterShared, IsIoUringWhereTheKernelHasIt) {
  auto probe = FileWriter::Make(true);
  EXPECT_STREQ(FileWriter::Shared().engine(), probe->engine());
}

}  // namespace
}  // namespace coldstart::fetch
