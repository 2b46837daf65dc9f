// The gate dataset: for every head (layer il, kv head ih) the keys of labelled tokens with their
// label, lifetime bucket, position and document. On disk a directory: manifest.json plus binary
// shards, each written to a temporary name and renamed when complete (see DESIGN.md, "Files").
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvgate {

// Version 2 adds each example's soft score and the manifest's label sources; version 1 datasets
// are still read (score = label, sources = future).
inline constexpr int k_dataset_version = 2;

// Parameters of the label (DESIGN.md, "The label"); stored in the manifest and the gate file.
struct label_params {
  int sinks = 4;
  int window = 128;       // W: the serving policy's local window
  // Attention weight that counts as significant. 0.08: on SmolLM2-135M over 8 python-doc windows
  // of 2048 tokens, 4.0% of labelled tokens are positive (median head 1.2%); 0.05 gives 6.4%
  // (2.7%), 0.1 gives 3.1% (0.6%), 0.01 gives 27%.
  float tau = 0.08f;
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
  std::vector<float> score;      // [n] soft score: the max attention of the label sources (label = score >= tau)

  size_t size() const { return label.size(); }
};

// Where one document (a window of one corpus file, run from an empty cache) came from; lets a
// trainer hold out whole source files as well as whole documents.
struct document_info {
  int file = 0;           // index into corpus_files
  int64_t offset = 0;     // first token's index in the file's tokens
  int n_tokens = 0;       // the corpus window's tokens (a chat-wrapped run adds the template's)
};

struct dataset_manifest {
  int version = k_dataset_version;
  std::string model_name;        // general.name of the model
  std::string model_arch;
  int n_layer = 0, n_kv_head = 0, d_head = 0;
  label_params label;
  float negative_keep = 1.0f;    // share of negatives stored (positives are all kept)
  std::vector<std::string> corpus_files;  // in the order the collection read them
  int64_t n_docs = 0, n_tokens = 0;
  std::vector<int64_t> n_pos, n_neg;  // [n_heads] counted over ALL labelled tokens (before subsampling)
  std::vector<std::string> shards;    // file names inside the directory, in order

  // Added by the collector (optional when reading; defaults below mean "not recorded").
  int n_head = 0;                     // query heads (n_head / n_kv_head per group)
  std::string model_fingerprint;      // file size + hash of its head and tail (see collect.h)
  int ctx = 0;                        // documents are windows of at most ctx tokens
  int min_doc_tokens = 0;             // shorter windows were skipped
  int n_batch = 0;                    // prefill chunk size (changes the arithmetic slightly)
  float chat_share = 0.0f;            // share of documents wrapped in the chat template (collect.h)
  std::vector<std::string> label_sources = {"future"};  // merged by max (collect.h)
  uint64_t seed = 0;                  // negative subsampling seed
  int shard_docs = 0;                 // documents per shard
  std::vector<int64_t> n_stored;      // [n_heads] examples stored (all positives + kept negatives)
  std::vector<document_info> docs;    // [n_docs] in document-index order

  int n_heads() const { return n_layer * n_kv_head; }
  int64_t n_labelled() const;         // sum of n_pos and n_neg over heads
  double positive_rate() const;       // sum n_pos / n_labelled, 0 when empty

  nlohmann::json to_json() const;
  // Throws error naming `where` for a missing or mistyped field or a version other than
  // k_dataset_version.
  static dataset_manifest from_json(const nlohmann::json& j, const std::string& where);
};

struct dataset {
  dataset_manifest manifest;
  std::vector<head_examples> heads;  // [n_layer * n_kv_head], index il * n_kv_head + ih

  // Throws error for a missing directory, a manifest of another version, or a damaged shard.
  static dataset load(const std::string& dir);
};

// Shard files (version k_dataset_version, little-endian), written by write_shard:
//   offset 0   char[8]  magic "KVGSHARD"
//          8   u32      version
//         12   u32      n_heads
//         16   u32      d_head
//         20   u32      0 (reserved)
//         24   i64      first_doc      documents [first_doc, first_doc + n_docs) are in this shard
//         32   i64      n_docs
//         40   u64      n[n_heads]     examples per head
//   then per head, in head order: keys u16 [n, d_head] (f16), label u8 [n], bucket u8 [n],
//   pos i32 [n], doc i32 [n], score f32 [n] (version 2 only)
//   last 8 bytes: u64 FNV-1a 64 of every byte before them.
// A file whose size disagrees with its header or whose checksum fails is damaged.
inline constexpr char k_shard_magic[8] = {'K', 'V', 'G', 'S', 'H', 'A', 'R', 'D'};

struct shard_header {
  int version = k_dataset_version;
  int n_heads = 0, d_head = 0;
  int64_t first_doc = 0, n_docs = 0;
  std::vector<uint64_t> n;  // [n_heads]
  int64_t file_bytes = 0;   // the size the header implies
};

// Writes path + ".tmp", then renames it to path: a reader never sees a partial shard.
// heads: [n_heads] (an empty score array is written as the labels); returns the bytes written.
int64_t write_shard(const std::string& path, const std::vector<head_examples>& heads, int d_head,
                    int64_t first_doc, int64_t n_docs);
// Reads the header only and checks the file's size against it (a cheap check for resume).
shard_header read_shard_header(const std::string& path);
// Reads a whole shard, verifies its checksum, and appends its examples to heads ([n_heads]).
shard_header read_shard(const std::string& path, std::vector<head_examples>& heads);

// Writes manifest.json in dir atomically (temporary file + rename).
void write_manifest(const std::string& dir, const dataset_manifest& manifest);
// Reads dir/manifest.json; throws error when missing, unreadable, or of another version.
dataset_manifest read_manifest(const std::string& dir);

}  // namespace kvgate
