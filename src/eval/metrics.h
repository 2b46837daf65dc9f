// Binary classification metrics over plain spans: ROC curve and AUC, reliability bins and expected
// calibration error, confusion matrices. No dependency on the gate or the dataset, so these can be
// tested (and reused by the quality benches) on their own.
//
// Every function takes optional per-example weights (empty span: every example weighs 1). The
// dataset keeps all positives but only a share r of the negatives, so "the natural class ratio"
// is restored by giving each stored negative the weight 1/r; "the balanced ratio" gives each
// class the same total weight. AUC does not change under a per-class constant weight, but
// calibration and precision do, so the report states which ratio each number is on.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace kvgate::eval {

// One point of an ROC curve: the rates obtained by calling positive every score >= threshold.
struct roc_point {
  double fpr = 0.0;
  double tpr = 0.0;
  double threshold = 0.0;  // +inf for the first point (nothing called positive)
};

struct roc_curve {
  // [n_distinct_scores + 1] points from (0, 0) to (1, 1), fpr and tpr non-decreasing. Tied scores
  // form one point, so a tie between a positive and a negative is a diagonal segment and counts
  // 1/2 in the area (the Mann-Whitney convention).
  std::vector<roc_point> points;
  double auc = 0.5;        // trapezoid area under points; 0.5 when a class is empty
  double w_pos = 0.0;      // total weight of positives and negatives
  double w_neg = 0.0;
};

// scores [n], labels [n] (0/1), weights [n] or empty. Higher score = more likely positive.
// O(n log n). NaN scores are treated as the lowest score.
roc_curve roc(std::span<const float> scores, std::span<const uint8_t> labels,
              std::span<const float> weights = {});

// roc(...).auc without keeping the curve.
double auc(std::span<const float> scores, std::span<const uint8_t> labels,
           std::span<const float> weights = {});

// At most about max_points points of a curve, for tables and plots: keeps the end points and a
// point whenever fpr or tpr moved by at least 1/max_points since the last kept one. The AUC of the
// result is within about 1/max_points of the full curve's; use roc_curve::auc for the number.
std::vector<roc_point> thin_roc(std::span<const roc_point> points, int max_points);

// One equal-width probability bin [lo, hi) (the last bin includes 1).
struct calibration_bin {
  double lo = 0.0, hi = 0.0;
  int64_t count = 0;        // examples in the bin (unweighted)
  double weight = 0.0;      // their total weight
  double mean_pred = 0.0;   // weighted mean predicted probability; 0 for an empty bin
  double observed = 0.0;    // weighted share of positives; 0 for an empty bin
};

struct calibration {
  std::vector<calibration_bin> bins;  // [n_bins]
  // Expected calibration error: sum over bins of (bin weight / total weight) * |mean_pred -
  // observed|. 0 when the weighted observed rate equals the mean prediction in every bin.
  double ece = 0.0;
};

// probs [n] in [0, 1] (clamped), labels [n], weights [n] or empty.
calibration calibrate(std::span<const float> probs, std::span<const uint8_t> labels,
                      std::span<const float> weights = {}, int n_bins = 10);

// Confusion matrix for "positive when score >= threshold", in weight units (counts when the
// weights are empty).
struct confusion_matrix {
  double threshold = 0.5;
  double tp = 0.0, fp = 0.0, tn = 0.0, fn = 0.0;

  // Ratios with an empty denominator are 0.
  double precision() const { return tp + fp > 0 ? tp / (tp + fp) : 0.0; }
  double recall() const { return tp + fn > 0 ? tp / (tp + fn) : 0.0; }
  double f1() const {
    const double p = precision(), r = recall();
    return p + r > 0 ? 2 * p * r / (p + r) : 0.0;
  }
  double fpr() const { return fp + tn > 0 ? fp / (fp + tn) : 0.0; }
  // Share of examples called positive: what a threshold policy would keep.
  double positive_share() const {
    const double all = tp + fp + tn + fn;
    return all > 0 ? (tp + fp) / all : 0.0;
  }
  confusion_matrix& operator+=(const confusion_matrix& o) {
    tp += o.tp, fp += o.fp, tn += o.tn, fn += o.fn;
    return *this;
  }
};

confusion_matrix confusion_at(std::span<const float> scores, std::span<const uint8_t> labels,
                       float threshold, std::span<const float> weights = {});

// Per-example weights that give the natural class ratio: positives 1, negatives 1/negative_keep.
// labels [n] -> [n].
std::vector<float> natural_weights(std::span<const uint8_t> labels, float negative_keep);
// Per-example weights that give both classes the same total weight (n/2 each, so the mean weight
// stays 1); a class that is absent leaves the other's weights at 1. labels [n] -> [n].
std::vector<float> balanced_weights(std::span<const uint8_t> labels);

// Median of values (copied, not reordered in place); 0 for an empty list. Even counts average
// the middle two.
double median(std::vector<double> values);

}  // namespace kvgate::eval
