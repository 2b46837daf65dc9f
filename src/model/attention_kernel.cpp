#include "model/attention_kernel.h"

#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "model/isa.h"
#include "model/simd.h"

namespace kvgate {

void live_runs(const kv_head& h, size_t n_slots, std::vector<slot_run>& runs) {
  runs.clear();
  const uint8_t* masked = h.masked.data();
  uint32_t live = 0;
  if (h.n_masked == 0) {  // the common case after compaction: one run
    if (n_slots) runs.push_back({0, static_cast<uint32_t>(n_slots), 0});
    return;
  }
  size_t j = 0;
  while (j < n_slots) {
    while (j < n_slots && masked[j]) ++j;
    if (j == n_slots) break;
    const size_t b = j;
    while (j < n_slots && !masked[j]) ++j;
    runs.push_back({static_cast<uint32_t>(b), static_cast<uint32_t>(j), live});
    live += static_cast<uint32_t>(j - b);
  }
}

namespace {

// The rows of a kv_rows as float pointers: f32 rows are read in place, other types converted.
inline const float* row_f32(const kv_rows& r, uint32_t j, float* buf) {
  if (r.type() == kv_type::f32) return reinterpret_cast<const float*>(r.row(j));
  r.row_to_float(j, buf);
  return buf;
}

#ifdef KVGATE_AVX2
constexpr int k_sub = 3;  // queries whose accumulators stay in registers together

// Elements [i, i + 8) of a stored row as floats (i a multiple of 8, so q8_0 loads stay in a block).
template <kv_type T>
inline __m256 load8(const uint8_t* row, int i) {
  if constexpr (T == kv_type::f32) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(row) + i);
  } else if constexpr (T == kv_type::f16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * i)));
  } else {
    const uint8_t* b = row + (i / 32) * 34;
    uint16_t hs;
    std::memcpy(&hs, b, 2);
    const __m128i qi = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + i % 32));
    return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(qi)), _mm256_set1_ps(_cvtsh_ss(hs)));
  }
}

// s[g][j] = dot(q_g, k_j) * scale for NG queries and the block's nb slots, four slots at a time:
// each K element is loaded (converted) once for the NG queries, and the 4 x NG sums are reduced
// together by one tree of horizontal adds per query, not one reduction per slot and query. A
// block's last slots are padded with copies of its last row, so every slot's score is the same
// sequence of operations wherever it falls: its bits do not depend on the slots beside it (mask
// mode and hard eviction agree). Stores may run past nb, never past k_attn_block (a multiple of
// 4); the caller overwrites those columns.
template <kv_type T, int NG>
void block_scores(const uint8_t* const* rows, int nb, const float* q, int d, float scale, float (*s)[k_attn_block]) {
  static_assert(k_attn_block % 4 == 0 && NG * 4 <= 12, "4 slots x NG sums must leave registers for the loads");
  const __m128 vscale = _mm_set1_ps(scale);
  for (int j0 = 0; j0 < nb; j0 += 4) {
    const uint8_t* row[4];
    for (int t = 0; t < 4; ++t) row[t] = rows[std::min(j0 + t, nb - 1)];
    __m256 acc[NG][4];
    for (int g = 0; g < NG; ++g) {
      for (int t = 0; t < 4; ++t) acc[g][t] = _mm256_setzero_ps();
    }
    for (int i = 0; i < d; i += 8) {
      for (int t = 0; t < 4; ++t) {
        const __m256 kv = load8<T>(row[t], i);
        for (int g = 0; g < NG; ++g) acc[g][t] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * d + i), kv, acc[g][t]);
      }
    }
    for (int g = 0; g < NG; ++g) {
      // lanes: (slot 0..3, elements 0-3) | (slot 0..3, elements 4-7), then the halves added
      const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[g][0], acc[g][1]), _mm256_hadd_ps(acc[g][2], acc[g][3]));
      const __m128 sum = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
      _mm_storeu_ps(&s[g][j0], _mm_mul_ps(sum, vscale));
    }
  }
}

// o_g[i, i + 8C) += sum_j p[g][j] v_j[i, i + 8C) for NG queries: the tile's NG x C accumulators
// stay in registers over the block's slots, each V element loaded (converted) once and each
// probability broadcast once per tile. Every output element is one chain of fmas in slot order,
// whatever the tiling.
template <kv_type T, int NG, int C>
void values_tile(const uint8_t* const* rows, int nb, const float (*p)[k_attn_block], float* o, int d, int i) {
  // The loops that load and store the accumulators are unrolled before GCC's -O3 passes see
  // them; otherwise the array stays in memory and every slot stores all of it.
  __m256 acc[NG][C];
#pragma GCC unroll 16
  for (int g = 0; g < NG; ++g) {
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) acc[g][c] = _mm256_loadu_ps(o + g * d + i + 8 * c);
  }
  for (int j = 0; j < nb; ++j) {
    const uint8_t* row = rows[j];
    __m256 pj[NG];
    for (int g = 0; g < NG; ++g) pj[g] = _mm256_broadcast_ss(&p[g][j]);
    for (int c = 0; c < C; ++c) {
      const __m256 vv = load8<T>(row, i + 8 * c);
      for (int g = 0; g < NG; ++g) acc[g][c] = _mm256_fmadd_ps(pj[g], vv, acc[g][c]);
    }
  }
#pragma GCC unroll 16
  for (int g = 0; g < NG; ++g) {
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(o + g * d + i + 8 * c, acc[g][c]);
  }
}

// o_g += sum_j p[g][j] v_j for NG queries, in tiles of 32 columns (8 for the rest of d).
template <kv_type T, int NG>
void block_values(const uint8_t* const* rows, int nb, const float (*p)[k_attn_block], float* o, int d) {
  int i = 0;
  for (; i + 32 <= d; i += 32) values_tile<T, NG, 4>(rows, nb, p, o, d, i);
  for (; i < d; i += 8) values_tile<T, NG, 1>(rows, nb, p, o, d, i);
}

template <kv_type T>
void block_pass(bool scores, const uint8_t* const* rows, int nb, const float* q, int n_q, int d, float scale,
                float (*s)[k_attn_block], float* o) {
  for (int g0 = 0; g0 < n_q; g0 += k_sub) {
    const int ng = std::min(k_sub, n_q - g0);
    const float* qg = q + static_cast<size_t>(g0) * d;
    float (*sg)[k_attn_block] = s + g0;
    switch (ng) {  // o is not used (may be null) in the scores pass
#define KVGATE_CASE(N)                                                                 \
  case N:                                                                              \
    if (scores) block_scores<T, N>(rows, nb, qg, d, scale, sg);                        \
    else block_values<T, N>(rows, nb, sg, o + static_cast<size_t>(g0) * d, d);         \
    break;
      KVGATE_CASE(1)
      KVGATE_CASE(2)
      KVGATE_CASE(3)
#undef KVGATE_CASE
    }
  }
}

// ---- AVX-512: the same passes, 16 lanes wide, the same bits ----------------------------------
// Scores take 8 slots per step, two per register (lanes 0-7: slot 2p, 8-15: slot 2p + 1), so each
// lane does the AVX2 kernel's chain of fmas, and the 8 x NG sums are reduced by the AVX2 tree of
// pairwise adds (_mm256_hadd_ps is per 128-bit lane; here two shuffles and an add per 128-bit
// lane). Values take tiles of 64 columns (16 per register): every output element is the same
// chain of fmas in slot order. So both passes give the AVX2 bits (tests/attention_test.cpp
// checks it). Called only when isa::active() says the CPU has AVX-512.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
// GCC 12 reports the undefined upper lanes inside its own AVX-512 intrinsics (unmasked forms) as
// maybe uninitialized (GCC bug 105593, fixed in 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
namespace avx512 {

constexpr int k_sub = 4;  // queries per register group: 4 x 4 accumulators, 4 queries, loads

// Elements [i, i + 8) of rows a (lanes 0-7) and b (lanes 8-15), as load8 gives them.
template <kv_type T>
inline __m512 load8_pair(const uint8_t* a, const uint8_t* b, int i) {
  if constexpr (T == kv_type::f16) {
    const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 2 * i));
    const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 * i));
    return _mm512_cvtph_ps(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
  } else {
    return _mm512_insertf32x8(_mm512_castps256_ps512(load8<T>(a, i)), load8<T>(b, i), 1);
  }
}

// Elements [i, i + 16) of a row (i a multiple of 16, so q8_0 loads stay in a block).
template <kv_type T>
inline __m512 load16(const uint8_t* row, int i) {
  if constexpr (T == kv_type::f32) {
    return _mm512_loadu_ps(reinterpret_cast<const float*>(row) + i);
  } else if constexpr (T == kv_type::f16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 2 * i)));
  } else {
    const uint8_t* b = row + (i / 32) * 34;
    uint16_t hs;
    std::memcpy(&hs, b, 2);
    const __m128i qi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2 + i % 32));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(qi)), _mm512_set1_ps(_cvtsh_ss(hs)));
  }
}

// _mm256_hadd_ps's pairing in each 128-bit lane: [a0 + a1, a2 + a3, b0 + b1, b2 + b3].
inline __m512 hadd(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

template <kv_type T, int NG>
void block_scores(const uint8_t* const* rows, int nb, const float* q, int d, float scale, float (*s)[k_attn_block]) {
  static_assert(k_attn_block % 8 == 0 && NG <= k_sub, "8 slots x NG sums must leave registers for the loads");
  const __m256 vscale = _mm256_set1_ps(scale);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int j0 = 0; j0 < nb; j0 += 8) {
    const uint8_t* row[8];
    for (int t = 0; t < 8; ++t) row[t] = rows[std::min(j0 + t, nb - 1)];
    __m512 acc[NG][4];  // acc[g][p]: slot 2p in lanes 0-7, slot 2p + 1 in lanes 8-15
    for (int g = 0; g < NG; ++g) {
      for (int p = 0; p < 4; ++p) acc[g][p] = _mm512_setzero_ps();
    }
    for (int i = 0; i < d; i += 8) {
      __m512 qv[NG];
      for (int g = 0; g < NG; ++g) qv[g] = _mm512_broadcast_f32x8(_mm256_loadu_ps(q + g * d + i));
      for (int p = 0; p < 4; ++p) {
        const __m512 kv = load8_pair<T>(row[2 * p], row[2 * p + 1], i);
        for (int g = 0; g < NG; ++g) acc[g][p] = _mm512_fmadd_ps(qv[g], kv, acc[g][p]);
      }
    }
    for (int g = 0; g < NG; ++g) {
      // 128-bit lanes of h: the (0-3) sums of slots 0, 2, 4, 6 | their (4-7) sums | the same for
      // slots 1, 3, 5, 7; each slot's halves then added low + high, as the AVX2 kernel does.
      const __m512 h = hadd(hadd(acc[g][0], acc[g][1]), hadd(acc[g][2], acc[g][3]));
      const __m256 even_odd_lo = _mm512_castps512_ps256(h), even_odd_hi = _mm512_extractf32x8_ps(h, 1);
      const __m256 lo = _mm256_permute2f128_ps(even_odd_lo, even_odd_hi, 0x20);
      const __m256 hi = _mm256_permute2f128_ps(even_odd_lo, even_odd_hi, 0x31);
      const __m256 sums = _mm256_permutevar8x32_ps(_mm256_add_ps(lo, hi), order);
      _mm256_storeu_ps(&s[g][j0], _mm256_mul_ps(sums, vscale));
    }
  }
}

// As values_tile, 16 columns per register.
template <kv_type T, int NG, int C>
void values_tile(const uint8_t* const* rows, int nb, const float (*p)[k_attn_block], float* o, int d, int i) {
  __m512 acc[NG][C];
#pragma GCC unroll 16
  for (int g = 0; g < NG; ++g) {
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) acc[g][c] = _mm512_loadu_ps(o + g * d + i + 16 * c);
  }
  for (int j = 0; j < nb; ++j) {
    const uint8_t* row = rows[j];
    __m512 pj[NG];
    for (int g = 0; g < NG; ++g) pj[g] = _mm512_set1_ps(p[g][j]);
    for (int c = 0; c < C; ++c) {
      const __m512 vv = load16<T>(row, i + 16 * c);
      for (int g = 0; g < NG; ++g) acc[g][c] = _mm512_fmadd_ps(pj[g], vv, acc[g][c]);
    }
  }
#pragma GCC unroll 16
  for (int g = 0; g < NG; ++g) {
#pragma GCC unroll 16
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(o + g * d + i + 16 * c, acc[g][c]);
  }
}

template <kv_type T, int NG>
void block_values(const uint8_t* const* rows, int nb, const float (*p)[k_attn_block], float* o, int d) {
  int i = 0;
  for (; i + 64 <= d; i += 64) values_tile<T, NG, 4>(rows, nb, p, o, d, i);
  for (; i + 16 <= d; i += 16) values_tile<T, NG, 1>(rows, nb, p, o, d, i);
  if (i < d) kvgate::values_tile<T, NG, 1>(rows, nb, p, o, d, i);  // the last 8 columns
}

template <kv_type T>
void block_pass(bool scores, const uint8_t* const* rows, int nb, const float* q, int n_q, int d, float scale,
                float (*s)[k_attn_block], float* o) {
  for (int g0 = 0; g0 < n_q; g0 += k_sub) {
    const int ng = std::min(k_sub, n_q - g0);
    const float* qg = q + static_cast<size_t>(g0) * d;
    float (*sg)[k_attn_block] = s + g0;
    switch (ng) {  // o is not used (may be null) in the scores pass
#define KVGATE_CASE(N)                                                                 \
  case N:                                                                              \
    if (scores) block_scores<T, N>(rows, nb, qg, d, scale, sg);                        \
    else block_values<T, N>(rows, nb, sg, o + static_cast<size_t>(g0) * d, d);         \
    break;
      KVGATE_CASE(1)
      KVGATE_CASE(2)
      KVGATE_CASE(3)
      KVGATE_CASE(4)
#undef KVGATE_CASE
    }
  }
}

}  // namespace avx512
#pragma GCC diagnostic pop
#pragma GCC pop_options

// One pass (scores or values) of the block's nb slots of `src`. With more queries than one
// register group (prefill tiles), a q8_0 block is first converted to f32 rows in `buf`
// [k_attn_block x d], once, instead of once per group of k_sub queries; the conversion is exact
// (the same floats load8 gives), so the bits do not depend on which path ran. Measured on a
// 4,096-slot prefill tile of 24 queries (`kvgate_bench --benchmark_filter=run/.*/4096/24`, one
// thread, 3 alternations): q8_0 3.3-3.8 -> 5.1-6.4 M slots/s; f16 converts in one instruction
// and was no faster through the buffer (5.4-6.2 on the fly, 4.8-6.7 buffered), so it stays on
// the fly.
void block_pass_any(bool scores, bool wide, const kv_rows& src, const uint32_t* idx, int nb, const float* q,
                    int n_q, int d, float scale, float (*s)[k_attn_block], float* o, float* buf) {
  const uint8_t* rows[k_attn_block];
  kv_type type = src.type();
  if (type == kv_type::q8_0 && n_q > (wide ? avx512::k_sub : k_sub)) {
    for (int j = 0; j < nb; ++j) {
      float* r = buf + static_cast<size_t>(j) * d;
      src.row_to_float(idx[j], r);
      rows[j] = reinterpret_cast<const uint8_t*>(r);
    }
    type = kv_type::f32;
  } else {
    for (int j = 0; j < nb; ++j) rows[j] = src.row(idx[j]);
  }
  // The AVX-512 scores pass pays only when a tile has more queries than one AVX2 register group
  // (prefill): for one group it loses to the AVX2 pass, which needs no lane inserts or shuffles
  // to pair slots (see "AVX-512" in README.md for the figures). The values pass pays everywhere.
  if (wide && (!scores || n_q > k_sub)) {
    switch (type) {
      case kv_type::f32: avx512::block_pass<kv_type::f32>(scores, rows, nb, q, n_q, d, scale, s, o); return;
      case kv_type::f16: avx512::block_pass<kv_type::f16>(scores, rows, nb, q, n_q, d, scale, s, o); return;
      case kv_type::q8_0: avx512::block_pass<kv_type::q8_0>(scores, rows, nb, q, n_q, d, scale, s, o); return;
    }
  }
  switch (type) {
    case kv_type::f32: block_pass<kv_type::f32>(scores, rows, nb, q, n_q, d, scale, s, o); return;
    case kv_type::f16: block_pass<kv_type::f16>(scores, rows, nb, q, n_q, d, scale, s, o); return;
    case kv_type::q8_0: block_pass<kv_type::q8_0>(scores, rows, nb, q, n_q, d, scale, s, o); return;
  }
}
#endif

// The largest of a block's first n scores (n >= 1). Exact in any order.
inline float block_max(const float* x, int n) {
  static_assert(k_attn_block == 32, "the vector paths below take a block as four 8-wide vectors");
#ifdef KVGATE_AVX2
  if (n == k_attn_block) {
    const __m256 a = _mm256_max_ps(_mm256_max_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
                                   _mm256_max_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
  }
#endif
  float m = x[0];
  for (int j = 1; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// The sum of a block's k_attn_block probabilities, as a fixed tree (four 8-wide vectors, then
// their lanes), the same for every block and query; the portable path adds in the same order.
// A serial sum was a 32-add dependency chain per query and block.
inline float block_sum(const float* x) {
#ifdef KVGATE_AVX2
  const __m256 a = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8)),
                                 _mm256_add_ps(_mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  return _mm_cvtss_f32(h);
#else
  float v[8], h[4];
  for (int i = 0; i < 8; ++i) v[i] = (x[i] + x[8 + i]) + (x[16 + i] + x[24 + i]);
  for (int i = 0; i < 4; ++i) h[i] = v[i] + v[4 + i];
  return (h[0] + h[2]) + (h[1] + h[3]);
#endif
}

void attend_chunk_group(const kv_rows& k, const kv_rows& v, std::span<const slot_run> runs,
                        size_t live_first, size_t live_end, const float* q, int n_q, const uint32_t* limit,
                        float scale, float* m, float* l, float* o) {
  constexpr int B = k_attn_block;
  const int d = k.d();
  alignas(32) float s[k_attn_max_group][B];  // scores, then probabilities
  alignas(32) float kbuf[k_attn_max_d], vbuf[k_attn_max_d];
  uint32_t idx[B];
#ifdef KVGATE_AVX2
  const bool fast = d % 8 == 0;  // else the portable path (also the non-AVX2 build's)
  const bool wide = isa::active() == isa::level::avx512;
  // A q8_0 block's K or V rows as f32, for prefill tiles (see block_pass_any); per thread, 64 KiB
  // at the largest d_head.
  thread_local std::vector<float> block_storage;
  block_storage.resize(static_cast<size_t>(B) * d);
  float* block_buf = block_storage.data();
#endif
  for (int g = 0; g < n_q; ++g) {
    m[g] = -std::numeric_limits<float>::infinity();
    l[g] = 0.0f;
  }
  std::fill(o, o + static_cast<size_t>(n_q) * d, 0.0f);

  // The run holding live slot live_first.
  size_t ri = std::upper_bound(runs.begin(), runs.end(), live_first,
                               [](size_t x, const slot_run& r) { return x < r.live_before; }) - runs.begin() - 1;
  uint32_t phys = runs[ri].begin + static_cast<uint32_t>(live_first - runs[ri].live_before);
  for (size_t live = live_first; live < live_end;) {
    const int nb = static_cast<int>(std::min<size_t>(B, live_end - live));
    for (int j = 0; j < nb; ++j) {
      if (phys == runs[ri].end) phys = runs[++ri].begin;
      idx[j] = phys++;
    }
    const size_t block_first = live;
    live += nb;

#ifdef KVGATE_AVX2
    if (fast) {
      block_pass_any(true, wide, k, idx, nb, q, n_q, d, scale, s, o, block_buf);
    } else
#endif
    {
      for (int j = 0; j < nb; ++j) {
        const float* kr = row_f32(k, idx[j], kbuf);
        for (int g = 0; g < n_q; ++g) s[g][j] = simd::dot(q + static_cast<size_t>(g) * d, kr, d) * scale;
      }
    }
    for (int g = 0; g < n_q; ++g) {
      // Query g sees a prefix of the block: nv slots.
      const int nv = limit ? static_cast<int>(std::clamp<int64_t>(static_cast<int64_t>(limit[g]) - static_cast<int64_t>(block_first), 0, nb)) : nb;
      if (nv == 0) {
        std::fill(s[g], s[g] + B, 0.0f);
        continue;
      }
      const float bm = block_max(s[g], nv);
      const float m_new = std::max(m[g], bm);
      if (m_new != m[g] && l[g] != 0.0f) {
        const float corr = simd::exp_approx(m[g] - m_new);
        l[g] *= corr;
        simd::scale(corr, o + static_cast<size_t>(g) * d, d);
      }
      m[g] = m_new;
      for (int j = nv; j < B; ++j) s[g][j] = m_new;
      simd::exp_shifted(s[g], m_new, s[g], B);
      for (int j = nv; j < B; ++j) s[g][j] = 0.0f;
      l[g] += block_sum(s[g]);
    }
#ifdef KVGATE_AVX2
    if (fast) {
      block_pass_any(false, wide, v, idx, nb, q, n_q, d, scale, s, o, block_buf);
      continue;
    }
#endif
    for (int j = 0; j < nb; ++j) {
      const float* vr = row_f32(v, idx[j], vbuf);
      for (int g = 0; g < n_q; ++g) simd::axpy(s[g][j], vr, o + static_cast<size_t>(g) * d, d);
    }
  }
}

}  // namespace

void attend_chunk(const kv_rows& k, const kv_rows& v, std::span<const slot_run> runs, size_t live_first,
                  size_t live_end, const float* q, int n_q, const uint32_t* limit, float scale, float* m,
                  float* l, float* o) {
  const int d = k.d();
  if (d > k_attn_max_d) fail("attention: d_head {} exceeds the kernel's limit {}", d, k_attn_max_d);
  for (int g0 = 0; g0 < n_q; g0 += k_attn_max_group) {
    const int n = std::min(k_attn_max_group, n_q - g0);
    attend_chunk_group(k, v, runs, live_first, live_end, q + static_cast<size_t>(g0) * d, n,
                       limit ? limit + g0 : nullptr, scale, m + g0, l + g0, o + static_cast<size_t>(g0) * d);
  }
}

void attend_scores(const kv_rows& k, const uint32_t* idx, int nb, const float* q, int n_q, float scale,
                   float (*s)[k_attn_block]) {
  const int d = k.d();
  if (d > k_attn_max_d) fail("attention: d_head {} exceeds the kernel's limit {}", d, k_attn_max_d);
  if (n_q > k_attn_max_group || nb > k_attn_block) {
    fail("attend_scores: {} queries x {} slots exceed the block of {} x {}", n_q, nb, k_attn_max_group, k_attn_block);
  }
#ifdef KVGATE_AVX2
  if (d % 8 == 0) {
    thread_local std::vector<float> block_storage;
    block_storage.resize(static_cast<size_t>(k_attn_block) * d);
    block_pass_any(true, isa::active() == isa::level::avx512, k, idx, nb, q, n_q, d, scale, s, nullptr,
                   block_storage.data());
    return;
  }
#endif
  alignas(32) float kbuf[k_attn_max_d];
  for (int j = 0; j < nb; ++j) {
    const float* kr = row_f32(k, idx[j], kbuf);
    for (int g = 0; g < n_q; ++g) s[g][j] = simd::dot(q + static_cast<size_t>(g) * d, kr, d) * scale;
  }
}

void attend_merge(int n_parts, int n_q, int d, const float* m_parts, const float* l_parts,
                  const float* o_parts, float* out, float* m_out, float* l_out) {
  for (int g = 0; g < n_q; ++g) {
    float mx = m_parts[g];
    for (int p = 1; p < n_parts; ++p) mx = std::max(mx, m_parts[static_cast<size_t>(p) * n_q + g]);
    float* og = out + static_cast<size_t>(g) * d;
    std::fill(og, og + d, 0.0f);
    float lsum = 0.0f;
    for (int p = 0; p < n_parts; ++p) {
      const size_t pg = static_cast<size_t>(p) * n_q + g;
      if (l_parts[pg] == 0.0f) continue;  // the query saw nothing of this part
      const float c = simd::exp_approx(m_parts[pg] - mx);
      lsum += l_parts[pg] * c;
      simd::axpy(c, o_parts + pg * d, og, d);
    }
    simd::scale(1.0f / lsum, og, d);
    if (m_out) m_out[g] = mx;
    if (l_out) l_out[g] = lsum;
  }
}

void attend(const kv_rows& k, const kv_rows& v, std::span<const slot_run> runs, size_t n_live,
            const float* q, int n_q, const uint32_t* limit, float scale, float* out, float* m_out,
            float* l_out, std::vector<float>& scratch) {
  const int d = k.d();
  const size_t n_parts = attn_n_chunks(n_live);
  scratch.resize(n_parts * n_q * (2 + static_cast<size_t>(d)));
  float* m = scratch.data();
  float* l = m + n_parts * n_q;
  float* o = l + n_parts * n_q;
  for (size_t p = 0; p < n_parts; ++p) {
    attend_chunk(k, v, runs, p * k_attn_chunk, std::min(n_live, (p + 1) * k_attn_chunk), q, n_q, limit, scale,
                 m + p * n_q, l + p * n_q, o + p * n_q * d);
  }
  attend_merge(static_cast<int>(n_parts), n_q, d, m, l, o, out, m_out, l_out);
}

}  // namespace kvgate
