// The gate bank: one small MLP per head (d_head -> 256 -> 256 -> n_out, ReLU), stored stacked so
// all heads are scored in three batched matrix products. n_out is 1 for the binary objective
// (a logit) and n_buckets for the lifetime objective (bucket logits).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvgate {

inline constexpr int k_gate_hidden = 256;

// What a gate file says about the model and the data it was trained for; checked against the
// model before use.
struct gate_meta {
  std::string model_name;
  std::string model_arch;
  int n_layer = 0, n_kv_head = 0, d_head = 0;
  std::string objective = "binary";   // "binary" | "lifetime"
  std::string key_kind = "pre-rope";  // "pre-rope" | "post-rope"
  int sinks = 4, window = 128, horizon = 512, max_bucket = 7;
  float tau = 0.01f;
  float threshold = 0.5f;             // suggested threshold
  nlohmann::json metrics;             // training/validation metrics, per head and summary
};

class gate_bank {
 public:
  gate_bank(gate_meta meta, int n_out);

  const gate_meta& meta() const { return meta_; }
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
  std::vector<float>& params() { return params_; }
  const std::vector<float>& params() const { return params_; }

  // Scores n keys for every head at once: keys [H, n, d_head] -> logits [H, n, n_out].
  void score(const float* keys, int64_t n, float* logits) const;
  // One head alone (the reference for the batched path).
  void score_head(int head, const float* keys, int64_t n, float* logits) const;

  // GGUF I/O (atomic write). load() throws error naming what is wrong.
  void save(const std::string& path) const;
  static gate_bank load(const std::string& path);

 private:
  gate_meta meta_;
  int n_out_;
  std::vector<float> params_;
};

}  // namespace kvgate
