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

// The one place for these three (generation, perplexity and the bench all use them).
// Index of the largest logit (the first of equals); throws error for an empty row.
int32_t argmax(std::span<const float> logits);
inline int32_t argmax(const float* logits, int64_t n) { return argmax(std::span<const float>(logits, n)); }
// log(sum(exp(logits))), shifted by the max and summed in double.
double log_sum_exp(std::span<const float> logits);
// out[i] = logits[i] - log_sum_exp(logits): logits [n] -> out [n] (may alias).
void log_softmax(const float* logits, int64_t n, float* out);
// -log softmax(logits)[target], in double.
double token_nll(std::span<const float> logits, int32_t target);

}  // namespace kvgate
