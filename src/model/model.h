// A loaded model (config, weight views into the mapped GGUF, tokenizer) and a session that runs
// it: prefill in chunks and single-token decode over a per-head KV cache.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "kv/cache.h"
#include "model/attention_kernel.h"
#include "model/config.h"
#include "model/forward.h"
#include "model/linear.h"
#include "model/observer.h"
#include "tokenizer/tokenizer.h"

namespace kvgate {

struct layer_weights {
  std::vector<float> attn_norm;      // [n_embd]
  linear wq, wk, wv, wo;             // q: [n_head*d_head, n_embd], k/v: [n_kv_head*d_head, n_embd]
  std::vector<float> bq, bk, bv;     // qwen2 biases, empty otherwise
  std::vector<float> q_norm, k_norm; // qwen3 per-head norms [d_head], empty otherwise
  std::vector<float> ffn_norm;       // [n_embd]
  linear w_gate, w_up, w_down;       // gate/up: [n_ff, n_embd], down: [n_embd, n_ff]
};

class model {
 public:
  // Opens and validates the file: architecture, sizes, every tensor's presence, type and shape.
  static std::unique_ptr<model> load(const std::string& path);

  const model_config& config() const { return config_; }
  const tokenizer& vocab() const { return *tokenizer_; }
  const gguf::file& file() const { return *file_; }
  const layer_weights& layer(int il) const { return layers_[il]; }
  const linear& token_embd() const { return token_embd_; }
  const linear& output() const { return output_; }
  const std::vector<float>& output_norm() const { return output_norm_; }

 private:
  model() = default;
  void pack_weights();
  std::unique_ptr<gguf::file> file_;
  std::unique_ptr<tokenizer> tokenizer_;
  model_config config_;
  linear token_embd_;                // [n_vocab, n_embd]
  linear output_;                    // [n_vocab, n_embd], token_embd when tied
  std::vector<float> output_norm_;   // [n_embd]
  std::vector<layer_weights> layers_;
  std::vector<std::vector<uint8_t>> packed_;  // the weights the integer kernels read (linear::packed)
};

enum class logits_mode { none, last, all };

struct session_options {
  int n_ctx = 0;       // positions this session may reach; 0 = the model's trained context
  int n_batch = 256;   // prefill chunk size
  kv_type kv = kv_type::f16;  // element type of stored keys and values
  // How prompt chunks go through the linear layers: automatic (f32 sgemm over dequantized
  // weights, exact to float rounding: perplexity, bench, collect) or quantized (8-bit activations
  // and the integer kernels decode uses, as llama.cpp: generate, chat, serve). See linear_rows.
  linear_rows prefill = linear_rows::automatic;
};

class session {
 public:
  session(const model& m, session_options options);
  ~session();

  // One engine step: runs tokens at positions n_past()..n_past()+n-1 (n <= n_batch is not
  // required; the caller decides chunking), appends their keys/values, calls the observer per
  // layer and the step hook once. Returns logits: nothing, [n_vocab] for the last token, or
  // [n, n_vocab]. Throws error when the context would overflow or a token id is out of range.
  std::span<const float> step(std::span<const int32_t> tokens, logits_mode mode);

  // Prefill: steps over tokens in chunks of n_batch; returns the last token's logits.
  std::span<const float> prefill(std::span<const int32_t> tokens);

  void reset();  // empty cache, position 0
  // Back to the first n positions (0 <= n <= n_past()): the cache drops every slot at a position
  // >= n. What was evicted before stays evicted, and a policy's own state is not rolled back, so
  // the continuation equals a fresh run's only when nothing was evicted (the full cache).
  void truncate(int n);
  // Starts over from the first n positions of another session of the same model (n <=
  // from.n_past()): this cache becomes a copy of those slots of from's, evicted ones still evicted.
  // As truncate, exact only when from evicted nothing.
  void copy_prefix(const session& from, int n);
  int n_past() const { return n_past_; }
  int n_ctx() const { return n_ctx_; }
  kv_cache& cache() { return cache_; }
  const kv_cache& cache() const { return cache_; }
  const model& get_model() const { return model_; }
  void set_observer(observer* obs) { observer_ = obs; }
  void set_step_hook(step_hook* hook) { hook_ = hook; }
  // Accumulate attention received into each slot's attn_sum and record the step's last query's
  // attention in attn_last (for attention-based policies: H2O, TOVA).
  void set_track_attention(bool on) { track_attention_ = on; }

  // Attention-mass recall, for mask mode: for every (query head, query) pair of every layer, the
  // share of the softmax mass the query would give all the slots it can see, masked ones
  // included, that falls on the live slots (1 with nothing masked). The output is unchanged: the
  // masked slots are scored on the side. Summed per layer until reset_recall().
  struct recall_sum {
    double sum = 0.0;  // sum over pairs of the live share
    int64_t n = 0;     // pairs
  };
  void set_measure_recall(bool on) { measure_recall_ = on; }
  const std::vector<recall_sum>& recall() const { return recall_; }  // [n_layer]
  void reset_recall() { recall_.assign(recall_.size(), {}); }

 private:
  friend class batch_decoder;  // steps the layers of several sessions together, attention per session
  void attention(int il, int n_tok, const int32_t* pos);
  void attention_weights(int il, int n_tok);     // fills attn_weights_
  void attention_recall(int il, int n_tok);      // adds to recall_[il]
  void accumulate_attention(int il, int n_tok);  // kv_head::attn_sum, attn_last

  const model& model_;
  int n_ctx_;
  int n_batch_;
  linear_rows prefill_rows_;
  int n_past_ = 0;
  kv_cache cache_;
  observer* observer_ = nullptr;
  step_hook* hook_ = nullptr;
  bool track_attention_ = false;
  bool measure_recall_ = false;
  std::vector<recall_sum> recall_;  // [n_layer]

  forward::buffers a_;  // activations of the current step
  std::vector<std::vector<float>> attn_weights_;  // [n_head][n, n_slots] for the observer
  std::vector<float> attn_m_, attn_l_;  // [n, n_head] softmax max score and sum relative to it
  std::vector<std::vector<slot_run>> runs_;  // [n_kv_head] live slots of the current layer
  std::vector<std::vector<uint32_t>> pass_slots_;  // [n_kv_head] the slots a weights or recall pass scores
  std::vector<size_t> task_first_;      // [n_kv_head + 1] first decode task of each kv head
  std::vector<float> partials_;         // [n_tasks, n_group * (d_head + 2)] decode partials
  std::vector<float> merge_buf_;
};

}  // namespace kvgate
