// Small vector kernels shared by the forward pass. Each has a fixed summation order, so the same
// inputs always give the same bits (mask mode relies on that).
#pragma once

#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace kvgate::simd {

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
  const __m256 v = _mm256_add_ps(v0, v1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  acc = _mm_cvtss_f32(s);
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

}  // namespace kvgate::simd
