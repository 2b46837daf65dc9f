#include "model/batch_decoder.h"

#include <algorithm>

#include "common/error.h"
#include "common/parallel.h"

namespace kvgate {

std::span<const float> batch_decoder::step(std::span<session* const> sessions, std::span<const int32_t> tokens) {
  if (tokens.size() != sessions.size()) fail("batch decode: {} sessions but {} tokens", sessions.size(), tokens.size());
  one_token_.resize(sessions.size());
  for (size_t b = 0; b < sessions.size(); ++b) one_token_[b] = {sessions[b], tokens.subspan(b, 1), logits_mode::last};
  return step(one_token_, linear_rows::independent);
}

std::span<const float> batch_decoder::step(std::span<const batch_segment> segments, linear_rows rows) {
  const model_config& c = model_.config();
  const int n_seg = static_cast<int>(segments.size());
  if (n_seg == 0) fail("batch decode: no sessions to step");
  first_.assign(1, 0);
  bool all_single = true;
  for (int b = 0; b < n_seg; ++b) {
    const batch_segment& g = segments[b];
    const session& s = *g.s;
    const int n = static_cast<int>(g.tokens.size());
    if (n == 0) fail("batch decode: segment {} has no tokens", b);
    if (&s.model_ != &model_) fail("batch decode: session {} runs another model", b);
    if (static_cast<int64_t>(s.n_past_) + n > s.n_ctx_) {
      fail("context overflow: {} tokens already in the context plus {} new exceed the context size {}", s.n_past_, n,
           s.n_ctx_);
    }
    for (int e = 0; e < b; ++e) {
      if (segments[e].s == g.s) fail("batch decode: session {} appears twice", b);
    }
    forward::check_tokens(model_, g.tokens);
    first_.push_back(first_.back() + n);
    all_single = all_single && n == 1;
  }
  const int n_rows = first_.back();
  tokens_.clear();
  pos_.resize(n_rows);
  for (int b = 0; b < n_seg; ++b) {
    tokens_.insert(tokens_.end(), segments[b].tokens.begin(), segments[b].tokens.end());
    for (int r = first_[b]; r < first_[b + 1]; ++r) pos_[r] = segments[b].s->n_past_ + (r - first_[b]);
  }

  forward::begin(model_, tokens_, pos_.data(), a_);
  const size_t n_q = static_cast<size_t>(c.n_head) * c.d_head;
  const size_t n_kv = static_cast<size_t>(c.n_kv_head) * c.d_head;
  bool keep_pre = false;
  for (const batch_segment& g : segments) keep_pre = keep_pre || g.s->observer_ || g.s->cache_.keep_pre_rope();

  for (int il = 0; il < c.n_layer; ++il) {
    forward::layer(model_, il, n_rows, keep_pre, rows, a_, [&] {
      a_.attn_out.resize(n_rows * n_q);
      auto attend = [&](int b) {
        // The session's own buffers, holding its rows as its own step would leave them for
        // attention and the observer.
        session& s = *segments[b].s;
        const size_t r0 = first_[b], r1 = first_[b + 1];
        const int n = static_cast<int>(r1 - r0);
        forward::buffers& sa = s.a_;
        sa.q.assign(a_.q.begin() + r0 * n_q, a_.q.begin() + r1 * n_q);
        sa.k.assign(a_.k.begin() + r0 * n_kv, a_.k.begin() + r1 * n_kv);
        sa.v.assign(a_.v.begin() + r0 * n_kv, a_.v.begin() + r1 * n_kv);
        const bool s_keep_pre = s.cache_.keep_pre_rope();
        if (keep_pre) sa.k_pre.assign(a_.k_pre.begin() + r0 * n_kv, a_.k_pre.begin() + r1 * n_kv);
        s.cache_.append(il, sa.k.data(), sa.v.data(), &pos_[r0], n, s_keep_pre ? sa.k_pre.data() : nullptr);
        s.attention(il, n, &pos_[r0]);
        std::copy_n(sa.attn_out.begin(), n * n_q, a_.attn_out.begin() + r0 * n_q);
      };
      if (n_seg == 1 || !all_single) {
        // One session, or prefill chunks: each session's attention splits over the threads.
        for (int b = 0; b < n_seg; ++b) attend(b);
        return;
      }
      // Single tokens: one session per task, its attention on one thread (a nested region is a
      // team of one), so a layer opens one parallel region, not one per session, and a short
      // context's few (kv head x chunk) tasks do not leave threads waiting at barriers.
      parallel_trap trap;
#pragma omp parallel for schedule(dynamic, 1) num_threads(std::min(compute_threads(), n_seg))
      for (int b = 0; b < n_seg; ++b) trap.run([&] { attend(b); });
      trap.rethrow();
    });
  }

  // The residual rows whose logits were asked for, in segment order.
  x_out_.clear();
  for (int b = 0; b < n_seg; ++b) {
    const logits_mode mode = segments[b].mode;
    if (mode == logits_mode::none) continue;
    const int r0 = mode == logits_mode::all ? first_[b] : first_[b + 1] - 1;
    x_out_.insert(x_out_.end(), a_.x.begin() + static_cast<size_t>(r0) * c.n_embd,
                  a_.x.begin() + static_cast<size_t>(first_[b + 1]) * c.n_embd);
  }
  // A last-token row is computed as alone (as session::step computes its one row), so the
  // first reply token does not depend on which prompts were prefilled together.
  bool any_all = false;
  for (const batch_segment& g : segments) any_all = any_all || g.mode == logits_mode::all;
  std::span<const float> out;
  const int n_out = static_cast<int>(x_out_.size() / c.n_embd);
  if (n_out > 0) out = forward::logits(model_, x_out_.data(), n_out, any_all ? rows : linear_rows::independent, a_);
  for (int b = 0; b < n_seg; ++b) {
    session& s = *segments[b].s;
    s.n_past_ += first_[b + 1] - first_[b];
    if (s.hook_) s.hook_->on_step(s.cache_, std::span<const int32_t>(pos_.data() + first_[b], first_[b + 1] - first_[b]));
  }
  return out;
}

}  // namespace kvgate
