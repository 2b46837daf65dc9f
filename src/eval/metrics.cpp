#include "eval/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "common/error.h"
#include "common/stats.h"

namespace kvgate::eval {

namespace {

void check_sizes(std::span<const float> scores, std::span<const uint8_t> labels,
                 std::span<const float> weights, const char* what) {
  if (scores.size() != labels.size() || (!weights.empty() && weights.size() != labels.size())) {
    fail("{}: {} scores, {} labels, {} weights", what, scores.size(), labels.size(), weights.size());
  }
}

float weight_of(std::span<const float> weights, size_t i) { return weights.empty() ? 1.0f : weights[i]; }

}  // namespace

roc_curve roc(std::span<const float> scores, std::span<const uint8_t> labels,
              std::span<const float> weights) {
  check_sizes(scores, labels, weights, "roc");
  const size_t n = scores.size();
  // NaN would break the strict weak ordering; it ranks below every real score.
  std::vector<float> key(n);  // [n]
  for (size_t i = 0; i < n; ++i) {
    key[i] = std::isnan(scores[i]) ? -std::numeric_limits<float>::infinity() : scores[i];
  }
  std::vector<uint32_t> order(n);  // [n] indices by descending score
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return key[a] > key[b]; });

  roc_curve c;
  for (size_t i = 0; i < n; ++i) (labels[i] ? c.w_pos : c.w_neg) += weight_of(weights, i);

  // Walk the distinct scores from the highest; every group of ties adds one point. The area is
  // accumulated in weight units (sum over groups of d_fp * mean tp) and normalised once.
  double tp = 0.0, fp = 0.0, area = 0.0;
  c.points.push_back({0.0, 0.0, std::numeric_limits<double>::infinity()});
  for (size_t i = 0; i < n;) {
    const float s = key[order[i]];
    const double tp0 = tp, fp0 = fp;
    for (; i < n && key[order[i]] == s; ++i) {
      const uint32_t k = order[i];
      (labels[k] ? tp : fp) += weight_of(weights, k);
    }
    area += (fp - fp0) * (tp + tp0) * 0.5;
    c.points.push_back({c.w_neg > 0 ? fp / c.w_neg : 0.0, c.w_pos > 0 ? tp / c.w_pos : 0.0, s});
  }
  c.auc = c.w_pos > 0 && c.w_neg > 0 ? area / (c.w_pos * c.w_neg) : 0.5;
  return c;
}

double auc(std::span<const float> scores, std::span<const uint8_t> labels, std::span<const float> weights) {
  const double a = roc_auc(scores, labels, weights);
  return std::isnan(a) ? 0.5 : a;
}

std::vector<roc_point> thin_roc(std::span<const roc_point> points, int max_points) {
  if (points.size() <= static_cast<size_t>(std::max(max_points, 2))) return {points.begin(), points.end()};
  const double step = 1.0 / std::max(max_points, 1);
  std::vector<roc_point> out{points.front()};
  for (size_t i = 1; i + 1 < points.size(); ++i) {
    const roc_point& last = out.back();
    if (points[i].fpr - last.fpr >= step || points[i].tpr - last.tpr >= step) out.push_back(points[i]);
  }
  out.push_back(points.back());
  return out;
}

calibration calibrate(std::span<const float> probs, std::span<const uint8_t> labels,
                      std::span<const float> weights, int n_bins) {
  check_sizes(probs, labels, weights, "calibrate");
  if (n_bins < 1) fail("calibrate: n_bins {} < 1", n_bins);
  calibration c;
  c.bins.resize(n_bins);
  std::vector<double> sum_pred(n_bins, 0.0), sum_pos(n_bins, 0.0);  // [n_bins] weighted sums
  for (size_t i = 0; i < probs.size(); ++i) {
    const double p = std::isnan(probs[i]) ? 0.0 : std::clamp<double>(probs[i], 0.0, 1.0);
    const int b = std::min(static_cast<int>(p * n_bins), n_bins - 1);
    const double w = weight_of(weights, i);
    c.bins[b].count += 1;
    c.bins[b].weight += w;
    sum_pred[b] += w * p;
    if (labels[i]) sum_pos[b] += w;
  }
  double total = 0.0;
  for (const calibration_bin& bin : c.bins) total += bin.weight;
  for (int b = 0; b < n_bins; ++b) {
    calibration_bin& bin = c.bins[b];
    bin.lo = static_cast<double>(b) / n_bins;
    bin.hi = static_cast<double>(b + 1) / n_bins;
    if (bin.weight <= 0) continue;
    bin.mean_pred = sum_pred[b] / bin.weight;
    bin.observed = sum_pos[b] / bin.weight;
    c.ece += bin.weight / total * std::abs(bin.mean_pred - bin.observed);
  }
  return c;
}

confusion_matrix confusion_at(std::span<const float> scores, std::span<const uint8_t> labels, float threshold,
                       std::span<const float> weights) {
  check_sizes(scores, labels, weights, "confusion_at");
  confusion_matrix c;
  c.threshold = threshold;
  for (size_t i = 0; i < scores.size(); ++i) {
    const double w = weight_of(weights, i);
    const bool called = scores[i] >= threshold;  // NaN is never called positive
    if (labels[i]) {
      (called ? c.tp : c.fn) += w;
    } else {
      (called ? c.fp : c.tn) += w;
    }
  }
  return c;
}

std::vector<float> natural_weights(std::span<const uint8_t> labels, float negative_keep) {
  if (!(negative_keep > 0.0f && negative_keep <= 1.0f)) fail("negative_keep {} not in (0, 1]", negative_keep);
  std::vector<float> w(labels.size());
  for (size_t i = 0; i < labels.size(); ++i) w[i] = labels[i] ? 1.0f : 1.0f / negative_keep;
  return w;
}

std::vector<float> balanced_weights(std::span<const uint8_t> labels) {
  size_t n_pos = 0;
  for (uint8_t l : labels) n_pos += l ? 1 : 0;
  const size_t n = labels.size(), n_neg = n - n_pos;
  const float w_pos = n_pos > 0 && n_neg > 0 ? static_cast<float>(0.5 * n / n_pos) : 1.0f;
  const float w_neg = n_pos > 0 && n_neg > 0 ? static_cast<float>(0.5 * n / n_neg) : 1.0f;
  std::vector<float> w(n);
  for (size_t i = 0; i < n; ++i) w[i] = labels[i] ? w_pos : w_neg;
  return w;
}

double median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  const size_t mid = values.size() / 2;
  std::nth_element(values.begin(), values.begin() + mid, values.end());
  if (values.size() % 2 == 1) return values[mid];
  const double hi = values[mid];
  const double lo = *std::max_element(values.begin(), values.begin() + mid);
  return 0.5 * (lo + hi);
}

}  // namespace kvgate::eval
