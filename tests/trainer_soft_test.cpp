// `kvgate train --target soft`: the binary gates trained with BCE against soft scores (the max
// attention the label sources stored) instead of the 0/1 label.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "common/error.h"
#include "gate/gate_bank.h"
#include "gate/trainer.h"

namespace kvgate {
namespace {

gate_meta meta_of(int n_kv_head, int d_head, const std::string& objective = "binary") {
  gate_meta m;
  m.model_name = "tiny-test";
  m.model_arch = "llama";
  m.n_layer = 1;
  m.n_kv_head = n_kv_head;
  m.d_head = d_head;
  m.objective = objective;
  return m;
}

// Per head: random f32 keys; a planted projection p; soft score sigmoid(4 (p - cut)) and label
// p > cut with cut at the 95% quantile.
struct soft_data {
  std::vector<std::vector<float>> keys, score;
  std::vector<std::vector<uint8_t>> label;
  std::vector<int64_t> train_rows, val_rows;
  std::vector<gate_examples> train, val;
};

soft_data make_data(int H, int d, int64_t n, bool scores_are_labels) {
  soft_data s;
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int h = 0; h < H; ++h) {
    std::vector<float> w(d), k(size_t(n) * d), p(n);
    for (float& v : w) v = normal(gen) / std::sqrt(float(d));
    for (int64_t i = 0; i < n; ++i) {
      double dot = 0;
      for (int j = 0; j < d; ++j) dot += (k[i * d + j] = normal(gen)) * w[j];
      p[i] = float(dot);
    }
    std::vector<float> sorted = p;
    std::sort(sorted.begin(), sorted.end());
    const float cut = sorted[size_t(n * 0.95)];
    std::vector<float> score(n);
    std::vector<uint8_t> label(n);
    for (int64_t i = 0; i < n; ++i) {
      label[i] = p[i] > cut;
      score[i] = scores_are_labels ? float(label[i]) : 1.0f / (1.0f + std::exp(-4.0f * (p[i] - cut)));
    }
    s.keys.push_back(std::move(k));
    s.score.push_back(std::move(score));
    s.label.push_back(std::move(label));
  }
  for (int64_t i = 0; i < n; ++i) (i < n * 4 / 5 ? s.train_rows : s.val_rows).push_back(i);
  for (int h = 0; h < H; ++h) {
    gate_examples e;
    e.keys_f32 = s.keys[h].data();
    e.label = s.label[h].data();
    e.score = s.score[h].data();
    e.n = n;
    e.rows = s.train_rows.data();
    e.n_rows = int64_t(s.train_rows.size());
    s.train.push_back(e);
    e.rows = s.val_rows.data();
    e.n_rows = int64_t(s.val_rows.size());
    s.val.push_back(e);
  }
  return s;
}

gate_train_options options(bool soft) {
  gate_train_options o;
  o.max_epochs = 3;
  o.steps_per_epoch = 12;
  o.patience = 2;
  o.seed = 4;
  o.threads = 1;
  o.soft_target = soft;
  return o;
}

TEST(gate_trainer_soft, learns_a_planted_soft_score) {
  const int H = 2, d = 16;
  const soft_data data = make_data(H, d, 3000, false);
  gate_bank bank(meta_of(H, d), 1);
  const gate_train_result r = train_gates(bank, data.train, data.val, options(true));
  for (int h = 0; h < H; ++h) {
    std::printf("  head %d: val AUC %.4f\n", h, r.heads[h].val_auc);
    EXPECT_GT(r.heads[h].val_auc, 0.97f) << h;
  }
}

TEST(gate_trainer_soft, zero_one_scores_train_like_the_binary_target) {
  const int H = 2, d = 16;
  const soft_data data = make_data(H, d, 3000, true);
  gate_bank soft(meta_of(H, d), 1), binary(meta_of(H, d), 1);
  const gate_train_result rs = train_gates(soft, data.train, data.val, options(true));
  const gate_train_result rb = train_gates(binary, data.train, data.val, options(false));
  for (int h = 0; h < H; ++h) {
    EXPECT_NEAR(rs.heads[h].val_auc, rb.heads[h].val_auc, 2e-3) << h;
    EXPECT_NEAR(rs.heads[h].val_loss, rb.heads[h].val_loss, 1e-2) << h;
  }
  // Same batches, same arithmetic up to float vs double rounding: the parameters barely differ.
  double max_diff = 0;
  for (size_t i = 0; i < soft.params().size(); ++i)
    max_diff = std::max(max_diff, double(std::abs(soft.params()[i] - binary.params()[i])));
  EXPECT_LT(max_diff, 1e-2);
}

TEST(gate_trainer_soft, missing_or_bad_scores_and_the_lifetime_objective_are_refused) {
  const int H = 1, d = 8;
  soft_data data = make_data(H, d, 500, false);
  gate_bank bank(meta_of(H, d), 1);
  std::vector<gate_examples> train = data.train;
  train[0].score = nullptr;
  EXPECT_THROW(train_gates(bank, train, data.val, options(true)), error);
  data.score[0][data.train_rows[3]] = 1.5f;
  EXPECT_THROW(train_gates(bank, data.train, data.val, options(true)), error);
  gate_bank lifetime(meta_of(H, d, "lifetime"), 4);
  EXPECT_THROW(train_gates(lifetime, data.train, data.val, options(true)), error);
}

}  // namespace
}  // namespace kvgate
