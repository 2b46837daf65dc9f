// Matrix products against (possibly quantized) weight matrices: the one interface the forward
// pass uses, so faster kernels can replace the inside without touching the model.
//
// Two paths: few rows (decode) quantize the activations to 8 bits and take integer dot products:
// per block of 32 for Q4_0 / Q4_1 / Q8_0 (and Q5_0 / Q5_1 when packed), per super-block of 256
// for the K types Q4_K / Q5_K / Q6_K (model/kquant_dot.h); other types dequantize a row and dot in
// f32. Many rows (prefill) dequantize the weight into a scratch f32 buffer and call BLAS sgemm.
// Every path is checked against a scalar reference in tests/linear_test.cpp.
//
// The integer path reads weights repacked at load time (linear_pack): 8 rows interleaved 4 bytes
// at a time, so one 256-bit register holds 4 quants of each of 8 rows, a broadcast of 4
// activation bytes multiplies them in one instruction, and the 8 lanes of an accumulator are 8
// output rows (no horizontal sums; the float work of a block is shared by 8 rows).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "gguf/gguf.h"

namespace kvgate {

// A weight matrix W [n_out, n_in] stored as n_out rows of n_in elements (GGUF ne = {n_in, n_out}).
struct linear {
  gguf::tensor_type type = gguf::tensor_type::f32;
  const uint8_t* data = nullptr;  // [n_out][row_bytes]
  int64_t n_in = 0;
  int64_t n_out = 0;
  size_t row_bytes = 0;
  // The same weights interleaved by 8 rows (linear_pack), or null. When set, every reader in
  // this module uses it and `data` is not read (its pages may have been released).
  const uint8_t* packed = nullptr;

  static linear from_tensor(const gguf::tensor_info& t);
  const uint8_t* row(int64_t i) const { return data + static_cast<size_t>(i) * row_bytes; }
};

// Whether linear_pack applies: Q4_0 / Q4_1 / Q8_0 / Q5_0 / Q5_1 weights with a multiple of 8 rows.
bool linear_packable(const linear& w);
// The interleaved copy of w's rows (same size as the original). Set w.packed to its data.
std::vector<uint8_t> linear_pack(const linear& w);
// Row o of W as floats, from the packed copy when there is one.
void linear_dequantize_row(const linear& w, int64_t o, float* out);

// Reusable memory for linear_forward (the f32 copy of a weight on the sgemm path).
struct linear_scratch {
  std::vector<float> weight_f32;  // [n_out, n_in] of the last weight dequantized
};

// Row count from which the sgemm path is taken (automatic rows).
inline constexpr int64_t k_sgemm_min_rows = 8;

// automatic: the path follows the row count (decode path below k_sgemm_min_rows, sgemm from it).
// independent: every row is computed as if it were alone (the decode path at any row count), so a
// row's result does not depend on the other rows: batched decode of several sequences gives each
// the bits it would get alone, and the weights are still read once for all rows.
// quantized: the integer kernels (activations quantized to 8 bits, as llama.cpp multiplies
// prompts) at any row count where the weight's type has them, so each row's bits are the ones
// `independent` gives; weights without an integer kernel (f32, f16) take the automatic path.
// On SmolLM2 (AMD EPYC, 2 threads) prompt chunks of 512 run about 20% faster than through sgemm
// and perplexity moves by +0.27% (gitcore-tutorial, ctx 1024, 4 windows: 14.269 -> 14.308); the
// measuring tools keep automatic, whose prefill is exact to float rounding.
enum class linear_rows { automatic, independent, quantized };

// y[n_rows, n_out] = x[n_rows, n_in] * W^T. Uses the OpenMP thread count of the caller's team.
void linear_forward(const linear& w, const float* x, float* y, int64_t n_rows, linear_scratch& scratch,
                    linear_rows rows = linear_rows::automatic);

// Several weights that read the same input x [n_rows, n_in] (Q, K, V; gate, up):
// y[i] [n_rows, w[i]->n_out] = x * W_i^T. On the decode path x is quantized once and one parallel
// launch covers the rows of all the weights (each activation format they read, 32- or 256-element
// blocks, quantized once); results are bit-identical to one linear_forward each.
void linear_forward_multi(std::span<const linear* const> w, const float* x, std::span<float* const> y,
                          int64_t n_rows, linear_scratch& scratch, linear_rows rows = linear_rows::automatic);

// Dot product of row i of W with x[n_in] (the decode kernel, exposed for tests and benchmarks).
float linear_row_dot(const linear& w, int64_t i, const float* x);

// The obvious reference: dequantize the row, multiply-add in double.
double linear_row_dot_reference(const linear& w, int64_t i, const float* x);

// The activations of the Q4 / Q5 / Q8_0 integer kernels: blocks of 32 with step d = max|x| / 127,
// q = round-half-even(x / d) in [-127, 127] (x * (1 / d) rounded in the current rounding mode,
// as std::nearbyint does), and sum = d * sum(q).
struct q8_activations {
  std::vector<float> d;    // [n_blocks]
  std::vector<float> sum;  // [n_blocks]
  std::vector<int8_t> q;   // [n_blocks * 32]
};
// Quantizes x[0 .. n) (n a multiple of 32) into out, reusing its storage; exposed for tests. The
// vector path gives the bits of the scalar definition above for finite x.
void quantize_activations(const float* x, int64_t n, q8_activations& out);

// Sets the thread count used by OpenMP regions and by BLAS.
void set_compute_threads(int n_threads);
int compute_threads();

}  // namespace kvgate
