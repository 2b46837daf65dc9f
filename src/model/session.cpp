// The forward pass: RMSNorm, Q/K/V projections (+ qwen2 biases, qwen3 QK-norm), RoPE, attention
// over the per-head cache, output projection, SwiGLU feed-forward; logits from the final norm.
#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "model/model.h"
#include "model/simd.h"

namespace kvgate {

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

session::session(const model& m, session_options options)
    : model_(m),
      n_ctx_(options.n_ctx > 0 ? options.n_ctx : m.config().n_ctx_train),
      n_batch_(std::max(1, options.n_batch)),
      cache_(m.config().n_layer, m.config().n_kv_head, m.config().d_head, options.kv),
      recall_(m.config().n_layer) {}

session::~session() = default;

void session::reset() {
  cache_.clear();
  n_past_ = 0;
}

std::span<const float> session::prefill(std::span<const int32_t> tokens) {
  std::span<const float> logits;
  for (size_t i = 0; i < tokens.size(); i += n_batch_) {
    const size_t n = std::min<size_t>(n_batch_, tokens.size() - i);
    const bool last = i + n == tokens.size();
    logits = step(tokens.subspan(i, n), last ? logits_mode::last : logits_mode::none);
  }
  return logits;
}

std::span<const float> session::step(std::span<const int32_t> tokens, logits_mode mode) {
  const model_config& c = model_.config();
  const int n = static_cast<int>(tokens.size());
  if (n == 0) fail("empty input: nothing to evaluate");
  if (static_cast<int64_t>(n_past_) + n > n_ctx_) {
    fail("context overflow: {} tokens already in the context plus {} new exceed the context size {}",
         n_past_, n, n_ctx_);
  }
  for (int32_t id : tokens) {
    if (id < 0 || id >= c.n_vocab) fail("token id {} is outside the vocabulary [0, {})", id, c.n_vocab);
  }

  std::vector<int32_t> pos(n);
  for (int t = 0; t < n; ++t) pos[t] = n_past_ + t;

  x_.resize(static_cast<size_t>(n) * c.n_embd);
  for (int t = 0; t < n; ++t) {
    const linear& e = model_.token_embd();
    gguf::dequantize(e.type, e.row(tokens[t]), x_.data() + static_cast<size_t>(t) * c.n_embd, c.n_embd);
  }
  rope_tables(pos.data(), n, c.n_rot, c.rope_base, rope_cos_, rope_sin_);
  for (int il = 0; il < c.n_layer; ++il) forward_layer(il, n, pos.data());
  n_past_ += n;

  std::span<const float> out;
  if (mode != logits_mode::none) {
    const int first = mode == logits_mode::all ? 0 : n - 1;
    const int n_rows = n - first;
    xn_.resize(static_cast<size_t>(n_rows) * c.n_embd);
    rms_norm(x_.data() + static_cast<size_t>(first) * c.n_embd, model_.output_norm().data(), xn_.data(),
             n_rows, c.n_embd, c.norm_eps);
    logits_.resize(static_cast<size_t>(n_rows) * c.n_vocab);
    linear_forward(model_.output(), xn_.data(), logits_.data(), n_rows, scratch_);
    out = logits_;
  }
  if (hook_) hook_->on_step(cache_, pos);
  return out;
}

void session::forward_layer(int il, int n, const int32_t* pos) {
  const model_config& c = model_.config();
  const layer_weights& l = model_.layer(il);
  const int64_t n_q = static_cast<int64_t>(c.n_head) * c.d_head;
  const int64_t n_kv = static_cast<int64_t>(c.n_kv_head) * c.d_head;

  xn_.resize(static_cast<size_t>(n) * c.n_embd);
  rms_norm(x_.data(), l.attn_norm.data(), xn_.data(), n, c.n_embd, c.norm_eps);
  q_.resize(n * n_q);
  k_.resize(n * n_kv);
  v_.resize(n * n_kv);
  {
    const linear* w[] = {&l.wq, &l.wk, &l.wv};
    float* y[] = {q_.data(), k_.data(), v_.data()};
    linear_forward_multi(w, xn_.data(), y, n, scratch_);
  }
  add_bias(q_.data(), l.bq, n);
  add_bias(k_.data(), l.bk, n);
  add_bias(v_.data(), l.bv, n);
  if (!l.q_norm.empty()) {
    rms_norm(q_.data(), l.q_norm.data(), q_.data(), static_cast<int64_t>(n) * c.n_head, c.d_head, c.norm_eps);
    rms_norm(k_.data(), l.k_norm.data(), k_.data(), static_cast<int64_t>(n) * c.n_kv_head, c.d_head, c.norm_eps);
  }
  const bool keep_pre = cache_.keep_pre_rope();
  if (observer_ || keep_pre) k_pre_ = k_;
  rope(q_.data(), rope_cos_.data(), rope_sin_.data(), n, c.n_head, c.d_head, c.n_rot, c.traits.rope);
  rope(k_.data(), rope_cos_.data(), rope_sin_.data(), n, c.n_kv_head, c.d_head, c.n_rot, c.traits.rope);
  cache_.append(il, k_.data(), v_.data(), pos, n, keep_pre ? k_pre_.data() : nullptr);

  attention(il, n, pos);

  // x += attn_out * Wo^T (xn_ reused as the projection's output)
  linear_forward(l.wo, attn_out_.data(), xn_.data(), n, scratch_);
  for (size_t i = 0; i < x_.size(); ++i) x_[i] += xn_[i];

  rms_norm(x_.data(), l.ffn_norm.data(), xn_.data(), n, c.n_embd, c.norm_eps);
  gate_.resize(static_cast<size_t>(n) * c.n_ff);
  up_.resize(static_cast<size_t>(n) * c.n_ff);
  {
    const linear* w[] = {&l.w_gate, &l.w_up};
    float* y[] = {gate_.data(), up_.data()};
    linear_forward_multi(w, xn_.data(), y, n, scratch_);
  }
  for (size_t i = 0; i < gate_.size(); ++i) {
    const float g = gate_[i];
    gate_[i] = g / (1.0f + std::exp(-g)) * up_[i];
  }
  linear_forward(l.w_down, gate_.data(), xn_.data(), n, scratch_);
  for (size_t i = 0; i < x_.size(); ++i) x_[i] += xn_[i];
}

}  // namespace kvgate
