#include "common/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "common/error.h"

namespace kvgate {

double roc_auc(std::span<const float> scores, std::span<const uint8_t> labels, std::span<const float> weights) {
  if (scores.size() != labels.size() || (!weights.empty() && weights.size() != labels.size())) {
    fail("roc_auc: {} scores, {} labels, {} weights", scores.size(), labels.size(), weights.size());
  }
  const size_t n = scores.size();
  std::vector<float> key(n);  // [n] NaN -> -inf, so the order is a strict weak ordering
  for (size_t i = 0; i < n; ++i) key[i] = std::isnan(scores[i]) ? -std::numeric_limits<float>::infinity() : scores[i];
  std::vector<uint32_t> order(n);  // [n] ascending score
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return key[a] < key[b]; });
  // Per group of tied scores: its positives beat every lower negative and tie with its own.
  double neg_below = 0.0, w_pos = 0.0, area = 0.0;
  for (size_t i = 0; i < n;) {
    double pos_g = 0.0, neg_g = 0.0;
    const float s = key[order[i]];
    for (; i < n && key[order[i]] == s; ++i) {
      const double w = weights.empty() ? 1.0 : weights[order[i]];
      (labels[order[i]] ? pos_g : neg_g) += w;
    }
    area += pos_g * (neg_below + 0.5 * neg_g);
    neg_below += neg_g;
    w_pos += pos_g;
  }
  if (!(w_pos > 0.0) || !(neg_below > 0.0)) return std::numeric_limits<double>::quiet_NaN();
  return area / (w_pos * neg_below);
}

}  // namespace kvgate
