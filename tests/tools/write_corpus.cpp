// Writes the malformed corpus (tests/loader/corpus.h) and the seeded mutations as files, for
// the cross-check against the reference safetensors implementation (tests/python/).
#include <cstdio>
#include <string>

#include "../common/temp_dir.h"
#include "../loader/corpus.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: write_corpus DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  for (const auto& c : coldstart::testing::MalformedFiles())
    coldstart::testing::WriteFile(dir + "/malformed-" + c.name + ".safetensors", c.bytes);
  std::string header = R"({"__metadata__":{"a":"b"},"w":{"dtype":"BF16","shape":[2,4],"data_offsets":[0,16]},)"
                       R"("s":{"dtype":"F32","shape":[],"data_offsets":[16,20]}})";
  const std::string valid = coldstart::testing::StFile(header, std::string(20, '\x07'));
  int i = 0;
  for (const auto& m : coldstart::testing::Mutations(valid, 300, 20261121)) {
    char name[64];
    std::snprintf(name, sizeof name, "/mutation-%03d.safetensors", i++);
    coldstart::testing::WriteFile(dir + name, m);
  }
  return 0;
}
