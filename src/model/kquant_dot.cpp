#include "model/kquant_dot.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "model/simd.h"


namespace kvgate {

using gguf::tensor_type;

namespace {

// Block sizes in bytes and field offsets (FACTS.md).
constexpr int64_t q4_k_bytes = 144;  // f16 d, f16 dmin, scales[12], qs[128]
constexpr int64_t q5_k_bytes = 176;  // f16 d, f16 dmin, scales[12], qh[32], qs[128]
constexpr int64_t q6_k_bytes = 210;  // ql[128], qh[64], i8 scales[16], f16 d

inline float fp16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#ifdef KVGATE_AVX2
  return _cvtsh_ss(h);
#else
  return gguf::f16_to_f32(h);
#endif
}

// ---- scalar path: the exact integers per super-block, then one float step per block ----

// sum_s m_s * (sum of qx over sub-block s of 32), from the per-16 sums.
inline int k4_min_sum(const uint8_t* m, const int16_t* bsums) {
  int s = 0;
  for (int j = 0; j < 8; ++j) s += m[j] * (bsums[2 * j] + bsums[2 * j + 1]);
  return s;
}

// Q4_K and Q5_K share everything but the fifth bit (qh == nullptr for Q4_K).
float scalar_q45_k(const uint8_t* row, const q8k_activations& x, bool five_bit) {
  const int64_t nb = x.n / k_kquant_block;
  const int64_t block_bytes = five_bit ? q5_k_bytes : q4_k_bytes;
  float acc = 0.0f;
  for (int64_t ib = 0; ib < nb; ++ib) {
    const uint8_t* blk = row + ib * block_bytes;
    const gguf::k4_scale_min s = gguf::unpack_k4_scale_min(blk + 4);
    const uint8_t* qh = blk + 16;
    const uint8_t* qs = blk + (five_bit ? 48 : 16);
    const int8_t* qx = x.q.data() + ib * k_kquant_block;
    int isum = 0;
    for (int k = 0; k < 4; ++k) {  // 64 elements: 32 low nibbles (sub-block 2k), 32 high (2k + 1)
      int lo = 0, hi = 0;
      for (int l = 0; l < 32; ++l) {
        int q_lo = qs[32 * k + l] & 0x0f, q_hi = qs[32 * k + l] >> 4;
        if (five_bit) {
          q_lo |= ((qh[l] >> (2 * k)) & 1) << 4;
          q_hi |= ((qh[l] >> (2 * k + 1)) & 1) << 4;
        }
        lo += q_lo * qx[64 * k + l];
        hi += q_hi * qx[64 * k + 32 + l];
      }
      isum += s.sc[2 * k] * lo + s.sc[2 * k + 1] * hi;
    }
    const int imin = k4_min_sum(s.m, x.bsums.data() + ib * 16);
    const float dx = x.d[ib];
    acc += fp16_at(blk) * dx * static_cast<float>(isum) - fp16_at(blk + 2) * dx * static_cast<float>(imin);
  }
  return acc;
}

float scalar_q6_k(const uint8_t* row, const q8k_activations& x) {
  const int64_t nb = x.n / k_kquant_block;
  float acc = 0.0f;
  for (int64_t ib = 0; ib < nb; ++ib) {
    const uint8_t* blk = row + ib * q6_k_bytes;
    const auto* sc = reinterpret_cast<const int8_t*>(blk + 192);
    const int8_t* qx = x.q.data() + ib * k_kquant_block;
    const int16_t* bs = x.bsums.data() + ib * 16;
    int isum = 0;
    for (int n = 0; n < 2; ++n) {  // halves of 128: element 128 n + 32 k + l
      const uint8_t* ql = blk + 64 * n;
      const uint8_t* qh = blk + 128 + 32 * n;
      for (int k = 0; k < 4; ++k) {
        for (int h = 0; h < 2; ++h) {  // sub-blocks of 16, scale index 8 n + 2 k + h
          int t = 0;
          for (int l = 16 * h; l < 16 * h + 16; ++l) {
            const int nib = (k < 2 ? ql[l + 32 * (k & 1)] & 0x0f : ql[l + 32 * (k & 1)] >> 4);
            const int q = nib | (((qh[l] >> (2 * k)) & 3) << 4);
            t += q * qx[128 * n + 32 * k + l];
          }
          isum += sc[8 * n + 2 * k + h] * t;
        }
      }
    }
    // q - 32: subtract 32 * sum_s sc_s S_s, with S_s the activation sums per 16.
    int ibias = 0;
    for (int j = 0; j < 16; ++j) ibias += sc[j] * bs[j];
    acc += fp16_at(blk + 208) * x.d[ib] * static_cast<float>(isum - 32 * ibias);
  }
  return acc;
}

#ifdef KVGATE_AVX2
// ---- AVX2 path ----

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hsum(__m128 s) {
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }

// 8 int32 lanes of scale * (sum of u8 q * i8 qx over 32 lanes), one scale (int16 lanes) per lane
// pair group. |q| <= 63 and |qx| <= 127 keep maddubs' int16 pairs unsaturated.
inline __m256i scaled_dot(__m256i q, __m256i qx, __m256i scale16) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(q, qx), scale16);
}

// Every int16 lane set to lane j of v (v holds the same 8 int16 in both 128-bit halves).
inline __m256i broadcast_i16(__m256i v, int j) {
  return _mm256_shuffle_epi8(v, _mm256_set1_epi16(static_cast<int16_t>(((2 * j + 1) << 8) | (2 * j))));
}

// The (scale, min) term of Q4_K / Q5_K for one vector: 4 int32 lanes of m_s * S_s (S_s = sum of qx
// over sub-block s of 32, from the per-16 sums).
inline __m128i k4_min_terms(__m128i mins16, const int16_t* bsums) {
  const __m128i sums32 = _mm_hadd_epi16(load128(bsums), load128(bsums + 8));  // [8] int16, |.| <= 4064
  return _mm_madd_epi16(mins16, sums32);
}

template <bool five_bit, int R>
void avx2_q45_k(const uint8_t* row, const q8k_activations* x, float* out, int64_t stride) {
  const int64_t nb = x[0].n / k_kquant_block;
  const int64_t block_bytes = five_bit ? q5_k_bytes : q4_k_bytes;
  const __m256i low4 = _mm256_set1_epi8(0x0f), bit4 = _mm256_set1_epi8(0x10);
  __m256 acc[R];
  __m128 acc_m[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    acc_m[r] = _mm_setzero_ps();
  }
  for (int64_t ib = 0; ib < nb; ++ib) {
    const uint8_t* blk = row + ib * block_bytes;
    const float d = fp16_at(blk), dmin = fp16_at(blk + 2);
    const gguf::k4_scale_min s = gguf::unpack_k4_scale_min(blk + 4);
    const __m128i mins16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s.m)));
    const __m256i scales16 =
        _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s.sc))));
    const uint8_t* qs = blk + (five_bit ? 48 : 16);
    __m256i qh;
    if constexpr (five_bit) qh = load256(blk + 16);
    __m256i sumi[R];
    for (int r = 0; r < R; ++r) sumi[r] = _mm256_setzero_si256();
    for (int k = 0; k < 4; ++k) {
      const __m256i bytes = load256(qs + 32 * k);
      __m256i q_lo = _mm256_and_si256(bytes, low4);
      __m256i q_hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4);
      if constexpr (five_bit) {
        // bit 2k (low half) / 2k + 1 (high half) of qh[l] becomes bit 4 of element l
        q_lo = _mm256_or_si256(q_lo, _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * k), 4), bit4));
        q_hi = _mm256_or_si256(q_hi, _mm256_and_si256(_mm256_slli_epi16(_mm256_srli_epi16(qh, 2 * k + 1), 4), bit4));
      }
      const __m256i sc_lo = broadcast_i16(scales16, 2 * k), sc_hi = broadcast_i16(scales16, 2 * k + 1);
      for (int r = 0; r < R; ++r) {
        const int8_t* qx = x[r].q.data() + ib * k_kquant_block + 64 * k;
        const __m256i p = _mm256_add_epi32(scaled_dot(q_lo, load256(qx), sc_lo), scaled_dot(q_hi, load256(qx + 32), sc_hi));
        sumi[r] = _mm256_add_epi32(sumi[r], p);
      }
    }
    for (int r = 0; r < R; ++r) {
      const float dx = x[r].d[ib];
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(sumi[r]), acc[r]);
      const __m128i m = k4_min_terms(mins16, x[r].bsums.data() + ib * 16);
      acc_m[r] = _mm_fmadd_ps(_mm_set1_ps(-dmin * dx), _mm_cvtepi32_ps(m), acc_m[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r * stride] = hsum(acc[r]) + hsum(acc_m[r]);
}

template <int R>
void avx2_q6_k(const uint8_t* row, const q8k_activations* x, float* out, int64_t stride) {
  const int64_t nb = x[0].n / k_kquant_block;
  const __m256i low4 = _mm256_set1_epi8(0x0f), low2 = _mm256_set1_epi8(0x03);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t ib = 0; ib < nb; ++ib) {
    const uint8_t* blk = row + ib * q6_k_bytes;
    const auto* sc = reinterpret_cast<const int8_t*>(blk + 192);
    const float d = fp16_at(blk + 208);
    __m256i sumi[R];
    for (int r = 0; r < R; ++r) sumi[r] = _mm256_setzero_si256();
    for (int n = 0; n < 2; ++n) {
      const __m256i scales16 =
          _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc + 8 * n))));
      const __m256i ql_a = load256(blk + 64 * n), ql_b = load256(blk + 64 * n + 32);
      const __m256i qh = load256(blk + 128 + 32 * n);
      // element 128 n + 32 k + l: nibble of ql_a (k = 0 low, 2 high) or ql_b (1 low, 3 high),
      // top two bits from bits 2k of qh[l]
      const __m256i q[4] = {
          _mm256_or_si256(_mm256_and_si256(ql_a, low4), _mm256_slli_epi16(_mm256_and_si256(qh, low2), 4)),
          _mm256_or_si256(_mm256_and_si256(ql_b, low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), low2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql_a, 4), low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), low2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql_b, 4), low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), low2), 4)),
      };
      for (int k = 0; k < 4; ++k) {
        // int16 lanes 0-7 cover elements 0-15 (scale 8n + 2k), lanes 8-15 elements 16-31 (+1)
        const __m256i scale16 = _mm256_shuffle_epi8(
            scales16, _mm256_set_m128i(_mm_set1_epi16(static_cast<int16_t>(((4 * k + 3) << 8) | (4 * k + 2))),
                                       _mm_set1_epi16(static_cast<int16_t>(((4 * k + 1) << 8) | (4 * k)))));
        for (int r = 0; r < R; ++r) {
          const int8_t* qx = x[r].q.data() + ib * k_kquant_block + 128 * n + 32 * k;
          sumi[r] = _mm256_add_epi32(sumi[r], scaled_dot(q[k], load256(qx), scale16));
        }
      }
    }
    const __m256i sc16 = _mm256_cvtepi8_epi16(load128(sc));
    for (int r = 0; r < R; ++r) {
      // q - 32: subtract 32 * sum_s sc_s S_s
      const __m256i bias = _mm256_madd_epi16(sc16, load256(x[r].bsums.data() + ib * 16));
      const __m256i total = _mm256_sub_epi32(sumi[r], _mm256_slli_epi32(bias, 5));
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * x[r].d[ib]), _mm256_cvtepi32_ps(total), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r * stride] = hsum(acc[r]);
}

// Groups of k_kquant_rows_at_once vectors, then the remainder.
template <template <int> class K>
void rows_in_groups(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride) {
  static_assert(k_kquant_rows_at_once == 4);
  simd::for_groups_of_4(n_x, [&](auto R, int64_t r) { K<R>::run(row, x + r, out + r * stride, stride); });
}

template <int R> struct q4_k_kernel {
  static void run(const uint8_t* row, const q8k_activations* x, float* out, int64_t stride) {
    avx2_q45_k<false, R>(row, x, out, stride);
  }
};
template <int R> struct q5_k_kernel {
  static void run(const uint8_t* row, const q8k_activations* x, float* out, int64_t stride) {
    avx2_q45_k<true, R>(row, x, out, stride);
  }
};
template <int R> struct q6_k_kernel {
  static void run(const uint8_t* row, const q8k_activations* x, float* out, int64_t stride) {
    avx2_q6_k<R>(row, x, out, stride);
  }
};
#endif

}  // namespace

void quantize_q8k(const float* x, int64_t n, q8k_activations& out) {
  if (n < 0 || n % k_kquant_block != 0) {
    fail("quantize_q8k: {} elements are not a whole number of {}-element blocks", n, k_kquant_block);
  }
  const int64_t nb = n / k_kquant_block;
  out.n = n;
  out.d.resize(nb);
  out.q.resize(n);
  out.bsums.resize(n / 16);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * k_kquant_block;
    float amax = 0.0f;
    for (int64_t j = 0; j < k_kquant_block; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    int8_t* q = out.q.data() + b * k_kquant_block;
    for (int64_t j = 0; j < k_kquant_block; ++j) {
      float v = std::clamp(std::nearbyint(xb[j] * id), -127.0f, 127.0f);
      if (v != v) v = 0.0f;  // NaN input: keep the conversion defined
      q[j] = static_cast<int8_t>(v);
    }
    for (int k = 0; k < 16; ++k) {
      int s = 0;
      for (int j = 0; j < 16; ++j) s += q[16 * k + j];
      out.bsums[b * 16 + k] = static_cast<int16_t>(s);
    }
    out.d[b] = d;
  }
}

bool has_kquant_kernel(tensor_type type) {
  return type == tensor_type::q4_k || type == tensor_type::q5_k || type == tensor_type::q6_k;
}

namespace kquant_scalar {
void dot_q4_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride) {
  for (int r = 0; r < n_x; ++r) out[r * stride] = scalar_q45_k(row, x[r], false);
}
void dot_q5_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride) {
  for (int r = 0; r < n_x; ++r) out[r * stride] = scalar_q45_k(row, x[r], true);
}
void dot_q6_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride) {
  for (int r = 0; r < n_x; ++r) out[r * stride] = scalar_q6_k(row, x[r]);
}
}  // namespace kquant_scalar

#ifdef KVGATE_AVX2
void dot_q4_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride) {
  rows_in_groups<q4_k_kernel>(row, x, n_x, out, stride);
}
void dot_q5_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride) {
  rows_in_groups<q5_k_kernel>(row, x, n_x, out, stride);
}
void dot_q6_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride) {
  rows_in_groups<q6_k_kernel>(row, x, n_x, out, stride);
}
float dot_q4_k(const uint8_t* row, const q8k_activations& x) {
  float y;
  avx2_q45_k<false, 1>(row, &x, &y, 1);
  return y;
}
float dot_q5_k(const uint8_t* row, const q8k_activations& x) {
  float y;
  avx2_q45_k<true, 1>(row, &x, &y, 1);
  return y;
}
float dot_q6_k(const uint8_t* row, const q8k_activations& x) {
  float y;
  avx2_q6_k<1>(row, &x, &y, 1);
  return y;
}
#else
void dot_q4_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride) {
  kquant_scalar::dot_q4_k_rows(row, x, n_x, out, stride);
}
void dot_q5_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride) {
  kquant_scalar::dot_q5_k_rows(row, x, n_x, out, stride);
}
void dot_q6_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride) {
  kquant_scalar::dot_q6_k_rows(row, x, n_x, out, stride);
}
float dot_q4_k(const uint8_t* row, const q8k_activations& x) { return scalar_q45_k(row, x, false); }
float dot_q5_k(const uint8_t* row, const q8k_activations& x) { return scalar_q45_k(row, x, true); }
float dot_q6_k(const uint8_t* row, const q8k_activations& x) { return scalar_q6_k(row, x); }
#endif

float kquant_dot(tensor_type type, const uint8_t* row, const q8k_activations& x) {
  switch (type) {
    case tensor_type::q4_k: return dot_q4_k(row, x);
    case tensor_type::q5_k: return dot_q5_k(row, x);
    case tensor_type::q6_k: return dot_q6_k(row, x);
    default: fail("kquant_dot: no K-quant kernel for {}", gguf::traits(type).name);
  }
}

void kquant_dot_rows(tensor_type type, const uint8_t* row, const q8k_activations* x, int n_x, float* out,
                     int64_t stride) {
  switch (type) {
    case tensor_type::q4_k: return dot_q4_k_rows(row, x, n_x, out, stride);
    case tensor_type::q5_k: return dot_q5_k_rows(row, x, n_x, out, stride);
    case tensor_type::q6_k: return dot_q6_k_rows(row, x, n_x, out, stride);
    default: fail("kquant_dot_rows: no K-quant kernel for {}", gguf::traits(type).name);
  }
}

}  // namespace kvgate
