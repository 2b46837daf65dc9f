#include "cli/decode_loop.h"

#include "cli/common.h"

namespace kvgate::cli {

decode_result decode_loop(session& s, sampler& pick, std::vector<float>& logits, const decode_limits& limits,
                          const std::function<void(int32_t id)>& on_token) {
  const tokenizer& vocab = s.get_model().vocab();
  decode_result r;
  r.stop = "length";
  stopwatch clock;
  for (int i = 0; i < limits.n_predict; ++i) {
    const int32_t id = pick.sample(logits);
    if (limits.stop_at_eos && vocab.is_end_of_generation(id)) {
      r.stop = "eos";
      break;
    }
    r.ids.push_back(id);
    on_token(id);
    r.last_pending = true;
    if (i + 1 == limits.n_predict) break;
    if (s.n_past() + 1 + limits.reserve > s.n_ctx()) {
      r.stop = "context";
      break;
    }
    auto next = s.step(std::span<const int32_t>(&id, 1), logits_mode::last);
    logits.assign(next.begin(), next.end());
    r.last_pending = false;
  }
  r.seconds = clock.seconds();
  return r;
}

}  // namespace kvgate::cli
