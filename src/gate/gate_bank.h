// The gate bank: one small MLP per head (d_head -> 256 -> 256 -> n_out, ReLU), stored stacked so
// all heads are scored in three batched matrix products. n_out is 1 for the binary objective
// (a logit) and n_buckets for the lifetime objective (bucket logits).
//
// The gate file is GGUF v3 (written with gguf::writer, so atomically):
// - tensors, f32, ggml dimension order (ne[0] innermost, i.e. the row-major shape reversed):
//     gate.w1 ne {256, d_head, H}    = row-major [H, d_head, 256]
//     gate.b1 ne {256, H}            = [H, 256]
//     gate.w2 ne {256, 256, H}       = [H, 256, 256]
//     gate.b2 ne {256, H}            = [H, 256]
//     gate.w3 ne {n_out, 256, H}     = [H, 256, n_out]
//     gate.b3 ne {n_out, H}          = [H, n_out]
//   H = n_layer * n_kv_head, head index il * n_kv_head + ih.
// - metadata: general.architecture = "kvgate-gate", general.name, and kvgate.version (u32, see
//   k_gate_file_version), kvgate.model_name, kvgate.model_arch, kvgate.objective,
//   kvgate.key_kind (strings), kvgate.n_layer, kvgate.n_kv_head, kvgate.d_head, kvgate.n_hidden,
//   kvgate.n_out, kvgate.sinks, kvgate.window, kvgate.horizon, kvgate.max_bucket (u32),
//   kvgate.tau, kvgate.threshold (f32), kvgate.metrics (string: the metrics JSON).
//
// Inputs are raw keys (as the model computes them): the trainer standardizes keys per head and
// folds that affine map into w1/b1 before saving, so users of the bank need no statistics.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gate/gate_mlp.h"

namespace kvgate {

inline constexpr int k_gate_hidden = 256;
inline constexpr int k_gate_file_version = 1;

// What a gate file says about the model and the data it was trained for; checked against the
// model before use.
struct gate_meta {
  std::string model_name;
  std::string model_arch;
  int n_layer = 0, n_kv_head = 0, d_head = 0;
  std::string objective = "binary";   // "binary" | "lifetime"
  std::string key_kind = "pre-rope";  // "pre-rope" | "post-rope"
  int sinks = 4, window = 128, horizon = 512, max_bucket = 7;
  float tau = 0.08f;
  float threshold = 0.5f;             // suggested threshold
  nlohmann::json metrics;             // training/validation metrics, per head and summary
};

class gate_bank {
 public:
  gate_bank(gate_meta meta, int n_out);

  const gate_meta& meta() const { return meta_; }
  // The trainer's metrics arrive after the bank is built (the dimensions never change).
  void set_metrics(nlohmann::json metrics) { meta_.metrics = std::move(metrics); }
  int n_heads() const { return meta_.n_layer * meta_.n_kv_head; }
  int d_head() const { return meta_.d_head; }
  int n_out() const { return n_out_; }

  // Stacked parameters (row-major), views into one flat buffer.
  float* w1();  // [H, d_head, 256]
  float* b1();  // [H, 256]
  float* w2();  // [H, 256, 256]
  float* b2();  // [H, 256]
  float* w3();  // [H, 256, n_out]
  float* b3();  // [H, n_out]
  const float* w1() const;
  const float* b1() const;
  const float* w2() const;
  const float* b2() const;
  const float* w3() const;
  const float* b3() const;
  gate_dims dims() const { return {n_heads(), d_head(), k_gate_hidden, n_out_}; }
  std::vector<float>& params() { return params_; }
  const std::vector<float>& params() const { return params_; }

  // Scores n keys for every head at once: keys [H, n, d_head] -> logits [H, n, n_out].
  // Three batched matrix products over all heads (gate_mlp.h); threads: OpenMP's default.
  // Thread-safe (scratch is thread-local). For the binary objective p = sigmoid(logit).
  void score(const float* keys, int64_t n, float* logits) const;
  // One head alone with plain loops: the slow, obvious reference for the batched path.
  // keys [n, d_head] -> logits [n, n_out].
  void score_head(int head, const float* keys, int64_t n, float* logits) const;

  // GGUF I/O (atomic write). load() throws error naming the path and what is wrong: not a gate
  // file, another kvgate.version, a missing key, a missing tensor or one of the wrong shape/type,
  // a truncated or damaged file (gguf::file::open's checks).
  void save(const std::string& path) const;
  static gate_bank load(const std::string& path);

 private:
  gate_meta meta_;
  int n_out_;
  std::vector<float> params_;
};

// Throws error unless the gate file's model identity matches the model's, saying exactly what
// differs, e.g. "gate file is for 'X' (llama, 30 layers x 3 kv heads, d_head 64) but the model is
// 'Y' (qwen3, 28 x 8, d_head 128): layers, kv heads, d_head differ". A name that is empty on
// either side is not compared (some converters leave general.name unset); dimensions always are.
void check_matches(const gate_meta& meta, const std::string& model_name,
                   const std::string& model_arch, int n_layer, int n_kv_head, int d_head);

}  // namespace kvgate
