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
  std::vector<float> attn_last;  // [n_slots] attention from the latest step's last query, mean over the group
  std::vector<float> score;      // [n_slots] the policy's last score (gate probability...)
  // Keys before RoPE of the newest slots only (a suffix): row r belongs to slot
  // n_slots - n_pre + r. Filled while kv_cache::keep_pre_rope() is on; a policy that scores keys
  // as the model computed them from content (the learned gates) reads them once and then lets
  // them go (kv_cache::release_pre_rope), so they cost a window's worth of rows, not a context's.
  std::vector<float> k_pre;      // [n_pre, d_head]

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
  // k, v: [n_tok, n_kv_head, d_head]; pos: [n_tok]; k_pre (keys before RoPE, same layout) is
  // stored only while keep_pre_rope() is on and may be null otherwise.
  void append(int il, const float* k, const float* v, const int32_t* pos, int n_tok,
              const float* k_pre = nullptr);

  // Keep the pre-RoPE keys of newly appended slots (kv_head::k_pre) until released.
  void set_keep_pre_rope(bool on) { keep_pre_rope_ = on; }
  bool keep_pre_rope() const { return keep_pre_rope_; }
  // Rows of kv_head::k_pre held by head (il, ih); they belong to its last n_pre_rope slots.
  size_t n_pre_rope(int il, int ih) const { return head(il, ih).k_pre.size() / d_head_; }
  // Drops the pre-RoPE keys of head (il, ih)'s slots with position < pos_end.
  void release_pre_rope(int il, int ih, int32_t pos_end);

  // Mask mode: evict() hides slots instead of removing them, so attention over the full set stays
  // inspectable. Attention skips masked slots exactly as if they were gone (bit-identical logits).
  void set_mask_mode(bool on) { mask_mode_ = on; }
  bool mask_mode() const { return mask_mode_; }

  // keep: [n_slots] of head (il, ih); slots with keep[j] == 0 are removed (compacting the arrays)
  // or, in mask mode, masked. Returns the number of slots evicted by this call.
  size_t evict(int il, int ih, std::span<const uint8_t> keep);

  // Slots attention can see (not masked).
  size_t n_live(int il, int ih) const;
  // Bytes held by a head's live slots: keys, values, position and extras, plus any pre-RoPE key
  // rows held. In mask mode the masked slots are counted as freed (what hard eviction would hold).
  size_t bytes(int il, int ih) const;
  size_t bytes_total() const;
  size_t n_live_total() const;
  static size_t bytes_per_slot(int d_head);

  void clear();

 private:
  size_t index(int il, int ih) const { return static_cast<size_t>(il) * n_kv_head_ + ih; }
  int n_layer_, n_kv_head_, d_head_;
  bool mask_mode_ = false;
  bool keep_pre_rope_ = false;
  std::vector<kv_head> heads_;  // [n_layer * n_kv_head]
};

}  // namespace kvgate
