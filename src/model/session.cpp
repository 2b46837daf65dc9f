// A session: prefill and decode steps of one sequence over its per-head cache (the layer pieces
// in model/forward.h, attention in attention.cpp).
#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "model/forward.h"
#include "model/model.h"

namespace kvgate {

session::session(const model& m, session_options options)
    : model_(m),
      n_ctx_(options.n_ctx > 0 ? options.n_ctx : m.config().n_ctx_train),
      n_batch_(std::max(1, options.n_batch)),
      prefill_rows_(options.prefill),
      cache_(m.config().n_layer, m.config().n_kv_head, m.config().d_head, options.kv),
      recall_(m.config().n_layer) {}

session::~session() = default;

void session::reset() {
  cache_.clear();
  n_past_ = 0;
}

void session::truncate(int n) {
  if (n < 0 || n > n_past_) fail("session::truncate: {} is outside [0, {}]", n, n_past_);
  cache_.truncate(n);
  n_past_ = n;
}

void session::copy_prefix(const session& from, int n) {
  if (&from.model_ != &model_) fail("session::copy_prefix: the sessions run different models");
  if (n < 0 || n > from.n_past_ || n > n_ctx_) fail("session::copy_prefix: {} is outside [0, {}]", n, std::min(from.n_past_, n_ctx_));
  cache_.assign_prefix(from.cache_, n);
  n_past_ = n;
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
  forward::check_tokens(model_, tokens);

  std::vector<int32_t> pos(n);
  for (int t = 0; t < n; ++t) pos[t] = n_past_ + t;
  forward::begin(model_, tokens, pos.data(), a_);
  const bool keep_pre = cache_.keep_pre_rope();
  for (int il = 0; il < c.n_layer; ++il) {
    forward::layer(model_, il, n, observer_ || keep_pre, prefill_rows_, a_, [&] {
      cache_.append(il, a_.k.data(), a_.v.data(), pos.data(), n, keep_pre ? a_.k_pre.data() : nullptr);
      attention(il, n, pos.data());
    });
  }
  n_past_ += n;

  std::span<const float> out;
  if (mode != logits_mode::none) {
    const int first = mode == logits_mode::all ? 0 : n - 1;
    out = forward::logits(model_, a_.x.data() + static_cast<size_t>(first) * c.n_embd, n - first,
                          prefill_rows_, a_);
  }
  if (hook_) hook_->on_step(cache_, pos);
  return out;
}

}  // namespace kvgate
