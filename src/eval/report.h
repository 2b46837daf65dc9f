// The gate evaluation report: per-head metrics of one or more gate banks and two baselines on a
// held-out dataset, written as report.json, CSV tables, gnuplot PNGs and an index.html.
//
// The report is computed from scores only (eval_input), so it can be built and tested without a
// gate bank or a dataset on disk; gate_scores.h turns those into an eval_input.
//
// report.json is a contract other tools read:
//   summary: {median_auc, min_auc, mean_auc, ece, positive_rate, knorm_median_auc,
//             position_median_auc, ...}
//   heads:   [{layer, head, auc, knorm_auc, ece, n_pos, n_neg, ...}]
// where auc/ece are those of the first (primary) gate bank, `ece` is on the balanced class ratio
// (see `ece_class_ratio`; the natural-ratio ECE is beside it as `ece_natural`), and n_pos/n_neg
// count the stored held-out examples of the head.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/metrics.h"

namespace kvgate::eval {

// One head's held-out examples, scored. Every vector has one entry per stored example.
struct head_scores {
  int layer = 0, head = 0;
  std::vector<uint8_t> label;             // [n] 0/1
  std::vector<std::vector<float>> gates;  // [n_gates][n] probability of label 1 by each gate bank
  std::vector<float> knorm;               // [n] -||k||: small keys are kept (baseline)
  std::vector<float> position;            // [n] -position in the document: early tokens kept (baseline)
  nlohmann::json extra = nlohmann::json::object();  // more per-head fields for report.json
};

// Where a gate's scores come from, for the tables and the page.
struct gate_info {
  std::string name;       // short column prefix, e.g. "gate" or "lifetime"
  std::string path;
  std::string objective;  // "binary" | "lifetime"
  std::string score;      // how its probability of label 1 was obtained
  nlohmann::json meta = nlohmann::json::object();  // threshold, key kind, label parameters...
};

struct eval_input {
  std::string data_path;
  std::string model_name;
  int n_layer = 0, n_kv_head = 0;
  float negative_keep = 1.0f;        // share of negatives the dataset stored
  int64_t n_pos_all = 0, n_neg_all = 0;  // labelled tokens before subsampling (all heads)
  nlohmann::json label = nlohmann::json::object();  // the dataset's label parameters
  std::vector<std::string> warnings;
  std::vector<gate_info> gates;      // [n_gates]; gates[0] is the primary one
  std::vector<head_scores> heads;    // [n_layer * n_kv_head], index il * n_kv_head + ih
};

struct report_options {
  std::vector<float> thresholds = {0.5f, 0.1f};  // confusion matrices; 0.5 and 0.1 always added
  int n_bins = 10;                               // calibration bins
  int roc_points = 200;                          // ROC points kept per head for tables and plots
  std::string loss_csv;                          // trainer's loss CSV; empty: no loss plot
  bool plots = true;                             // draw PNGs with gnuplot (and write index.html)
};

// The metrics of one gate bank on one head.
struct gate_head_metrics {
  double auc = 0.5;
  std::vector<roc_point> roc;         // thinned
  calibration cal_balanced, cal_natural;
  std::vector<confusion_matrix> confusion_natural;  // [n_thresholds] on the natural class ratio
  std::vector<confusion_matrix> confusion_stored;  // [n_thresholds] counts of stored examples
};

struct head_report {
  int layer = 0, head = 0;
  int64_t n_pos = 0, n_neg = 0;          // stored examples
  std::vector<gate_head_metrics> gates;  // [n_gates]
  double knorm_auc = 0.5, position_auc = 0.5;
  std::vector<roc_point> knorm_roc;      // thinned
  nlohmann::json extra = nlohmann::json::object();
};

struct eval_report {
  std::vector<double> thresholds;  // sorted descending, unique (shortest decimal of the float given)
  std::vector<head_report> heads;
  nlohmann::json json;            // report.json as written
};

// Computes every metric; heads in parallel on the OpenMP threads.
eval_report compute_report(const eval_input& input, const report_options& options);

// Writes report.json, heads.csv, roc.csv, calibration.csv, confusion.csv into out_dir (created),
// then the plots and index.html when options.plots (throws error when gnuplot is missing).
void write_report(const eval_report& report, const eval_input& input, const report_options& options,
                  const std::string& out_dir);

// A one-screen text summary for stdout.
std::string summary_text(const eval_report& report, const std::string& out_dir);

}  // namespace kvgate::eval
