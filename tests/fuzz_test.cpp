// Replays every input committed under tests/fuzz/regressions/<harness>/ (inputs that once crashed
// a fuzz harness, and hand-made hostile inputs) through the harness's entry point
// (tests/fuzz/fuzz_targets.h), in the normal build and under the sanitizer build. A regression
// aborts the test program, as it aborted the fuzzer.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "fuzz/fuzz_targets.h"

namespace kvgate {
namespace {

namespace fs = std::filesystem;

int replay(const std::string& harness) {
  const fuzz::entry entry = fuzz::find_entry(harness);
  EXPECT_NE(entry, nullptr) << harness;
  if (!entry) return 0;
  const fs::path dir = fs::path(KVGATE_FUZZ_REGRESSIONS) / harness;
  std::vector<fs::path> files;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    SCOPED_TRACE(f.string());
    entry(bytes.data(), bytes.size());
  }
  return static_cast<int>(files.size());
}

TEST(fuzz_regressions, gguf_inputs_are_refused_or_read) { EXPECT_GT(replay("gguf"), 0); }
TEST(fuzz_regressions, tokenizer_inputs_round_trip_or_are_refused) { EXPECT_GT(replay("tokenizer"), 0); }
TEST(fuzz_regressions, chat_inputs_format) { EXPECT_GT(replay("chat"), 0); }
TEST(fuzz_regressions, dataset_inputs_are_refused_or_read) { EXPECT_GT(replay("dataset"), 0); }
TEST(fuzz_regressions, serve_requests_are_refused_or_parsed) { EXPECT_GT(replay("serve"), 0); }

// The entry points must see every byte: a few inputs built here, not only committed ones.
TEST(fuzz_regressions, entries_take_empty_and_tiny_inputs) {
  for (const char* h : {"gguf", "tokenizer", "chat", "dataset", "serve"}) {
    const fuzz::entry entry = fuzz::find_entry(h);
    ASSERT_NE(entry, nullptr);
    entry(nullptr, 0);
    const uint8_t one[] = {1}, some[] = {2, 0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0x80};
    entry(one, sizeof one);
    entry(some, sizeof some);
  }
  EXPECT_EQ(fuzz::find_entry("nope"), nullptr);
}

}  // namespace
}  // namespace kvgate
