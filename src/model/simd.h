// Small vector kernels shared by the forward pass. Each has a fixed summation order, so the same
// inputs always give the same bits (mask mode relies on that).
#pragma once

#include <cstdint>
#include <type_traits>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
// The integer and f16 kernels' AVX2 paths also need F16C (x86-64-v3 has all three).
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define KVGATE_AVX2 1
#endif

namespace kvgate::simd {

// Calls f(std::integral_constant<int, R>{}, r0) over vectors [0, n): groups of 4 (R = 4), then
// the remainder as one call with R = n % 4. The multi-vector kernels take R as a template
// argument so their accumulators stay in registers.
template <typename F>
inline void for_groups_of_4(int64_t n, F&& f) {
  int64_t r = 0;
  for (; r + 4 <= n; r += 4) f(std::integral_constant<int, 4>{}, r);
  switch (n - r) {
    case 3: f(std::integral_constant<int, 3>{}, r); break;
    case 2: f(std::integral_constant<int, 2>{}, r); break;
    case 1: f(std::integral_constant<int, 1>{}, r); break;
    default: break;
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// The 8 lanes of v added as a fixed tree (halves, then pairs, then the last two).
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

inline float dot(const float* a, const float* b, int64_t n) {
  int64_t j = 0;
  float acc = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 v0 = _mm256_setzero_ps(), v1 = _mm256_setzero_ps();
  for (; j + 16 <= n; j += 16) {
    v0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), v0);
    v1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), v1);
  }
  for (; j + 8 <= n; j += 8) v0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), v0);
  acc = hsum(_mm256_add_ps(v0, v1));
#endif
  for (; j < n; ++j) acc += a[j] * b[j];
  return acc;
}

// y += a * x
inline void axpy(float a, const float* x, float* y, int64_t n) {
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 va = _mm256_set1_ps(a);
  for (; j + 8 <= n; j += 8) {
    _mm256_storeu_ps(y + j, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j)));
  }
#endif
  for (; j < n; ++j) y[j] += a * x[j];
}

// exp(x) by Cephes' expf polynomial (relative error ~2e-7) for x <= 88; inputs below -87.3 give
// ~1e-38, not 0. The AVX2 and scalar forms do the same operations.
inline float exp_approx(float x) {
  x = x < -87.3365f ? -87.3365f : (x > 88.7228f ? 88.7228f : x);
  const float fx = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  x = x - fx * 0.693359375f + fx * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * x * x + x + 1.0f;
  return __builtin_ldexpf(y, static_cast<int>(fx));
}

// y[i] = exp(x[i] - shift), n a multiple of 8 on the AVX2 path (the scalar form handles any n).
inline void exp_shifted(const float* x, float shift, float* y, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 vs = _mm256_set1_ps(shift);
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_sub_ps(_mm256_loadu_ps(x + i), vs);
    v = _mm256_max_ps(_mm256_min_ps(v, _mm256_set1_ps(88.7228f)), _mm256_set1_ps(-87.3365f));
    const __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(v, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    v = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), v);
    v = _mm256_fmadd_ps(fx, _mm256_set1_ps(2.12194440e-4f), v);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, v), v, _mm256_add_ps(v, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
  }
#endif
  for (; i < n; ++i) y[i] = exp_approx(x[i] - shift);
}

// The sum of x[0..n) in double: float lanes over blocks of 256, each block's total added in double
// (a fixed order, so the same inputs give the same bits).
inline double sum(const float* x, int64_t n) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += 256) {
    const int64_t e = b + 256 < n ? b + 256 : n;
    int64_t i = b;
    float acc = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 v = _mm256_setzero_ps();
    for (; i + 8 <= e; i += 8) v = _mm256_add_ps(v, _mm256_loadu_ps(x + i));
    acc = hsum(v);
#endif
    for (; i < e; ++i) acc += x[i];
    total += acc;
  }
  return total;
}

// y *= a
inline void scale(float a, float* y, int64_t n) {
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 va = _mm256_set1_ps(a);
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, _mm256_mul_ps(va, _mm256_loadu_ps(y + j)));
#endif
  for (; j < n; ++j) y[j] *= a;
}

}  // namespace kvgate::simd
