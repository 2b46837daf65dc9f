// The gate MLP as paired forward/backward free functions on plain buffers, batched over heads
// (karpathy/llm.c style): every layer takes all H heads at once, each head with its own weights,
// and runs one batched matrix product for all of them. Used by gate_bank::score (float) and by
// the trainer (float); the gradient test instantiates the same code in double.
//
// Parameter layout (one flat buffer, the same in memory, in the trainer and in the gate file):
//   w1 [H, d_in, n_hidden] | b1 [H, n_hidden] | w2 [H, n_hidden, n_hidden] | b2 [H, n_hidden] |
//   w3 [H, n_hidden, n_out] | b3 [H, n_out]
// Row-major: a head's weight matrix is contiguous, so y = x * W needs no transposes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvgate {

struct gate_dims {
  int n_heads = 0;
  int d_in = 0;       // d_head
  int n_hidden = 0;   // 256 in the gate bank; smaller in the gradient test
  int n_out = 0;      // 1 (binary logit) or the number of lifetime buckets
};

size_t gate_param_count(const gate_dims& dims);

// Named views into a flat parameter (or gradient) buffer.
template <typename T>
struct gate_params {
  T* w1;  // [H, d_in, n_hidden]
  T* b1;  // [H, n_hidden]
  T* w2;  // [H, n_hidden, n_hidden]
  T* b2;  // [H, n_hidden]
  T* w3;  // [H, n_hidden, n_out]
  T* b3;  // [H, n_out]
};

template <typename T>
gate_params<T> gate_param_views(T* base, const gate_dims& dims);
// Views of head ih alone, i.e. parameters for dims with n_heads = 1.
template <typename T>
gate_params<T> gate_head_views(const gate_params<T>& all, const gate_dims& dims, int ih);

// While alive, OpenBLAS runs single-threaded: batched_gemm parallelizes over heads itself, and a
// multi-threaded OpenBLAS (pthread build) called from several OpenMP threads would either
// oversubscribe the cores or serialize on its thread-pool lock. Guards nest and may live in
// several threads at once (a process-wide count): the first one in saves the thread count, the
// last one out restores it.
class blas_single_thread {
 public:
  blas_single_thread();
  ~blas_single_thread();
  blas_single_thread(const blas_single_thread&) = delete;
  blas_single_thread& operator=(const blas_single_thread&) = delete;
};

// For ib in [0, n_batch): C[ib] = alpha * op(A[ib]) * op(B[ib]) + beta * C[ib], row-major,
// op(A) [m, k], op(B) [k, n], C [m, n]; A[ib] starts at a + ib * stride_a (likewise B, C).
// One call for all heads: a static partition of heads over n_threads OpenMP threads (0: the
// OpenMP default), one cblas gemm per head. Each head's result does not depend on the thread count
// or partition (no reduction across heads), so training is deterministic. Holds a
// blas_single_thread for its duration when n_batch > 1.
template <typename T>
void batched_gemm(bool trans_a, bool trans_b, int n_batch, int m, int n, int k, T alpha,
                  const T* a, int64_t stride_a, const T* b, int64_t stride_b, T beta, T* c,
                  int64_t stride_c, int n_threads);

// out = in * w + b per head. in [H, n, n_in], w [H, n_in, n_out], b [H, n_out], out [H, n, n_out].
template <typename T>
void batched_linear_forward(T* out, const T* in, const T* w, const T* b, int n_heads, int n, int n_in,
                    int n_out, int n_threads);
// d_w += in^T * d_out and d_b += sum over rows of d_out (parameter gradients accumulate);
// d_in = d_out * w^T is overwritten (activation gradients are scratch; null for the network input,
// which needs no gradient).
template <typename T>
void batched_linear_backward(T* d_in, T* d_w, T* d_b, const T* d_out, const T* in, const T* w,
                     int n_heads, int n, int n_in, int n_out, int n_threads);

// In place: x = max(x, 0).
template <typename T>
void relu_forward(T* x, int64_t count);
// In place on the gradient: d *= (h > 0), h being the ReLU's output (h > 0 iff its input > 0).
template <typename T>
void relu_backward(T* d, const T* h, int64_t count);

// Per-head mean of binary cross-entropy with logits. logits [H, n], y [H, n] 0/1 -> loss [H].
template <typename T>
void bce_forward(T* loss, const T* logits, const uint8_t* y, int n_heads, int n);
// d_logits [H, n] = (sigmoid(logits) - y) / n (overwrites).
template <typename T>
void bce_backward(T* d_logits, const T* logits, const uint8_t* y, int n_heads, int n);

// Per-head mean softmax cross-entropy. logits [H, n, n_class], y [H, n] class ids -> loss [H].
template <typename T>
void softmax_ce_forward(T* loss, const T* logits, const uint8_t* y, int n_heads, int n,
                        int n_class);
// d_logits [H, n, n_class] = (softmax(logits) - onehot(y)) / n (overwrites).
template <typename T>
void softmax_ce_backward(T* d_logits, const T* logits, const uint8_t* y, int n_heads, int n,
                         int n_class);

// Activations of one forward pass over n rows per head.
template <typename T>
struct gate_acts {
  T* h1;      // [H, n, n_hidden]  ReLU(x W1 + b1)
  T* h2;      // [H, n, n_hidden]  ReLU(h1 W2 + b2)
  T* logits;  // [H, n, n_out]
};

// x [H, n, d_in] -> acts. Three batched matrix products.
template <typename T>
void gate_forward(const gate_params<T>& p, const gate_dims& dims, const T* x, int n,
                  const gate_acts<T>& acts, int n_threads);
// From d_logits [H, n, n_out], accumulates (+=) the parameter gradients into g. d_h1 and d_h2
// [H, n, n_hidden] are scratch, overwritten. Six batched matrix products.
template <typename T>
void gate_backward(const gate_params<T>& p, const gate_params<T>& g, const gate_dims& dims,
                   const T* x, int n, const gate_acts<T>& acts, const T* d_logits, T* d_h1,
                   T* d_h2, int n_threads);

// One Adam step (bias-corrected; t is the 1-based step count) on n parameters, in place:
// m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p).
// wd is decoupled weight decay (AdamW); pass 0 for biases.
void adam_update(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1,
                 float beta2, float eps, float wd, int64_t t);

}  // namespace kvgate
