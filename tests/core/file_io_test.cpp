// Positioned reads and writes: whole transfers, short only at end of file, errors named.
#include "coldstart/core/file_io.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>

namespace coldstart {
namespace {

TEST(FileIo, WriteAtThenReadAtShortOnlyAtTheEnd) {
  char path[] = "/tmp/coldstart-file-io-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::unlink(path);
  std::string data(100000, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  ASSERT_TRUE(WriteAt(fd, data.data(), data.size(), 5, "f").ok());
  std::string back(data.size(), '\0');
  auto got = ReadAt(fd, back.data(), back.size(), 5, "f");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(*got, data.size());
  EXPECT_EQ(back, data);
  auto tail = ReadAt(fd, back.data(), 1000, data.size(), "f");  // 5 bytes left
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(*tail, 5u);
  ::close(fd);
}

TEST(FileIo, ErrorsCarryErrnoAndName) {
  char c = 0;
  auto r = ReadAt(-1, &c, 1, 0, "nofile");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().sys_errno, EBADF);
  EXPECT_EQ(r.error().code, Errc::kIo);
  EXPECT_NE(r.error().message.find("nofile: cannot read"), std::string::npos) << r.error().message;
  auto w = WriteAt(-1, &c, 1, 0, "nofile");
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.error().message.find("nofile: cannot write"), std::string::npos) << w.error().message;
}

}  // namespace
}  // namespace coldstart
