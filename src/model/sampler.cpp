#include "model/sampler.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "model/simd.h"

namespace kvgate {

int32_t argmax(std::span<const float> logits) {
  if (logits.empty()) fail("argmax of empty logits");
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

double log_sum_exp(std::span<const float> logits) {
  if (logits.empty()) fail("log_sum_exp of empty logits");
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float l : logits) sum += std::exp(l - max_logit);
  return std::log(sum) + max_logit;
}

void log_softmax(const float* logits, int64_t n, float* out) {
  if (n <= 0) fail("log_softmax of empty logits");
  // The exponentials in blocks through the vector exp (relative error ~2e-7, far below a float
  // log-probability's rounding), so out may alias logits.
  const float max_logit = *std::max_element(logits, logits + n);
  float block[256];
  double sum = 0.0;
  for (int64_t b = 0; b < n; b += 256) {
    const int64_t len = std::min<int64_t>(256, n - b);
    simd::exp_shifted(logits + b, max_logit, block, len);
    sum += simd::sum(block, len);
  }
  const double log_z = std::log(sum) + max_logit;
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(logits[i] - log_z);
}

double kl_from_log_probs(const float* lp, const float* lq, int64_t n) {
  float block[256];
  double kl = 0.0;
  for (int64_t b = 0; b < n; b += 256) {
    const int64_t len = std::min<int64_t>(256, n - b);
    simd::exp_shifted(lp + b, 0.0f, block, len);
    for (int64_t i = 0; i < len; ++i) block[i] *= lp[b + i] - lq[b + i];
    kl += simd::sum(block, len);
  }
  return kl;
}

double token_nll(std::span<const float> logits, int32_t target) {
  if (target < 0 || static_cast<size_t>(target) >= logits.size()) fail("token_nll: target {} outside [0, {})", target, logits.size());
  return log_sum_exp(logits) - logits[target];
}

sampler::sampler(sampler_params params) : params_(params), rng_(params.seed) {}

int32_t sampler::sample(std::span<const float> logits) {
  if (params_.temperature <= 0.0f) return argmax(logits);
  candidates_.clear();
  // Candidates in order of logit, ties by token id (a strict order, so top-k is one set).
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  size_t n = logits.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < n) {
    // The k best in one pass: a heap whose top is the worst kept; most tokens lose to it at the
    // first comparison (a full vocabulary of pairs is not built or sorted: serve samples every
    // slot's token on the scheduler's thread).
    n = params_.top_k;
    for (size_t i = 0; i < logits.size(); ++i) {
      const std::pair<float, int32_t> c(logits[i], static_cast<int32_t>(i));
      if (candidates_.size() < n) {
        candidates_.push_back(c);
        std::push_heap(candidates_.begin(), candidates_.end(), by_logit);
      } else if (by_logit(c, candidates_.front())) {
        std::pop_heap(candidates_.begin(), candidates_.end(), by_logit);
        candidates_.back() = c;
        std::push_heap(candidates_.begin(), candidates_.end(), by_logit);
      }
    }
    std::sort_heap(candidates_.begin(), candidates_.end(), by_logit);
  } else {
    for (size_t i = 0; i < logits.size(); ++i) candidates_.emplace_back(logits[i], static_cast<int32_t>(i));
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  // Softmax at the temperature over the top-k, in double for a stable nucleus cut.
  std::vector<double> probs(n);
  const double max_logit = candidates_[0].first;
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    probs[i] = std::exp((candidates_[i].first - max_logit) / params_.temperature);
    sum += probs[i];
  }
  size_t keep = n;
  if (params_.top_p < 1.0f) {
    double cum = 0.0;
    for (size_t i = 0; i < n; ++i) {
      cum += probs[i] / sum;
      if (cum >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  std::discrete_distribution<size_t> pick(probs.begin(), probs.begin() + keep);
  return candidates_[pick(rng_)].second;
}

}  // namespace kvgate
