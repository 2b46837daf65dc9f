// The gate dataset: for every head (layer il, kv head ih) the keys of labelled tokens with their
// label, lifetime bucket, position and document. On disk a directory: manifest.json plus binary
// shards, each written to a temporary name and renamed when complete (see DESIGN.md, "Files").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvgate {

inline constexpr int k_dataset_version = 1;

// Parameters of the label (DESIGN.md, "The label"); stored in the manifest and the gate file.
struct label_params {
  int sinks = 4;
  int window = 128;       // W: the serving policy's local window
  float tau = 0.01f;      // attention weight that counts as significant
  int horizon = 512;      // how far past the window the future looks
  int max_bucket = 7;     // lifetime buckets 0..max_bucket (floor(log4(lifetime)), capped)
  std::string key_kind = "pre-rope";  // or "post-rope"
};

// One head's examples. Rows are examples; keys are f16 bit patterns.
struct head_examples {
  std::vector<uint16_t> keys;    // [n, d_head] f16
  std::vector<uint8_t> label;    // [n] 0/1
  std::vector<uint8_t> bucket;   // [n] lifetime bucket
  std::vector<int32_t> pos;      // [n] position in its document
  std::vector<int32_t> doc;      // [n] document index (global across shards)

  size_t size() const { return label.size(); }
};

struct dataset_manifest {
  int version = k_dataset_version;
  std::string model_name;        // general.name of the model
  std::string model_arch;
  int n_layer = 0, n_kv_head = 0, d_head = 0;
  label_params label;
  float negative_keep = 1.0f;    // share of negatives stored (positives are all kept)
  std::vector<std::string> corpus_files;
  int64_t n_docs = 0, n_tokens = 0;
  std::vector<int64_t> n_pos, n_neg;  // [n_heads] counted over ALL labelled tokens (before subsampling)
  std::vector<std::string> shards;    // file names inside the directory, in order

  nlohmann::json to_json() const;
  static dataset_manifest from_json(const nlohmann::json& j, const std::string& where);
};

struct dataset {
  dataset_manifest manifest;
  std::vector<head_examples> heads;  // [n_layer * n_kv_head], index il * n_kv_head + ih

  // Throws error for a missing directory, a manifest of another version, or a damaged shard.
  static dataset load(const std::string& dir);
};

}  // namespace kvgate
