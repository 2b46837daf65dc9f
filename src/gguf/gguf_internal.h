// Helpers shared by the gguf/ sources; not part of the module's interface.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <string_view>

#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "gguf/gguf.h"

namespace kvgate::gguf::detail {

static_assert(std::endian::native == std::endian::little,
              "GGUF is little-endian; so is this reader");

inline constexpr char magic[4] = {'G', 'G', 'U', 'F'};
inline constexpr uint32_t default_alignment = 32;
inline constexpr uint32_t max_dims = 4;

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The kernels' f16 -> f32: one instruction with F16C (exact, like the portable f16_to_f32, which
// the tests hold equal to it over all 65536 inputs).
inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return f16_to_f32(h);
#endif
}

inline bool is_valid(value_type t) { return static_cast<uint32_t>(t) <= 12; }

// Fewest bytes one encoded value of type t can take: bounds a count read from the file before
// anything is reserved for it.
inline uint64_t min_encoded_size(value_type t) {
  switch (t) {
    case value_type::u8:
    case value_type::i8:
    case value_type::boolean: return 1;
    case value_type::u16:
    case value_type::i16: return 2;
    case value_type::u32:
    case value_type::i32:
    case value_type::f32: return 4;
    case value_type::u64:
    case value_type::i64:
    case value_type::f64: return 8;
    case value_type::string: return 8;  // u64 length
    case value_type::array: return 12;  // u32 element type + u64 count
  }
  return 1;
}

// ggml's name for any tensor type id, supported or not, so an error can say "type 6 (Q5_0)".
std::string_view ggml_type_name(uint32_t id);

}  // namespace kvgate::gguf::detail
