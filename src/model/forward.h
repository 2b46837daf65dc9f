// The parts of the forward pass that do not depend on whose cache the rows attend over, shared by
// session::step (the rows are one sequence's consecutive tokens) and batch_decoder (one token of
// each of several sessions): embedding, the per-layer norms, projections, RoPE and feed-forward,
// and the logits. Attention is the caller's, handed in per layer.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/linear.h"

namespace kvgate {

class model;

namespace forward {

// Activations of one step of n rows.
struct buffers {
  std::vector<float> x;         // [n, n_embd] residual stream
  std::vector<float> xn;        // [n, n_embd] normed
  std::vector<float> q;         // [n, n_head, d_head]
  std::vector<float> k;         // [n, n_kv_head, d_head], RoPE applied
  std::vector<float> k_pre;     // [n, n_kv_head, d_head] the keys before RoPE (when asked for)
  std::vector<float> v;         // [n, n_kv_head, d_head]
  std::vector<float> attn_out;  // [n, n_head, d_head]
  std::vector<float> gate;      // [n, n_ff]
  std::vector<float> up;        // [n, n_ff]
  std::vector<float> logits;    // [rows asked, n_vocab]
  std::vector<float> rope_cos, rope_sin;  // [n, n_rot / 2] of the rows' positions
  linear_scratch scratch;
};

// Throws error when a token id is outside the vocabulary.
void check_tokens(const model& m, std::span<const int32_t> tokens);

// x = the tokens' embeddings; the RoPE tables of their positions pos[n].
void begin(const model& m, std::span<const int32_t> tokens, const int32_t* pos, buffers& a);

// Layer il over the n rows of a.x. attend() is called once, with a.q, a.k, a.v (and a.k_pre when
// keep_pre) filled for the n rows, and must fill a.attn_out [n, n_head * d_head].
void layer(const model& m, int il, int n, bool keep_pre, linear_rows rows, buffers& a,
           const std::function<void()>& attend);

// The inverse rotation angles of positions, for unrope; built once for all heads of a step.
struct unrope_table {
  std::vector<int32_t> pos;             // [n]
  std::vector<float> cos, minus_sin;    // [n, n_rot / 2]
  // Makes the table for pos[n], unless it already holds those positions.
  void build(const model_config& c, const int32_t* p, int n);
};

// Undoes RoPE on key rows x [n, d_head] at the table's positions: the keys before RoPE, to float
// rounding of the key as stored (the rotation is orthogonal, so the error is not amplified).
// The learned gates read pre-RoPE keys this way instead of keeping a copy of them.
void unrope(const model_config& c, float* x, const unrope_table& t);

// a.logits [n_rows, n_vocab] of the residual rows x [n_rows, n_embd] (rows of a.x, or gathered).
std::span<const float> logits(const model& m, const float* x, int n_rows, linear_rows rows, buffers& a);

}  // namespace forward
}  // namespace kvgate
