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

int32_t argmax(std::span<const float> logits);

}  // namespace kvgate
