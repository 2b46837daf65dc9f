// The evaluator: metrics against slow obvious references on random data, then the report end to end
// on a synthetic gate bank and dataset (through their files on disk), and refusal of a gate bank
// trained for another model.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "data/dataset.h"
#include "eval/gate_scores.h"
#include "eval/metrics.h"
#include "eval/plots.h"
#include "eval/report.h"
#include "eval/window_nll.h"
#include "gate/gate_bank.h"
#include "gguf/gguf.h"
#include "model/linear.h"
#include "model/model.h"
#include "test_util.h"
#include "tiny_model.h"

namespace kvgate {
namespace {

using namespace kvgate::eval;

struct labelled {
  std::vector<float> scores;
  std::vector<uint8_t> labels;
  std::vector<float> weights;
};

// Scores on a coarse grid (n_levels values) so that many are tied; positives score higher on
// average so the AUC is not always near 0.5.
labelled random_labelled(std::mt19937& rng, int n, int n_levels, double pos_rate) {
  labelled d;
  std::bernoulli_distribution is_pos(pos_rate);
  std::uniform_int_distribution<int> level(0, n_levels - 1);
  std::uniform_real_distribution<float> weight(0.1f, 3.0f);
  for (int i = 0; i < n; ++i) {
    const uint8_t y = is_pos(rng) ? 1 : 0;
    d.labels.push_back(y);
    d.scores.push_back(static_cast<float>(std::min(n_levels - 1, level(rng) + (y ? n_levels / 4 : 0))) / n_levels);
    d.weights.push_back(weight(rng));
  }
  return d;
}

// The definition: the weighted share of (positive, negative) pairs ranked correctly, ties 1/2.
double pairwise_auc(const labelled& d, bool weighted) {
  double num = 0.0, w_pos = 0.0, w_neg = 0.0;
  const size_t n = d.scores.size();
  for (size_t i = 0; i < n; ++i) (d.labels[i] ? w_pos : w_neg) += weighted ? d.weights[i] : 1.0;
  for (size_t i = 0; i < n; ++i) {
    if (!d.labels[i]) continue;
    for (size_t j = 0; j < n; ++j) {
      if (d.labels[j]) continue;
      const double w = weighted ? double(d.weights[i]) * d.weights[j] : 1.0;
      if (d.scores[i] > d.scores[j]) num += w;
      if (d.scores[i] == d.scores[j]) num += 0.5 * w;
    }
  }
  return w_pos > 0 && w_neg > 0 ? num / (w_pos * w_neg) : 0.5;
}

TEST(eval_metrics, auc_equals_pairwise_count_with_ties_and_weights) {
  std::mt19937 rng(1);
  double max_diff = 0.0;
  for (int n : {1, 2, 3, 10, 97, 500, 2000}) {
    for (int n_levels : {1, 2, 7, 50, 100000}) {
      for (double pos_rate : {0.03, 0.3, 0.5, 0.9}) {
        const labelled d = random_labelled(rng, n, n_levels, pos_rate);
        for (bool weighted : {false, true}) {
          const double fast = weighted ? auc(d.scores, d.labels, d.weights) : auc(d.scores, d.labels);
          const double slow = pairwise_auc(d, weighted);
          max_diff = std::max(max_diff, std::abs(fast - slow));
          ASSERT_NEAR(fast, slow, 1e-9) << "n " << n << " levels " << n_levels << " weighted " << weighted;
        }
      }
    }
  }
  std::printf("max |auc - pairwise| = %.3g\n", max_diff);
}

TEST(eval_metrics, auc_edge_cases) {
  const std::vector<float> s = {0.1f, 0.2f, 0.3f, 0.4f};
  EXPECT_DOUBLE_EQ(auc(s, std::vector<uint8_t>{0, 0, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(auc(s, std::vector<uint8_t>{1, 1, 0, 0}), 0.0);
  EXPECT_DOUBLE_EQ(auc(s, std::vector<uint8_t>{1, 1, 1, 1}), 0.5);  // one class only: undefined -> 0.5
  EXPECT_DOUBLE_EQ(auc(std::vector<float>(4, 0.7f), std::vector<uint8_t>{0, 1, 0, 1}), 0.5);  // all tied
  // A NaN score ranks lowest.
  EXPECT_DOUBLE_EQ(auc(std::vector<float>{NAN, 0.5f}, std::vector<uint8_t>{0, 1}), 1.0);
  EXPECT_THROW(auc(s, std::vector<uint8_t>{0, 1}), error);
}

TEST(eval_metrics, roc_is_monotone_from_origin_to_one_and_thinning_keeps_the_area) {
  std::mt19937 rng(2);
  const labelled d = random_labelled(rng, 20000, 100000, 0.2);
  const roc_curve c = roc(d.scores, d.labels, d.weights);
  ASSERT_GE(c.points.size(), 2u);
  EXPECT_EQ(c.points.front().fpr, 0.0);
  EXPECT_EQ(c.points.front().tpr, 0.0);
  EXPECT_NEAR(c.points.back().fpr, 1.0, 1e-12);
  EXPECT_NEAR(c.points.back().tpr, 1.0, 1e-12);
  for (size_t i = 1; i < c.points.size(); ++i) {
    ASSERT_GE(c.points[i].fpr, c.points[i - 1].fpr);
    ASSERT_GE(c.points[i].tpr, c.points[i - 1].tpr);
    ASSERT_LT(c.points[i].threshold, c.points[i - 1].threshold);
  }
  const std::vector<roc_point> thin = thin_roc(c.points, 200);
  EXPECT_LE(thin.size(), 402u);
  double area = 0.0;
  for (size_t i = 1; i < thin.size(); ++i) {
    area += (thin[i].fpr - thin[i - 1].fpr) * (thin[i].tpr + thin[i - 1].tpr) / 2;
  }
  EXPECT_NEAR(area, c.auc, 1.0 / 200);
}

TEST(eval_metrics, calibration_bin_counts_sum_to_the_sample_count) {
  std::mt19937 rng(3);
  for (int n_bins : {1, 3, 10, 17}) {
    labelled d = random_labelled(rng, 5000, 1000, 0.3);
    d.scores[0] = 1.0f;   // the top edge belongs to the last bin
    d.scores[1] = 0.0f;
    d.scores[2] = 1.5f;   // out of range: clamped
    d.scores[3] = -0.5f;
    const calibration c = calibrate(d.scores, d.labels, d.weights, n_bins);
    ASSERT_EQ(c.bins.size(), static_cast<size_t>(n_bins));
    int64_t count = 0;
    double weight = 0.0, total_weight = 0.0;
    for (const calibration_bin& b : c.bins) count += b.count, weight += b.weight;
    for (float w : d.weights) total_weight += w;
    EXPECT_EQ(count, 5000);
    EXPECT_NEAR(weight, total_weight, 1e-6 * total_weight);
    EXPECT_NEAR(c.bins.front().lo, 0.0, 1e-12);
    EXPECT_NEAR(c.bins.back().hi, 1.0, 1e-12);
  }
}

TEST(eval_metrics, ece_of_a_perfectly_calibrated_set_is_zero) {
  // Exactly calibrated: in each bin, the share of positives equals the (single) predicted value.
  labelled exact;
  for (int b = 0; b < 10; ++b) {
    const float p = (b + 0.5f) / 10;
    for (int i = 0; i < 20; ++i) {
      exact.scores.push_back(p);
      exact.labels.push_back(i < p * 20 ? 1 : 0);
    }
  }
  EXPECT_NEAR(calibrate(exact.scores, exact.labels).ece, 0.0, 1e-6);  // float scores

  // Drawn: y ~ Bernoulli(p): ECE small, and large once the probabilities are distorted.
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  labelled drawn;
  for (int i = 0; i < 200000; ++i) {
    const float p = u(rng);
    drawn.scores.push_back(p);
    drawn.labels.push_back(u(rng) < p ? 1 : 0);
  }
  const double ece = calibrate(drawn.scores, drawn.labels).ece;
  EXPECT_LT(ece, 0.01);
  std::vector<float> squashed = drawn.scores;
  for (float& p : squashed) p = p * p;
  EXPECT_GT(calibrate(squashed, drawn.labels).ece, 0.1);
  std::printf("ECE drawn calibrated %.4f\n", ece);
}

TEST(eval_metrics, natural_weights_undo_negative_subsampling) {
  // A calibrated population with 5% positives; keep every positive and 10% of the negatives. On
  // the stored examples weighted 1/0.1 the calibration and confusion match the full population.
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  labelled full, kept;
  const float keep = 0.1f;
  for (int i = 0; i < 400000; ++i) {
    const float p = 0.1f * u(rng);  // mean 0.05
    const uint8_t y = u(rng) < p ? 1 : 0;
    full.scores.push_back(p);
    full.labels.push_back(y);
    if (y || u(rng) < keep) kept.scores.push_back(p), kept.labels.push_back(y);
  }
  const std::vector<float> w = natural_weights(kept.labels, keep);
  EXPECT_LT(calibrate(kept.scores, kept.labels, w).ece, 0.01);
  EXPECT_GT(calibrate(kept.scores, kept.labels).ece, 0.1);  // unweighted: positives look common
  const confusion_matrix a = confusion_at(full.scores, full.labels, 0.05f);
  const confusion_matrix b = confusion_at(kept.scores, kept.labels, 0.05f, w);
  EXPECT_NEAR(b.precision(), a.precision(), 0.01);
  EXPECT_NEAR(b.recall(), a.recall(), 0.01);
  EXPECT_NEAR(b.positive_share(), a.positive_share(), 0.01);

  const std::vector<float> bal = balanced_weights(kept.labels);
  double w_pos = 0, w_neg = 0;
  for (size_t i = 0; i < bal.size(); ++i) (kept.labels[i] ? w_pos : w_neg) += bal[i];
  EXPECT_NEAR(w_pos, w_neg, 1e-3 * w_pos);
  EXPECT_NEAR(w_pos + w_neg, static_cast<double>(bal.size()), 1e-3 * bal.size());
}

TEST(eval_metrics, confusion_counts_match_a_direct_count) {
  std::mt19937 rng(6);
  const labelled d = random_labelled(rng, 3000, 20, 0.2);
  for (float t : {0.0f, 0.1f, 0.35f, 0.5f, 0.95f, 1.0f}) {
    double tp = 0, fp = 0, tn = 0, fn = 0, wtp = 0;
    for (size_t i = 0; i < d.scores.size(); ++i) {
      const bool called = d.scores[i] >= t;
      tp += called && d.labels[i];
      fp += called && !d.labels[i];
      tn += !called && !d.labels[i];
      fn += !called && d.labels[i];
      if (called && d.labels[i]) wtp += d.weights[i];
    }
    const confusion_matrix c = confusion_at(d.scores, d.labels, t);
    EXPECT_EQ(c.tp, tp);
    EXPECT_EQ(c.fp, fp);
    EXPECT_EQ(c.tn, tn);
    EXPECT_EQ(c.fn, fn);
    EXPECT_DOUBLE_EQ(c.precision(), tp + fp > 0 ? tp / (tp + fp) : 0.0);
    EXPECT_DOUBLE_EQ(c.recall(), tp / (tp + fn));
    EXPECT_NEAR(confusion_at(d.scores, d.labels, t, d.weights).tp, wtp, 1e-9 * (1 + wtp));
  }
}

TEST(eval_metrics, lifetime_bucket_share_counts_lifetimes_past_the_window) {
  // W = 128: buckets [0,3] [4,15] [16,63] [64,255] ...; bucket 3 has 127 of its 192 lifetimes > 128.
  const std::vector<float> s = lifetime_bucket_share(8, 128, 512);
  ASSERT_EQ(s.size(), 8u);
  EXPECT_EQ(s[0], 0.0f);
  EXPECT_EQ(s[2], 0.0f);
  EXPECT_NEAR(s[3], 127.0 / 192.0, 1e-6);
  for (int b = 4; b < 8; ++b) EXPECT_EQ(s[b], 1.0f);
}

// ---- the report on a synthetic gate bank and dataset ----

constexpr int k_layers = 3, k_kv_heads = 2, k_d = 16;

gate_meta synthetic_meta(const std::string& objective) {
  gate_meta m;
  m.model_name = "synthetic";
  m.model_arch = "llama";
  m.n_layer = k_layers;
  m.n_kv_head = k_kv_heads;
  m.d_head = k_d;
  m.objective = objective;
  return m;
}

// A planted rule per head: y = 1 when v_h . k (+ noise) exceeds 1.3 (about 10% of keys). The gate
// computes s = relu(v_h . k) in its first hidden unit and passes it through: binary logit
// 4 * s - 5.2; lifetime logits s for buckets >= 4 and 0 below, so its derived probability is
// increasing in s too and must rank the examples exactly as the binary gate does.
std::vector<float> planted_direction(int head) {
  std::mt19937 rng(100 + head);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> v(k_d);
  double norm = 0;
  for (float& x : v) x = n(rng), norm += x * x;
  for (float& x : v) x /= static_cast<float>(std::sqrt(norm));
  return v;
}

gate_bank synthetic_bank(const std::string& objective) {
  const int n_out = objective == "binary" ? 1 : 8;
  gate_bank bank(synthetic_meta(objective), n_out);
  const int F = k_gate_hidden;
  for (int h = 0; h < bank.n_heads(); ++h) {
    const std::vector<float> v = planted_direction(h);
    for (int i = 0; i < k_d; ++i) bank.w1()[(static_cast<size_t>(h) * k_d + i) * F] = v[i];
    bank.w2()[static_cast<size_t>(h) * F * F] = 1.0f;
    for (int o = 0; o < n_out; ++o) {
      bank.w3()[static_cast<size_t>(h) * F * n_out + o] = n_out == 1 ? 4.0f : (o >= 4 ? 1.0f : 0.0f);
    }
    if (n_out == 1) bank.b3()[h] = -5.2f;
  }
  return bank;
}

// Writes a dataset directory: all positives and half the negatives of 3000 keys per head.
std::string write_synthetic_dataset(const std::string& dir) {
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  dataset_manifest m;
  m.model_name = "synthetic";
  m.model_arch = "llama";
  m.n_layer = k_layers;
  m.n_kv_head = k_kv_heads;
  m.d_head = k_d;
  m.negative_keep = 0.5f;
  m.n_docs = 1;
  m.n_tokens = 3000;
  std::vector<head_examples> heads(k_layers * k_kv_heads);
  for (int h = 0; h < k_layers * k_kv_heads; ++h) {
    const std::vector<float> v = planted_direction(h);
    int64_t n_pos = 0, n_neg = 0;
    for (int t = 0; t < 3000; ++t) {
      std::vector<float> k(k_d);
      float dot = 0;
      for (int i = 0; i < k_d; ++i) k[i] = n(rng), dot += k[i] * v[i];
      const uint8_t y = dot + 0.3f * n(rng) > 1.3f ? 1 : 0;
      (y ? n_pos : n_neg) += 1;
      if (!y && u(rng) >= m.negative_keep) continue;
      for (float x : k) heads[h].keys.push_back(gguf::f32_to_f16(x));
      heads[h].label.push_back(y);
      heads[h].bucket.push_back(y ? 4 : 0);
      heads[h].pos.push_back(t);
      heads[h].doc.push_back(0);
    }
    m.n_pos.push_back(n_pos);
    m.n_neg.push_back(n_neg);
    m.n_stored.push_back(static_cast<int64_t>(heads[h].size()));
  }
  std::filesystem::create_directories(dir);
  m.shards = {"shard-00000.bin"};
  write_shard(dir + "/" + m.shards[0], heads, k_d, 0, 1);
  write_manifest(dir, m);
  return dir;
}

bool is_png(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[8] = {};
  in.read(magic, 8);
  return in && std::string(magic, 8) == std::string("\x89PNG\r\n\x1a\n", 8) &&
         std::filesystem::file_size(path) > 1000;
}

TEST(eval_report, synthetic_gates_give_report_json_csvs_and_pngs) {
  const std::string tmp = test::temp_dir();
  const std::string data_dir = write_synthetic_dataset(tmp + "/data");
  synthetic_bank("binary").save(tmp + "/gates.gguf");
  synthetic_bank("lifetime").save(tmp + "/lifetime.gguf");
  {
    std::ofstream loss(tmp + "/gates.loss.csv");
    loss << "epoch,layer,head,train_loss,val_loss\n";
    for (int e = 0; e < 6; ++e) {
      for (int h = 0; h < k_layers * k_kv_heads; ++h) {
        loss << e << "," << h / k_kv_heads << "," << h % k_kv_heads << "," << 0.7 / (1 + e + 0.1 * h) << ","
             << 0.75 / (1 + 0.8 * e) + 0.01 * h << "\n";
      }
    }
  }

  const dataset data = dataset::load(data_dir);
  const gate_bank binary = gate_bank::load(tmp + "/gates.gguf");
  const gate_bank lifetime = gate_bank::load(tmp + "/lifetime.gguf");
  EXPECT_TRUE(check_gate_matches_dataset(binary.meta(), "gates.gguf", data.manifest, data_dir).empty());
  const std::vector<named_gate> gates = {{"gate", tmp + "/gates.gguf", &binary},
                                         {"lifetime", tmp + "/lifetime.gguf", &lifetime}};
  const eval_input input = score_dataset(data, data_dir, gates);

  report_options options;
  options.thresholds = {0.3f};
  options.loss_csv = tmp + "/gates.loss.csv";
  const eval_report report = compute_report(input, options);
  const std::string out = tmp + "/report";
  write_report(report, input, options, out);
  std::printf("%s", summary_text(report, out).c_str());

  std::ifstream in(out + "/report.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  const nlohmann::json& s = j.at("summary");
  for (const char* key : {"median_auc", "min_auc", "mean_auc", "ece", "positive_rate", "knorm_median_auc",
                          "position_median_auc"}) {
    ASSERT_TRUE(s.contains(key) && s[key].is_number()) << key;
  }
  EXPECT_GT(s["median_auc"].get<double>(), 0.9);  // the planted rule is what the gate computes
  EXPECT_LT(s["knorm_median_auc"].get<double>(), 0.75);
  EXPECT_NEAR(s["position_median_auc"].get<double>(), 0.5, 0.08);  // position carries no signal here
  EXPECT_NEAR(s["positive_rate"].get<double>(), 0.1, 0.03);
  // The lifetime gate ranks exactly like the binary one.
  EXPECT_NEAR(s["compare"][0]["median_auc"].get<double>(), s["median_auc"].get<double>(), 1e-9);
  EXPECT_EQ(j.at("thresholds").size(), 3u);

  ASSERT_EQ(j.at("heads").size(), static_cast<size_t>(k_layers * k_kv_heads));
  for (const nlohmann::json& h : j["heads"]) {
    for (const char* key : {"layer", "head", "auc", "knorm_auc", "ece", "n_pos", "n_neg"}) {
      ASSERT_TRUE(h.contains(key) && h[key].is_number()) << key;
    }
    EXPECT_GT(h["n_pos"].get<int>(), 100);
    EXPECT_GT(h["lifetime_bucket_accuracy"].get<double>(), 0.5);
  }

  for (const char* csv : {"heads.csv", "roc.csv", "calibration.csv", "confusion.csv", "confusion_total.csv"}) {
    EXPECT_GT(std::filesystem::file_size(out + "/" + csv), 50u) << csv;
  }
  for (const std::string& png : plot_files(options)) EXPECT_TRUE(is_png(out + "/" + png)) << png;
  EXPECT_TRUE(std::filesystem::exists(out + "/loss.png"));
  EXPECT_GT(std::filesystem::file_size(out + "/index.html"), 1000u);
}

TEST(eval_report, heads_without_both_classes_are_null_not_numbers) {
  eval_input in;
  in.model_name = "tiny";
  in.n_layer = 1;
  in.n_kv_head = 2;
  in.gates.push_back({"gate", "g.gguf", "binary", "sigmoid(logit)", {}});
  for (int h = 0; h < 2; ++h) {
    head_scores s;
    s.head = h;
    s.label = h == 0 ? std::vector<uint8_t>{0, 1, 0, 1} : std::vector<uint8_t>{0, 0, 0, 0};
    s.gates = {{0.1f, 0.9f, 0.2f, 0.8f}};
    s.knorm = {-1, -2, -3, -4};
    s.position = {0, -1, -2, -3};
    in.heads.push_back(std::move(s));
  }
  report_options options;
  options.plots = false;
  const eval_report r = compute_report(in, options);
  EXPECT_EQ(r.json["heads"][0]["auc"], 1.0);
  EXPECT_TRUE(r.json["heads"][1]["auc"].is_null());
  EXPECT_EQ(r.json["summary"]["median_auc"], 1.0);  // the one head with both classes
  EXPECT_EQ(r.json["summary"]["n_heads_scored"], 1);
}

TEST(eval_report, gate_bank_for_another_model_is_refused_with_the_reason) {
  dataset_manifest data;
  data.model_name = "synthetic";
  data.n_layer = k_layers;
  data.n_kv_head = k_kv_heads;
  data.d_head = k_d;
  gate_meta other = synthetic_meta("binary");
  other.model_name = "SmolLM2-360M";
  other.n_layer = 32;
  try {
    check_gate_matches_dataset(other, "g.gguf", data, "held-out");
    FAIL() << "a gate bank for another model was accepted";
  } catch (const error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("does not match"), std::string::npos) << what;
    EXPECT_NE(what.find("SmolLM2-360M"), std::string::npos) << what;
    EXPECT_NE(what.find("n_layer 32 vs 3"), std::string::npos) << what;
  }
  gate_meta post = synthetic_meta("binary");
  post.key_kind = "post-rope";
  EXPECT_THROW(check_gate_matches_dataset(post, "g.gguf", data, "held-out"), error);
  gate_meta window = synthetic_meta("binary");
  window.window = 64;
  const std::vector<std::string> warnings = check_gate_matches_dataset(window, "g.gguf", data, "held-out");
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("window"), std::string::npos);
}

TEST(eval_report, missing_loss_csv_column_is_named) {
  const std::string path = test::temp_dir() + "/loss.csv";
  std::ofstream(path) << "epoch,layer,head,train_loss\n0,0,0,0.5\n";
  try {
    read_loss_csv(path);
    FAIL() << "accepted";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("val_loss"), std::string::npos) << e.what();
  }
}

// The shared chunked next-token loop of perplexity and bench: every position but the last
// predicts exactly once, chunk by chunk; the summed NLL equals the same chunks stepped by hand and
// scored here in double precision, and, on the f32 path (steps of >= k_sgemm_min_rows tokens, f32
// cache), the double-precision reference forward pass (tests/tiny_model.h, written from the
// architecture, not from src/model).
TEST(window_nll, chunks_cover_each_prediction_once_and_match_the_reference) {
  const std::string path = test::temp_dir() + "/window_nll.gguf";
  test::write_tiny_model(path, test::tiny_spec{});
  const auto m = model::load(path);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> pick(0, test::k_tiny_vocab - 1);
  std::vector<int32_t> tokens(41);
  for (int32_t& t : tokens) t = pick(rng);
  const int n = static_cast<int>(tokens.size());
  const int n_vocab = test::k_tiny_vocab;
  // -log softmax(row)[target] in double precision.
  const auto nll_of = [&](const auto* row, int32_t target) {
    double max = row[0], sum = 0.0;
    for (int v = 0; v < n_vocab; ++v) max = std::max<double>(max, row[v]);
    for (int v = 0; v < n_vocab; ++v) sum += std::exp(row[v] - max);
    return max + std::log(sum) - row[target];
  };
  const std::vector<double> ref = test::reference_logits(path, tokens);  // [n, n_vocab]
  double ref_nll = 0.0, max_ref = 0.0;
  for (int p = 0; p + 1 < n; ++p) ref_nll += nll_of(ref.data() + static_cast<size_t>(p) * n_vocab, tokens[p + 1]);
  for (double r : ref) max_ref = std::max(max_ref, std::abs(r));

  for (int batch : {1, 6, 40, 41, 64}) {
    SCOPED_TRACE(batch);
    const session_options options{.n_ctx = n, .n_batch = batch, .kv = kv_type::f32};
    session s(*m, options);
    std::vector<int> seen(n, 0);
    run_window_chunks(s, tokens, batch, [&](int first, std::span<const float> logits, int n_rows) {
      EXPECT_EQ(first % batch, 0);
      EXPECT_GE(n_rows, 1);
      EXPECT_LE(n_rows, batch);
      EXPECT_EQ(logits.size(), static_cast<size_t>(n_rows) * n_vocab);
      for (int t = 0; t < n_rows; ++t) ++seen[first + t];
    });
    for (int p = 0; p < n; ++p) EXPECT_EQ(seen[p], p + 1 < n ? 1 : 0) << p;

    session by_hand(*m, options);
    double hand_nll = 0.0;
    for (int start = 0; start < n; start += batch) {
      const int k = std::min(batch, n - start);
      const auto logits = by_hand.step(std::span(tokens).subspan(start, k), logits_mode::all);
      for (int t = 0; t < k && start + t + 1 < n; ++t) hand_nll += nll_of(logits.data() + static_cast<size_t>(t) * n_vocab, tokens[start + t + 1]);
    }
    session s2(*m, options);
    double nll = 0.25;  // added to, not overwritten
    EXPECT_EQ(add_window_nll(s2, tokens, batch, &nll), n - 1);
    EXPECT_NEAR(nll - 0.25, hand_nll, 1e-9 * hand_nll);
    // Engine logits within 1e-4 of the logit range of the reference (model_test) move each NLL
    // by at most twice that.
    if (std::min(batch, n) >= k_sgemm_min_rows) {
      EXPECT_NEAR(nll - 0.25, ref_nll, 2e-4 * max_ref * (n - 1));
    }
  }
}

}  // namespace
}  // namespace kvgate
