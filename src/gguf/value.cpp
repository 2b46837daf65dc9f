// gguf::value: one metadata value and its exact conversions.
#include <cmath>
#include <limits>

#include "gguf/gguf.h"

namespace kvgate::gguf {

namespace {

bool is_unsigned(value_type t) {
  return t == value_type::u8 || t == value_type::u16 || t == value_type::u32 ||
         t == value_type::u64;
}
bool is_signed(value_type t) {
  return t == value_type::i8 || t == value_type::i16 || t == value_type::i32 ||
         t == value_type::i64;
}
bool is_float(value_type t) { return t == value_type::f32 || t == value_type::f64; }

[[noreturn]] void wrong_type(value_type have, const char* want) {
  fail("value is {}, not {}", value_type_name(have), want);
}

}  // namespace

#define KVGATE_GGUF_OF(name, ctype, vtype, stored) \
  value value::of_##name(ctype v) {                \
    value out;                                     \
    out.type_ = value_type::vtype;                 \
    out.data_ = static_cast<stored>(v);            \
    return out;                                    \
  }
KVGATE_GGUF_OF(u8, uint8_t, u8, uint64_t)
KVGATE_GGUF_OF(u16, uint16_t, u16, uint64_t)
KVGATE_GGUF_OF(u32, uint32_t, u32, uint64_t)
KVGATE_GGUF_OF(u64, uint64_t, u64, uint64_t)
KVGATE_GGUF_OF(i8, int8_t, i8, int64_t)
KVGATE_GGUF_OF(i16, int16_t, i16, int64_t)
KVGATE_GGUF_OF(i32, int32_t, i32, int64_t)
KVGATE_GGUF_OF(i64, int64_t, i64, int64_t)
KVGATE_GGUF_OF(f32, float, f32, double)
KVGATE_GGUF_OF(f64, double, f64, double)
KVGATE_GGUF_OF(bool, bool, boolean, bool)
#undef KVGATE_GGUF_OF

value value::of_string(std::string v) {
  value out;
  out.type_ = value_type::string;
  out.data_ = std::move(v);
  return out;
}

value value::of_array(value_type elem_type, array elements) {
  if (static_cast<uint32_t>(elem_type) > 12) {
    fail("array element type {} is not a GGUF value type", static_cast<uint32_t>(elem_type));
  }
  for (size_t i = 0; i < elements.size(); ++i) {
    if (elements[i].type() != elem_type) {
      fail("array of {}: element {} is {}", value_type_name(elem_type), i,
           value_type_name(elements[i].type()));
    }
  }
  value out;
  out.type_ = value_type::array;
  out.elem_type_ = elem_type;
  out.data_ = std::move(elements);
  return out;
}

uint64_t value::as_u64() const {
  if (is_unsigned(type_)) return std::get<uint64_t>(data_);
  if (is_signed(type_)) {
    const int64_t v = std::get<int64_t>(data_);
    if (v < 0)
      fail("value {} ({}) is negative, not an unsigned integer", v, value_type_name(type_));
    return static_cast<uint64_t>(v);
  }
  wrong_type(type_, "an unsigned integer");
}

int64_t value::as_i64() const {
  if (is_signed(type_)) return std::get<int64_t>(data_);
  if (is_unsigned(type_)) {
    const uint64_t v = std::get<uint64_t>(data_);
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail("value {} (u64) does not fit an i64", v);
    }
    return static_cast<int64_t>(v);
  }
  wrong_type(type_, "an integer");
}

double value::as_f64() const {
  if (is_float(type_)) return std::get<double>(data_);
  // integers convert when the double holds them exactly (|v| <= 2^53)
  constexpr uint64_t exact = uint64_t{1} << 53;
  if (is_unsigned(type_)) {
    const uint64_t v = std::get<uint64_t>(data_);
    if (v > exact) fail("value {} ({}) has no exact f64", v, value_type_name(type_));
    return static_cast<double>(v);
  }
  if (is_signed(type_)) {
    const int64_t v = std::get<int64_t>(data_);
    if (v > static_cast<int64_t>(exact) || v < -static_cast<int64_t>(exact)) {
      fail("value {} ({}) has no exact f64", v, value_type_name(type_));
    }
    return static_cast<double>(v);
  }
  wrong_type(type_, "a number");
}

bool value::as_bool() const {
  if (type_ != value_type::boolean) wrong_type(type_, "a bool");
  return std::get<bool>(data_);
}

const std::string& value::as_string() const {
  if (type_ != value_type::string) wrong_type(type_, "a string");
  return std::get<std::string>(data_);
}

const value::array& value::as_array() const {
  if (type_ != value_type::array) wrong_type(type_, "an array");
  return std::get<array>(data_);
}

int64_t tensor_info::n_elements() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // the reader and writer refuse shapes that overflow
  return n;
}

}  // namespace kvgate::gguf
