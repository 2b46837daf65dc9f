// The KV cache: one slot array per head (layer il, kv head ih), so every head can hold its own set
// of tokens. Slot bookkeeping (positions, mask, extras) is plain arrays beside the key/value
// storage; the policy decides, and only the cache mutates (evict / set_masked).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace kvgate {

// One head's slots. Invariant: k.size() == v.size() == n * d_head and every per-slot array has n
// entries; slots are in the order they were appended, so positions increase.
struct kv_head {
  std::vector<float> k;          // [n_slots, d_head] keys after RoPE
  std::vector<float> v;          // [n_slots, d_head]
  std::vector<int32_t> pos;      // [n_slots] absolute positions, never renumbered
  std::vector<uint8_t> masked;   // [n_slots] 1 = hidden from attention (mask mode only)
  std::vector<float> attn_sum;   // [n_slots] attention received so far, summed over the query group
  std::vector<float> score;      // [n_slots] the policy's last score (gate probability...)

  size_t n_slots() const { return pos.size(); }
};

class kv_cache {
 public:
  kv_cache(int n_layer, int n_kv_head, int d_head);

  int n_layer() const { return n_layer_; }
  int n_kv_head() const { return n_kv_head_; }
  int d_head() const { return d_head_; }

  kv_head& head(int il, int ih) { return heads_[index(il, ih)]; }
  const kv_head& head(int il, int ih) const { return heads_[index(il, ih)]; }

  // Appends n_tok tokens to every head of layer il.
  // k, v: [n_tok, n_kv_head, d_head]; pos: [n_tok].
  void append(int il, const float* k, const float* v, const int32_t* pos, int n_tok);

  // Mask mode: evict() hides slots instead of removing them, so attention over the full set stays
  // inspectable. Attention skips masked slots exactly as if they were gone (bit-identical logits).
  void set_mask_mode(bool on) { mask_mode_ = on; }
  bool mask_mode() const { return mask_mode_; }

  // keep: [n_slots] of head (il, ih); slots with keep[j] == 0 are removed (compacting the arrays)
  // or, in mask mode, masked. Returns the number of slots evicted by this call.
  size_t evict(int il, int ih, std::span<const uint8_t> keep);

  // Slots attention can see (not masked).
  size_t n_live(int il, int ih) const;
  // Bytes held by a head's live slots: keys, values, position and extras. In mask mode the
  // masked slots are counted as freed (what hard eviction would hold).
  size_t bytes(int il, int ih) const;
  size_t bytes_total() const;
  size_t n_live_total() const;
  static size_t bytes_per_slot(int d_head);

  void clear();

 private:
  size_t index(int il, int ih) const { return static_cast<size_t>(il) * n_kv_head_ + ih; }
  int n_layer_, n_kv_head_, d_head_;
  bool mask_mode_ = false;
  std::vector<kv_head> heads_;  // [n_layer * n_kv_head]
};

}  // namespace kvgate
