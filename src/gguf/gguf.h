// GGUF v3: reading (memory-mapped) and writing, the tensor type table and block dequantization.
//
// Written by hand: the only maintained GGUF implementation in C/C++ lives inside ggml, which no
// Debian package ships as a library, and its reader is tied to ggml's tensor structures. The format
// is small (see shared/FACTS.md); this module reads every metadata type, refuses anything that
// points outside the file, and never reads past the end of the mapping.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "common/error.h"

namespace kvgate::gguf {

enum class value_type : uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
  string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};

enum class tensor_type : uint32_t {
  f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q4_k = 12, q5_k = 13, q6_k = 14, bf16 = 30,
};

// "u32", "string", ...; "type 42" for an id outside the enum.
std::string value_type_name(value_type type);

// Longest tensor name the reader and writer accept (FACTS.md: <= 64 bytes).
inline constexpr size_t max_tensor_name_bytes = 64;

struct type_traits {
  std::string_view name;   // "Q4_1", as ggml names it
  int64_t block_size;      // elements per block
  size_t type_size;        // bytes per block
};

// nullptr for a type id this module does not support.
const type_traits* find_traits(tensor_type type);
// Throws error for an unsupported type.
const type_traits& traits(tensor_type type);
// Bytes of one row of ne0 elements; throws if ne0 is not a multiple of the block size.
size_t row_bytes(tensor_type type, int64_t ne0);

// Dequantizes n elements (a multiple of the type's block size) from src into dst.
void dequantize(tensor_type type, const void* src, float* dst, int64_t n);
// Quantizes n f32 elements into dst (row_bytes(type, n) bytes). Supported: f32, f16, bf16, q8_0,
// q4_0, q4_1, q5_0, q5_1 (round-to-nearest, as ggml's reference quantizers); throws for the K types.
void quantize(tensor_type type, const float* src, void* dst, int64_t n);

// The 12 scale bytes of a Q4_K / Q5_K block hold eight 6-bit scales and eight 6-bit mins, one
// pair per 32 elements: for j < 4 the low 6 bits of bytes j (scale) and j + 4 (min); for j >= 4
// a nibble of byte j + 4 (low: scale, high: min) plus the top 2 bits of bytes j - 4 (scale) and
// j (min), as ggml's get_scale_min_k4. Unpacked with 32-bit word operations, all 16 at once.
struct k4_scale_min {
  uint8_t sc[8];  // scale of sub-block j (elements 32 j .. 32 j + 31)
  uint8_t m[8];   // min of sub-block j
};
inline k4_scale_min unpack_k4_scale_min(const uint8_t* scales) {
  uint32_t a, b, c;
  std::memcpy(&a, scales, 4);
  std::memcpy(&b, scales + 4, 4);
  std::memcpy(&c, scales + 8, 4);
  const uint32_t sc[2] = {a & 0x3f3f3f3fu, (c & 0x0f0f0f0fu) | (((a >> 6) & 0x03030303u) << 4)};
  const uint32_t m[2] = {b & 0x3f3f3f3fu, ((c >> 4) & 0x0f0f0f0fu) | (((b >> 6) & 0x03030303u) << 4)};
  k4_scale_min out;
  std::memcpy(out.sc, sc, 8);
  std::memcpy(out.m, m, 8);
  return out;
}

// IEEE half and bfloat16 conversions (round to nearest even).
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

// One metadata value. Integers keep their GGUF type; as_* convert where the conversion is exact
// and throw error otherwise (a negative i32 read as_u64, a string read as a number...).
class value {
 public:
  using array = std::vector<value>;

  value() = default;
  static value of_u8(uint8_t v);
  static value of_i8(int8_t v);
  static value of_u16(uint16_t v);
  static value of_i16(int16_t v);
  static value of_u32(uint32_t v);
  static value of_i32(int32_t v);
  static value of_u64(uint64_t v);
  static value of_i64(int64_t v);
  static value of_f32(float v);
  static value of_f64(double v);
  static value of_bool(bool v);
  static value of_string(std::string v);
  // All elements must have elem_type (an empty array of any type is allowed).
  static value of_array(value_type elem_type, array elements);

  value_type type() const { return type_; }
  value_type elem_type() const { return elem_type_; }  // arrays only

  uint64_t as_u64() const;
  int64_t as_i64() const;
  double as_f64() const;
  bool as_bool() const;
  const std::string& as_string() const;
  const array& as_array() const;

 private:
  value_type type_ = value_type::u8;
  value_type elem_type_ = value_type::u8;
  std::variant<uint64_t, int64_t, double, bool, std::string, array> data_;
};

struct tensor_info {
  std::string name;
  std::vector<int64_t> ne;        // ggml order: ne[0] is the innermost, contiguous dimension
  tensor_type type = tensor_type::f32;
  uint64_t offset = 0;            // relative to the data section
  const uint8_t* data = nullptr;  // into the mapping (reader) ; [n_bytes]
  size_t n_bytes = 0;

  int64_t n_elements() const;
  int64_t n_rows() const { return ne.empty() ? 0 : n_elements() / ne[0]; }
};

// A GGUF file opened read-only and memory-mapped. Every check is done in open(): afterwards each
// tensor's data lies inside the mapping and its size matches its shape and type.
class file {
 public:
  // Throws error naming the path and what is wrong (missing file, bad magic, unsupported version,
  // truncated header, string or array length past the end, unknown value or tensor type, dims
  // overflow, tensor data outside the file, duplicate key or tensor name...).
  static std::unique_ptr<file> open(const std::string& path);
  ~file();
  file(const file&) = delete;
  file& operator=(const file&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  size_t file_size() const { return size_; }

  const std::vector<std::pair<std::string, value>>& metadata() const { return metadata_; }
  const value* find(std::string_view key) const;   // nullptr when absent
  const value& get(std::string_view key) const;    // throws error naming the key when absent
  std::string get_string(std::string_view key, std::string_view fallback) const;
  uint64_t get_u64(std::string_view key, uint64_t fallback) const;
  double get_f64(std::string_view key, double fallback) const;
  bool get_bool(std::string_view key, bool fallback) const;

  const std::vector<tensor_info>& tensors() const { return tensors_; }
  const tensor_info* find_tensor(std::string_view name) const;  // nullptr when absent
  const tensor_info& tensor(std::string_view name) const;       // throws error when absent
  // Tells the kernel the mapped bytes [p, p + n) will not be needed soon: the whole pages inside
  // are dropped from memory (a later read maps them from the file again, unchanged).
  void drop_pages(const uint8_t* p, size_t n) const;

 private:
  file() = default;
  std::string path_;
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  const uint8_t* map_ = nullptr;  // [size_]
  size_t size_ = 0;
  std::vector<std::pair<std::string, value>> metadata_;
  std::vector<tensor_info> tensors_;
};

// Builds a GGUF v3 file in memory and writes it atomically (to "<path>.tmp.<pid>", then rename).
class writer {
 public:
  void set(std::string key, value v);  // replaces an existing key, keeps insertion order
  // data must be row_bytes(type, ne[0]) * n_rows bytes.
  void add_tensor(std::string name, std::vector<int64_t> ne, tensor_type type,
                  std::span<const uint8_t> data);
  void add_tensor_f32(std::string name, std::vector<int64_t> ne, std::span<const float> data);
  void set_alignment(uint32_t alignment);  // a power of two; also written as general.alignment
  void write(const std::string& path) const;

 private:
  struct pending_tensor {
    std::string name;
    std::vector<int64_t> ne;
    tensor_type type;
    std::vector<uint8_t> data;
  };
  uint32_t alignment_ = 32;
  std::vector<std::pair<std::string, value>> metadata_;
  std::vector<pending_tensor> tensors_;
};

}  // namespace kvgate::gguf
