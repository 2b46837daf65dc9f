#include "eval/window_nll.h"

#include <algorithm>

#include "model/model.h"
#include "model/sampler.h"

namespace kvgate {

void run_window_chunks(session& s, std::span<const int32_t> tokens, int n_batch, const prediction_chunk_fn& chunk) {
  const int n_tokens = static_cast<int>(tokens.size());
  const int n_pred = n_tokens - 1;  // positions 0..n_tokens-2 predict tokens 1..n_tokens-1
  for (int start = 0; start < n_tokens; start += n_batch) {
    const int n = std::min(n_batch, n_tokens - start);
    const std::span<const float> logits = s.step(tokens.subspan(start, n), logits_mode::all);
    const int n_rows = std::min(n, n_pred - start);
    const size_t n_vocab = logits.size() / static_cast<size_t>(n);
    if (n_rows > 0) chunk(start, logits.first(static_cast<size_t>(n_rows) * n_vocab), n_rows);
  }
}

int64_t add_window_nll(session& s, std::span<const int32_t> tokens, int n_batch, double* nll_sum) {
  int64_t n_scored = 0;
  run_window_chunks(s, tokens, n_batch, [&](int first, std::span<const float> logits, int n_rows) {
    const size_t n_vocab = logits.size() / static_cast<size_t>(n_rows);
    for (int t = 0; t < n_rows; ++t) {
      *nll_sum += token_nll(logits.subspan(static_cast<size_t>(t) * n_vocab, n_vocab), tokens[first + t + 1]);
      ++n_scored;
    }
  });
  return n_scored;
}

}  // namespace kvgate
