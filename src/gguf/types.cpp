// The tensor type table and the f16 / bf16 scalar conversions.
#include <bit>
#include <cmath>
#include <cstring>

#include "gguf/gguf.h"
#include "gguf/gguf_internal.h"

namespace kvgate::gguf {

namespace {

constexpr type_traits traits_f32{"F32", 1, 4};
constexpr type_traits traits_f16{"F16", 1, 2};
constexpr type_traits traits_bf16{"BF16", 1, 2};
constexpr type_traits traits_q4_0{"Q4_0", 32, 18};
constexpr type_traits traits_q4_1{"Q4_1", 32, 20};
constexpr type_traits traits_q5_0{"Q5_0", 32, 22};
constexpr type_traits traits_q5_1{"Q5_1", 32, 24};
constexpr type_traits traits_q8_0{"Q8_0", 32, 34};
constexpr type_traits traits_q4_k{"Q4_K", 256, 144};
constexpr type_traits traits_q5_k{"Q5_K", 256, 176};
constexpr type_traits traits_q6_k{"Q6_K", 256, 210};

}  // namespace

const type_traits* find_traits(tensor_type type) {
  switch (type) {
    case tensor_type::f32: return &traits_f32;
    case tensor_type::f16: return &traits_f16;
    case tensor_type::bf16: return &traits_bf16;
    case tensor_type::q4_0: return &traits_q4_0;
    case tensor_type::q4_1: return &traits_q4_1;
    case tensor_type::q5_0: return &traits_q5_0;
    case tensor_type::q5_1: return &traits_q5_1;
    case tensor_type::q8_0: return &traits_q8_0;
    case tensor_type::q4_k: return &traits_q4_k;
    case tensor_type::q5_k: return &traits_q5_k;
    case tensor_type::q6_k: return &traits_q6_k;
  }
  return nullptr;
}

const type_traits& traits(tensor_type type) {
  const type_traits* t = find_traits(type);
  if (!t) {
    const auto id = static_cast<uint32_t>(type);
    fail("tensor type {} ({}) is not supported", id, detail::ggml_type_name(id));
  }
  return *t;
}

size_t row_bytes(tensor_type type, int64_t ne0) {
  const type_traits& t = traits(type);
  if (ne0 < 0 || ne0 % t.block_size != 0) {
    fail("a {} row of {} elements is not a whole number of {}-element blocks", t.name, ne0,
         t.block_size);
  }
  return static_cast<size_t>(ne0 / t.block_size) * t.type_size;
}

std::string value_type_name(value_type type) {
  switch (type) {
    case value_type::u8: return "u8";
    case value_type::i8: return "i8";
    case value_type::u16: return "u16";
    case value_type::i16: return "i16";
    case value_type::u32: return "u32";
    case value_type::i32: return "i32";
    case value_type::f32: return "f32";
    case value_type::boolean: return "bool";
    case value_type::string: return "string";
    case value_type::array: return "array";
    case value_type::u64: return "u64";
    case value_type::i64: return "i64";
    case value_type::f64: return "f64";
  }
  return "type " + std::to_string(static_cast<uint32_t>(type));
}

namespace detail {

std::string_view ggml_type_name(uint32_t id) {
  // ggml.h enum ggml_type; ids 4, 5 and 31..33, 36..38 were removed from ggml.
  static constexpr std::string_view names[] = {
      "F32",     "F16",     "Q4_0",    "Q4_1",  "removed", "removed", "Q5_0",    "Q5_1",
      "Q8_0",    "Q8_1",    "Q2_K",    "Q3_K",  "Q4_K",    "Q5_K",    "Q6_K",    "Q8_K",
      "IQ2_XXS", "IQ2_XS",  "IQ3_XXS", "IQ1_S", "IQ4_NL",  "IQ3_S",   "IQ2_S",   "IQ4_XS",
      "I8",      "I16",     "I32",     "I64",   "F64",     "IQ1_M",   "BF16",    "removed",
      "removed", "removed", "TQ1_0",   "TQ2_0", "removed", "removed", "removed", "MXFP4",
  };
  return id < std::size(names) ? names[id] : "unknown";
}

}  // namespace detail

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0x1f) {
    // inf, or NaN made quiet with its payload kept (what F16C's vcvtph2ps does)
    bits = sign | 0x7f800000 | (mant << 13) | (mant ? 0x400000u : 0u);
  } else if (exp == 0) {
    // zero or subnormal: mant * 2^-24, exact in f32
    const float mag = static_cast<float>(mant) * 0x1p-24f;
    bits = sign | std::bit_cast<uint32_t>(mag);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t f32_to_f16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  x &= 0x7fffffff;
  if (x > 0x7f800000) return sign | 0x7e00 | ((x >> 13) & 0x3ff);  // quiet NaN, payload kept
  if (x >= 0x477ff000) return sign | 0x7c00;  // >= 65520 rounds (to even) past 65504: inf
  if (x < 0x38800000) {
    // Below the smallest normal half (2^-14): adding 0.5 puts the value in a binade whose ulp is
    // 2^-24, the half subnormal step, so the FPU's round-to-nearest-even does the rounding.
    const float sum = std::bit_cast<float>(x) + 0.5f;
    return sign | static_cast<uint16_t>(std::bit_cast<uint32_t>(sum) - 0x3f000000u);
  }
  // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even (a carry
  // into the exponent is the correct result).
  const uint32_t odd = (x >> 13) & 1;
  x += ((15u - 127u) << 23) + 0xfff + odd;
  return sign | static_cast<uint16_t>(x >> 13);
}

float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t f32_to_bf16(float f) {
  // as ggml_compute_fp32_to_bf16: NaN made quiet, otherwise round to nearest even
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 64);
  return static_cast<uint16_t>((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

}  // namespace kvgate::gguf
