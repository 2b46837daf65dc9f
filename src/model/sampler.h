// Next-token sampling: greedy, temperature, top-k, top-p, seeded.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace kvgate {

struct sampler_params {
  float temperature = 0.0f;  // <= 0: greedy (argmax)
  int top_k = 40;            // <= 0: all tokens
  float top_p = 0.95f;       // >= 1: no nucleus cut
  uint64_t seed = 0;
};

class sampler {
 public:
  explicit sampler(sampler_params params);
  int32_t sample(std::span<const float> logits);

 private:
  sampler_params params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // (logit, id)
};

// The one place for these (generation, perplexity and the bench all use them).
// Index of the largest logit (the first of equals); throws error for an empty row.
int32_t argmax(std::span<const float> logits);
inline int32_t argmax(const float* logits, int64_t n) { return argmax(std::span<const float>(logits, n)); }
// log(sum(exp(logits))), shifted by the max and summed in double.
double log_sum_exp(std::span<const float> logits);
// out[i] = logits[i] - log(sum(exp(logits))): logits [n] -> out [n] (may alias). The sum runs
// through the vector exp (simd::exp_shifted) for the bench's millions of rows; log_sum_exp and
// token_nll keep std::exp and are its reference in the tests.
void log_softmax(const float* logits, int64_t n, float* out);
// KL(p || q) = sum p (log p - log q) from log-probabilities lp, lq [n], p by the vector exp.
double kl_from_log_probs(const float* lp, const float* lq, int64_t n);
// -log softmax(logits)[target], in double.
double token_nll(std::span<const float> logits, int32_t target);

}  // namespace kvgate
