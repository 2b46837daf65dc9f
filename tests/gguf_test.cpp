// Tests for src/gguf: writer -> reader round trips, hostile and truncated files, the default model's
// header, and dequantization / quantization against gguf-py's independent numpy implementation
// (tests/data/gguf/quant_golden.gguf, made by tools/make_quant_golden.py).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

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
  w.set("strings", value::of_array(value_type::string,
                                   {value::of_string("a"), value::of_string(""), value::of_string("ccc")}));
  w.set("empty_array", value::of_array(value_type::f64, {}));
  w.set("nested", value::of_array(value_type::array,
                                  {value::of_array(value_type::i16, {value::of_i16(-1), value::of_i16(2)}),
                                   value::of_array(value_type::boolean, {value::of_bool(false)}),
                                   value::of_array(value_type::array,
                                                   {value::of_array(value_type::u8, {value::of_u8(7)})})}));
  const std::vector<float> x = random_floats(256, 1, 0.1f, 10.0f);
  for (tensor_type t : {tensor_type::f16, tensor_type::bf16, tensor_type::q8_0, tensor_type::q4_0,
                        tensor_type::q4_1}) {
    bytes q(row_bytes(t, 64) * 4);
    quantize(t, x.data(), q.data(), 256);
    w.add_tensor(std::string(traits(t).name), {64, 4}, t, q);
  }
  for (tensor_type t : {tensor_type::q4_k, tensor_type::q5_k, tensor_type::q6_k}) {
    bytes q(row_bytes(t, 256) * 2, 0x5a);  // arbitrary blocks: the reader does not look inside
    w.add_tensor(std::string(traits(t).name), {256, 1, 2}, t, q);
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
  const writer w = sample_writer();
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
  ASSERT_EQ(f->tensors().size(), 9u);
  const std::vector<float> x = random_floats(256, 1, 0.1f, 10.0f);
  for (const tensor_info& t : f->tensors()) {
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.offset % 32, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 32, 0u);  // mapping is page aligned
    EXPECT_EQ(t.n_bytes, row_bytes(t.type, t.ne[0]) * t.n_rows());
    if (t.name == "last.f32") continue;
    EXPECT_EQ(t.name, traits(t.type).name);
    if (traits(t.type).block_size == 256) {
      EXPECT_EQ(t.ne, (std::vector<int64_t>{256, 1, 2}));
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
  EXPECT_THROW(w.add_tensor("short", {64}, tensor_type::q8_0, q), error);       // needs 68 bytes
  EXPECT_THROW(w.add_tensor("odd", {33}, tensor_type::q8_0, q), error);         // not whole blocks
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
  bytes full;
  {
    std::ifstream in(write_sample(), std::ios::binary);
    full.assign(std::istreambuf_iterator<char>(in), {});
  }
  ASSERT_GT(full.size(), 1000u);
  for (size_t len = 0; len < full.size(); ++len) {
    const std::string path = write_bytes(bytes(full.begin(), full.begin() + len), "trunc.gguf");
    EXPECT_THROW(file::open(path), error) << "prefix of " << len << " bytes";
  }
  EXPECT_NO_THROW(file::open(write_bytes(full, "trunc.gguf")));
}

TEST(gguf_hostile, corrupted_bytes_give_an_error_or_a_valid_file_never_a_crash) {
  bytes full;
  {
    std::ifstream in(write_sample(), std::ios::binary);
    full.assign(std::istreambuf_iterator<char>(in), {});
  }
  // only the header part matters: tensor data is opaque to the reader
  const size_t header_end = file::open(write_bytes(full, "c.gguf"))->tensors()[0].data -
                            file::open(write_bytes(full, "c.gguf"))->tensors()[0].data + 1200;
  for (size_t i = 0; i < std::min(full.size(), header_end); ++i) {
    for (uint8_t v : {uint8_t{0x00}, uint8_t{0xff}, uint8_t{0x80}, uint8_t(full[i] + 1)}) {
      bytes b = full;
      b[i] = v;
      try {
        const auto f = file::open(write_bytes(b, "c.gguf"));
        for (const tensor_info& t : f->tensors()) {
          ASSERT_GE(t.data, f->tensors().front().data - t.offset);
          ASSERT_LE(t.offset + t.n_bytes, f->file_size());
        }
      } catch (const error&) {
      }
    }
  }
}

struct hostile_case {
  const char* name;
  bytes file;
  const char* message;  // a part of the expected error message
};

std::vector<hostile_case> hostile_cases() {
  const uint64_t huge = uint64_t{1} << 62;
  std::vector<hostile_case> c;
  auto kv = [](std::string_view key, uint32_t type) { return raw().header(0, 1).str(key).u32(type); };
  c.push_back({"bad_magic", raw().header(0, 0).b, "not a GGUF file"});
  c.back().file[3] = 'X';
  c.push_back({"version_1", raw().header(0, 0, 1).b, "version 1 is not supported"});
  c.push_back({"version_4", raw().header(0, 0, 4).b, "unsupported GGUF version 4"});
  c.push_back({"big_endian", raw().header(0, 0, 0x03000000).b, "big-endian"});
  c.push_back({"giant_kv_count", raw().header(0, huge).b, "metadata keys"});
  c.push_back({"giant_tensor_count", raw().header(huge, 0).b, "tensors"});
  c.push_back({"giant_key_length", raw().header(0, 1).u64(huge).u32(0).b, "claims"});
  c.push_back({"giant_string_length", kv("s", 8).u64(huge).b, "claims"});
  c.push_back({"giant_array_count", kv("a", 9).u32(4).u64(huge).b, "cannot fit"});
  c.push_back({"giant_array_of_arrays", kv("a", 9).u32(9).u64(huge / 8).b, "cannot fit"});
  c.push_back({"unknown_value_type", kv("k", 13).u32(0).b, "unknown value type 13"});
  c.push_back({"unknown_array_element_type", kv("k", 9).u32(77).u64(0).b,
               "unknown array element type 77"});
  raw deep = kv("deep", 9);
  for (int i = 0; i < 12; ++i) deep.u32(9).u64(1);
  c.push_back({"deep_array_nesting", deep.b, "nested deeper"});
  c.push_back({"bool_neither_0_nor_1", kv("b", 7).put<uint8_t>(2).b, "neither 0 nor 1"});
  c.push_back({"truncated_value", kv("x", 10).u32(1).b, "truncated"});
  c.push_back({"duplicate_key",
               raw().header(0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2).b,
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
  c.push_back({"dims_overflow", one("t", {uint64_t{1} << 32, uint64_t{1} << 32}, 0, 0, 128),
               "overflow"});
  c.push_back({"unknown_tensor_type", one("t", {32}, 6, 0, 128), "type 6 (Q5_0)"});
  c.push_back({"unknown_tensor_type_id", one("t", {32}, 1000, 0, 128), "type 1000 (unknown)"});
  c.push_back({"ne0_not_whole_blocks", one("t", {33}, 8, 0, 128),
               "not a multiple of the Q8_0 block size 32"});
  c.push_back({"offset_outside_file", one("t", {4}, 0, uint64_t{1} << 40, 128), "outside"});
  c.push_back({"offset_wraps_around", one("t", {4}, 0, ~uint64_t{31}, 128), "outside"});
  c.push_back({"misaligned_offset", one("t", {4}, 0, 4, 128),
               "not a multiple of the alignment 32"});
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
