// From a gate bank and a held-out dataset to the scores the report is computed from: every head's
// examples scored by the batched gate bank, plus the two baselines (key norm, position).
#pragma once

#include <span>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "eval/report.h"
#include "gate/gate_bank.h"

namespace kvgate::eval {

// Refuses (throws error) a gate bank trained for another model, other dimensions or another key
// kind than the dataset holds, naming every difference. Label parameters that differ (window, tau,
// horizon, sinks, buckets) are legitimate to evaluate but change what "positive" means, so they
// come back as warnings for the report.
std::vector<std::string> check_gate_matches_dataset(const gate_meta& gate, const std::string& gates_path,
                                                    const dataset_manifest& data, const std::string& data_path);

// The lifetime objective predicts a bucket b = floor(log4(lifetime)) (capped, data/labeler.h); the
// binary label needs a significant attention weight after the token left the window (within the
// horizon), so y = 1 implies lifetime > window. Its score for y = 1 is the predicted
// P(lifetime > window):
//   score = sum over b of P(b) * share_b,
// share_b = the share of the integer lifetimes of bucket b that exceed the window: 0 for buckets
// wholly inside the window, 1 for buckets wholly past it, and for the bucket that straddles it the
// fraction of its range above the window (lifetimes assumed uniform within a bucket; e.g. W = 128:
// bucket 3 = [64, 255] -> 127/192). Bucket 0 covers lifetimes 0..3; the capped last bucket is taken
// to end at window + horizon when that lies above its start. Chosen over 1 - P(bucket 0) because
// bucket 0..2 lifetimes (< 64) all end inside a window of 128. It is a ranking score first: a
// lifetime past window + horizon can come from a hit beyond the horizon only (label 0), so as a
// probability it leans high, which its natural-ratio ECE shows.
// -> [n_buckets]
std::vector<float> lifetime_bucket_share(int n_buckets, int window, int horizon);

// A gate bank to score with, named for the report's columns.
struct named_gate {
  std::string name;  // e.g. "gate"
  std::string path;
  const gate_bank* bank = nullptr;
};

// Scores every head's examples with every gate (keys f16 -> f32, all heads per call of the batched
// gate_bank::score, in blocks of rows) and computes the baselines. Every gate must already have
// passed check_gate_matches_dataset.
eval_input score_dataset(const dataset& data, const std::string& data_path, std::span<const named_gate> gates);

}  // namespace kvgate::eval
