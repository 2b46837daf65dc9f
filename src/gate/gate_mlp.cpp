#include "gate/gate_mlp.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>

namespace kvgate {

size_t gate_param_count(const gate_dims& d) {
  const size_t per_head = static_cast<size_t>(d.d_in) * d.n_hidden + d.n_hidden +
                          static_cast<size_t>(d.n_hidden) * d.n_hidden + d.n_hidden +
                          static_cast<size_t>(d.n_hidden) * d.n_out + d.n_out;
  return per_head * d.n_heads;
}

template <typename T>
gate_params<T> gate_param_views(T* base, const gate_dims& d) {
  const size_t H = d.n_heads, I = d.d_in, F = d.n_hidden, O = d.n_out;
  gate_params<T> p;
  p.w1 = base;
  p.b1 = p.w1 + H * I * F;
  p.w2 = p.b1 + H * F;
  p.b2 = p.w2 + H * F * F;
  p.w3 = p.b2 + H * F;
  p.b3 = p.w3 + H * F * O;
  return p;
}

template <typename T>
gate_params<T> gate_head_views(const gate_params<T>& all, const gate_dims& d, int ih) {
  const size_t h = ih, I = d.d_in, F = d.n_hidden, O = d.n_out;
  return {all.w1 + h * I * F, all.b1 + h * F, all.w2 + h * F * F,
          all.b2 + h * F,     all.w3 + h * F * O, all.b3 + h * O};
}

namespace {
std::mutex g_blas_mutex;
int g_blas_guards = 0;        // live blas_single_thread objects
int g_blas_saved_threads = 1;  // OpenBLAS's thread count before the first of them
}  // namespace

blas_single_thread::blas_single_thread() {
  std::lock_guard<std::mutex> lock(g_blas_mutex);
  if (g_blas_guards++ == 0) {
    g_blas_saved_threads = openblas_get_num_threads();
    if (g_blas_saved_threads != 1) openblas_set_num_threads(1);
  }
}

blas_single_thread::~blas_single_thread() {
  std::lock_guard<std::mutex> lock(g_blas_mutex);
  if (--g_blas_guards == 0 && g_blas_saved_threads != 1) openblas_set_num_threads(g_blas_saved_threads);
}

namespace {

inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha,
                 const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

inline void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha,
                 const double* a, int lda, const double* b, int ldb, double beta, double* c,
                 int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

int resolve_threads(int n_threads) { return n_threads > 0 ? n_threads : omp_get_max_threads(); }

}  // namespace

template <typename T>
void batched_gemm(bool trans_a, bool trans_b, int n_batch, int m, int n, int k, T alpha,
                  const T* a, int64_t stride_a, const T* b, int64_t stride_b, T beta, T* c,
                  int64_t stride_c, int n_threads) {
  if (n_batch <= 0 || m <= 0 || n <= 0) return;
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  const int lda = trans_a ? m : k, ldb = trans_b ? k : n, ldc = n;
  if (k <= 0) {  // BLAS leaves C untouched for k = 0; the product is empty, so C = beta * C
    for (int ib = 0; ib < n_batch; ++ib) {
      for (int64_t i = 0; i < static_cast<int64_t>(m) * n; ++i) {
        T& v = c[ib * stride_c + i];
        v = beta == T(0) ? T(0) : beta * v;
      }
    }
    return;
  }
  if (n_batch == 1) {  // one product: let BLAS use its own threads
    gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  blas_single_thread guard;
#pragma omp parallel for schedule(static) num_threads(resolve_threads(n_threads))
  for (int ib = 0; ib < n_batch; ++ib) {
    gemm(ta, tb, m, n, k, alpha, a + ib * stride_a, lda, b + ib * stride_b, ldb, beta,
         c + ib * stride_c, ldc);
  }
}

template <typename T>
void batched_linear_forward(T* out, const T* in, const T* w, const T* b, int n_heads, int n, int n_in,
                    int n_out, int n_threads) {
  // Bias first, then the product accumulates onto it (beta = 1): one pass over out fewer.
#pragma omp parallel for schedule(static) num_threads(resolve_threads(n_threads))
  for (int64_t r = 0; r < static_cast<int64_t>(n_heads) * n; ++r) {
    std::memcpy(out + r * n_out, b + (r / n) * n_out, sizeof(T) * n_out);
  }
  batched_gemm<T>(false, false, n_heads, n, n_out, n_in, T(1), in, int64_t(n) * n_in, w,
                  int64_t(n_in) * n_out, T(1), out, int64_t(n) * n_out, n_threads);
}

template <typename T>
void batched_linear_backward(T* d_in, T* d_w, T* d_b, const T* d_out, const T* in, const T* w,
                     int n_heads, int n, int n_in, int n_out, int n_threads) {
  // d_w[h] [n_in, n_out] += in[h]^T [n_in, n] * d_out[h] [n, n_out]
  batched_gemm<T>(true, false, n_heads, n_in, n_out, n, T(1), in, int64_t(n) * n_in, d_out,
                  int64_t(n) * n_out, T(1), d_w, int64_t(n_in) * n_out, n_threads);
#pragma omp parallel for schedule(static) num_threads(resolve_threads(n_threads))
  for (int h = 0; h < n_heads; ++h) {
    T* db = d_b + int64_t(h) * n_out;
    for (int r = 0; r < n; ++r) {
      const T* d = d_out + (int64_t(h) * n + r) * n_out;
      for (int o = 0; o < n_out; ++o) db[o] += d[o];
    }
  }
  if (d_in) {
    // d_in[h] [n, n_in] = d_out[h] [n, n_out] * w[h]^T [n_out, n_in]
    batched_gemm<T>(false, true, n_heads, n, n_in, n_out, T(1), d_out, int64_t(n) * n_out, w,
                    int64_t(n_in) * n_out, T(0), d_in, int64_t(n) * n_in, n_threads);
  }
}

template <typename T>
void relu_forward(T* x, int64_t count) {
#pragma omp parallel for simd schedule(static) if (count > (1 << 16))
  for (int64_t i = 0; i < count; ++i) x[i] = x[i] > T(0) ? x[i] : T(0);
}

template <typename T>
void relu_backward(T* d, const T* h, int64_t count) {
#pragma omp parallel for simd schedule(static) if (count > (1 << 16))
  for (int64_t i = 0; i < count; ++i) d[i] = h[i] > T(0) ? d[i] : T(0);
}

template <typename T>
void bce_forward(T* loss, const T* logits, const uint8_t* y, int n_heads, int n) {
  for (int h = 0; h < n_heads; ++h) {
    double sum = 0.0;
    for (int r = 0; r < n; ++r) {
      const T z = logits[int64_t(h) * n + r];
      // max(z, 0) - z y + log(1 + exp(-|z|)): no overflow for any z
      sum += std::max(z, T(0)) - z * T(y[int64_t(h) * n + r]) + std::log1p(std::exp(-std::abs(z)));
    }
    loss[h] = static_cast<T>(sum / n);
  }
}

template <typename T>
void bce_backward(T* d_logits, const T* logits, const uint8_t* y, int n_heads, int n) {
  const T inv_n = T(1) / T(n);
  for (int64_t i = 0; i < int64_t(n_heads) * n; ++i) {
    const T p = T(1) / (T(1) + std::exp(-logits[i]));
    d_logits[i] = (p - T(y[i])) * inv_n;
  }
}

template <typename T>
void softmax_ce_forward(T* loss, const T* logits, const uint8_t* y, int n_heads, int n,
                        int n_class) {
  for (int h = 0; h < n_heads; ++h) {
    double sum = 0.0;
    for (int r = 0; r < n; ++r) {
      const int64_t row = int64_t(h) * n + r;
      const T* z = logits + row * n_class;
      const T z_max = *std::max_element(z, z + n_class);
      double s = 0.0;
      for (int c = 0; c < n_class; ++c) s += std::exp(double(z[c] - z_max));
      sum += std::log(s) + z_max - z[y[row]];
    }
    loss[h] = static_cast<T>(sum / n);
  }
}

template <typename T>
void softmax_ce_backward(T* d_logits, const T* logits, const uint8_t* y, int n_heads, int n,
                         int n_class) {
  const T inv_n = T(1) / T(n);
  for (int64_t row = 0; row < int64_t(n_heads) * n; ++row) {
    const T* z = logits + row * n_class;
    T* d = d_logits + row * n_class;
    const T z_max = *std::max_element(z, z + n_class);
    T s = 0;
    for (int c = 0; c < n_class; ++c) s += (d[c] = std::exp(z[c] - z_max));
    for (int c = 0; c < n_class; ++c) d[c] = (d[c] / s - T(c == y[row])) * inv_n;
  }
}

template <typename T>
void gate_forward(const gate_params<T>& p, const gate_dims& d, const T* x, int n,
                  const gate_acts<T>& a, int n_threads) {
  const int H = d.n_heads, I = d.d_in, F = d.n_hidden, O = d.n_out;
  batched_linear_forward(a.h1, x, p.w1, p.b1, H, n, I, F, n_threads);
  relu_forward(a.h1, int64_t(H) * n * F);
  batched_linear_forward(a.h2, a.h1, p.w2, p.b2, H, n, F, F, n_threads);
  relu_forward(a.h2, int64_t(H) * n * F);
  batched_linear_forward(a.logits, a.h2, p.w3, p.b3, H, n, F, O, n_threads);
}

template <typename T>
void gate_backward(const gate_params<T>& p, const gate_params<T>& g, const gate_dims& d,
                   const T* x, int n, const gate_acts<T>& a, const T* d_logits, T* d_h1, T* d_h2,
                   int n_threads) {
  const int H = d.n_heads, I = d.d_in, F = d.n_hidden, O = d.n_out;
  batched_linear_backward(d_h2, g.w3, g.b3, d_logits, a.h2, p.w3, H, n, F, O, n_threads);
  relu_backward(d_h2, a.h2, int64_t(H) * n * F);
  batched_linear_backward(d_h1, g.w2, g.b2, d_h2, a.h1, p.w2, H, n, F, F, n_threads);
  relu_backward(d_h1, a.h1, int64_t(H) * n * F);
  batched_linear_backward<T>(nullptr, g.w1, g.b1, d_h1, x, p.w1, H, n, I, F, n_threads);
}

void adam_update(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1,
                 float beta2, float eps, float wd, int64_t t) {
  const float c1 = 1.0f / (1.0f - static_cast<float>(std::pow(double(beta1), double(t))));
  const float c2 = 1.0f / (1.0f - static_cast<float>(std::pow(double(beta2), double(t))));
#pragma omp parallel for simd schedule(static) if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) {
    m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
    v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
    p[i] -= lr * (m[i] * c1 / (std::sqrt(v[i] * c2) + eps) + wd * p[i]);
  }
}

#define KVGATE_INSTANTIATE(T)                                                                     \
  template gate_params<T> gate_param_views(T*, const gate_dims&);                                 \
  template gate_params<T> gate_head_views(const gate_params<T>&, const gate_dims&, int);          \
  template void batched_gemm(bool, bool, int, int, int, int, T, const T*, int64_t, const T*,      \
                             int64_t, T, T*, int64_t, int);                                       \
  template void batched_linear_forward(T*, const T*, const T*, const T*, int, int, int, int, int);        \
  template void batched_linear_backward(T*, T*, T*, const T*, const T*, const T*, int, int, int, int,     \
                                int);                                                             \
  template void relu_forward(T*, int64_t);                                                        \
  template void relu_backward(T*, const T*, int64_t);                                             \
  template void bce_forward(T*, const T*, const uint8_t*, int, int);                              \
  template void bce_backward(T*, const T*, const uint8_t*, int, int);                             \
  template void softmax_ce_forward(T*, const T*, const uint8_t*, int, int, int);                  \
  template void softmax_ce_backward(T*, const T*, const uint8_t*, int, int, int);                 \
  template void gate_forward(const gate_params<T>&, const gate_dims&, const T*, int,              \
                             const gate_acts<T>&, int);                                           \
  template void gate_backward(const gate_params<T>&, const gate_params<T>&, const gate_dims&,     \
                              const T*, int, const gate_acts<T>&, const T*, T*, T*, int);

KVGATE_INSTANTIATE(float)
KVGATE_INSTANTIATE(double)

}  // namespace kvgate
