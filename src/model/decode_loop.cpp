#include "model/decode_loop.h"

#include <chrono>

namespace kvgate {

decode_event decode_next(decode_cursor& c, sampler& pick, std::span<const float> logits, const tokenizer& vocab,
                         int n_past, int n_ctx, int32_t* id) {
  decode_result& r = c.result;
  if (r.stop.empty()) r.stop = "length";
  if (c.done || static_cast<int>(r.ids.size()) >= c.limits.n_predict) {
    c.done = true;
    return decode_event::end;
  }
  *id = pick.sample(logits);
  if (c.limits.stop_at_eos && vocab.is_end_of_generation(*id)) {
    r.stop = "eos";
    c.done = true;
    return decode_event::end;
  }
  r.ids.push_back(*id);
  r.last_pending = true;
  if (static_cast<int>(r.ids.size()) == c.limits.n_predict) {
    c.done = true;
    return decode_event::last;
  }
  if (n_past + 1 + c.limits.reserve > n_ctx) {
    r.stop = "context";
    c.done = true;
    return decode_event::last;
  }
  return decode_event::step;
}

decode_result decode_loop(session& s, sampler& pick, std::vector<float>& logits, const decode_limits& limits,
                          const std::function<void(int32_t id)>& on_token) {
  const tokenizer& vocab = s.get_model().vocab();
  const auto start = std::chrono::steady_clock::now();
  decode_cursor c{.limits = limits, .result = {}};
  int32_t id = 0;
  while (true) {
    const decode_event e = decode_next(c, pick, logits, vocab, s.n_past(), s.n_ctx(), &id);
    if (e == decode_event::end) break;
    on_token(id);
    if (e == decode_event::last) break;
    auto next = s.step(std::span<const int32_t>(&id, 1), logits_mode::last);
    logits.assign(next.begin(), next.end());
    c.result.last_pending = false;
  }
  c.result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return std::move(c.result);
}

}  // namespace kvgate
