#include "model/batch_decoder.h"

#include <algorithm>

#include "common/error.h"
#include "common/parallel.h"

namespace kvgate {

std::span<const float> batch_decoder::step(std::span<session* const> sessions, std::span<const int32_t> tokens) {
  const model_config& c = model_.config();
  const int n = static_cast<int>(sessions.size());
  if (n == 0) fail("batch decode: no sessions to step");
  if (tokens.size() != sessions.size()) fail("batch decode: {} sessions but {} tokens", sessions.size(), tokens.size());
  forward::check_tokens(model_, tokens);
  for (int b = 0; b < n; ++b) {
    const session& s = *sessions[b];
    if (&s.model_ != &model_) fail("batch decode: session {} runs another model", b);
    if (s.n_past_ + 1 > s.n_ctx_) {
      fail("context overflow: {} tokens already in the context plus 1 new exceed the context size {}", s.n_past_,
           s.n_ctx_);
    }
    for (int e = 0; e < b; ++e) {
      if (sessions[e] == sessions[b]) fail("batch decode: session {} appears twice", b);
    }
  }

  pos_.resize(n);
  for (int b = 0; b < n; ++b) pos_[b] = sessions[b]->n_past_;
  forward::begin(model_, tokens, pos_.data(), a_);
  const size_t n_q = static_cast<size_t>(c.n_head) * c.d_head;
  const size_t n_kv = static_cast<size_t>(c.n_kv_head) * c.d_head;
  bool keep_pre = false;
  for (session* s : sessions) keep_pre = keep_pre || s->observer_ || s->cache_.keep_pre_rope();

  for (int il = 0; il < c.n_layer; ++il) {
    forward::layer(model_, il, n, keep_pre, linear_rows::independent, a_, [&] {
      a_.attn_out.resize(n * n_q);
      auto attend = [&](int b) {
        // The session's own one-token buffers, as its step would leave them for attention and
        // the observer.
        session& s = *sessions[b];
        forward::buffers& sa = s.a_;
        sa.q.assign(a_.q.begin() + b * n_q, a_.q.begin() + (b + 1) * n_q);
        sa.k.assign(a_.k.begin() + b * n_kv, a_.k.begin() + (b + 1) * n_kv);
        sa.v.assign(a_.v.begin() + b * n_kv, a_.v.begin() + (b + 1) * n_kv);
        const bool s_keep_pre = s.cache_.keep_pre_rope();
        if (keep_pre) sa.k_pre.assign(a_.k_pre.begin() + b * n_kv, a_.k_pre.begin() + (b + 1) * n_kv);
        s.cache_.append(il, sa.k.data(), sa.v.data(), &pos_[b], 1, s_keep_pre ? sa.k_pre.data() : nullptr);
        s.attention(il, 1, &pos_[b]);
        std::copy_n(sa.attn_out.begin(), n_q, a_.attn_out.begin() + b * n_q);
      };
      if (n == 1) {
        attend(0);  // its attention splits over the threads itself
        return;
      }
      // One session per task: each session's attention then runs on one thread (a nested region
      // is a team of one), so a layer opens one parallel region, not one per session, and a
      // short context's few (kv head x chunk) tasks do not leave threads waiting at barriers.
      parallel_trap trap;
#pragma omp parallel for schedule(dynamic, 1) num_threads(std::min(compute_threads(), n))
      for (int b = 0; b < n; ++b) trap.run([&] { attend(b); });
      trap.rethrow();
    });
  }
  const std::span<const float> out = forward::logits(model_, 0, n, linear_rows::independent, a_);
  for (int b = 0; b < n; ++b) {
    session& s = *sessions[b];
    ++s.n_past_;
    if (s.hook_) s.hook_->on_step(s.cache_, std::span<const int32_t>(&pos_[b], 1));
  }
  return out;
}

}  // namespace kvgate
