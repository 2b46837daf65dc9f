// The gate trainer (see trainer.h for what a step and an epoch are, and why it is hand-written).
#include "gate/trainer.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "common/error.h"
#include "common/parallel.h"
#include "common/random.h"
#include "gguf/gguf.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace kvgate {

namespace {

constexpr float k_beta1 = 0.9f, k_beta2 = 0.999f, k_eps = 1e-8f;
constexpr int k_eval_chunk = 256;  // validation rows per forward pass
const float k_nan = std::numeric_limits<float>::quiet_NaN();

// splitmix64: fully specified, so a seed gives the same run with any standard library (the
// std:: distributions and std::shuffle are implementation-defined).
struct rng {
  uint64_t s;
  uint64_t next() { return splitmix64_next(s); }
  uint64_t below(uint64_t n) { return next() % n; }  // modulo bias < n / 2^64: irrelevant here
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double normal() {  // Box-Muller, one value per call
    const double u1 = 1.0 - uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

rng head_rng(uint64_t seed, int ih, uint64_t stream) {
  rng r{seed ^ (0xD1B54A32D192ED03ull * (uint64_t(ih) + 1)) ^ (0x8CB92BA72F3D8DD7ull * stream)};
  r.next();
  return r;
}

inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return gguf::f16_to_f32(h);
#endif
}

// Draws rows class by class, each class from its own reshuffled cycle, so every example of a
// class is seen once before any is seen twice.
struct class_sampler {
  std::vector<std::vector<int64_t>> rows;  // [n_class][rows of that class]
  std::vector<size_t> cursor;              // [n_class]
  std::vector<int> present;                // classes with at least one row

  int64_t draw(int c, rng& r) {
    std::vector<int64_t>& v = rows[c];
    if (cursor[c] == v.size()) {
      for (size_t i = v.size() - 1; i > 0; --i) std::swap(v[i], v[r.below(i + 1)]);
      cursor[c] = 0;
    }
    return v[cursor[c]++];
  }
};

// Everything the trainer keeps per head besides its parameters.
struct head_state {
  const gate_examples* train = nullptr;
  const gate_examples* val = nullptr;
  class_sampler sampler;
  rng r{0};
  std::vector<float> mean, inv_std;  // [d_head] training-set statistics of the raw keys
  float best_loss = std::numeric_limits<float>::infinity();
  int best_epoch = 0, stalled = 0;
};

// Writes the standardized key of one row: x [d].
void load_row(const gate_examples& e, int64_t row, const head_state& s, int d, float* x) {
  if (e.keys_f32) {
    const float* k = e.keys_f32 + row * d;
    for (int i = 0; i < d; ++i) x[i] = (k[i] - s.mean[i]) * s.inv_std[i];
  } else {
    const uint16_t* k = e.keys_f16 + row * d;
    for (int i = 0; i < d; ++i) x[i] = (half_to_float(k[i]) - s.mean[i]) * s.inv_std[i];
  }
}

float raw_key(const gate_examples& e, int64_t row, int d, int i) {
  return e.keys_f32 ? e.keys_f32[row * d + i] : half_to_float(e.keys_f16[row * d + i]);
}

// Per-dimension mean and 1/std of the raw training keys, in double. A dimension that barely
// varies gets a floor on its std (1% of the head's mean std), so a value unseen in training is
// not blown up by a huge 1/std.
void key_stats(const gate_examples& e, int d, head_state& s) {
  std::vector<double> sum(d, 0.0), sum2(d, 0.0);
  const int64_t n = e.size();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = e.row(i);
    for (int j = 0; j < d; ++j) {
      const double v = raw_key(e, row, d, j);
      sum[j] += v;
      sum2[j] += v * v;
    }
  }
  std::vector<double> sd(d);
  double mean_sd = 0.0;
  s.mean.resize(d);
  for (int j = 0; j < d; ++j) {
    const double m = sum[j] / n;
    s.mean[j] = static_cast<float>(m);
    sd[j] = std::sqrt(std::max(sum2[j] / n - m * m, 0.0));
    mean_sd += sd[j] / d;
  }
  s.inv_std.resize(d);
  const double floor = std::max(0.01 * mean_sd, 1e-6);
  for (int j = 0; j < d; ++j) s.inv_std[j] = static_cast<float>(1.0 / std::max(sd[j], floor));
}

void check_examples(const gate_examples& e, const char* which, int ih, bool lifetime, int n_out, bool soft) {
  if ((e.keys_f32 == nullptr) == (e.keys_f16 == nullptr) && e.size() > 0) {
    fail("train gates: {} set of head {}: give exactly one of keys_f32 and keys_f16", which, ih);
  }
  if (!lifetime && !e.label && e.size() > 0) fail("train gates: {} set of head {} has no labels", which, ih);
  if (lifetime && !e.bucket && e.size() > 0) fail("train gates: {} set of head {} has no buckets", which, ih);
  if (soft && !e.score && e.size() > 0) fail("train gates: {} set of head {} has no soft scores", which, ih);
  for (int64_t i = 0; i < e.size(); ++i) {
    const int64_t row = e.row(i);
    if (row < 0 || row >= e.n) fail("train gates: {} set of head {}: row {} outside [0, {})", which, ih, row, e.n);
    if (e.label && e.label[row] > 1) {
      fail("train gates: {} set of head {}: label {} at row {} is not 0/1", which, ih, e.label[row], row);
    }
    if (soft && !(e.score[row] >= 0.0f && e.score[row] <= 1.0f)) {
      fail("train gates: {} set of head {}: soft score {} at row {} is outside [0, 1]", which, ih, e.score[row], row);
    }
    if (lifetime && e.bucket[row] >= n_out) {
      fail("train gates: {} set of head {}: bucket {} at row {} is outside [0, {})", which, ih,
           e.bucket[row], row, n_out);
    }
  }
}

// The target of a row: the label (binary) or the lifetime bucket.
inline uint8_t target(const gate_examples& e, int64_t row, bool lifetime) {
  return lifetime ? e.bucket[row] : e.label[row];
}

void init_params(const gate_params<float>& p, const gate_dims& d, uint64_t seed) {
  // He initialization for the ReLU layers; the output layer starts near zero so that initial
  // predictions are uninformed (logit ~ 0) instead of confidently wrong.
  for (int h = 0; h < d.n_heads; ++h) {
    rng r = head_rng(seed, h, 1);
    const gate_params<float> v = gate_head_views(p, d, h);
    const double s1 = std::sqrt(2.0 / d.d_in), s2 = std::sqrt(2.0 / d.n_hidden);
    const double s3 = 0.1 * std::sqrt(1.0 / d.n_hidden);
    for (int64_t i = 0; i < int64_t(d.d_in) * d.n_hidden; ++i) v.w1[i] = float(s1 * r.normal());
    for (int64_t i = 0; i < int64_t(d.n_hidden) * d.n_hidden; ++i) v.w2[i] = float(s2 * r.normal());
    for (int64_t i = 0; i < int64_t(d.n_hidden) * d.n_out; ++i) v.w3[i] = float(s3 * r.normal());
    std::fill(v.b1, v.b1 + d.n_hidden, 0.0f);
    std::fill(v.b2, v.b2 + d.n_hidden, 0.0f);
    std::fill(v.b3, v.b3 + d.n_out, 0.0f);
  }
}

// Copies head ih's slices of every parameter tensor from src to dst (same layout).
void copy_head(float* dst, const float* src, const gate_dims& d, int ih) {
  const auto s = gate_head_views(gate_param_views(const_cast<float*>(src), d), d, ih);
  const auto t = gate_head_views(gate_param_views(dst, d), d, ih);
  const size_t F = d.n_hidden, I = d.d_in, O = d.n_out;
  std::memcpy(t.w1, s.w1, sizeof(float) * I * F);
  std::memcpy(t.b1, s.b1, sizeof(float) * F);
  std::memcpy(t.w2, s.w2, sizeof(float) * F * F);
  std::memcpy(t.b2, s.b2, sizeof(float) * F);
  std::memcpy(t.w3, s.w3, sizeof(float) * F * O);
  std::memcpy(t.b3, s.b3, sizeof(float) * O);
}

// Validation of one head: class-balanced mean loss, AUC, accuracy (lifetime).
struct head_eval {
  float loss = k_nan, auc = k_nan, accuracy = k_nan;
  std::vector<float> logits;   // [n_val] binary objective: the validation logits
  std::vector<uint8_t> labels; // [n_val]
};

head_eval evaluate_head(const gate_params<float>& all, const gate_dims& dims, int ih,
                        const head_state& s, bool lifetime) {
  head_eval out;
  const gate_examples& e = *s.val;
  const int64_t n = e.size();
  if (n == 0) return out;
  const gate_dims d1{1, dims.d_in, dims.n_hidden, dims.n_out};
  const gate_params<float> p = gate_head_views(all, dims, ih);
  const int I = dims.d_in, F = dims.n_hidden, O = dims.n_out;
  std::vector<float> x(size_t(k_eval_chunk) * I), h1(size_t(k_eval_chunk) * F),
      h2(size_t(k_eval_chunk) * F), z(size_t(k_eval_chunk) * O);
  std::vector<double> class_sum(O == 1 ? 2 : O, 0.0);
  std::vector<int64_t> class_n(class_sum.size(), 0);
  std::vector<float> scores;
  std::vector<uint8_t> labels;
  int64_t n_correct = 0;
  for (int64_t r0 = 0; r0 < n; r0 += k_eval_chunk) {
    const int m = static_cast<int>(std::min<int64_t>(k_eval_chunk, n - r0));
    for (int i = 0; i < m; ++i) load_row(e, e.row(r0 + i), s, I, x.data() + size_t(i) * I);
    gate_forward<float>(p, d1, x.data(), m, {h1.data(), h2.data(), z.data()}, 1);
    for (int i = 0; i < m; ++i) {
      const int64_t row = e.row(r0 + i);
      const uint8_t y = target(e, row, lifetime);
      const float* zi = z.data() + size_t(i) * O;
      double loss;
      if (!lifetime) {
        loss = std::max(zi[0], 0.0f) - zi[0] * y + std::log1p(std::exp(-std::abs(double(zi[0]))));
        scores.push_back(zi[0]);
      } else {
        const float z_max = *std::max_element(zi, zi + O);
        double sum = 0.0, expected = 0.0;
        for (int c = 0; c < O; ++c) sum += std::exp(double(zi[c] - z_max));
        for (int c = 0; c < O; ++c) expected += c * std::exp(double(zi[c] - z_max)) / sum;
        loss = std::log(sum) + z_max - zi[y];
        n_correct += (std::max_element(zi, zi + O) - zi) == y;
        if (e.label) scores.push_back(static_cast<float>(expected));
      }
      if (e.label) labels.push_back(e.label[row]);
      class_sum[y] += loss;
      ++class_n[y];
    }
  }
  double total = 0.0;
  int n_present = 0;
  for (size_t c = 0; c < class_sum.size(); ++c) {
    if (class_n[c] == 0) continue;
    total += class_sum[c] / class_n[c];
    ++n_present;
  }
  out.loss = static_cast<float>(total / n_present);
  if (!labels.empty()) out.auc = static_cast<float>(roc_auc(scores, labels));
  if (!lifetime) {
    out.logits = std::move(scores);
    out.labels = std::move(labels);
  }
  if (lifetime) out.accuracy = static_cast<float>(double(n_correct) / n);
  return out;
}

// Folds the input standardization x' = (x - mean) * inv_std into the first layer, so the saved
// bank reads raw keys: x' W1 + b1 = x (inv_std . W1) + (b1 - (mean . inv_std) W1).
void fold_standardization(const gate_params<float>& p, const gate_dims& d,
                          const std::vector<head_state>& heads) {
  const int I = d.d_in, F = d.n_hidden;
  for (int h = 0; h < d.n_heads; ++h) {
    const gate_params<float> v = gate_head_views(p, d, h);
    const head_state& s = heads[h];
    std::vector<double> shift(F, 0.0);
    for (int i = 0; i < I; ++i) {
      for (int f = 0; f < F; ++f) {
        float& w = v.w1[size_t(i) * F + f];
        shift[f] += double(s.mean[i]) * s.inv_std[i] * w;
        w *= s.inv_std[i];
      }
    }
    for (int f = 0; f < F; ++f) v.b1[f] = static_cast<float>(v.b1[f] - shift[f]);
  }
}

// BCE against soft targets s in [0, 1], mean over each head's B rows: loss[h] and d_logits
// (d/dz of loss[h] = (sigmoid(z) - s) / B). The 0/1 case equals bce_forward/bce_backward.
void soft_bce(float* loss, float* d_logits, const float* logits, const float* s, int H, int B) {
  for (int h = 0; h < H; ++h) {
    double sum = 0.0;
    for (int i = 0; i < B; ++i) {
      const size_t k = size_t(h) * B + i;
      const double z = logits[k];
      sum += std::max(z, 0.0) - z * s[k] + std::log1p(std::exp(-std::abs(z)));
      d_logits[k] = static_cast<float>((1.0 / (1.0 + std::exp(-z)) - s[k]) / B);
    }
    loss[h] = static_cast<float>(sum / B);
  }
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

// Platt scaling of one binary head: the affine map u = a z + b of its validation logits that
// minimizes the class-balanced BCE (the loss the head was trained and early-stopped on), by
// Newton's method on (a, b). Heads overfit their training files within a few epochs (the
// validation loss rises while the AUC holds), which shows as over-confident probabilities on new
// text; rescaling the logit keeps the ranking (a > 0) and fixes most of the calibration.
// Returns {1, 0} when there is nothing to fit or the fit does not help.
std::pair<float, float> fit_platt(std::span<const float> z, std::span<const uint8_t> y) {
  int64_t n_pos = 0;
  for (uint8_t v : y) n_pos += v;
  const int64_t n_neg = static_cast<int64_t>(y.size()) - n_pos;
  if (n_pos == 0 || n_neg == 0) return {1.0f, 0.0f};
  const double w_pos = 0.5 / n_pos, w_neg = 0.5 / n_neg;
  auto loss_at = [&](double a, double b) {
    double l = 0.0;
    for (size_t i = 0; i < z.size(); ++i) {
      const double u = a * z[i] + b;
      l += (y[i] ? w_pos : w_neg) * (std::max(u, 0.0) - u * y[i] + std::log1p(std::exp(-std::abs(u))));
    }
    return l;
  };
  double a = 1.0, b = 0.0;
  const double loss0 = loss_at(a, b);
  for (int it = 0; it < 30; ++it) {
    double ga = 0, gb = 0, haa = 1e-9, hab = 0, hbb = 1e-9;
    for (size_t i = 0; i < z.size(); ++i) {
      const double w = y[i] ? w_pos : w_neg;
      const double sg = 1.0 / (1.0 + std::exp(-(a * z[i] + b)));
      const double r = w * (sg - y[i]), c = w * sg * (1.0 - sg);
      ga += r * z[i];
      gb += r;
      haa += c * z[i] * z[i];
      hab += c * z[i];
      hbb += c;
    }
    const double det = haa * hbb - hab * hab;
    if (!(det > 0)) break;
    const double da = (hbb * ga - hab * gb) / det, db = (haa * gb - hab * ga) / det;
    a -= da;
    b -= db;
    if (std::abs(da) < 1e-7 && std::abs(db) < 1e-7) break;
  }
  if (!(a > 0) || !std::isfinite(b) || !(loss_at(a, b) < loss0)) return {1.0f, 0.0f};
  return {static_cast<float>(a), static_cast<float>(b)};
}

gate_train_result train_gates(gate_bank& bank, std::span<const gate_examples> train,
                              std::span<const gate_examples> val, const gate_train_options& o,
                              const std::function<void(const gate_epoch_report&)>& on_epoch) {
  const gate_dims dims = bank.dims();
  const int H = dims.n_heads, I = dims.d_in, F = dims.n_hidden, O = dims.n_out, B = o.batch;
  const bool lifetime = bank.meta().objective == "lifetime";
  if (!lifetime && O != 1) fail("train gates: binary objective needs 1 output, the bank has {}", O);
  if (lifetime && O < 2) fail("train gates: lifetime objective needs >= 2 buckets, the bank has {}", O);
  if (int(train.size()) != H || int(val.size()) != H) {
    fail("train gates: {} training and {} validation sets for {} heads", train.size(), val.size(), H);
  }
  if (B < 2 || o.max_epochs < 1 || o.patience < 1 || !(o.lr > 0)) {
    fail("train gates: bad options (batch {}, epochs {}, patience {}, lr {})", B, o.max_epochs,
         o.patience, o.lr);
  }
  const int n_threads = o.threads > 0 ? o.threads : omp_get_max_threads();

  std::vector<head_state> heads(H);
  gate_train_result result;
  result.heads.resize(H);
  int64_t n_train_total = 0;
  for (int h = 0; h < H; ++h) {
    if (o.soft_target && lifetime) fail("train gates: a soft target needs the binary objective");
    check_examples(train[h], "training", h, lifetime, O, o.soft_target);
    check_examples(val[h], "validation", h, lifetime, O, false);
    if (train[h].size() == 0) fail("train gates: head {} has no training examples", h);
    head_state& s = heads[h];
    s.train = &train[h];
    s.val = &val[h];
    s.r = head_rng(o.seed, h, 0);
    s.sampler.rows.resize(lifetime ? O : 2);
    for (int64_t i = 0; i < train[h].size(); ++i) {
      const int64_t row = train[h].row(i);
      s.sampler.rows[target(train[h], row, lifetime)].push_back(row);
    }
    s.sampler.cursor.resize(s.sampler.rows.size());
    for (size_t c = 0; c < s.sampler.rows.size(); ++c) {
      s.sampler.cursor[c] = s.sampler.rows[c].size();  // shuffle on first draw
      if (!s.sampler.rows[c].empty()) s.sampler.present.push_back(static_cast<int>(c));
    }
    gate_head_result& hr = result.heads[h];
    hr.n_train = train[h].size();
    hr.n_val = val[h].size();
    for (int64_t i = 0; train[h].label && i < hr.n_train; ++i) hr.n_train_pos += train[h].label[train[h].row(i)];
    for (int64_t i = 0; val[h].label && i < hr.n_val; ++i) hr.n_val_pos += val[h].label[val[h].row(i)];
    n_train_total += hr.n_train;
  }
  parallel_trap trap;  // out of memory inside a region: an error after it, not std::terminate
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
  for (int h = 0; h < H; ++h) trap.run([&] { key_stats(train[h], I, heads[h]); });
  trap.rethrow();

  const int64_t steps_per_epoch =
      o.steps_per_epoch > 0 ? o.steps_per_epoch : std::max<int64_t>(1, (n_train_total / H + B - 1) / B);

  // Flat parameters (the bank's own buffer) with twin gradient and Adam moment buffers.
  std::vector<float>& params = bank.params();
  const size_t n_params = params.size();
  std::vector<float> grads(n_params), adam_m(n_params, 0.0f), adam_v(n_params, 0.0f), best(n_params);
  const gate_params<float> p = gate_param_views(params.data(), dims);
  const gate_params<float> g = gate_param_views(grads.data(), dims);
  init_params(p, dims, o.seed);
  best = params;

  // Activations of one step.
  std::vector<float> x(size_t(H) * B * I);              // [H, B, d_head]
  std::vector<uint8_t> y(size_t(H) * B);                // [H, B]
  std::vector<float> y_soft(o.soft_target ? size_t(H) * B : 0);  // [H, B] soft targets
  std::vector<float> h1(size_t(H) * B * F), h2(h1.size());  // [H, B, 256]
  std::vector<float> logits(size_t(H) * B * O), d_logits(logits.size());  // [H, B, n_out]
  std::vector<float> d_h1(h1.size()), d_h2(h1.size());  // [H, B, 256]
  std::vector<float> step_loss(H);                      // [H]
  const gate_acts<float> acts{h1.data(), h2.data(), logits.data()};

  // Weight decay applies to the weight tensors, not the biases: one Adam call per tensor.
  struct block { float* p; float* g; size_t offset, n; bool decay; };
  const size_t sz_w1 = size_t(H) * I * F, sz_b = size_t(H) * F, sz_w2 = size_t(H) * F * F,
               sz_w3 = size_t(H) * F * O, sz_b3 = size_t(H) * O;
  const block blocks[] = {
      {p.w1, g.w1, size_t(p.w1 - params.data()), sz_w1, true},
      {p.b1, g.b1, size_t(p.b1 - params.data()), sz_b, false},
      {p.w2, g.w2, size_t(p.w2 - params.data()), sz_w2, true},
      {p.b2, g.b2, size_t(p.b2 - params.data()), sz_b, false},
      {p.w3, g.w3, size_t(p.w3 - params.data()), sz_w3, true},
      {p.b3, g.b3, size_t(p.b3 - params.data()), sz_b3, false},
  };

  blas_single_thread blas_guard;
  const double t_start = now_s();
  double train_seconds = 0.0;
  int64_t t = 0;
  for (int epoch = 1; epoch <= o.max_epochs; ++epoch) {
    const double t_epoch = now_s();
    std::vector<double> loss_sum(H, 0.0);
    for (int64_t step = 0; step < steps_per_epoch; ++step) {
      // Gather: each head fills its [B, d] slice from its own sampler and random stream.
#pragma omp parallel for schedule(static) num_threads(n_threads)
      for (int h = 0; h < H; ++h) {
        head_state& s = heads[h];
        const std::vector<int>& present = s.sampler.present;
        const int n_present = static_cast<int>(present.size());
        for (int i = 0; i < B; ++i) {
          // Classes in turn; the step rotates which class gets the odd slot when B % n_present.
          const int c = present[(i + step) % n_present];
          const int64_t row = s.sampler.draw(c, s.r);
          load_row(*s.train, row, s, I, x.data() + (size_t(h) * B + i) * I);
          y[size_t(h) * B + i] = static_cast<uint8_t>(c);
          if (o.soft_target) y_soft[size_t(h) * B + i] = s.train->score[row];
        }
      }
#pragma omp parallel for schedule(static) num_threads(n_threads)
      for (int64_t i = 0; i < int64_t(n_params); ++i) grads[i] = 0.0f;

      gate_forward<float>(p, dims, x.data(), B, acts, n_threads);
      if (lifetime) {
        softmax_ce_forward<float>(step_loss.data(), logits.data(), y.data(), H, B, O);
        softmax_ce_backward<float>(d_logits.data(), logits.data(), y.data(), H, B, O);
      } else if (o.soft_target) {
        soft_bce(step_loss.data(), d_logits.data(), logits.data(), y_soft.data(), H, B);
      } else {
        bce_forward<float>(step_loss.data(), logits.data(), y.data(), H, B);
        bce_backward<float>(d_logits.data(), logits.data(), y.data(), H, B);
      }
      for (int h = 0; h < H; ++h) loss_sum[h] += step_loss[h];
      gate_backward<float>(p, g, dims, x.data(), B, acts, d_logits.data(), d_h1.data(), d_h2.data(),
                           n_threads);
      ++t;
      for (const block& b : blocks) {
        adam_update(b.p, b.g, adam_m.data() + b.offset, adam_v.data() + b.offset, int64_t(b.n),
                    o.lr, k_beta1, k_beta2, k_eps, b.decay ? o.weight_decay : 0.0f, t);
      }
    }
    const double epoch_train_s = now_s() - t_epoch;
    train_seconds += epoch_train_s;

    gate_epoch_report rep;
    rep.epoch = epoch;
    rep.max_epochs = o.max_epochs;
    rep.train_loss.resize(H);
    rep.val_loss.resize(H);
    rep.val_auc.resize(H);
    for (int h = 0; h < H; ++h) rep.train_loss[h] = static_cast<float>(loss_sum[h] / steps_per_epoch);
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
    for (int h = 0; h < H; ++h) trap.run([&] {
      const head_eval ev = evaluate_head(p, dims, h, heads[h], lifetime);
      rep.val_loss[h] = ev.loss;
      rep.val_auc[h] = ev.auc;
    });
    trap.rethrow();
    for (int h = 0; h < H; ++h) {
      head_state& s = heads[h];
      if (std::isnan(rep.val_loss[h])) {  // no validation data: keep the latest, never block the stop
        copy_head(best.data(), params.data(), dims, h);
        s.stalled = o.patience;
        continue;
      }
      if (rep.val_loss[h] < s.best_loss - o.min_delta) {
        s.best_loss = rep.val_loss[h];
        s.best_epoch = epoch;
        s.stalled = 0;
        copy_head(best.data(), params.data(), dims, h);
        ++rep.n_improved;
      } else {
        ++s.stalled;
      }
      rep.n_active += s.stalled < o.patience;
    }
    rep.seconds = now_s() - t_start;
    rep.epoch_seconds = now_s() - t_epoch;
    rep.examples_per_s = double(steps_per_epoch) * H * B / epoch_train_s;
    result.epochs.push_back(rep);
    if (on_epoch) on_epoch(rep);
    if (rep.n_active == 0) {
      result.stopped_early = epoch < o.max_epochs;
      break;
    }
  }
  result.n_steps = t;

  // Each head's best parameters, its final metrics, then the standardization folded in.
  std::copy(best.begin(), best.end(), params.begin());  // in place: the views p stay valid
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
  for (int h = 0; h < H; ++h) trap.run([&] {
    head_eval ev = evaluate_head(p, dims, h, heads[h], lifetime);
    if (!lifetime && o.calibrate && !ev.logits.empty()) {
      const auto [a, b] = fit_platt(ev.logits, ev.labels);
      const gate_params<float> ph = gate_head_views(p, dims, h);
      for (int f = 0; f < dims.n_hidden; ++f) ph.w3[f] *= a;  // n_out == 1
      ph.b3[0] = a * ph.b3[0] + b;
      result.heads[h].calib_scale = a;
      result.heads[h].calib_bias = b;
      result.heads[h].calibrated = true;
      ev = evaluate_head(p, dims, h, heads[h], lifetime);
    }
    gate_head_result& hr = result.heads[h];
    hr.best_epoch = heads[h].best_epoch;
    hr.val_loss = ev.loss;
    hr.val_auc = ev.auc;
    hr.val_accuracy = ev.accuracy;
  });
  trap.rethrow();
  fold_standardization(p, dims, heads);
  result.seconds = now_s() - t_start;
  result.examples_per_s = double(t) * H * B / train_seconds;
  return result;
}

}  // namespace kvgate
