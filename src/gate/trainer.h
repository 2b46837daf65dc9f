// Trains every head's gate at once: the stacked MLPs of a gate_bank, one batched step for all
// heads, Adam, early stopping on validation loss per head.
//
// Why by hand: no packaged C++ training library fits. libtorch is not packaged for Debian and
// would be a 1 GB dependency for three small layers; mlpack and dlib train one network at a time,
// so 90 heads would be 90 loops of small calls, the shape this trainer exists to avoid. The model
// is three stacked linear layers on BLAS, so forward, backward (gate_mlp.h) and Adam fit in a few
// hundred lines that a gradient test checks.
//
// What a step does: every head draws its own class-balanced mini-batch (binary: half positives,
// half negatives; lifetime: equal shares of every lifetime bucket present in its training set,
// i.e. inverse-frequency sampling), the inputs are standardized with the head's training-set mean
// and standard deviation, and one batched forward/backward over [H, batch, d_head] updates all
// heads. Heads are independent: the loss is the sum of per-head mean losses, so one head's data
// never moves another head's weights.
//
// An epoch is ceil(mean over heads of n_train / batch) steps, the same for every head: a head
// with little data revisits its examples more often in an epoch. Validation loss is measured on
// each head's own validation set, class-balanced the same way (binary: mean of the positives'
// and the negatives' mean loss; lifetime: mean over the buckets present of each bucket's mean
// loss), so it estimates the training objective. Each head keeps the parameters of its best
// validation epoch; training stops when every head has gone `patience` epochs without improving
// (or after max_epochs).
//
// Deterministic for a given seed: each head has its own random stream (seed, head index), and
// every computation is per head with a fixed order, so the result does not even depend on the
// thread count.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "common/stats.h"  // roc_auc, used by the trainer and its tests
#include "gate/gate_bank.h"

namespace kvgate {

// One head's examples, borrowed from the caller. Keys as f32 or as f16 bit patterns (exactly one
// of the two; f16 rows are converted when a batch is gathered, so a dataset stays half-size).
// rows selects a subset (e.g. the training documents); null means all n rows.
struct gate_examples {
  const float* keys_f32 = nullptr;     // [n, d_head]
  const uint16_t* keys_f16 = nullptr;  // [n, d_head]
  const uint8_t* label = nullptr;      // [n] 0/1; required for binary, optional for lifetime
  const uint8_t* bucket = nullptr;     // [n] 0..n_out-1; required for lifetime
  const float* score = nullptr;        // [n] soft target in [0, 1]; required with soft_target
  int64_t n = 0;                       // rows in the arrays
  const int64_t* rows = nullptr;       // [n_rows] indices into the arrays, or null
  int64_t n_rows = 0;                  // used when rows is set

  int64_t size() const { return rows ? n_rows : n; }
  int64_t row(int64_t i) const { return rows ? rows[i] : i; }
};

struct gate_train_options {
  int max_epochs = 20;
  int batch = 256;             // examples per head per step
  float lr = 1e-3f;
  float weight_decay = 0.0f;   // decoupled (AdamW), on weights only, not biases
  int patience = 3;            // epochs without improvement before a head counts as stalled
  float min_delta = 1e-4f;     // an improvement must lower the validation loss by this much
  uint64_t seed = 1;
  int threads = 0;             // batched products and per-head loops; 0: OpenMP's default
                               // (elementwise loops always use OpenMP's default)
  int steps_per_epoch = 0;     // 0: from the data (see above)
  bool calibrate = true;       // binary: Platt-scale each head's logit on its validation set
  // binary objective: BCE against the soft score (gate_examples::score) instead of the 0/1 label
  // (Fast KVzip's target). Batches stay class-balanced by label; early stopping, AUC and Platt
  // scaling use the label, so soft and binary gates compare on the same validation measure.
  bool soft_target = false;
};

// Reported after every epoch (the caller prints progress; the library never does).
struct gate_epoch_report {
  int epoch = 0;               // 1-based
  int max_epochs = 0;
  std::vector<float> train_loss;  // [H] mean over the epoch's steps
  std::vector<float> val_loss;    // [H] NaN for a head without validation data
  std::vector<float> val_auc;     // [H] NaN when undefined (see gate_head_result::val_auc)
  int n_improved = 0;          // heads whose validation loss improved this epoch
  int n_active = 0;            // heads not yet stalled
  double seconds = 0;          // since training started
  double epoch_seconds = 0;
  double examples_per_s = 0;   // training examples (all heads) per second in this epoch
};

struct gate_head_result {
  int best_epoch = 0;          // 0: no validation data, the last epoch's parameters are kept
  float val_loss = 0;          // class-balanced, at the best epoch
  float val_auc = 0;           // NaN when undefined (one class only). Lifetime: AUC of the
                               // expected bucket against the 0/1 label, when labels are given
  float val_accuracy = 0;      // lifetime: share of validation rows whose argmax is the bucket
  float calib_scale = 1, calib_bias = 0;  // binary: Platt scaling folded into the last layer
  bool calibrated = false;     // binary: the scaling above was fitted (calibrate on, validation data)
  int64_t n_train = 0, n_train_pos = 0, n_val = 0, n_val_pos = 0;  // pos: label 1 (binary)
};

struct gate_train_result {
  std::vector<gate_epoch_report> epochs;
  std::vector<gate_head_result> heads;  // [H]
  int64_t n_steps = 0;
  double seconds = 0;
  double examples_per_s = 0;   // training examples (all heads) per second over the whole run
  bool stopped_early = false;
};

// Trains bank's parameters in place (fresh He initialization from the seed; the bank's meta
// decides the objective: "binary" needs n_out == 1, "lifetime" n_out buckets). train and val hold
// one entry per head (bank.n_heads()). Throws error for mismatched sizes, a label outside 0/1, a
// bucket outside [0, n_out), or a head without training data.
gate_train_result train_gates(gate_bank& bank, std::span<const gate_examples> train,
                              std::span<const gate_examples> val, const gate_train_options& options,
                              const std::function<void(const gate_epoch_report&)>& on_epoch = {});

// Platt scaling: (a, b) minimizing the class-balanced BCE of sigmoid(a z + b) against y; {1, 0}
// when one class is missing or the fit does not lower the loss.
std::pair<float, float> fit_platt(std::span<const float> z, std::span<const uint8_t> y);


}  // namespace kvgate
