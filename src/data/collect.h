// Collection: the engine run with the full cache and a labeler attached over every document of a
// corpus, writing the dataset directory (manifest + shards, dataset.h). Resumable: the manifest
// is rewritten (atomically) after each shard, so a killed run restarted with the same parameters
// skips the documents of complete shards and recomputes only the shard it was writing.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/corpus.h"
#include "data/dataset.h"

namespace kvgate {

class model;

struct collect_options {
  std::string model_path;           // the file m was loaded from (fingerprint, manifest)
  std::vector<std::string> corpus;  // files and directories (list_corpus)
  std::vector<std::string> extensions = k_default_text_extensions;
  std::string out_dir;
  label_params label;
  int ctx = 2048;                   // documents are windows of at most ctx tokens
  int n_batch = 256;                // prefill chunk size
  int64_t max_tokens = 0;           // stop after the document that reaches this many (0: no limit)
  int64_t max_docs = 0;             // stop after this many documents (0: no limit)
  float negative_keep = 0.1f;       // chance a negative example is stored (positives always are)
  uint64_t seed = 1;                // negative subsampling and file order
  bool shuffle = true;              // files in an order drawn from seed (else sorted by path)
  // Share of documents run inside the model's chat template, as the user message of a
  // conversation that the assistant is about to answer (the way served prompts hold a pasted
  // text). Gates trained on bare text alone never see the template's tokens, and evicting the
  // system prompt's first tokens breaks the model's answers. Chosen per document from seed.
  float chat_share = 0.0f;
  int shard_docs = 8;               // documents per shard
  // Label sources merged by max (data/label_sources.h), canonical order; the manifest records
  // them and a resume with another list is refused.
  std::vector<std::string> label_sources = {"future"};
  // Diagnostics: also count, over this run's documents, the positives y would give at these
  // thresholds (y only; lifetime stays at label.tau). Used to choose tau.
  std::vector<float> tau_sweep;
};

struct collect_progress {
  int64_t n_docs = 0, n_tokens = 0;        // in the dataset so far (resumed documents included)
  int64_t run_docs = 0, run_tokens = 0;    // done by this run
  double seconds = 0.0, tok_s = 0.0;       // this run
  double eta_s = -1.0;                     // -1: unknown
  double positive_rate = 0.0;              // over all labelled tokens so far
};

using collect_progress_fn = std::function<void(const collect_progress&)>;

// Runs the collection and returns its summary: n_docs, n_tokens, n_labelled, positive_rate,
// head_positive_rate {min, median, max}, n_stored, bytes, and this run's figures. Throws error
// for bad parameters, an empty corpus, or an existing dataset in out_dir made with other
// parameters, another model or another corpus (the message names what differs).
nlohmann::ordered_json collect(const model& m, const collect_options& options, const collect_progress_fn& progress = {});

// Identity of a model file for resume checks: its size and an FNV-1a hash of its first and last
// MiB (GGUF metadata sits at the start, tensor data runs to the end), e.g. "83886080:9f2c...".
std::string model_fingerprint(const std::string& path);

// The summary fields that depend only on the dataset directory (collect adds its run's).
nlohmann::ordered_json dataset_summary(const std::string& dir, const dataset_manifest& manifest);

// Whether a negative example is stored: a hash of (seed, doc, head, pos) against keep, so the
// choice does not depend on how documents fall into shards or runs.
bool keep_negative(uint64_t seed, int64_t doc, int head, int pos, float keep);

}  // namespace kvgate
