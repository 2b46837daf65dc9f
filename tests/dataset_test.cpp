// Hostile dataset files (src/data/dataset.cpp) and the read_file cap (src/common/files.cpp): a
// count from a file is bounded by the file's size before anything is multiplied or allocated, and
// every refusal is a kvgate error naming the field, never a crash, an overflow or an OOM kill.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/files.h"
#include "data/dataset.h"
#include "test_util.h"

namespace kvgate {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const error& e) {
    return e.what();
  }
  return "";
}

// A shard header (format in dataset.h) with the given counts, followed by pad zero bytes.
std::string shard_bytes(uint32_t n_heads, uint32_t d_head, const std::vector<uint64_t>& n, size_t pad) {
  std::string s(k_shard_magic, 8);
  const uint32_t fixed[4] = {static_cast<uint32_t>(k_dataset_version), n_heads, d_head, 0};
  s.append(reinterpret_cast<const char*>(fixed), sizeof fixed);
  const int64_t docs[2] = {0, 1};
  s.append(reinterpret_cast<const char*>(docs), sizeof docs);
  s.append(reinterpret_cast<const char*>(n.data()), n.size() * 8);
  s.append(pad, '\0');
  return s;
}

TEST(dataset_hostile, shard_counts_larger_than_the_file_are_refused_before_any_product) {
  const std::string dir = test::temp_dir();
  // 2^40 examples of 131082 bytes in each of 65536 heads: the old sum overflowed int64.
  const std::vector<uint64_t> huge(1u << 16, uint64_t(1) << 40);
  write_file_atomically(dir + "/huge.bin", shard_bytes(1u << 16, 1u << 16, huge, 64));
  std::string msg = error_of([&] { read_shard_header(dir + "/huge.bin"); });
  EXPECT_NE(msg.find("does not fit"), std::string::npos) << msg;
  std::vector<head_examples> heads(1u << 16);
  msg = error_of([&] { read_shard(dir + "/huge.bin", heads); });
  EXPECT_NE(msg.find("does not fit"), std::string::npos) << msg;
  for (const head_examples& h : heads) ASSERT_EQ(h.keys.size(), 0u);

  // Counts near 2^64 that wrap when multiplied.
  write_file_atomically(dir + "/wrap.bin", shard_bytes(2, 4, {~uint64_t(0) / 18 + 1, 0}, 64));
  msg = error_of([&] { read_shard_header(dir + "/wrap.bin"); });
  EXPECT_NE(msg.find("does not fit"), std::string::npos) << msg;

  // Each count fits alone, their sum does not.
  write_file_atomically(dir + "/sum.bin", shard_bytes(3, 1, {10, 10, 10}, 200));
  msg = error_of([&] { read_shard_header(dir + "/sum.bin"); });
  EXPECT_NE(msg.find("header implies"), std::string::npos) << msg;

  // Implausible dimensions and a header cut short.
  write_file_atomically(dir + "/dims.bin", shard_bytes(0, 4, {}, 8));
  EXPECT_NE(error_of([&] { read_shard_header(dir + "/dims.bin"); }).find("implausible dims"), std::string::npos);
  write_file_atomically(dir + "/short.bin", shard_bytes(100, 4, {1, 2}, 0));
  EXPECT_NE(error_of([&] { read_shard_header(dir + "/short.bin"); }).find("truncated header"), std::string::npos);
}

json good_manifest() {
  dataset_manifest m;
  m.model_name = "m";
  m.model_arch = "llama";
  m.n_layer = 2;
  m.n_kv_head = 2;
  m.d_head = 4;
  m.n_pos = m.n_neg = m.n_stored = {0, 0, 0, 0};
  return m.to_json();
}

std::string manifest_error(const json& j) {
  return error_of([&] { dataset_manifest::from_json(j, "manifest.json"); });
}

TEST(dataset_hostile, manifest_fields_out_of_range_are_named) {
  EXPECT_EQ(manifest_error(good_manifest()), "");
  struct bad_case {
    const char* field;
    json value;
    const char* expect;
  };
  const bad_case cases[] = {
      {"n_layer", 1000000, "'n_layer' = 1000000 is outside"},  // 1e6 x 1e6 heads overflowed int
      {"n_kv_head", 4294967297ull, "'n_kv_head'"},              // 2^32 + 1 was read as 1
      {"d_head", 0, "'d_head' = 0 is outside"},
      {"d_head", 2.5, "'d_head' must be an integer"},
      {"n_layer", "2", "'n_layer' must be an integer"},
      {"version", 1e12, "'version'"},
      {"n_docs", -1, "'n_docs'"},
      {"shard_docs", 1e300, "'shard_docs'"},
      {"docs", json::array({json::array({"a", 0, 1})}), "'docs'"},
      {"docs", json::array({json::array({-1, 0, 1})}), "'docs'"},
      {"docs", "x", "'docs'"},
      {"n_pos", json::array({1, 2}), "per-head counts"},
  };
  for (const bad_case& c : cases) {
    json j = good_manifest();
    j[c.field] = c.value;
    const std::string msg = manifest_error(j);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.field << " = " << c.value.dump() << ": " << msg;
  }
  json label = good_manifest();
  label["label"]["horizon"] = 1e15;
  EXPECT_NE(manifest_error(label).find("'horizon'"), std::string::npos) << manifest_error(label);
}

TEST(dataset_hostile, read_file_refuses_files_over_the_cap_and_directories) {
  const std::string dir = test::temp_dir();
  write_file_atomically(dir + "/a.txt", std::string(100, 'x'));
  EXPECT_EQ(read_file(dir + "/a.txt", 100).size(), 100u);
  const std::string msg = error_of([&] { read_file(dir + "/a.txt", 99); });
  EXPECT_NE(msg.find(dir + "/a.txt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("99 bytes"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { read_file(dir); }).find("is a directory"), std::string::npos);
  EXPECT_NE(error_of([&] { read_file(dir + "/missing"); }).find("cannot read file"), std::string::npos);
  // A file without a size (a pipe) is read up to the cap.
  std::string out;
  const std::string fifo = dir + "/fifo";
  ASSERT_EQ(test::run_command("mkfifo '" + fifo + "' && { (head -c 5000 /dev/zero > '" + fifo +
                                  "') >/dev/null 2>&1 & }",
                              &out),
            0);
  const std::string piped = error_of([&] { read_file(fifo, 4096); });
  EXPECT_NE(piped.find("more than the 4096 bytes"), std::string::npos) << piped;
}

}  // namespace
}  // namespace kvgate
