// Hooks the engine calls while it runs, so callers can watch (the collector) or act (a policy)
// without the engine knowing either by name.
#pragma once

#include <cstdint>
#include <span>

namespace kvgate {

class kv_cache;

// What one layer computed in one engine step (one decoded token or one prefill chunk).
struct layer_observation {
  int il = 0;
  int n_tok = 0;
  const int32_t* pos = nullptr;          // [n_tok] absolute positions of this step's tokens
  int n_head = 0, n_kv_head = 0, d_head = 0;
  const float* k_pre_rope = nullptr;     // [n_tok, n_kv_head, d_head] (after qk-norm, before RoPE)
  const float* k_post_rope = nullptr;    // [n_tok, n_kv_head, d_head]
  // Attention weights of query head g over the slots of its kv head g / (n_head / n_kv_head), in
  // the cache's slot order at this step (this step's tokens included): attn[g] is
  // [n_tok, n_slots]. Masked and future slots have weight 0.
  std::span<const float* const> attn;
  const kv_cache* cache = nullptr;
};

class observer {
 public:
  virtual ~observer() = default;
  // Called after layer il's attention, before its output projection.
  virtual void on_layer(const layer_observation& obs) = 0;
};

// Called once after every engine step, after all layers ran: the place where a policy decides
// and the cache evicts.
class step_hook {
 public:
  virtual ~step_hook() = default;
  virtual void on_step(kv_cache& cache, std::span<const int32_t> step_positions) = 0;
};

}  // namespace kvgate
