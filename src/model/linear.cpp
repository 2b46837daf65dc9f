#include "model/linear.h"

#include "common/error.h"
#include "model/isa.h"
#include "model/kquant_dot.h"
#include "model/simd.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>


namespace kvgate {

using gguf::tensor_type;

namespace {

int g_threads = 1;

// BLAS runs single-threaded inside our OpenMP regions (see linear_forward); its own thread pool
// is turned off once, before first use.
void ensure_blas_threads() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

// f16 scale to f32: one instruction with F16C (a function call per block costs more than the
// block's arithmetic).
inline float fp16(uint16_t h) {
#ifdef KVGATE_AVX2
  return _cvtsh_ss(h);
#else
  return gguf::f16_to_f32(h);
#endif
}

// Block layouts (FACTS.md): f16 scale(s) then packed quants.
struct block_q4_0 { uint16_t d; uint8_t qs[16]; };
struct block_q4_1 { uint16_t d; uint16_t m; uint8_t qs[16]; };
struct block_q8_0 { uint16_t d; int8_t qs[32]; };
// Q5: the fifth bit of element j is bit j of qh read as a little-endian u32; qs as Q4's.
struct block_q5_0 { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; };
struct block_q5_1 { uint16_t d; uint16_t m; uint8_t qh[4]; uint8_t qs[16]; };
static_assert(sizeof(block_q4_0) == 18 && sizeof(block_q4_1) == 20 && sizeof(block_q8_0) == 34 &&
              sizeof(block_q5_0) == 22 && sizeof(block_q5_1) == 24);

#ifdef KVGATE_AVX2
using simd::hsum;
#endif

float dot_f32(const float* a, const float* x, int64_t n) {
  int64_t j = 0;
  float acc = 0.0f;
#ifdef KVGATE_AVX2
  __m256 v = _mm256_setzero_ps();
  for (; j + 8 <= n; j += 8) v = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(x + j), v);
  acc = hsum(v);
#endif
  for (; j < n; ++j) acc += a[j] * x[j];
  return acc;
}

float dot_f16(const uint16_t* a, const float* x, int64_t n) {
  int64_t j = 0;
  float acc = 0.0f;
#ifdef KVGATE_AVX2
  __m256 v = _mm256_setzero_ps();
  for (; j + 8 <= n; j += 8) {
    const __m256 w = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + j)));
    v = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + j), v);
  }
  acc = hsum(v);
#endif
  for (; j < n; ++j) acc += gguf::f16_to_f32(a[j]) * x[j];
  return acc;
}

// Other types (K-quants, bf16, and the Q4/Q8 types outside the integer path): dequantize the
// row into a thread-local buffer, then dot.
float dot_generic(const linear& w, const uint8_t* row, const float* x) {
  thread_local std::vector<float> buf;
  buf.resize(w.n_in);
  gguf::dequantize(w.type, row, buf.data(), w.n_in);
  return dot_f32(buf.data(), x, w.n_in);
}

}  // namespace

// sum = d * sum(q) serves the offset term of Q4_1 / Q4_0.

void quantize_activations(const float* x, int64_t n, q8_activations& out) {
  const int64_t nb = n / 32;
  out.d.resize(nb);
  out.sum.resize(nb);
  out.q.resize(n);
  for (int64_t b = 0; b < nb; ++b) {
    const float* xb = x + b * 32;
#ifdef KVGATE_AVX2
    // The scalar loop below, 8 lanes at a time: the max and the integer sum are exact in any
    // order, the product is one rounding either way, and cvtps rounds half to even in the default
    // rounding mode, as nearbyint does. A decode step quantizes every linear layer's input on one
    // thread, so the scalar loop was 5% of a batched step of 8 (`kvgate_bench --benchmark_filter=
    // ^batched/8`, perf).
    __m256 v[4];
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 mx = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_loadu_ps(xb + 8 * k);
      mx = _mm256_max_ps(_mm256_and_ps(v[k], abs_mask), mx);  // a NaN lane keeps mx, as std::max does
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float d = _mm_cvtss_f32(h) / 127.0f;
    const __m256 id = _mm256_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
    __m256i qi[4];
    for (int k = 0; k < 4; ++k) qi[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], id));
    const __m256i total = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(1, 0, 3, 2)));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1)));
    const int sum = _mm_cvtsi128_si32(t);
    // packs works per 128-bit lane: [q0 lo, q1 lo, q0 hi, q1 hi] and so on; the permute puts the
    // four-byte groups back in element order.
    const __m256i p16a = _mm256_packs_epi32(qi[0], qi[1]), p16b = _mm256_packs_epi32(qi[2], qi[3]);
    const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.q.data() + b * 32), p8);
#else
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::abs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      const int v = static_cast<int>(std::nearbyint(xb[j] * id));
      out.q[b * 32 + j] = static_cast<int8_t>(v);
      sum += v;
    }
#endif
    out.d[b] = d;
    out.sum[b] = d * sum;
  }
}

namespace {

#ifdef KVGATE_AVX2
// 32 unsigned nibbles in element order: low nibbles (elements 0..15), then high (16..31).
inline __m256i unpack_nibbles(const uint8_t* qs) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask), _mm_and_si128(bytes, mask));
}

// sum over 32 lanes of u8 a * i8 b, as 8 int32 partial sums converted to float.
inline __m256 dot_u8_i8(__m256i a, __m256i b) {
  const __m256i pairs = _mm256_maddubs_epi16(a, b);  // |15*127*2| fits int16; |127*127*2| too
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
#endif

// Integer-dot kernels: weight blocks against q8 activations. A Q4 block holds d * q + m with
// nibbles q: sum_j (d q_j + m) dx qx_j = d dx sum(q qx) + m * sum_x. Q4_1 stores m; Q4_0 is
// d * (q - 8), i.e. m = -8 d.
inline float q4_offset(const block_q4_1& b) { return fp16(b.m); }
inline float q4_offset(const block_q4_0& b) { return -8.0f * fp16(b.d); }

// The kernels take one weight row against R activation vectors (R <= k_rows_at_once): the
// weight block is loaded, unpacked and its scales converted once for all of them, and each
// vector's arithmetic is exactly the one-vector case's, in the same order, so every result is
// bit-identical to a call with R = 1.
inline constexpr int k_rows_at_once = 4;

template <typename block, int R>
void dot_q4_q8(const block* b, const q8_activations* x, int64_t nb, float* out, int64_t stride) {
#ifdef KVGATE_AVX2
  __m256 acc[R];
  float offset[R];
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm256_setzero_ps();
    offset[r] = 0.0f;
  }
  for (int64_t i = 0; i < nb; ++i) {
    const __m256i qw = unpack_nibbles(b[i].qs);
    const float wd = fp16(b[i].d), wm = q4_offset(b[i]);
    for (int r = 0; r < R; ++r) {
      const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[r].q.data() + i * 32));
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(wd * x[r].d[i]), dot_u8_i8(qw, qx), acc[r]);
      offset[r] += wm * x[r].sum[i];
    }
  }
  for (int r = 0; r < R; ++r) out[r * stride] = hsum(acc[r]) + offset[r];
#else
  for (int r = 0; r < R; ++r) {
    float acc = 0.0f;
    for (int64_t i = 0; i < nb; ++i) {
      int s = 0;
      for (int j = 0; j < 16; ++j) {
        s += (b[i].qs[j] & 0x0F) * x[r].q[i * 32 + j] + (b[i].qs[j] >> 4) * x[r].q[i * 32 + j + 16];
      }
      acc += fp16(b[i].d) * x[r].d[i] * s + q4_offset(b[i]) * x[r].sum[i];
    }
    out[r * stride] = acc;
  }
#endif
}

template <int R>
void dot_q8_0_q8(const block_q8_0* b, const q8_activations* x, int64_t nb, float* out, int64_t stride) {
#ifdef KVGATE_AVX2
  __m256 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const __m256i qw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs));
    const __m256i qw_abs = _mm256_sign_epi8(qw, qw);
    const float wd = fp16(b[i].d);
    for (int r = 0; r < R; ++r) {
      const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[r].q.data() + i * 32));
      // maddubs wants one unsigned operand: move the weight's sign onto the activation.
      const __m256 s = dot_u8_i8(qw_abs, _mm256_sign_epi8(qx, qw));
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(wd * x[r].d[i]), s, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r * stride] = hsum(acc[r]);
#else
  for (int r = 0; r < R; ++r) {
    float acc = 0.0f;
    for (int64_t i = 0; i < nb; ++i) {
      int s = 0;
      for (int j = 0; j < 32; ++j) s += b[i].qs[j] * x[r].q[i * 32 + j];
      acc += fp16(b[i].d) * x[r].d[i] * s;
    }
    out[r * stride] = acc;
  }
#endif
}

// Types with a row-at-a-time q8 kernel (packed or not).
bool has_row_kernel(tensor_type type) {
  return type == tensor_type::q4_1 || type == tensor_type::q4_0 || type == tensor_type::q8_0;
}
// Types with a packed (8-row) q8 kernel: the Q5 types have only that one.
bool has_packed_kernel(tensor_type type) {
  return has_row_kernel(type) || type == tensor_type::q5_0 || type == tensor_type::q5_1;
}

template <int R>
void row_dot_q8_n(const linear& w, int64_t i, const q8_activations* x, float* out, int64_t stride) {
  const uint8_t* row = w.row(i);
  const int64_t nb = w.n_in / 32;
  switch (w.type) {
    case tensor_type::q4_1: return dot_q4_q8<block_q4_1, R>(reinterpret_cast<const block_q4_1*>(row), x, nb, out, stride);
    case tensor_type::q4_0: return dot_q4_q8<block_q4_0, R>(reinterpret_cast<const block_q4_0*>(row), x, nb, out, stride);
    default: return dot_q8_0_q8<R>(reinterpret_cast<const block_q8_0*>(row), x, nb, out, stride);
  }
}

// out[r * stride] = row i of W . x[r] for r < n_x, k_rows_at_once vectors per pass over the row.
void row_dot_q8(const linear& w, int64_t i, const q8_activations* x, int64_t n_x, float* out, int64_t stride) {
  static_assert(k_rows_at_once == 4);
  simd::for_groups_of_4(n_x, [&](auto R, int64_t r) { row_dot_q8_n<R>(w, i, x + r, out + r * stride, stride); });
}

// ---- Weights interleaved by 8 rows ----------------------------------------------------------
// For 8 consecutive rows (a group) and one block index i, a packed block holds the 8 rows' f16
// scales (d[8], then m[8] for Q4_1) and their quant bytes interleaved 4 at a time:
// qs[c * 32 + l * 4 + k] = row l's qs[c * 4 + k]. Group g's blocks are contiguous:
// packed + (g * n_blocks + i) * sizeof(packed block). The packed copy has the original's size.
inline constexpr int k_group_rows = 8;

struct packed_q4_0 { uint16_t d[8]; uint8_t qs[128]; };
struct packed_q4_1 { uint16_t d[8]; uint16_t m[8]; uint8_t qs[128]; };
struct packed_q8_0 { uint16_t d[8]; int8_t qs[256]; };
// Q5: qh[l] holds row l's 32 fifth bits reordered (five_bits_pack) so that for chunk c one shift of
// the whole register puts them at bit 4 of the bytes they complete.
struct packed_q5_0 { uint16_t d[8]; uint32_t qh[8]; uint8_t qs[128]; };
struct packed_q5_1 { uint16_t d[8]; uint16_t m[8]; uint32_t qh[8]; uint8_t qs[128]; };
static_assert(sizeof(packed_q4_0) == 8 * sizeof(block_q4_0) && sizeof(packed_q4_1) == 8 * sizeof(block_q4_1) &&
              sizeof(packed_q8_0) == 8 * sizeof(block_q8_0) && sizeof(packed_q5_0) == 8 * sizeof(block_q5_0) &&
              sizeof(packed_q5_1) == 8 * sizeof(block_q5_1));

// Element e of a Q5 block sits in chunk c = (e % 16) / 4 at byte k = e % 4, in the low (e < 16) or
// high nibble; packed, its fifth bit goes to bit 8k + c (low) or 8k + 4 + c (high) of qh.
inline int five_bits_position(int e) {
  const int c = (e % 16) / 4, k = e % 4;
  return 8 * k + (e < 16 ? c : 4 + c);
}
inline uint32_t five_bits_pack(uint32_t qh) {
  uint32_t out = 0;
  for (int e = 0; e < 32; ++e) out |= ((qh >> e) & 1u) << five_bits_position(e);
  return out;
}
inline uint32_t five_bits_unpack(uint32_t packed) {
  uint32_t out = 0;
  for (int e = 0; e < 32; ++e) out |= ((packed >> five_bits_position(e)) & 1u) << e;
  return out;
}

template <typename block, typename packed>
void pack_group(const linear& w, int64_t g, packed* out) {
  const int64_t nb = w.n_in / 32;
  constexpr int n_chunks = sizeof(block::qs) / 4;
  for (int l = 0; l < k_group_rows; ++l) {
    const block* row = reinterpret_cast<const block*>(w.row(g * k_group_rows + l));
    for (int64_t i = 0; i < nb; ++i) {
      out[i].d[l] = row[i].d;
      if constexpr (requires { row[i].m; }) out[i].m[l] = row[i].m;
      if constexpr (requires { row[i].qh; }) {
        uint32_t qh;
        std::memcpy(&qh, row[i].qh, 4);
        out[i].qh[l] = five_bits_pack(qh);
      }
      for (int c = 0; c < n_chunks; ++c) std::memcpy(out[i].qs + c * 32 + l * 4, row[i].qs + c * 4, 4);
    }
  }
}

// The inverse for one row: its blocks in the original layout.
template <typename block, typename packed>
void unpack_row(const linear& w, int64_t o, block* out) {
  const int64_t nb = w.n_in / 32;
  constexpr int n_chunks = sizeof(block::qs) / 4;
  const int l = static_cast<int>(o % k_group_rows);
  const packed* p = reinterpret_cast<const packed*>(w.packed) + (o / k_group_rows) * nb;
  for (int64_t i = 0; i < nb; ++i) {
    out[i].d = p[i].d[l];
    if constexpr (requires { out[i].m; }) out[i].m = p[i].m[l];
    if constexpr (requires { out[i].qh; }) {
      const uint32_t qh = five_bits_unpack(p[i].qh[l]);
      std::memcpy(out[i].qh, &qh, 4);
    }
    for (int c = 0; c < n_chunks; ++c) std::memcpy(out[i].qs + c * 4, p[i].qs + c * 32 + l * 4, 4);
  }
}

#ifdef KVGATE_AVX2
inline __m256 load_f16x8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
// 4 activation bytes in every 32-bit lane.
inline __m256i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}
// Asks for the cache lines of the block 1 KiB ahead: a group's blocks are read in order, and on
// the machines measured the hardware prefetcher alone left the kernel waiting on memory (one
// decode step 12.7 -> 8.7 ms with this, `kvgate_bench --benchmark_filter=batched/1/`).
template <typename packed>
inline void prefetch_ahead(const packed& p) {
  const char* a = reinterpret_cast<const char*>(&p) + 1024;
  for (size_t off = 0; off < sizeof(packed) + 63; off += 64) _mm_prefetch(a + off, _MM_HINT_T0);
}
// Keeps v in a register at this point: GCC otherwise reassociates the integer sums of a block,
// issues every maddubs first and spills their results (4 rows' kernels ran from the stack).
inline void pin(__m256i& v) { asm("" : "+x"(v)); }
inline __m256 q4_offsets(const packed_q4_1& p, __m256) { return load_f16x8(p.m); }
inline __m256 q4_offsets(const packed_q4_0&, __m256 d) { return _mm256_mul_ps(d, _mm256_set1_ps(-8.0f)); }
inline __m256 q4_offsets(const packed_q5_1& p, __m256) { return load_f16x8(p.m); }
inline __m256 q4_offsets(const packed_q5_0&, __m256 d) { return _mm256_mul_ps(d, _mm256_set1_ps(-16.0f)); }
#endif
inline float q4_offset_lane(const packed_q4_1& p, int l) { return fp16(p.m[l]); }
inline float q4_offset_lane(const packed_q4_0& p, int l) { return -8.0f * fp16(p.d[l]); }
inline float q4_offset_lane(const packed_q5_1& p, int l) { return fp16(p.m[l]); }
inline float q4_offset_lane(const packed_q5_0& p, int l) { return -16.0f * fp16(p.d[l]); }

// 8 rows (one group) against R activation vectors: out[r * stride + l] = row l . x[r]. Lane l of
// an accumulator is row l; per block, acc += (d_w * d_x) * sum(q_w q_x) + m_w * sum_x, in block
// order, the same for any R, so results do not depend on R.
template <typename packed, int R>
void dot_packed_q4(const packed* b, const q8_activations* x, int64_t nb, float* out, int64_t stride) {
#ifdef KVGATE_AVX2
  __m256 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t i = 0; i < nb; ++i) {
    const packed& p = b[i];
    prefetch_ahead(p);
    // Chunk by chunk, each row's int16 sums taking both halves of the chunk: unpacked weights
    // live one chunk at a time, so R = 4 rows' sums and accumulators fit the 16 registers
    // without spills. Each maddubs lane pair is <= 2 * 15 * 127 and eight of them still fit an
    // int16; integer sums are exact in any order, so the bits are those of any R.
    __m256i s[R];
    for (int r = 0; r < R; ++r) s[r] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      // lo: elements 4c..4c+3 of each row; hi: elements 16+4c..16+4c+3
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.qs + c * 32));
      const __m256i lo = _mm256_and_si256(w, mask);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), mask);
      for (int r = 0; r < R; ++r) {
        const int8_t* q = x[r].q.data() + i * 32 + c * 4;
        s[r] = _mm256_add_epi16(s[r], _mm256_maddubs_epi16(lo, broadcast4(q)));
        s[r] = _mm256_add_epi16(s[r], _mm256_maddubs_epi16(hi, broadcast4(q + 16)));
        pin(s[r]);
      }
    }
    const __m256 d = load_f16x8(p.d);
    const __m256 m = q4_offsets(p, d);
    for (int r = 0; r < R; ++r) {
      const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(s[r], ones));
      acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(x[r].d[i])), dot, acc[r]);
      acc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(x[r].sum[i]), acc[r]);
    }
  }
#pragma GCC unroll 4  // keeps acc in registers (see values_tile in attention_kernel.cpp)
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * stride, acc[r]);
#else
  for (int r = 0; r < R; ++r) {
    for (int l = 0; l < k_group_rows; ++l) {
      float acc = 0.0f;
      for (int64_t i = 0; i < nb; ++i) {
        int s = 0;
        for (int c = 0; c < 4; ++c) {
          for (int k = 0; k < 4; ++k) {
            const uint8_t v = b[i].qs[c * 32 + l * 4 + k];
            s += (v & 0x0F) * x[r].q[i * 32 + c * 4 + k] + (v >> 4) * x[r].q[i * 32 + 16 + c * 4 + k];
          }
        }
        acc = std::fma(fp16(b[i].d[l]) * x[r].d[i], static_cast<float>(s), acc);
        acc = std::fma(q4_offset_lane(b[i], l), x[r].sum[i], acc);
      }
      out[r * stride + l] = acc;
    }
  }
#endif
}

// Q5_0 / Q5_1, as dot_packed_q4 with each nibble completed by its fifth bit (values 0..31). A
// maddubs lane pair reaches 2 * 31 * 127 = 7874, so at most 4 of them (31496) may be summed in
// int16: each chunk's two are widened to int32.
template <typename packed, int R>
void dot_packed_q5(const packed* b, const q8_activations* x, int64_t nb, float* out, int64_t stride) {
#ifdef KVGATE_AVX2
  __m256 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i mask = _mm256_set1_epi8(0x0F), bit4 = _mm256_set1_epi8(0x10);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t i = 0; i < nb; ++i) {
    const packed& p = b[i];
    prefetch_ahead(p);
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.qh));
    // Chunk by chunk (see dot_packed_q4), widened to int32 per chunk: a chunk's two maddubs
    // (low and high elements) sum to at most 2 * 7874 per int16 lane.
    __m256i s[R];
    for (int r = 0; r < R; ++r) s[r] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      // fifth bits at bit 4 of each byte: chunk c's low elements sit at bit c, high at bit 4 + c
      const __m256i h_lo = _mm256_slli_epi32(qh, 4 - c);
      const __m256i h_hi = _mm256_srli_epi32(qh, c);
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.qs + c * 32));
      const __m256i lo = _mm256_or_si256(_mm256_and_si256(w, mask), _mm256_and_si256(h_lo, bit4));
      const __m256i hi =
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(w, 4), mask), _mm256_and_si256(h_hi, bit4));
      for (int r = 0; r < R; ++r) {
        const int8_t* q = x[r].q.data() + i * 32 + c * 4;
        const __m256i t =
            _mm256_add_epi16(_mm256_maddubs_epi16(lo, broadcast4(q)), _mm256_maddubs_epi16(hi, broadcast4(q + 16)));
        s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(t, ones));
        pin(s[r]);
      }
    }
    const __m256 d = load_f16x8(p.d);
    const __m256 m = q4_offsets(p, d);
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(x[r].d[i])), _mm256_cvtepi32_ps(s[r]), acc[r]);
      acc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(x[r].sum[i]), acc[r]);
    }
  }
#pragma GCC unroll 4  // keeps acc in registers (see values_tile in attention_kernel.cpp)
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * stride, acc[r]);
#else
  for (int r = 0; r < R; ++r) {
    for (int l = 0; l < k_group_rows; ++l) {
      float acc = 0.0f;
      for (int64_t i = 0; i < nb; ++i) {
        const uint32_t qh = b[i].qh[l];
        int s = 0;
        for (int c = 0; c < 4; ++c) {
          for (int k = 0; k < 4; ++k) {
            const uint8_t v = b[i].qs[c * 32 + l * 4 + k];
            const int lo = (v & 0x0F) | static_cast<int>(((qh >> (8 * k + c)) & 1) << 4);
            const int hi = (v >> 4) | static_cast<int>(((qh >> (8 * k + 4 + c)) & 1) << 4);
            s += lo * x[r].q[i * 32 + c * 4 + k] + hi * x[r].q[i * 32 + 16 + c * 4 + k];
          }
        }
        acc = std::fma(fp16(b[i].d[l]) * x[r].d[i], static_cast<float>(s), acc);
        acc = std::fma(q4_offset_lane(b[i], l), x[r].sum[i], acc);
      }
      out[r * stride + l] = acc;
    }
  }
#endif
}

template <int R>
void dot_packed_q8_0(const packed_q8_0* b, const q8_activations* x, int64_t nb, float* out, int64_t stride) {
#ifdef KVGATE_AVX2
  __m256 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t i = 0; i < nb; ++i) {
    const packed_q8_0& p = b[i];
    prefetch_ahead(p);
    // Chunk by chunk (see dot_packed_q4): each row's sum is widened to int32 per chunk, since
    // a maddubs lane pair reaches 2 * 127 * 127.
    __m256i s[R];
    for (int r = 0; r < R; ++r) s[r] = _mm256_setzero_si256();
    for (int c = 0; c < 8; ++c) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.qs + c * 32));
      // maddubs wants one unsigned operand: the weight's sign moves onto the activation.
      const __m256i w_abs = _mm256_sign_epi8(w, w);
      for (int r = 0; r < R; ++r) {
        const __m256i prod = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(broadcast4(x[r].q.data() + i * 32 + c * 4), w));
        s[r] = _mm256_add_epi32(s[r], _mm256_madd_epi16(prod, ones));
        pin(s[r]);
      }
    }
    const __m256 d = load_f16x8(p.d);
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(x[r].d[i])), _mm256_cvtepi32_ps(s[r]), acc[r]);
    }
  }
#pragma GCC unroll 4  // keeps acc in registers (see values_tile in attention_kernel.cpp)
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out + r * stride, acc[r]);
#else
  for (int r = 0; r < R; ++r) {
    for (int l = 0; l < k_group_rows; ++l) {
      float acc = 0.0f;
      for (int64_t i = 0; i < nb; ++i) {
        int s = 0;
        for (int c = 0; c < 8; ++c) {
          for (int k = 0; k < 4; ++k) s += b[i].qs[c * 32 + l * 4 + k] * x[r].q[i * 32 + c * 4 + k];
        }
        acc = std::fma(fp16(b[i].d[l]) * x[r].d[i], static_cast<float>(s), acc);
      }
      out[r * stride + l] = acc;
    }
  }
#endif
}

#ifdef KVGATE_AVX2
// ---- AVX-512 (VNNI): two groups at a time ----------------------------------------------------
// A 512-bit register holds chunk c of group g (lanes 0-7: rows 8g..8g+7) and of group g + 1
// (lanes 8-15), so the layout is the AVX2 kernels' and nothing is repacked. vpdpbusd takes 4
// unsigned weight bytes times 4 signed activation bytes per lane into an int32 sum, which
// replaces maddubs + madd (and the int16 bounds they need). Integer sums are exact, and every
// float lane does the AVX2 kernel's operations in its order, so each row gets the AVX2 bits
// (tests/linear_test.cpp checks this). Compiled for AVX-512 here only, called only when
// isa::active() says the CPU has it.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
// GCC 12 reports the undefined upper lanes inside its own AVX-512 intrinsics (unmasked forms) as
// maybe uninitialized (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512 {

inline __m512i load_pair(const uint8_t* a, const uint8_t* b) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}
inline __m512 load_f16_pair(const uint16_t* a, const uint16_t* b) {
  const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a));
  const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
  return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
}
inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}
inline void pin(__m512i& v) { asm("" : "+v"(v)); }
inline __m512 offsets(const packed_q4_1& a, const packed_q4_1& b, __m512) { return load_f16_pair(a.m, b.m); }
inline __m512 offsets(const packed_q5_1& a, const packed_q5_1& b, __m512) { return load_f16_pair(a.m, b.m); }
inline __m512 offsets(const packed_q4_0&, const packed_q4_0&, __m512 d) { return _mm512_mul_ps(d, _mm512_set1_ps(-8.0f)); }
inline __m512 offsets(const packed_q5_0&, const packed_q5_0&, __m512 d) { return _mm512_mul_ps(d, _mm512_set1_ps(-16.0f)); }

// Block i's int32 sums of the two groups for R activation rows, from their unsigned weight
// quants (lo: elements 4c..4c+3, hi: 16+4c..16+4c+3 of chunk c), as dot_packed_q4 / q5 sum them.
template <int R, typename Quants>
inline void nibble_sums(const q8_activations* x, int64_t i, Quants quants, __m512i* s) {
  for (int r = 0; r < R; ++r) s[r] = _mm512_setzero_si512();
  for (int c = 0; c < 4; ++c) {
    __m512i lo, hi;
    quants(c, lo, hi);
    for (int r = 0; r < R; ++r) {
      const int8_t* q = x[r].q.data() + i * 32 + c * 4;
      s[r] = _mm512_dpbusd_epi32(s[r], lo, broadcast4(q));
      s[r] = _mm512_dpbusd_epi32(s[r], hi, broadcast4(q + 16));
      pin(s[r]);
    }
  }
}

// acc += (d_w * d_x) * sums (+ m_w * sum_x): dot_packed_q4's float steps, 16 rows wide.
template <int R>
inline void accumulate(__m512* acc, const __m512i* s, __m512 d, const __m512* m, const q8_activations* x, int64_t i) {
  for (int r = 0; r < R; ++r) {
    acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(x[r].d[i])), _mm512_cvtepi32_ps(s[r]), acc[r]);
    if (m) acc[r] = _mm512_fmadd_ps(*m, _mm512_set1_ps(x[r].sum[i]), acc[r]);
  }
}

template <int R>
inline void store(const __m512* acc, float* out, int64_t stride) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * stride, acc[r]);
}

// Groups a and b (consecutive) against R activation rows: out[r * stride + l], l < 16.
template <typename packed, int R>
void dot_packed_q4_pair(const packed* a, const packed* b, const q8_activations* x, int64_t nb, float* out,
                        int64_t stride) {
  __m512 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const __m512i mask = _mm512_set1_epi8(0x0F);
  for (int64_t i = 0; i < nb; ++i) {
    const packed &pa = a[i], &pb = b[i];
    prefetch_ahead(pa);
    prefetch_ahead(pb);
    __m512i s[R];
    nibble_sums<R>(x, i, [&](int c, __m512i& lo, __m512i& hi) {
      const __m512i w = load_pair(pa.qs + c * 32, pb.qs + c * 32);
      lo = _mm512_and_si512(w, mask);
      hi = _mm512_and_si512(_mm512_srli_epi16(w, 4), mask);
    }, s);
    const __m512 d = load_f16_pair(pa.d, pb.d);
    const __m512 m = offsets(pa, pb, d);
    accumulate<R>(acc, s, d, &m, x, i);
  }
  store<R>(acc, out, stride);
}

template <typename packed, int R>
void dot_packed_q5_pair(const packed* a, const packed* b, const q8_activations* x, int64_t nb, float* out,
                        int64_t stride) {
  __m512 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const __m512i mask = _mm512_set1_epi8(0x0F), bit4 = _mm512_set1_epi8(0x10);
  for (int64_t i = 0; i < nb; ++i) {
    const packed &pa = a[i], &pb = b[i];
    prefetch_ahead(pa);
    prefetch_ahead(pb);
    const __m512i qh = load_pair(reinterpret_cast<const uint8_t*>(pa.qh), reinterpret_cast<const uint8_t*>(pb.qh));
    __m512i s[R];
    nibble_sums<R>(x, i, [&](int c, __m512i& lo, __m512i& hi) {
      // fifth bits at bit 4 of each byte (see dot_packed_q5)
      const __m512i w = load_pair(pa.qs + c * 32, pb.qs + c * 32);
      lo = _mm512_or_si512(_mm512_and_si512(w, mask), _mm512_and_si512(_mm512_slli_epi32(qh, 4 - c), bit4));
      hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(w, 4), mask),
                           _mm512_and_si512(_mm512_srli_epi32(qh, c), bit4));
    }, s);
    const __m512 d = load_f16_pair(pa.d, pb.d);
    const __m512 m = offsets(pa, pb, d);
    accumulate<R>(acc, s, d, &m, x, i);
  }
  store<R>(acc, out, stride);
}

template <int R>
void dot_packed_q8_0_pair(const packed_q8_0* a, const packed_q8_0* b, const q8_activations* x, int64_t nb,
                          float* out, int64_t stride) {
  __m512 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t i = 0; i < nb; ++i) {
    const packed_q8_0 &pa = a[i], &pb = b[i];
    prefetch_ahead(pa);
    prefetch_ahead(pb);
    __m512i s[R];
    for (int r = 0; r < R; ++r) s[r] = _mm512_setzero_si512();
    for (int c = 0; c < 8; ++c) {
      // vpdpbusd wants unsigned weights: |w| times the activation carrying w's sign (as
      // _mm256_sign_epi8 does in the AVX2 kernel; where w = 0 the product is 0 either way).
      const __m512i w = load_pair(reinterpret_cast<const uint8_t*>(pa.qs + c * 32),
                                  reinterpret_cast<const uint8_t*>(pb.qs + c * 32));
      const __m512i w_abs = _mm512_abs_epi8(w);
      const __mmask64 negative = _mm512_movepi8_mask(w);
      for (int r = 0; r < R; ++r) {
        const __m512i q = broadcast4(x[r].q.data() + i * 32 + c * 4);
        s[r] = _mm512_dpbusd_epi32(s[r], w_abs, _mm512_mask_sub_epi8(q, negative, zero, q));
        pin(s[r]);
      }
    }
    accumulate<R>(acc, s, load_f16_pair(pa.d, pb.d), nullptr, x, i);
  }
  store<R>(acc, out, stride);
}

template <typename packed>
const packed* group_blocks(const linear& w, int64_t g) {
  return reinterpret_cast<const packed*>(w.packed) + g * (w.n_in / 32);
}

template <int R>
void pair_dot_n(const linear& w, int64_t g, const q8_activations* x, float* out, int64_t stride) {
  const int64_t nb = w.n_in / 32;
  switch (w.type) {
    case tensor_type::q4_1: {
      const auto* a = group_blocks<packed_q4_1>(w, g);
      return dot_packed_q4_pair<packed_q4_1, R>(a, a + nb, x, nb, out, stride);
    }
    case tensor_type::q4_0: {
      const auto* a = group_blocks<packed_q4_0>(w, g);
      return dot_packed_q4_pair<packed_q4_0, R>(a, a + nb, x, nb, out, stride);
    }
    case tensor_type::q5_0: {
      const auto* a = group_blocks<packed_q5_0>(w, g);
      return dot_packed_q5_pair<packed_q5_0, R>(a, a + nb, x, nb, out, stride);
    }
    case tensor_type::q5_1: {
      const auto* a = group_blocks<packed_q5_1>(w, g);
      return dot_packed_q5_pair<packed_q5_1, R>(a, a + nb, x, nb, out, stride);
    }
    default: {
      const auto* a = group_blocks<packed_q8_0>(w, g);
      return dot_packed_q8_0_pair<R>(a, a + nb, x, nb, out, stride);
    }
  }
}

}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

template <int R>
void group_dot_n(const linear& w, int64_t g, const q8_activations* x, float* out, int64_t stride) {
  const int64_t nb = w.n_in / 32;
  switch (w.type) {
    case tensor_type::q4_1:
      return dot_packed_q4<packed_q4_1, R>(reinterpret_cast<const packed_q4_1*>(w.packed) + g * nb, x, nb, out, stride);
    case tensor_type::q4_0:
      return dot_packed_q4<packed_q4_0, R>(reinterpret_cast<const packed_q4_0*>(w.packed) + g * nb, x, nb, out, stride);
    case tensor_type::q5_0:
      return dot_packed_q5<packed_q5_0, R>(reinterpret_cast<const packed_q5_0*>(w.packed) + g * nb, x, nb, out, stride);
    case tensor_type::q5_1:
      return dot_packed_q5<packed_q5_1, R>(reinterpret_cast<const packed_q5_1*>(w.packed) + g * nb, x, nb, out, stride);
    default:
      return dot_packed_q8_0<R>(reinterpret_cast<const packed_q8_0*>(w.packed) + g * nb, x, nb, out, stride);
  }
}

// out[r * stride + l] = row 8g + l of W . x[r] for r < n_x and l < 8 (W packed).
void group_dot(const linear& w, int64_t g, const q8_activations* x, int64_t n_x, float* out, int64_t stride) {
  simd::for_groups_of_4(n_x, [&](auto R, int64_t r) { group_dot_n<R>(w, g, x + r, out + r * stride, stride); });
}

// As group_dot for groups g and g + 1 (out: 16 rows) through the AVX-512 kernels.
void group_pair_dot(const linear& w, int64_t g, const q8_activations* x, int64_t n_x, float* out, int64_t stride) {
#ifdef KVGATE_AVX2
  simd::for_groups_of_4(n_x, [&](auto R, int64_t r) { avx512::pair_dot_n<R>(w, g, x + r, out + r * stride, stride); });
#else
  fail("group_pair_dot: this build has no AVX-512 kernels");
#endif
}

// The activation format an integer kernel of W reads, or none (W takes the float path).
enum class activation_format { none, q8, q8k };

activation_format integer_format(const linear& w) {
  if (w.packed || has_row_kernel(w.type)) return activation_format::q8;
  if (has_kquant_kernel(w.type)) return activation_format::q8k;
  return activation_format::none;
}

// The n_x input vectors quantized for the integer kernels; a format no weight reads stays empty.
struct integer_activations {
  const q8_activations* q8 = nullptr;    // [n_x] per block of 32
  const q8k_activations* q8k = nullptr;  // [n_x] per super-block of 256
  int64_t n_x = 0;
};

// Output units of the integer path: a group of 8 rows when W is packed (two groups with the
// AVX-512 kernels, the last alone when the count is odd), else one row.
int64_t n_units(const linear& w, bool wide) {
  if (!w.packed) return w.n_out;
  const int64_t groups = w.n_out / k_group_rows;
  return wide ? (groups + 1) / 2 : groups;
}

// Unit u of W against the n_x vectors x; y [n_x, W.n_out].
void unit_dot(const linear& w, int64_t u, const integer_activations& x, bool wide, float* y) {
  if (w.packed) {
    if (!wide) return group_dot(w, u, x.q8, x.n_x, y + u * k_group_rows, w.n_out);
    const int64_t g = 2 * u;
    if (g + 1 < w.n_out / k_group_rows) return group_pair_dot(w, g, x.q8, x.n_x, y + g * k_group_rows, w.n_out);
    return group_dot(w, g, x.q8, x.n_x, y + g * k_group_rows, w.n_out);
  } else if (has_row_kernel(w.type)) {
    row_dot_q8(w, u, x.q8, x.n_x, y + u, w.n_out);
  } else {
    kquant_dot_rows(w.type, w.row(u), x.q8k, static_cast<int>(x.n_x), y + u, w.n_out);
  }
}

// y[i] [n_rows, w[i]->n_out] = x * W_i^T for up to 4 weights with integer kernels and one n_in:
// each format the weights read is quantized once, then one parallel launch covers the output
// units of all the weights. A unit's result depends only on its weight and the activations, so
// the bits do not depend on which weights share the call.
void forward_integer(std::span<const linear* const> w, const float* x, std::span<float* const> y, int64_t n_rows) {
  const int64_t n_in = w[0]->n_in;
  bool want_q8 = false, want_q8k = false;
  for (const linear* wi : w) {
    want_q8 = want_q8 || integer_format(*wi) == activation_format::q8;
    want_q8k = want_q8k || integer_format(*wi) == activation_format::q8k;
  }
  // Thread-local to the caller; the worker threads read them through the pointers in `act`
  // (inside the parallel region the names would denote each worker's own, empty, copies).
  thread_local std::vector<q8_activations> q8_storage;
  thread_local std::vector<q8k_activations> q8k_storage;
  integer_activations act;
  act.n_x = n_rows;
  // Prompt chunks quantize their rows on all threads; a decode step's few rows are not worth a
  // parallel region, nor a call into libgomp (an `if (false)` region is still one: 120 of the 272
  // region launches counted per decoded token on SmolLM2).
  if (want_q8) {
    q8_storage.resize(n_rows);
    q8_activations* q8 = q8_storage.data();
    if (n_rows < 32) {
      for (int64_t r = 0; r < n_rows; ++r) quantize_activations(x + r * n_in, n_in, q8[r]);
    } else {
#pragma omp parallel for schedule(static) num_threads(g_threads)
      for (int64_t r = 0; r < n_rows; ++r) quantize_activations(x + r * n_in, n_in, q8[r]);
    }
    act.q8 = q8;
  }
  if (want_q8k) {
    q8k_storage.resize(n_rows);
    q8k_activations* q8k = q8k_storage.data();
    if (n_rows < 32) {
      for (int64_t r = 0; r < n_rows; ++r) quantize_q8k(x + r * n_in, n_in, q8k[r]);
    } else {
#pragma omp parallel for schedule(static) num_threads(g_threads)
      for (int64_t r = 0; r < n_rows; ++r) quantize_q8k(x + r * n_in, n_in, q8k[r]);
    }
    act.q8k = q8k;
  }
  const bool wide = isa::active() == isa::level::avx512;
  int64_t first[5] = {0};  // first output unit of each weight in the joint range
  for (size_t i = 0; i < w.size(); ++i) first[i + 1] = first[i] + n_units(*w[i], wide);
  const int64_t n_total = first[w.size()];
#pragma omp parallel for schedule(static) num_threads(g_threads)
  for (int64_t u = 0; u < n_total; ++u) {
    size_t i = 0;
    while (u >= first[i + 1]) ++i;
    unit_dot(*w[i], u - first[i], act, wide, y[i]);
  }
}

}  // namespace

bool linear_packable(const linear& w) {
  return has_packed_kernel(w.type) && w.n_out % k_group_rows == 0 && w.n_in % 32 == 0 && w.n_out > 0;
}

std::vector<uint8_t> linear_pack(const linear& w) {
  if (!linear_packable(w)) fail("linear_pack: a {} weight of {} rows cannot be packed", gguf::traits(w.type).name, w.n_out);
  std::vector<uint8_t> out(w.row_bytes * static_cast<size_t>(w.n_out));
  const int64_t n_groups = w.n_out / k_group_rows, nb = w.n_in / 32;
  for (int64_t g = 0; g < n_groups; ++g) {
    switch (w.type) {
      case tensor_type::q4_1: pack_group<block_q4_1>(w, g, reinterpret_cast<packed_q4_1*>(out.data()) + g * nb); break;
      case tensor_type::q4_0: pack_group<block_q4_0>(w, g, reinterpret_cast<packed_q4_0*>(out.data()) + g * nb); break;
      case tensor_type::q5_0: pack_group<block_q5_0>(w, g, reinterpret_cast<packed_q5_0*>(out.data()) + g * nb); break;
      case tensor_type::q5_1: pack_group<block_q5_1>(w, g, reinterpret_cast<packed_q5_1*>(out.data()) + g * nb); break;
      default: pack_group<block_q8_0>(w, g, reinterpret_cast<packed_q8_0*>(out.data()) + g * nb); break;
    }
  }
  return out;
}

void linear_dequantize_row(const linear& w, int64_t o, float* out) {
  if (!w.packed) return gguf::dequantize(w.type, w.row(o), out, w.n_in);
  thread_local std::vector<uint8_t> row;
  row.resize(w.row_bytes);
  switch (w.type) {
    case tensor_type::q4_1: unpack_row<block_q4_1, packed_q4_1>(w, o, reinterpret_cast<block_q4_1*>(row.data())); break;
    case tensor_type::q4_0: unpack_row<block_q4_0, packed_q4_0>(w, o, reinterpret_cast<block_q4_0*>(row.data())); break;
    case tensor_type::q5_0: unpack_row<block_q5_0, packed_q5_0>(w, o, reinterpret_cast<block_q5_0*>(row.data())); break;
    case tensor_type::q5_1: unpack_row<block_q5_1, packed_q5_1>(w, o, reinterpret_cast<block_q5_1*>(row.data())); break;
    default: unpack_row<block_q8_0, packed_q8_0>(w, o, reinterpret_cast<block_q8_0*>(row.data())); break;
  }
  gguf::dequantize(w.type, row.data(), out, w.n_in);
}

linear linear::from_tensor(const gguf::tensor_info& t) {
  if (t.ne.size() != 2) fail("tensor {} must be 2-d to be used as a matrix", t.name);
  linear w;
  w.type = t.type;
  w.data = t.data;
  w.n_in = t.ne[0];
  w.n_out = t.ne[1];
  w.row_bytes = gguf::row_bytes(t.type, t.ne[0]);
  return w;
}

float linear_row_dot(const linear& w, int64_t i, const float* x) {
  if (w.packed) {
    thread_local std::vector<float> buf;
    buf.resize(w.n_in);
    linear_dequantize_row(w, i, buf.data());
    return dot_f32(buf.data(), x, w.n_in);
  }
  const uint8_t* row = w.row(i);
  switch (w.type) {
    case tensor_type::f32: return dot_f32(reinterpret_cast<const float*>(row), x, w.n_in);
    case tensor_type::f16: return dot_f16(reinterpret_cast<const uint16_t*>(row), x, w.n_in);
    default: return dot_generic(w, row, x);
  }
}

double linear_row_dot_reference(const linear& w, int64_t i, const float* x) {
  std::vector<float> row(w.n_in);
  linear_dequantize_row(w, i, row.data());
  double acc = 0.0;
  for (int64_t j = 0; j < w.n_in; ++j) acc += static_cast<double>(row[j]) * x[j];
  return acc;
}

void linear_forward(const linear& w, const float* x, float* y, int64_t n_rows, linear_scratch& scratch,
                    linear_rows rows) {
  ensure_blas_threads();
  const int64_t n_out = w.n_out;
  const bool integer = integer_format(w) != activation_format::none;
  const bool per_row =
      rows == linear_rows::independent || n_rows < k_sgemm_min_rows || (rows == linear_rows::quantized && integer);
  if (per_row && integer) {
    // Decode: activations to 8 bits once, then integer dot products (as llama.cpp does).
    const linear* ws[1] = {&w};
    float* ys[1] = {y};
    forward_integer(ws, x, ys, n_rows);
    return;
  }
  if (per_row) {
#pragma omp parallel for schedule(static) num_threads(g_threads)
    for (int64_t o = 0; o < n_out; ++o) {
      for (int64_t r = 0; r < n_rows; ++r) y[r * n_out + o] = linear_row_dot(w, o, x + r * w.n_in);
    }
    return;
  }
  // Prefill: each OpenMP thread dequantizes its own slice of W's rows into the scratch and runs a
  // single-threaded sgemm for the matching columns of y. BLAS never starts threads of its own, so
  // OpenMP's workers are the only ones spinning (two pools on two cores fight: measured prefill
  // 402 -> 179 tok/s with OpenMP's active wait policy when BLAS had its own threads).
  if (w.type != tensor_type::f32) scratch.weight_f32.resize(static_cast<size_t>(w.n_out) * w.n_in);
  float* wf_all = w.type == tensor_type::f32 ? nullptr : scratch.weight_f32.data();
#pragma omp parallel num_threads(g_threads)
  {
    const int64_t n_threads = omp_get_num_threads(), it = omp_get_thread_num();
    // Slices of whole 16-row groups keep sgemm's tiles aligned.
    const int64_t n_groups = (w.n_out + 15) / 16;
    const int64_t o0 = std::min(w.n_out, n_groups * it / n_threads * 16);
    const int64_t o1 = std::min(w.n_out, n_groups * (it + 1) / n_threads * 16);
    if (o1 > o0) {
      const float* wf;
      if (wf_all) {
        for (int64_t o = o0; o < o1; ++o) linear_dequantize_row(w, o, wf_all + o * w.n_in);
        wf = wf_all + o0 * w.n_in;
      } else {
        wf = reinterpret_cast<const float*>(w.data) + o0 * w.n_in;
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n_rows),
                  static_cast<blasint>(o1 - o0), static_cast<blasint>(w.n_in), 1.0f, x,
                  static_cast<blasint>(w.n_in), wf, static_cast<blasint>(w.n_in), 0.0f, y + o0,
                  static_cast<blasint>(w.n_out));
    }
  }
}

void linear_forward_multi(std::span<const linear* const> w, const float* x, std::span<float* const> y,
                          int64_t n_rows, linear_scratch& scratch, linear_rows rows) {
  if (w.size() != y.size()) fail("linear_forward_multi: {} weights but {} outputs", w.size(), y.size());
  bool fused = (rows != linear_rows::automatic || n_rows < k_sgemm_min_rows) && !w.empty() && w.size() <= 4;
  for (const linear* wi : w) {
    fused = fused && integer_format(*wi) != activation_format::none && wi->n_in == w[0]->n_in;
  }
  if (!fused) {
    for (size_t i = 0; i < w.size(); ++i) linear_forward(*w[i], x, y[i], n_rows, scratch, rows);
    return;
  }
  forward_integer(w, x, y, n_rows);
}

void set_compute_threads(int n_threads) {
  g_threads = n_threads > 0 ? n_threads : omp_get_num_procs();
  omp_set_num_threads(g_threads);
}

int compute_threads() { return g_threads; }

}  // namespace kvgate
