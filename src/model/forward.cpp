#include "model/forward.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "model/linear.h"
#include "model/model.h"

namespace kvgate::forward {

namespace {

// out[i] = x[i] / rms(x) * w[i] over rows of n.
void rms_norm(const float* x, const float* w, float* out, int64_t n_rows, int64_t n, float eps) {
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xr = x + r * n;
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
    float* o = out + r * n;
    for (int64_t i = 0; i < n; ++i) o[i] = xr[i] * scale * w[i];
  }
}

void add_bias(float* y, const std::vector<float>& b, int64_t n_rows) {
  if (b.empty()) return;
  const int64_t n = static_cast<int64_t>(b.size());
  for (int64_t r = 0; r < n_rows; ++r)
    for (int64_t i = 0; i < n; ++i) y[r * n + i] += b[i];
}

// cos_t, sin_t [n_tok, n_rot / 2]: the rotation angles of each token's position, built once per
// step for all layers.
void rope_tables(const int32_t* pos, int n_tok, int n_rot, float base, std::vector<float>& cos_t,
                 std::vector<float>& sin_t) {
  const int half = n_rot / 2;
  cos_t.resize(static_cast<size_t>(n_tok) * half);
  sin_t.resize(cos_t.size());
  for (int t = 0; t < n_tok; ++t) {
    for (int i = 0; i < half; ++i) {
      const double theta = pos[t] * std::pow(static_cast<double>(base), -2.0 * i / n_rot);
      cos_t[static_cast<size_t>(t) * half + i] = static_cast<float>(std::cos(theta));
      sin_t[static_cast<size_t>(t) * half + i] = static_cast<float>(std::sin(theta));
    }
  }
}

// Rotates the first n_rot dims of every head vector of x [n_tok, n_heads, d_head] by its
// token's position (tables from rope_tables).
void rope(float* x, const float* cos_all, const float* sin_all, int n_tok, int n_heads, int d_head, int n_rot,
          rope_style style) {
  const int half = n_rot / 2;
  for (int t = 0; t < n_tok; ++t) {
    const float* cos_t = cos_all + static_cast<size_t>(t) * half;
    const float* sin_t = sin_all + static_cast<size_t>(t) * half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + (static_cast<int64_t>(t) * n_heads + h) * d_head;
      for (int i = 0; i < half; ++i) {
        const int a = style == rope_style::normal ? 2 * i : i;
        const int b = style == rope_style::normal ? 2 * i + 1 : i + half;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * cos_t[i] - x1 * sin_t[i];
        v[b] = x0 * sin_t[i] + x1 * cos_t[i];
      }
    }
  }
}

}  // namespace

void check_tokens(const model& m, std::span<const int32_t> tokens) {
  const int n_vocab = m.config().n_vocab;
  for (int32_t id : tokens) {
    if (id < 0 || id >= n_vocab) fail("token id {} is outside the vocabulary [0, {})", id, n_vocab);
  }
}

void unrope_table::build(const model_config& c, const int32_t* p, int n) {
  if (pos.size() == static_cast<size_t>(n) && std::equal(pos.begin(), pos.end(), p)) return;
  pos.assign(p, p + n);
  rope_tables(p, n, c.n_rot, c.rope_base, cos, minus_sin);
  for (float& v : minus_sin) v = -v;
}

void unrope(const model_config& c, float* x, const unrope_table& t) {
  rope(x, t.cos.data(), t.minus_sin.data(), static_cast<int>(t.pos.size()), 1, c.d_head, c.n_rot, c.traits.rope);
}

void begin(const model& m, std::span<const int32_t> tokens, const int32_t* pos, buffers& a) {
  const model_config& c = m.config();
  const int n = static_cast<int>(tokens.size());
  a.x.resize(static_cast<size_t>(n) * c.n_embd);
  const linear& e = m.token_embd();
  for (int t = 0; t < n; ++t) {
    linear_dequantize_row(e, tokens[t], a.x.data() + static_cast<size_t>(t) * c.n_embd);
  }
  rope_tables(pos, n, c.n_rot, c.rope_base, a.rope_cos, a.rope_sin);
}

void layer(const model& m, int il, int n, bool keep_pre, linear_rows rows, buffers& a,
           const std::function<void()>& attend) {
  const model_config& c = m.config();
  const layer_weights& l = m.layer(il);
  const int64_t n_q = static_cast<int64_t>(c.n_head) * c.d_head;
  const int64_t n_kv = static_cast<int64_t>(c.n_kv_head) * c.d_head;

  a.xn.resize(static_cast<size_t>(n) * c.n_embd);
  rms_norm(a.x.data(), l.attn_norm.data(), a.xn.data(), n, c.n_embd, c.norm_eps);
  a.q.resize(n * n_q);
  a.k.resize(n * n_kv);
  a.v.resize(n * n_kv);
  {
    const linear* w[] = {&l.wq, &l.wk, &l.wv};
    float* y[] = {a.q.data(), a.k.data(), a.v.data()};
    linear_forward_multi(w, a.xn.data(), y, n, a.scratch, rows);
  }
  add_bias(a.q.data(), l.bq, n);
  add_bias(a.k.data(), l.bk, n);
  add_bias(a.v.data(), l.bv, n);
  if (!l.q_norm.empty()) {
    rms_norm(a.q.data(), l.q_norm.data(), a.q.data(), static_cast<int64_t>(n) * c.n_head, c.d_head, c.norm_eps);
    rms_norm(a.k.data(), l.k_norm.data(), a.k.data(), static_cast<int64_t>(n) * c.n_kv_head, c.d_head, c.norm_eps);
  }
  if (keep_pre) a.k_pre = a.k;
  rope(a.q.data(), a.rope_cos.data(), a.rope_sin.data(), n, c.n_head, c.d_head, c.n_rot, c.traits.rope);
  rope(a.k.data(), a.rope_cos.data(), a.rope_sin.data(), n, c.n_kv_head, c.d_head, c.n_rot, c.traits.rope);

  attend();

  // x += attn_out * Wo^T (xn reused as the projection's output)
  linear_forward(l.wo, a.attn_out.data(), a.xn.data(), n, a.scratch, rows);
  for (size_t i = 0; i < a.x.size(); ++i) a.x[i] += a.xn[i];

  rms_norm(a.x.data(), l.ffn_norm.data(), a.xn.data(), n, c.n_embd, c.norm_eps);
  a.gate.resize(static_cast<size_t>(n) * c.n_ff);
  a.up.resize(static_cast<size_t>(n) * c.n_ff);
  {
    const linear* w[] = {&l.w_gate, &l.w_up};
    float* y[] = {a.gate.data(), a.up.data()};
    linear_forward_multi(w, a.xn.data(), y, n, a.scratch, rows);
  }
  // SwiGLU. Its std::exp per element was the largest serial part of a batched decode step (8
  // rows: 12k exps per layer, 1.9% of the step on one thread and more of it on two), so the rows
  // of several tokens split over the threads; one token's row stays on the caller, where a
  // parallel region would cost more than its exps. Each element's bits are the same either way.
  float* gate = a.gate.data();
  const float* up = a.up.data();
  const int64_t n_gate = static_cast<int64_t>(a.gate.size());
  auto swiglu = [gate, up](int64_t i) { gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i]; };
  if (n > 1 && compute_threads() > 1) {
#pragma omp parallel for schedule(static) num_threads(compute_threads())
    for (int64_t i = 0; i < n_gate; ++i) swiglu(i);
  } else {
    for (int64_t i = 0; i < n_gate; ++i) swiglu(i);
  }
  linear_forward(l.w_down, a.gate.data(), a.xn.data(), n, a.scratch, rows);
  for (size_t i = 0; i < a.x.size(); ++i) a.x[i] += a.xn[i];
}

std::span<const float> logits(const model& m, const float* x, int n_rows, linear_rows rows, buffers& a) {
  const model_config& c = m.config();
  a.xn.resize(static_cast<size_t>(n_rows) * c.n_embd);
  rms_norm(x, m.output_norm().data(), a.xn.data(), n_rows, c.n_embd, c.norm_eps);
  a.logits.resize(static_cast<size_t>(n_rows) * c.n_vocab);
  linear_forward(m.output(), a.xn.data(), a.logits.data(), n_rows, a.scratch, rows);
  return a.logits;
}

}  // namespace kvgate::forward
