// Block dequantization and the reference (round-to-nearest) quantizers, following ggml's scalar
// reference in ggml-quants.c (dequantize_row_*, quantize_row_*_ref) operation for operation, so
// results are bit-identical to it and to gguf-py's numpy versions
// (tests/data/gguf/quant_golden.gguf).
//
// Block layouts are in shared/FACTS.md; every block is read through byte offsets so that src
// needs no alignment.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "gguf/gguf.h"
#include "gguf/gguf_internal.h"

// ggml's reference is C11, compiled without floating-point contraction; we build as gnu++20,
// where GCC would fuse `d * q - m` into one FMA and round once instead of twice. Turn that off
// for the kernels below so the last bit matches.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace kvgate::gguf {

using detail::half_to_float;
using detail::load_u16;

namespace {

constexpr int qk = 32;  // elements per Q4_0 / Q4_1 / Q8_0 block; K types: 256, written out below

void dequantize_f16(const uint8_t* src, float* y, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(h));
  }
#endif
  for (; i < n; ++i) y[i] = half_to_float(load_u16(src + 2 * i));
}

void dequantize_bf16(const uint8_t* src, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(load_u16(src + 2 * i)) << 16;
    std::memcpy(y + i, &bits, 4);
  }
}

// Q8_0 / Q4_0 / Q4_1 are the common weight types and their 16- and 32-element inner loops defeat
// GCC's vectorizer (about 2x slower than the AVX2 below); the scalar loops stay as the portable
// path and say what the vector code computes: the same f32 products and sums, in the same order.
#if defined(__AVX2__)
// f32 of the 32 nibbles of qs[16] (low nibbles are elements 0..15, high 16..31) minus offset.
inline void unpack_nibbles(const uint8_t* qs, int offset, __m256 out[4]) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0f), off = _mm_set1_epi8(static_cast<char>(offset));
  const __m128i lo = _mm_sub_epi8(_mm_and_si128(packed, mask), off);
  const __m128i hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), off);
  out[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
  out[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
  out[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
  out[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}
#endif

// block: f16 d; i8 qs[32]
void dequantize_q8_0(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, src += 34, y += qk) {
    const float d = half_to_float(load_u16(src));
    const auto* qs = reinterpret_cast<const int8_t*>(src + 2);
#if defined(__AVX2__)
    const __m256 vd = _mm256_set1_ps(d);
    for (int k = 0; k < 4; ++k) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(qs + 8 * k));
      _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), vd));
    }
#else
    for (int j = 0; j < qk; ++j) y[j] = static_cast<float>(qs[j]) * d;
#endif
  }
}

// block: f16 d; u8 qs[16]; low nibble of qs[j] is element j, high nibble element j + 16
void dequantize_q4_0(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, src += 18, y += qk) {
    const float d = half_to_float(load_u16(src));
    const uint8_t* qs = src + 2;
#if defined(__AVX2__)
    const __m256 vd = _mm256_set1_ps(d);
    __m256 q[4];
    unpack_nibbles(qs, 8, q);
    for (int k = 0; k < 4; ++k) _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(q[k], vd));
#else
    for (int j = 0; j < qk / 2; ++j) {
      y[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
      y[j + qk / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
#endif
  }
}

// block: f16 d, f16 m; u8 qs[16] (nibbles as Q4_0)
void dequantize_q4_1(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, src += 20, y += qk) {
    const float d = half_to_float(load_u16(src));
    const float m = half_to_float(load_u16(src + 2));
    const uint8_t* qs = src + 4;
#if defined(__AVX2__)
    const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    __m256 q[4];
    unpack_nibbles(qs, 0, q);
    for (int k = 0; k < 4; ++k) {
      _mm256_storeu_ps(y + 8 * k, _mm256_add_ps(_mm256_mul_ps(q[k], vd), vm));
    }
#else
    for (int j = 0; j < qk / 2; ++j) {
      y[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
      y[j + qk / 2] = static_cast<float>(qs[j] >> 4) * d + m;
    }
#endif
  }
}

#if defined(__AVX2__)
// 0x10 in byte j where bit j of the 32-bit qh is set (j < 16: low 128 bits, element order as
// unpack_nibbles's lo / hi halves).
inline __m256i fifth_bits(uint32_t qh) {
  const __m256i v = _mm256_set1_epi32(static_cast<int>(qh));
  // byte j of each 128-bit half reads qh byte j / 8 (low half) or 2 + j / 8 (high half)
  const __m256i spread = _mm256_shuffle_epi8(
      v, _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0));
  const __m256i bit = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

// f32 of the 32 five-bit values of (qh, qs) minus offset, in element order.
inline void unpack_five_bits(const uint8_t* qh_p, const uint8_t* qs, int offset, __m256 out[4]) {
  uint32_t qh;
  std::memcpy(&qh, qh_p, 4);
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0f);
  const __m256i nib = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), _mm_and_si128(packed, mask));
  const __m256i q = _mm256_sub_epi8(_mm256_or_si256(nib, fifth_bits(qh)), _mm256_set1_epi8(static_cast<char>(offset)));
  const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  out[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
  out[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)));
  out[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
  out[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)));
}
#endif

// Fifth bit of element j (0..31) of a Q5_0 / Q5_1 block: bit j of qh read as a little-endian u32.
inline int q5_high(uint32_t qh, int j) { return static_cast<int>((qh >> j) & 1) << 4; }

// block: f16 d; u8 qh[4]; u8 qs[16]; element j: low 4 bits as Q4_0's nibble j, fifth bit from
// qh; value d * (q - 16)
void dequantize_q5_0(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, src += 22, y += qk) {
    const float d = half_to_float(load_u16(src));
    const uint8_t* qs = src + 6;
#if defined(__AVX2__)
    const __m256 vd = _mm256_set1_ps(d);
    __m256 q[4];
    unpack_five_bits(src + 2, qs, 16, q);
    for (int k = 0; k < 4; ++k) _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(q[k], vd));
#else
    uint32_t qh;
    std::memcpy(&qh, src + 2, 4);
    for (int j = 0; j < qk / 2; ++j) {
      y[j] = static_cast<float>(((qs[j] & 0x0f) | q5_high(qh, j)) - 16) * d;
      y[j + qk / 2] = static_cast<float>(((qs[j] >> 4) | q5_high(qh, j + qk / 2)) - 16) * d;
    }
#endif
  }
}

// block: f16 d, f16 m; u8 qh[4]; u8 qs[16] (bits as Q5_0); value d * q + m
void dequantize_q5_1(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, src += 24, y += qk) {
    const float d = half_to_float(load_u16(src));
    const float m = half_to_float(load_u16(src + 2));
    const uint8_t* qs = src + 8;
#if defined(__AVX2__)
    const __m256 vd = _mm256_set1_ps(d), vm = _mm256_set1_ps(m);
    __m256 q[4];
    unpack_five_bits(src + 4, qs, 0, q);
    for (int k = 0; k < 4; ++k) {
      _mm256_storeu_ps(y + 8 * k, _mm256_add_ps(_mm256_mul_ps(q[k], vd), vm));
    }
#else
    uint32_t qh;
    std::memcpy(&qh, src + 4, 4);
    for (int j = 0; j < qk / 2; ++j) {
      y[j] = static_cast<float>((qs[j] & 0x0f) | q5_high(qh, j)) * d + m;
      y[j + qk / 2] = static_cast<float>((qs[j] >> 4) | q5_high(qh, j + qk / 2)) * d + m;
    }
#endif
  }
}

// block: f16 d, f16 dmin; u8 scales[12]; u8 qs[128]. Each 64 elements: 32 low nibbles of
// qs[32 * k ..] with (scale, min) 2k, then the 32 high nibbles with 2k + 1.
void dequantize_q4_k(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, src += 144) {
    const float d = half_to_float(load_u16(src));
    const float dmin = half_to_float(load_u16(src + 2));
    const uint8_t* scales = src + 4;
    const uint8_t* q = src + 16;
    const k4_scale_min s = unpack_k4_scale_min(scales);
    for (int is = 0; is < 8; is += 2, q += 32, y += 64) {
      const float d1 = d * s.sc[is], m1 = dmin * s.m[is];
      const float d2 = d * s.sc[is + 1], m2 = dmin * s.m[is + 1];
      for (int l = 0; l < 32; ++l) y[l] = d1 * static_cast<float>(q[l] & 0x0f) - m1;
      for (int l = 0; l < 32; ++l) y[l + 32] = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

// block: f16 d, f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]. As Q4_K, with the fifth bit of
// element l of the k-th 64 in bit 2k (low half) or 2k + 1 (high half) of qh[l].
void dequantize_q5_k(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, src += 176) {
    const float d = half_to_float(load_u16(src));
    const float dmin = half_to_float(load_u16(src + 2));
    const uint8_t* scales = src + 4;
    const uint8_t* qh = src + 16;
    const uint8_t* ql = src + 48;
    const k4_scale_min s = unpack_k4_scale_min(scales);
    for (int is = 0; is < 8; is += 2, ql += 32, y += 64) {
      const float d1 = d * s.sc[is], m1 = dmin * s.m[is];
      const float d2 = d * s.sc[is + 1], m2 = dmin * s.m[is + 1];
      const int lo_bit = is, hi_bit = is + 1;
      for (int l = 0; l < 32; ++l) {
        const int q = (ql[l] & 0x0f) | (((qh[l] >> lo_bit) & 1) << 4);
        y[l] = d1 * static_cast<float>(q) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        const int q = (ql[l] >> 4) | (((qh[l] >> hi_bit) & 1) << 4);
        y[l + 32] = d2 * static_cast<float>(q) - m2;
      }
    }
  }
}

// block: u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d (last). Per 128 elements (half n): element
// l + 32 k (k < 4, l < 32) takes its low 4 bits from ql[64 n + l + 32 (k & 1)] (low nibble for
// k < 2, high for k >= 2) and its top 2 bits from bits 2k of qh[32 n + l]; its scale is
// scales[8 n + l / 16 + 2 k]. Value d * scale * (q - 32).
void dequantize_q6_k(const uint8_t* src, float* y, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, src += 210) {
    const float d = half_to_float(load_u16(src + 208));
    const auto* scales = reinterpret_cast<const int8_t*>(src + 192);
    for (int n = 0; n < 2; ++n, y += 128) {
      const uint8_t* ql = src + 64 * n;
      const uint8_t* qh = src + 128 + 32 * n;
      const int8_t* sc = scales + 8 * n;
      // l / 16 is constant over each 16: split so the inner loops have fixed scales
      for (int h = 0; h < 2; ++h) {
        const float s0 = d * sc[h], s1 = d * sc[h + 2], s2 = d * sc[h + 4], s3 = d * sc[h + 6];
        for (int l = 16 * h; l < 16 * h + 16; ++l) {
          const int q0 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
          const int q1 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
          const int q2 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
          const int q3 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
          y[l] = s0 * static_cast<float>(q0);
          y[l + 32] = s1 * static_cast<float>(q1);
          y[l + 64] = s2 * static_cast<float>(q2);
          y[l + 96] = s3 * static_cast<float>(q3);
        }
      }
    }
  }
}

void quantize_f16(const float* x, uint8_t* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i), h);
  }
#endif
  for (; i < n; ++i) {
    const uint16_t h = f32_to_f16(x[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

void quantize_bf16(const float* x, uint8_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t h = f32_to_bf16(x[i]);
    std::memcpy(dst + 2 * i, &h, 2);
  }
}

void store_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_f16(v);
  std::memcpy(p, &h, 2);
}

// Clamps v into [0, hi] before the integer conversion (a NaN lands on hi): for finite input in
// range this truncates exactly as ggml's MIN(hi, (int8_t)v), without the undefined conversion.
inline uint8_t trunc_clamped(float v, float hi) {
  v = v >= 0.0f ? v : 0.0f;
  v = v < hi ? v : hi;
  return static_cast<uint8_t>(v);
}

// quantize_row_q8_0_ref: d = amax / 127, q = round-half-away(x / d)
void quantize_q8_0(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, x += qk, dst += 34) {
    float amax = 0.0f;
    for (int j = 0; j < qk; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(dst, d);
    for (int j = 0; j < qk; ++j) {
      float v = std::clamp(std::round(x[j] * id), -127.0f, 127.0f);
      if (v != v) v = 0.0f;  // NaN input: keep the conversion defined
      dst[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(v));
    }
  }
}

// quantize_row_q4_0_ref: d = (the value of largest magnitude) / -8, q = trunc(x / d + 8.5)
void quantize_q4_0(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, x += qk, dst += 18) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < qk; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -8;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(dst, d);
    for (int j = 0; j < qk / 2; ++j) {
      const uint8_t q0 = trunc_clamped(x[j] * id + 8.5f, 15.0f);
      const uint8_t q1 = trunc_clamped(x[j + qk / 2] * id + 8.5f, 15.0f);
      dst[2 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

// quantize_row_q4_1_ref: d = (max - min) / 15, m = min, q = trunc((x - min) / d + 0.5)
void quantize_q4_1(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, x += qk, dst += 20) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < qk; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / 15;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(dst, d);
    store_f16(dst + 2, min);
    for (int j = 0; j < qk / 2; ++j) {
      const uint8_t q0 = trunc_clamped((x[j] - min) * id + 0.5f, 15.0f);
      const uint8_t q1 = trunc_clamped((x[j + qk / 2] - min) * id + 0.5f, 15.0f);
      dst[4 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

// Packs 32 five-bit values: low nibbles into qs[16] (element j and j + 16 share byte j), fifth
// bits into the little-endian u32 qh.
void store_five_bits(const uint8_t* q, uint8_t* qh_p, uint8_t* qs) {
  uint32_t qh = 0;
  for (int j = 0; j < qk / 2; ++j) {
    qs[j] = static_cast<uint8_t>((q[j] & 0x0f) | ((q[j + qk / 2] & 0x0f) << 4));
    qh |= static_cast<uint32_t>(q[j] >> 4) << j;
    qh |= static_cast<uint32_t>(q[j + qk / 2] >> 4) << (j + qk / 2);
  }
  std::memcpy(qh_p, &qh, 4);
}

// quantize_row_q5_0_ref: d = (the value of largest magnitude) / -16, q = trunc(x / d + 16.5)
void quantize_q5_0(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, x += qk, dst += 22) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < qk; ++j) {
      if (amax < std::fabs(x[j])) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    const float d = max / -16;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(dst, d);
    uint8_t q[qk];
    for (int j = 0; j < qk; ++j) q[j] = trunc_clamped(x[j] * id + 16.5f, 31.0f);
    store_five_bits(q, dst + 2, dst + 6);
  }
}

// quantize_row_q5_1_ref: d = (max - min) / 31, m = min, q = trunc((x - min) / d + 0.5)
void quantize_q5_1(const float* x, uint8_t* dst, int64_t nb) {
  for (int64_t ib = 0; ib < nb; ++ib, x += qk, dst += 24) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < qk; ++j) {
      min = std::min(min, x[j]);
      max = std::max(max, x[j]);
    }
    const float d = (max - min) / 31;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    store_f16(dst, d);
    store_f16(dst + 2, min);
    uint8_t q[qk];
    for (int j = 0; j < qk; ++j) q[j] = trunc_clamped((x[j] - min) * id + 0.5f, 31.0f);
    store_five_bits(q, dst + 4, dst + 8);
  }
}

int64_t checked_blocks(const char* what, tensor_type type, int64_t n) {
  const type_traits& t = traits(type);
  if (n < 0 || n % t.block_size != 0) {
    fail("{}: {} elements of {} are not a whole number of {}-element blocks", what, n, t.name,
         t.block_size);
  }
  return n / t.block_size;
}

}  // namespace

void dequantize(tensor_type type, const void* src, float* dst, int64_t n) {
  const int64_t nb = checked_blocks("dequantize", type, n);
  const auto* s = static_cast<const uint8_t*>(src);
  switch (type) {
    case tensor_type::f32: std::memcpy(dst, s, static_cast<size_t>(n) * 4); return;
    case tensor_type::f16: dequantize_f16(s, dst, n); return;
    case tensor_type::bf16: dequantize_bf16(s, dst, n); return;
    case tensor_type::q8_0: dequantize_q8_0(s, dst, nb); return;
    case tensor_type::q4_0: dequantize_q4_0(s, dst, nb); return;
    case tensor_type::q4_1: dequantize_q4_1(s, dst, nb); return;
    case tensor_type::q5_0: dequantize_q5_0(s, dst, nb); return;
    case tensor_type::q5_1: dequantize_q5_1(s, dst, nb); return;
    case tensor_type::q4_k: dequantize_q4_k(s, dst, nb); return;
    case tensor_type::q5_k: dequantize_q5_k(s, dst, nb); return;
    case tensor_type::q6_k: dequantize_q6_k(s, dst, nb); return;
  }
}

void quantize(tensor_type type, const float* src, void* dst, int64_t n) {
  const int64_t nb = checked_blocks("quantize", type, n);
  auto* d = static_cast<uint8_t*>(dst);
  switch (type) {
    case tensor_type::f32: std::memcpy(d, src, static_cast<size_t>(n) * 4); return;
    case tensor_type::f16: quantize_f16(src, d, n); return;
    case tensor_type::bf16: quantize_bf16(src, d, n); return;
    case tensor_type::q8_0: quantize_q8_0(src, d, nb); return;
    case tensor_type::q4_0: quantize_q4_0(src, d, nb); return;
    case tensor_type::q4_1: quantize_q4_1(src, d, nb); return;
    case tensor_type::q5_0: quantize_q5_0(src, d, nb); return;
    case tensor_type::q5_1: quantize_q5_1(src, d, nb); return;
    case tensor_type::q4_k:
    case tensor_type::q5_k:
    case tensor_type::q6_k: break;
  }
  fail("quantize: no quantizer for {} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1)",
       traits(type).name);
}

}  // namespace kvgate::gguf
