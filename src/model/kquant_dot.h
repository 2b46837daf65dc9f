// Integer dot products of K-quant weight rows (Q4_K, Q5_K, Q6_K; 256-element super-blocks, block
// layouts in shared/FACTS.md and src/gguf/quants.cpp) against activations quantized once per
// input vector to 8 bits per super-block (q8k_activations, the role of ggml's Q8_K).
//
// Per super-block b a weight element is w = d * sc_s * q - dmin * m_s (Q4_K / Q5_K, s = the
// 32-element sub-block) or w = d * sc_s * (q - 32) (Q6_K, s = the 16-element sub-block), and an
// activation is x ~= dx_b * qx. So
//   Q4_K / Q5_K:  sum w x = d dx sum_s sc_s sum_{j in s} q_j qx_j  -  dmin dx sum_s m_s S_s
//   Q6_K:         sum w x = d dx sum_s sc_s (sum_{j in s} q_j qx_j  -  32 S_s)
// where S_s = sum_{j in s} qx_j comes from the activation's per-16 sums (bsums), computed once.
// Every inner sum is an exact int32; floats enter once per super-block.
//
// Call pattern (once per input vector x of n_in floats, then any number of weight rows):
//   q8k_activations xq;  quantize_q8k(x, n_in, xq);            // n_in % 256 == 0
//   float y = kquant_dot(tensor_type::q4_k, row_ptr, xq);      // or dot_q4_k(row_ptr, xq)
// and for one weight row against R input vectors (batched decode):
//   kquant_dot_rows(type, row_ptr, xq_array, n_x, out, stride); // out[r * stride], r < n_x
// Each result of the multi-vector form is bit-identical to the one-vector call: the weight block
// is unpacked once for up to k_kquant_rows_at_once vectors, and each vector's arithmetic is the
// one-vector case's, in the same order.
//
// The AVX2 path (x86-64-v3: AVX2 + FMA + F16C) and the portable scalar path compute the same
// exact integers per super-block; they differ only in the order of the float sums (lanes, then
// blocks), so results agree to a few ulps of sum |terms| (tests/kquant_test.cpp states the bound).
// The scalar path is always compiled and reachable through kquant_scalar:: for the tests.
#pragma once

#include <cstdint>
#include <vector>

#include "gguf/gguf.h"

namespace kvgate {

inline constexpr int64_t k_kquant_block = 256;  // elements per super-block (all K types)
inline constexpr int k_kquant_rows_at_once = 4;

// x ~= d[b] * q[j] for j in super-block b; bsums[k] = sum of q over elements 16 k .. 16 k + 15.
// d = max |x| / 127 over the block; q = round-to-nearest-even(x / d), in [-127, 127].
struct q8k_activations {
  int64_t n = 0;                // elements, a multiple of k_kquant_block
  std::vector<float> d;         // [n / 256]
  std::vector<int8_t> q;        // [n]
  std::vector<int16_t> bsums;   // [n / 16]
};

// Quantizes x[0 .. n) into out (reusing its storage). Throws error when n is not a multiple of
// 256. Non-finite inputs give an unspecified (but defined) result.
void quantize_q8k(const float* x, int64_t n, q8k_activations& out);

// True for the types the functions below accept.
bool has_kquant_kernel(gguf::tensor_type type);

// row: one weight row of x.n elements (x.n / 256 blocks of the type); no alignment required.
float dot_q4_k(const uint8_t* row, const q8k_activations& x);
float dot_q5_k(const uint8_t* row, const q8k_activations& x);
float dot_q6_k(const uint8_t* row, const q8k_activations& x);

// out[r * stride] = row . x[r] for r < n_x (any n_x >= 0; all x[r].n equal), each bit-identical
// to dot_*(row, x[r]).
void dot_q4_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride);
void dot_q5_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride);
void dot_q6_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride);

// Dispatch on type (has_kquant_kernel(type) must hold).
float kquant_dot(gguf::tensor_type type, const uint8_t* row, const q8k_activations& x);
void kquant_dot_rows(gguf::tensor_type type, const uint8_t* row, const q8k_activations* x, int n_x,
                     float* out, int64_t stride);

// The portable path, compiled on every target; the functions above use it when AVX2 is absent.
namespace kquant_scalar {
void dot_q4_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride);
void dot_q5_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride);
void dot_q6_k_rows(const uint8_t* row, const q8k_activations* x, int n_x, float* out, int64_t stride);
}  // namespace kquant_scalar

}  // namespace kvgate
