// Tests for src/gguf: writer -> reader round trips, hostile and truncated files, the default
// model's header, and dequantization / quantization against gguf-py's independent numpy
// implementation (tests/data/gguf/quant_golden.gguf, made by tools/make_quant_golden.py).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "gguf/gguf.h"
#include "test_util.h"

namespace kvgate::gguf {
namespace {

using bytes = std::vector<uint8_t>;

// Little-endian byte builder for hand-made (hostile) files.
struct raw {
  bytes b;
  template <typename T>
  raw& put(T v) {
    const size_t at = b.size();
    b.resize(at + sizeof(T));
    std::memcpy(b.data() + at, &v, sizeof(T));
    return *this;
  }
  raw& u32(uint32_t v) { return put(v); }
  raw& u64(uint64_t v) { return put(v); }
  raw& str(std::string_view s) {
    u64(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  raw& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    b = {'G', 'G', 'U', 'F'};
    return u32(version).u64(n_tensors).u64(n_kv);
  }
  raw& pad(size_t a = 32) {
    b.resize((b.size() + a - 1) / a * a, 0);
    return *this;
  }
  // tensor info: name, n_dims, dims, type, offset
  raw& tensor(std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
    str(name).u32(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) u64(d);
    return u32(type).u64(offset);
  }
};

std::string write_bytes(const bytes& b, const std::string& name = "f.gguf") {
  static const std::string dir = test::temp_dir();
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
  return path;
}

// Expects open() to throw kvgate::error whose message names the path and contains `what`.
void expect_refused(const bytes& b, const std::string& what) {
  const std::string path = write_bytes(b);
  try {
    file::open(path);
    ADD_FAILURE() << "opened a file that should be refused for: " << what;
  } catch (const error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "message: " << msg << "\nexpected: " << what;
    if (std::getenv("KVGATE_SHOW_ERRORS")) std::printf("  %s\n", msg.c_str());
  }
}

uint32_t bits(float f) { return std::bit_cast<uint32_t>(f); }

std::vector<float> random_floats(size_t n, uint32_t seed, float lo_scale, float hi_scale) {
  // blocks of 32 share a scale, log-uniform in [lo_scale, hi_scale]
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> log_scale(std::log(lo_scale), std::log(hi_scale));
  std::vector<float> x(n);
  float s = 1;
  for (size_t i = 0; i < n; ++i) {
    if (i % 32 == 0) s = std::exp(log_scale(rng));
    x[i] = normal(rng) * s;
  }
  return x;
}

// One small file with every metadata type and one tensor of each type; its last tensor's size is
// a multiple of the alignment, so every proper prefix is missing real content.
writer sample_writer() {
  writer w;
  w.set("u8", value::of_u8(200));
  w.set("i8", value::of_i8(-100));
  w.set("u16", value::of_u16(60000));
  w.set("i16", value::of_i16(-30000));
  w.set("u32", value::of_u32(4000000000u));
  w.set("i32", value::of_i32(-2000000000));
  w.set("u64", value::of_u64(std::numeric_limits<uint64_t>::max()));
  w.set("i64", value::of_i64(std::numeric_limits<int64_t>::min()));
  w.set("f32", value::of_f32(-1.5e-7f));
  w.set("f64", value::of_f64(3.141592653589793));
  w.set("bool", value::of_bool(true));
  w.set("string", value::of_string("h\xc3\xa9llo\n"));
  w.set("empty_string", value::of_string(""));
  w.set("strings", value::of_array(value_type::string, {value::of_string("a"), value::of_string(""),
                                                        value::of_string("ccc")}));
  w.set("empty_array", value::of_array(value_type::f64, {}));
  w.set("nested",
        value::of_array(value_type::array,
                        {value::of_array(value_type::i16, {value::of_i16(-1), value::of_i16(2)}),
                         value::of_array(value_type::boolean, {value::of_bool(false)}),
                         value::of_array(value_type::array,
                                         {value::of_array(value_type::u8, {value::of_u8(7)})})}));
  const std::vector<float> x = random_floats(256, 1, 0.1f, 10.0f);
  for (tensor_type t : {tensor_type::f16, tensor_type::bf16, tensor_type::q8_0, tensor_type::q4_0,
                        tensor_type::q4_1, tensor_type::q5_0, tensor_type::q5_1}) {
    bytes q(row_bytes(t, 64) * 4);
    quantize(t, x.data(), q.data(), 256);
    w.add_tensor(std::string(traits(t).name), {64, 4}, t, q);
  }
  for (tensor_type t : {tensor_type::q4_k, tensor_type::q5_k, tensor_type::q6_k}) {
    bytes q(row_bytes(t, 256) * 2, 0x5a);  // arbitrary blocks: the reader does not look inside
    w.add_tensor(std::string(traits(t).name), {256, 1, 1, 2}, t, q);  // 4 dims
  }
  w.add_tensor_f32("last.f32", {8}, std::span(x).first(8));
  return w;
}

std::string write_sample() {
  const std::string path = test::temp_dir() + "/sample.gguf";
  sample_writer().write(path);
  return path;
}

// ---------------------------------------------------------------------------------------------
// values

TEST(gguf_value, conversions_are_exact_or_throw) {
  EXPECT_EQ(value::of_u32(7).as_u64(), 7u);
  EXPECT_EQ(value::of_i32(7).as_u64(), 7u);
  EXPECT_THROW(value::of_i32(-1).as_u64(), error);
  EXPECT_EQ(value::of_u8(255).as_i64(), 255);
  EXPECT_THROW(value::of_u64(uint64_t{1} << 63).as_i64(), error);
  EXPECT_EQ(value::of_f32(0.1f).as_f64(), static_cast<double>(0.1f));
  EXPECT_EQ(value::of_u64(uint64_t{1} << 53).as_f64(), 9007199254740992.0);
  EXPECT_THROW(value::of_u64((uint64_t{1} << 53) + 1).as_f64(), error);
  EXPECT_THROW(value::of_f32(1.0f).as_u64(), error);
  EXPECT_THROW(value::of_string("1").as_u64(), error);
  EXPECT_THROW(value::of_u8(1).as_bool(), error);
  EXPECT_THROW(value::of_bool(true).as_string(), error);
  EXPECT_THROW(value::of_array(value_type::u8, {value::of_i8(1)}), error);
}

// ---------------------------------------------------------------------------------------------
// writer -> reader

TEST(gguf_roundtrip, metadata_of_every_type_round_trips) {
  const auto f = file::open(write_sample());
  EXPECT_EQ(f->version(), 3u);
  ASSERT_EQ(f->metadata().size(), 16u);
  EXPECT_EQ(f->metadata()[0].first, "u8");  // insertion order kept
  EXPECT_EQ(f->get("u8").type(), value_type::u8);
  EXPECT_EQ(f->get_u64("u8", 0), 200u);
  EXPECT_EQ(f->get("i8").as_i64(), -100);
  EXPECT_EQ(f->get_u64("u16", 0), 60000u);
  EXPECT_EQ(f->get("i16").as_i64(), -30000);
  EXPECT_EQ(f->get_u64("u32", 0), 4000000000u);
  EXPECT_EQ(f->get("i32").as_i64(), -2000000000);
  EXPECT_EQ(f->get_u64("u64", 0), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(f->get("i64").as_i64(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(f->get("f32").type(), value_type::f32);
  EXPECT_EQ(f->get_f64("f32", 0), static_cast<double>(-1.5e-7f));
  EXPECT_EQ(f->get_f64("f64", 0), 3.141592653589793);
  EXPECT_TRUE(f->get_bool("bool", false));
  EXPECT_EQ(f->get_string("string", ""), "h\xc3\xa9llo\n");
  EXPECT_EQ(f->get_string("empty_string", "x"), "");
  const auto& strings = f->get("strings").as_array();
  ASSERT_EQ(strings.size(), 3u);
  EXPECT_EQ(f->get("strings").elem_type(), value_type::string);
  EXPECT_EQ(strings[2].as_string(), "ccc");
  EXPECT_EQ(f->get("empty_array").elem_type(), value_type::f64);
  EXPECT_TRUE(f->get("empty_array").as_array().empty());
  const auto& nested = f->get("nested").as_array();
  ASSERT_EQ(nested.size(), 3u);
  EXPECT_EQ(nested[0].elem_type(), value_type::i16);
  EXPECT_EQ(nested[0].as_array()[0].as_i64(), -1);
  EXPECT_FALSE(nested[1].as_array()[0].as_bool());
  EXPECT_EQ(nested[2].as_array()[0].as_array()[0].as_u64(), 7u);
  // fallbacks and lookups
  EXPECT_EQ(f->get_u64("absent", 42), 42u);
  EXPECT_EQ(f->find("absent"), nullptr);
  EXPECT_EQ(f->alignment(), 32u);
}

TEST(gguf_roundtrip, tensors_of_every_type_round_trip_byte_for_byte) {
  const auto f = file::open(write_sample());
  ASSERT_EQ(f->tensors().size(), 11u);
  const std::vector<float> x = random_floats(256, 1, 0.1f, 10.0f);
  for (const tensor_info& t : f->tensors()) {
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.offset % 32, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 32, 0u);  // mapping is page aligned
    EXPECT_EQ(t.n_bytes, row_bytes(t.type, t.ne[0]) * t.n_rows());
    if (t.name == "last.f32") continue;
    EXPECT_EQ(t.name, traits(t.type).name);
    if (traits(t.type).block_size == 256) {
      EXPECT_EQ(t.ne, (std::vector<int64_t>{256, 1, 1, 2}));
      EXPECT_TRUE(std::all_of(t.data, t.data + t.n_bytes, [](uint8_t b) { return b == 0x5a; }));
    } else {
      EXPECT_EQ(t.ne, (std::vector<int64_t>{64, 4}));
      bytes q(t.n_bytes);
      quantize(t.type, x.data(), q.data(), 256);
      EXPECT_EQ(std::memcmp(q.data(), t.data, t.n_bytes), 0);
    }
  }
  const tensor_info& last = f->tensor("last.f32");
  EXPECT_EQ(std::memcmp(last.data, x.data(), 32), 0);
  EXPECT_EQ(f->find_tensor("absent"), nullptr);
  EXPECT_THROW(f->tensor("absent"), error);
}

TEST(gguf_roundtrip, custom_alignment_is_written_and_honoured) {
  writer w;
  w.set_alignment(256);
  w.set("k", value::of_u8(1));
  const float x[3] = {1, 2, 3};
  w.add_tensor_f32("a", {3}, x);
  w.add_tensor_f32("b", {1}, std::span(x, 1));
  const std::string path = test::temp_dir() + "/aligned.gguf";
  w.write(path);
  const auto f = file::open(path);
  EXPECT_EQ(f->alignment(), 256u);
  EXPECT_EQ(f->get_u64("general.alignment", 0), 256u);
  EXPECT_EQ(f->tensor("b").offset, 256u);
  EXPECT_EQ((f->tensor("b").data - f->tensor("a").data), 256);
  EXPECT_EQ(f->file_size() % 256, 0u);  // the last tensor is padded too, as ggml expects
  EXPECT_THROW(w.set_alignment(48), error);
}

TEST(gguf_roundtrip, set_replaces_a_key_in_place) {
  writer w;
  w.set("a", value::of_u8(1));
  w.set("b", value::of_u8(2));
  w.set("a", value::of_string("x"));
  const std::string path = test::temp_dir() + "/replace.gguf";
  w.write(path);
  const auto f = file::open(path);
  ASSERT_EQ(f->metadata().size(), 2u);
  EXPECT_EQ(f->metadata()[0].first, "a");
  EXPECT_EQ(f->get_string("a", ""), "x");
  // a type mismatch names the file and the key
  try {
    f->get_u64("a", 0);
    ADD_FAILURE();
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("'a'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_THROW(f->get("absent"), error);
}

TEST(gguf_roundtrip, writer_refuses_inconsistent_tensors) {
  writer w;
  const bytes q(34);
  EXPECT_THROW(w.add_tensor("short", {64}, tensor_type::q8_0, q), error);  // needs 68 bytes
  EXPECT_THROW(w.add_tensor("odd", {33}, tensor_type::q8_0, q), error);    // not whole blocks
  EXPECT_THROW(w.add_tensor("zero", {32, 0}, tensor_type::q8_0, q), error);
  EXPECT_THROW(w.add_tensor("five", {32, 1, 1, 1, 1}, tensor_type::q8_0, q), error);
  EXPECT_THROW(w.add_tensor(std::string(65, 'n'), {32}, tensor_type::q8_0, q), error);
  EXPECT_THROW(w.add_tensor("bad_type", {32}, static_cast<tensor_type>(6), q), error);
  w.add_tensor(std::string(64, 'n'), {32}, tensor_type::q8_0, q);
  EXPECT_THROW(w.add_tensor(std::string(64, 'n'), {32}, tensor_type::q8_0, q), error);
}

TEST(gguf_roundtrip, write_replaces_atomically_and_leaves_no_temporary) {
  const std::string dir = test::temp_dir();
  const std::string path = dir + "/model.gguf";
  sample_writer().write(path);
  writer small;
  small.set("only", value::of_bool(false));
  small.write(path);  // over an existing file
  EXPECT_EQ(file::open(path)->metadata().size(), 1u);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), {}), 1);
  EXPECT_THROW(small.write(dir + "/no/such/dir/x.gguf"), error);
}

// ---------------------------------------------------------------------------------------------
// damaged and hostile files

TEST(gguf_hostile, missing_file_error_names_the_path) {
  const std::string path = test::temp_dir() + "/does_not_exist.gguf";
  try {
    file::open(path);
    ADD_FAILURE();
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
  }
  EXPECT_THROW(file::open(test::temp_dir()), error);  // a directory
}

TEST(gguf_hostile, truncated_file_gives_error_at_every_length) {
  const std::string path = write_sample();
  const size_t size = std::filesystem::file_size(path);
  ASSERT_GT(size, 1000u);
  ASSERT_NO_THROW(file::open(path));
  // shrink the one file a byte at a time: cheaper than writing every prefix
  for (size_t len = size; len-- > 0;) {
    std::filesystem::resize_file(path, len);
    EXPECT_THROW(file::open(path), error) << "prefix of " << len << " bytes";
  }
}

TEST(gguf_hostile, corrupted_header_bytes_give_an_error_or_a_valid_file_never_a_crash) {
  const std::string path = write_sample();
  size_t header_end = std::filesystem::file_size(path);
  const auto sample = file::open(path);
  for (const tensor_info& t : sample->tensors()) header_end -= (t.n_bytes + 31) / 32 * 32;
  const int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  for (size_t i = 0; i < header_end + 64; ++i) {
    uint8_t old = 0;
    ASSERT_EQ(pread(fd, &old, 1, static_cast<off_t>(i)), 1);
    for (uint8_t v : {uint8_t{0x00}, uint8_t{0xff}, uint8_t{0x80}, uint8_t(old + 1)}) {
      ASSERT_EQ(pwrite(fd, &v, 1, static_cast<off_t>(i)), 1);
      try {
        const auto f = file::open(path);
        for (const tensor_info& t : f->tensors()) ASSERT_LE(t.offset + t.n_bytes, f->file_size());
      } catch (const error&) {
      }
    }
    ASSERT_EQ(pwrite(fd, &old, 1, static_cast<off_t>(i)), 1);
  }
  ::close(fd);
}

struct hostile_case {
  const char* name;
  bytes file;
  const char* message;  // a part of the expected error message
};

std::vector<hostile_case> hostile_cases() {
  const uint64_t huge = uint64_t{1} << 62;
  std::vector<hostile_case> c;
  auto kv = [](std::string_view key, uint32_t type) {
    return raw().header(0, 1).str(key).u32(type);
  };
  c.push_back({"bad_magic", raw().header(0, 0).b, "not a GGUF file"});
  c.back().file[3] = 'X';
  c.push_back({"version_1", raw().header(0, 0, 1).b, "version 1 is not supported"});
  c.push_back({"version_4", raw().header(0, 0, 4).b, "unsupported GGUF version 4"});
  c.push_back({"big_endian", raw().header(0, 0, 0x03000000).b, "big-endian"});
  c.push_back({"giant_kv_count", raw().header(0, huge).b, "metadata keys"});
  c.push_back({"giant_tensor_count", raw().header(huge, 0).b, "tensors"});
  c.push_back({"giant_key_length", raw().header(0, 1).u64(huge).pad(64).b, "claims"});
  c.push_back({"giant_string_length", kv("s", 8).u64(huge).b, "claims"});
  c.push_back({"giant_array_count", kv("a", 9).u32(4).u64(huge).b, "cannot fit"});
  c.push_back({"giant_array_of_arrays", kv("a", 9).u32(9).u64(huge / 8).b, "cannot fit"});
  c.push_back({"unknown_value_type", kv("k", 13).u32(0).b, "unknown value type 13"});
  c.push_back(
      {"unknown_array_element_type", kv("k", 9).u32(77).u64(0).b, "unknown array element type 77"});
  raw deep = kv("deep", 9);
  for (int i = 0; i < 12; ++i) deep.u32(9).u64(1);
  c.push_back({"deep_array_nesting", deep.b, "nested deeper"});
  c.push_back({"bool_neither_0_nor_1", kv("b", 7).put<uint8_t>(2).b, "neither 0 nor 1"});
  c.push_back({"truncated_value", kv("x", 10).u32(1).b, "truncated"});
  c.push_back({"duplicate_key", raw().header(0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2).b,
               "duplicate metadata key 'k'"});
  c.push_back({"alignment_not_power_of_two", kv("general.alignment", 4).u32(48).b, "power of two"});
  c.push_back({"alignment_zero", kv("general.alignment", 4).u32(0).b, "power of two"});
  c.push_back({"alignment_a_string", kv("general.alignment", 8).str("32").b, "general.alignment"});

  auto one = [](std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset,
                size_t data) {
    raw r;
    r.header(1, 0).tensor(name, std::move(ne), type, offset).pad();
    r.b.resize(r.b.size() + data, 0);
    return r.b;
  };
  c.push_back({"tensor_name_too_long", one(std::string(65, 't'), {32}, 0, 0, 128),
               "longer than the limit of 64"});
  c.push_back({"zero_dims", one("t", {}, 0, 0, 128), "0 dimensions"});
  c.push_back({"five_dims", one("t", {1, 1, 1, 1, 1}, 0, 0, 128), "5 dimensions"});
  c.push_back({"zero_dim", one("t", {4, 0}, 0, 0, 128), "dimension 1 is 0"});
  c.push_back(
      {"dims_overflow", one("t", {uint64_t{1} << 32, uint64_t{1} << 32}, 0, 0, 128), "overflow"});
  c.push_back({"unknown_tensor_type", one("t", {256}, 10, 0, 128), "type 10 (Q2_K)"});
  c.push_back({"unknown_tensor_type_id", one("t", {32}, 1000, 0, 128), "type 1000 (unknown)"});
  c.push_back({"ne0_not_whole_blocks", one("t", {33}, 8, 0, 128),
               "not a multiple of the Q8_0 block size 32"});
  c.push_back({"offset_outside_file", one("t", {4}, 0, uint64_t{1} << 40, 128), "outside"});
  c.push_back({"offset_wraps_around", one("t", {4}, 0, ~uint64_t{31}, 128), "outside"});
  c.push_back(
      {"misaligned_offset", one("t", {4}, 0, 4, 128), "not a multiple of the alignment 32"});
  c.push_back({"data_one_byte_short", one("t", {8}, 0, 0, 31), "outside"});
  raw dup;
  dup.header(2, 0).tensor("t", {4}, 0, 0).tensor("t", {4}, 0, 32).pad();
  dup.b.resize(dup.b.size() + 64);
  c.push_back({"duplicate_tensor_name", dup.b, "duplicate tensor name 't'"});
  return c;
}

class gguf_hostile_header : public testing::TestWithParam<hostile_case> {};

TEST_P(gguf_hostile_header, is_refused_with_a_message_naming_the_problem) {
  expect_refused(GetParam().file, GetParam().message);
}

INSTANTIATE_TEST_SUITE_P(all, gguf_hostile_header, testing::ValuesIn(hostile_cases()),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(gguf_hostile, version_2_and_valid_hand_made_files_are_accepted) {
  raw r;
  r.header(1, 1, 2).str("general.alignment").u32(4).u32(64).tensor("t", {8}, 0, 0).pad(64);
  r.b.resize(r.b.size() + 32, 0);  // no trailing padding: lenient where ggml would not be
  const auto f = file::open(write_bytes(r.b));
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->tensor("t").data - f->tensor("t").offset, f->tensors()[0].data);
  // no tensors, no padding after the metadata
  EXPECT_NO_THROW(file::open(write_bytes(raw().header(0, 0).b)));
  expect_refused({}, "empty");
}

// ---------------------------------------------------------------------------------------------
// f16 / bf16

TEST(gguf_half, f16_known_bit_patterns) {
  EXPECT_EQ(bits(f16_to_f32(0x0000)), 0x00000000u);
  EXPECT_EQ(bits(f16_to_f32(0x8000)), 0x80000000u);  // -0
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x0400), 0x1p-14f);          // smallest normal
  EXPECT_EQ(f16_to_f32(0x0001), 0x1p-24f);          // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x83ff), -1023 * 0x1p-24f);  // largest subnormal
  EXPECT_EQ(bits(f16_to_f32(0x7c00)), 0x7f800000u);
  EXPECT_EQ(bits(f16_to_f32(0xfc00)), 0xff800000u);
  EXPECT_EQ(bits(f16_to_f32(0x7e00)), 0x7fc00000u);
  EXPECT_EQ(bits(f16_to_f32(0x7c01)), 0x7fc02000u);  // signalling NaN comes back quiet

  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65519.996f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // the tie rounds to even, i.e. to infinity
  EXPECT_EQ(f32_to_f16(1e6f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-INFINITY), 0xfc00);
  EXPECT_EQ(f32_to_f16(NAN) & 0x7e00, 0x7e00);
  EXPECT_EQ(f32_to_f16(std::bit_cast<float>(0xff812345u)), 0xfe09);  // quiet, payload's top bits
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3c00);                    // tie to even (down)
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);                // tie to even (up)
  EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001);
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000);      // subnormal tie to even (zero)
  EXPECT_EQ(f32_to_f16(3 * 0x1p-25f), 0x0002);  // subnormal tie to even (up)
  EXPECT_EQ(f32_to_f16(0x1p-25f * 1.0001f), 0x0001);
  EXPECT_EQ(f32_to_f16(0x1p-14f - 0x1p-25f), 0x0400);  // rounds up into the normals
  EXPECT_EQ(f32_to_f16(1e-40f), 0x0000);
}

TEST(gguf_half, f16_to_f32_is_exact_for_all_65536_halves) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(static_cast<uint16_t>(h));
    const int exp = (h >> 10) & 31, mant = h & 1023;
    const double sign = (h & 0x8000) ? -1 : 1;
    if (exp == 31) {
      EXPECT_TRUE(mant ? std::isnan(f) : std::isinf(f)) << h;
      continue;
    }
    const double expect =
        exp == 0 ? sign * std::ldexp(mant, -24) : sign * std::ldexp(1024 + mant, exp - 25);
    ASSERT_EQ(static_cast<double>(f), expect) << h;
    ASSERT_EQ(f32_to_f16(f), h) << h;  // and back
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << h;
  }
}

#if defined(__F16C__)
TEST(gguf_half, portable_conversions_match_the_f16c_instructions) {
  for (uint32_t h = 0; h < 65536; ++h) {
    ASSERT_EQ(bits(f16_to_f32(static_cast<uint16_t>(h))), bits(_cvtsh_ss(static_cast<uint16_t>(h))))
        << h;
  }
  for (uint64_t i = 0; i < (uint64_t{1} << 32); i += 251) {
    const float f = std::bit_cast<float>(static_cast<uint32_t>(i));
    ASSERT_EQ(f32_to_f16(f), _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)) << std::hex << i;
  }
}
#endif

TEST(gguf_half, bf16_known_bit_patterns) {
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xc0a0), -5.0f);
  EXPECT_EQ(bits(bf16_to_f32(0x0001)), 0x00010000u);  // subnormal
  EXPECT_EQ(bits(bf16_to_f32(0xff80)), 0xff800000u);
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie to even (down)
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie to even (up)
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3f808001u)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds to inf
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x00010000u)), 0x0001);  // subnormals kept
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x7f800001u)), 0x7fc0);  // NaN made quiet
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), h);
  }
}

// ---------------------------------------------------------------------------------------------
// dequantization and quantization

TEST(gguf_quant, type_table_matches_ggml) {
  struct row {
    tensor_type type;
    const char* name;
    int64_t block;
    size_t size;
  };
  for (const row& r :
       {row{tensor_type::f32, "F32", 1, 4}, row{tensor_type::f16, "F16", 1, 2},
        row{tensor_type::bf16, "BF16", 1, 2}, row{tensor_type::q8_0, "Q8_0", 32, 34},
        row{tensor_type::q4_0, "Q4_0", 32, 18}, row{tensor_type::q4_1, "Q4_1", 32, 20},
        row{tensor_type::q5_0, "Q5_0", 32, 22}, row{tensor_type::q5_1, "Q5_1", 32, 24},
        row{tensor_type::q4_k, "Q4_K", 256, 144}, row{tensor_type::q5_k, "Q5_K", 256, 176},
        row{tensor_type::q6_k, "Q6_K", 256, 210}}) {
    EXPECT_EQ(traits(r.type).name, r.name);
    EXPECT_EQ(traits(r.type).block_size, r.block);
    EXPECT_EQ(traits(r.type).type_size, r.size);
    EXPECT_EQ(row_bytes(r.type, r.block * 3), r.size * 3);
  }
  EXPECT_EQ(find_traits(static_cast<tensor_type>(10)), nullptr);  // Q2_K
  EXPECT_THROW(traits(static_cast<tensor_type>(10)), error);
  EXPECT_THROW(row_bytes(tensor_type::q4_k, 128), error);
  float y[32];
  EXPECT_THROW(dequantize(tensor_type::q8_0, y, y, 31), error);
  EXPECT_THROW(quantize(tensor_type::q6_k, y, y, 256), error);
}

// Every "<name>" with a "<name>.ref" in the golden file: our dequantization must equal gguf-py's
// bit for bit (both follow ggml's reference order of operations in f32, without FMA).
TEST(gguf_quant, dequantize_matches_gguf_py_golden_exactly) {
  const auto f = file::open(test::data_path("gguf/quant_golden.gguf"));
  std::set<std::string> types_seen;
  int n_checked = 0;
  for (const tensor_info& t : f->tensors()) {
    const tensor_info* ref = f->find_tensor(t.name + ".ref");
    if (!ref) continue;
    SCOPED_TRACE(t.name);
    ASSERT_EQ(ref->type, tensor_type::f32);
    ASSERT_EQ(ref->ne, t.ne);
    std::vector<float> y(t.n_elements());
    dequantize(t.type, t.data, y.data(), t.n_elements());
    for (int64_t i = 0; i < t.n_elements(); ++i) {
      float expect;
      std::memcpy(&expect, ref->data + 4 * i, 4);
      ASSERT_EQ(bits(y[i]), bits(expect)) << "element " << i << ": " << y[i] << " vs " << expect;
    }
    // unaligned source: the kernels must not assume alignment
    bytes shifted(t.n_bytes + 1);
    std::memcpy(shifted.data() + 1, t.data, t.n_bytes);
    std::vector<float> y2(t.n_elements());
    dequantize(t.type, shifted.data() + 1, y2.data(), t.n_elements());
    ASSERT_EQ(std::memcmp(y.data(), y2.data(), 4 * y.size()), 0);
    types_seen.insert(std::string(traits(t.type).name));
    ++n_checked;
  }
  EXPECT_EQ(types_seen, (std::set<std::string>{"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0",
                                               "Q5_1", "Q4_K", "Q5_K", "Q6_K"}));
  EXPECT_NE(f->find_tensor("real.token_embd.weight"), nullptr);
  EXPECT_NE(f->find_tensor("real.blk.0.attn_q.weight"), nullptr);
  EXPECT_EQ(n_checked, 18);
}

// Every "<name>" with a "<name>.src": our quantizer reproduces gguf-py's bytes from the same input.
TEST(gguf_quant, quantize_matches_gguf_py_bytes_exactly) {
  const auto f = file::open(test::data_path("gguf/quant_golden.gguf"));
  int n_checked = 0;
  for (const tensor_info& t : f->tensors()) {
    const tensor_info* src = f->find_tensor(t.name + ".src");
    if (!src) continue;
    SCOPED_TRACE(t.name);
    std::vector<float> x(src->n_elements());
    std::memcpy(x.data(), src->data, src->n_bytes);
    bytes q(t.n_bytes);
    quantize(t.type, x.data(), q.data(), t.n_elements());
    for (size_t i = 0; i < q.size(); ++i) ASSERT_EQ(q[i], t.data[i]) << "byte " << i;
    ++n_checked;
  }
  EXPECT_EQ(n_checked, 7);  // F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1
}

// Round-trip error bounds (x, then q = quantize(x), then dequantize(q)), per 32-element block with
// amax = max |x|. The scale d is stored as f16 (relative error <= 2^-11 in the normal
// range, else 2^-25 absolute: e16(d)), which adds |q| e16(d) to half a step of rounding:
//   Q8_0: d = amax/127, |err| <= d/2 + 127 e16(d)
//   Q4_0: d = amax/8, the far end clips from 16 to 15, |err| <= d + 8 e16(d)
//   Q4_1: d = (max-min)/15, m = f16(min), |err| <= d/2 + 15 e16(d) + e16(min)
//   Q5_0: d = amax/16, the far end clips from 32 to 31, |err| <= d + 16 e16(d)
//   Q5_1: d = (max-min)/31, m = f16(min), |err| <= d/2 + 31 e16(d) + e16(min)
// plus a few f32 ulps of amax for the arithmetic. F16 / BF16 round each value: e16(x), |x| 2^-8.
TEST(gguf_quant, quantize_dequantize_error_is_within_the_type_bound) {
  const int64_t n = 32 * 4096;
  std::vector<float> x = random_floats(n, 7, 1e-2f, 1e2f);
  std::fill(x.begin(), x.begin() + 32, 0.0f);         // zero block
  std::fill(x.begin() + 32, x.begin() + 64, -3.25f);  // constant block
  for (tensor_type t : {tensor_type::f32, tensor_type::f16, tensor_type::bf16, tensor_type::q8_0,
                        tensor_type::q4_0, tensor_type::q4_1, tensor_type::q5_0, tensor_type::q5_1}) {
    SCOPED_TRACE(traits(t).name);
    bytes q(row_bytes(t, n));
    std::vector<float> y(n);
    quantize(t, x.data(), q.data(), n);
    dequantize(t, q.data(), y.data(), n);
    double worst = 0;  // largest err / bound seen
    for (int64_t b = 0; b < n / 32; ++b) {
      const float* xb = x.data() + 32 * b;
      float amax = 0, min = INFINITY, max = -INFINITY;
      for (int j = 0; j < 32; ++j) {
        amax = std::max(amax, std::fabs(xb[j]));
        min = std::min(min, xb[j]);
        max = std::max(max, xb[j]);
      }
      const double slack = amax * 0x1p-20;
      // f16 rounding error of v: relative 2^-11, or half the subnormal step 2^-24
      auto f16_err = [](double v) { return std::max(std::fabs(v) * 0x1p-11, 0x1p-25); };
      for (int j = 0; j < 32; ++j) {
        double bound = 0;
        switch (t) {
          case tensor_type::f32: bound = 0; break;
          case tensor_type::f16: bound = f16_err(xb[j]); break;
          case tensor_type::bf16: bound = std::fabs(xb[j]) * 0x1p-8; break;
          case tensor_type::q8_0:
            bound = amax / 127.0 / 2 + 127 * f16_err(amax / 127.0) + slack;
            break;
          case tensor_type::q4_0: bound = amax / 8.0 + 8 * f16_err(amax / 8.0) + slack; break;
          case tensor_type::q5_0: bound = amax / 16.0 + 16 * f16_err(amax / 16.0) + slack; break;
          case tensor_type::q5_1: {
            const double d = (max - min) / 31.0;
            bound = d / 2 + 31 * f16_err(d) + f16_err(min) + slack;
            break;
          }
          default: {
            const double d = (max - min) / 15.0;
            bound = d / 2 + 15 * f16_err(d) + f16_err(min) + slack;
          }
        }
        const double err = std::fabs(static_cast<double>(y[32 * b + j]) - xb[j]);
        ASSERT_LE(err, bound) << "block " << b << " element " << j << " x " << xb[j];
        if (bound > 0) worst = std::max(worst, err / bound);
      }
    }
    EXPECT_TRUE(std::all_of(y.begin(), y.begin() + 32, [](float v) { return v == 0.0f; }));
    std::printf("  %-5s worst error / bound = %.3f\n", std::string(traits(t).name).c_str(), worst);
  }
}

// ---------------------------------------------------------------------------------------------
// the default model (SmolLM2-135M-Instruct Q4_1)

TEST(gguf_model, default_model_header_is_as_published) {
  const auto f = file::open(test::default_model_path());
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->tensors().size(), 272u);
  EXPECT_EQ(f->metadata().size(), 33u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->get_string("general.architecture", ""), "llama");
  EXPECT_EQ(f->get_u64("llama.block_count", 0), 30u);
  EXPECT_EQ(f->get_u64("llama.embedding_length", 0), 576u);
  EXPECT_EQ(f->get_u64("llama.feed_forward_length", 0), 1536u);
  EXPECT_EQ(f->get_u64("llama.attention.head_count", 0), 9u);
  EXPECT_EQ(f->get_u64("llama.attention.head_count_kv", 0), 3u);
  EXPECT_EQ(f->get_u64("llama.context_length", 0), 8192u);
  EXPECT_EQ(f->get_f64("llama.rope.freq_base", 0), 100000.0);
  EXPECT_EQ(f->get_f64("llama.attention.layer_norm_rms_epsilon", 0), static_cast<double>(1e-5f));
  EXPECT_EQ(f->get_string("tokenizer.ggml.model", ""), "gpt2");
  EXPECT_EQ(f->get_string("tokenizer.ggml.pre", ""), "smollm");
  EXPECT_EQ(f->get("tokenizer.ggml.tokens").as_array().size(), 49152u);
  EXPECT_EQ(f->get("tokenizer.ggml.tokens").as_array()[1].as_string(), "<|im_start|>");
  EXPECT_EQ(f->get("tokenizer.ggml.token_type").elem_type(), value_type::i32);
  EXPECT_EQ(f->get("tokenizer.ggml.merges").as_array().size(), 48900u);
  EXPECT_EQ(f->get_u64("tokenizer.ggml.bos_token_id", 99), 1u);
  EXPECT_EQ(f->get_u64("tokenizer.ggml.eos_token_id", 99), 2u);
  EXPECT_FALSE(f->get_bool("tokenizer.ggml.add_bos_token", true));

  const tensor_info& embd = f->tensor("token_embd.weight");
  EXPECT_EQ(embd.type, tensor_type::q8_0);
  EXPECT_EQ(embd.ne, (std::vector<int64_t>{576, 49152}));
  const tensor_info& wq = f->tensor("blk.0.attn_q.weight");
  EXPECT_EQ(wq.type, tensor_type::q4_1);
  EXPECT_EQ(wq.ne, (std::vector<int64_t>{576, 576}));
  EXPECT_EQ(f->tensor("blk.29.ffn_down.weight").ne, (std::vector<int64_t>{1536, 576}));
  EXPECT_EQ(f->tensor("output_norm.weight").type, tensor_type::f32);
  EXPECT_EQ(f->find_tensor("output.weight"), nullptr);  // tied embeddings
  size_t total = 0;
  for (const tensor_info& t : f->tensors()) total += t.n_bytes;
  EXPECT_LE(total, f->file_size());
}

// The model's own first rows, dequantized by us, equal gguf-py's dequantization in the golden file.
TEST(gguf_model, default_model_rows_match_gguf_py) {
  const auto model = file::open(test::default_model_path());
  const auto golden = file::open(test::data_path("gguf/quant_golden.gguf"));
  for (const char* name : {"token_embd.weight", "blk.0.attn_q.weight"}) {
    SCOPED_TRACE(name);
    const tensor_info& t = model->tensor(name);
    const tensor_info& ref = golden->tensor(std::string("real.") + name + ".ref");
    const int64_t n = 4 * t.ne[0];
    ASSERT_EQ(ref.n_elements(), n);
    std::vector<float> y(n);
    dequantize(t.type, t.data, y.data(), n);
    EXPECT_EQ(std::memcmp(y.data(), ref.data, 4 * n), 0);
  }
}

}  // namespace
}  // namespace kvgate::gguf
