// The KV cache: one slot array per head (layer il, kv head ih), so every head can hold its own set
// of tokens. Keys and values live in a typed row storage (f32, f16 or q8_0) private to the cache
// and read through accessors; slot bookkeeping (positions, mask, extras) is plain arrays beside it.
// The policy decides, and only the cache mutates (evict / compact).
//
// Eviction is lazy: an evicted slot becomes a hole (kv_head::masked = 1) that attention skips;
// once holes pass a fraction of a head's slots the head is compacted, so memory really shrinks
// without moving every row at every step. In mask mode holes are never compacted (analysis sees
// the full set). Either way a hole is gone for attention and for every policy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

#include "gguf/gguf.h"

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#endif

namespace kvgate {

// Element type of stored keys and values. q8_0 is ggml's block (f16 scale + 32 int8) over each
// row, zero-padded to a whole number of 32-element blocks.
enum class kv_type : uint8_t { f32, f16, q8_0 };

const char* kv_type_name(kv_type t);
// "f32", "f16" or "q8_0"; throws error with the accepted names otherwise.
kv_type parse_kv_type(std::string_view name);

// n_rows rows of d elements in one type. Mutated only by kv_cache.
class kv_rows {
 public:
  kv_rows() = default;
  kv_rows(kv_type type, int d);

  kv_type type() const { return type_; }
  int d() const { return d_; }
  size_t n_rows() const { return row_bytes_ ? data_.size() / row_bytes_ : 0; }
  size_t row_bytes() const { return row_bytes_; }
  static size_t row_bytes_for(kv_type type, int d);
  const uint8_t* row(size_t j) const { return data_.data() + j * row_bytes_; }
  size_t capacity_bytes() const { return data_.capacity(); }

  // Row j as d floats (the kernel's loader: F16C / AVX2 when built with them).
  inline void row_to_float(size_t j, float* out) const;
  // Rows [first, first + n) as floats: out [n, d].
  void to_float(size_t first, size_t n, float* out) const;

 private:
  friend class kv_cache;
  void append(const float* x);            // x [d]
  void move_row(size_t dst, size_t src);  // row dst = row src
  void truncate(size_t n);
  void shrink();

  kv_type type_ = kv_type::f32;
  int d_ = 0;
  size_t row_bytes_ = 0;
  std::vector<uint8_t> data_;  // [n_rows, row_bytes]
};

// One head's slots. Invariant: k.n_rows() == v.n_rows() == n_slots() and every per-slot array has
// n_slots() entries; slots are in the order they were appended, so positions increase.
struct kv_head {
  kv_rows k;                     // [n_slots, d_head] keys after RoPE
  kv_rows v;                     // [n_slots, d_head]
  std::vector<int32_t> pos;      // [n_slots] absolute positions, never renumbered
  std::vector<uint8_t> masked;   // [n_slots] 1 = evicted: a hole, or hidden in mask mode
  std::vector<float> attn_sum;   // [n_slots] attention received so far, summed over the query group
  std::vector<float> attn_last;  // [n_slots] attention from the latest step's last query, mean over the group
  std::vector<float> score;      // [n_slots] the policy's last score (gate probability...)
  // Keys before RoPE of the newest slots only (a suffix): row r belongs to slot
  // n_slots - n_pre + r. Filled while kv_cache::keep_pre_rope() is on; a policy that scores keys
  // as the model computed them from content (the learned gates) reads them once and then lets
  // them go (kv_cache::release_pre_rope), so they cost a window's worth of rows, not a context's.
  std::vector<float> k_pre;      // [n_pre, d_head] f32
  size_t n_masked = 0;           // running count of masked[] == 1

  size_t n_slots() const { return pos.size(); }
  size_t n_live() const { return pos.size() - n_masked; }
};

class kv_cache {
 public:
  kv_cache(int n_layer, int n_kv_head, int d_head, kv_type type = kv_type::f16);

  int n_layer() const { return n_layer_; }
  int n_kv_head() const { return n_kv_head_; }
  int d_head() const { return d_head_; }
  kv_type type() const { return type_; }

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

  // Mask mode: evicted slots stay (masked) and are never compacted, so attention over the full
  // set stays inspectable. Attention skips masked slots exactly as it skips holes and compacted
  // slots (bit-identical logits).
  void set_mask_mode(bool on) { mask_mode_ = on; }
  bool mask_mode() const { return mask_mode_; }

  // keep: [n_slots] of head (il, ih); slots with keep[j] == 0 become holes (masked). Outside mask
  // mode the head is compacted when its holes exceed compact_fraction() of its slots. Returns the
  // number of slots evicted by this call (already-masked slots do not count).
  size_t evict(int il, int ih, std::span<const uint8_t> keep);
  // Removes head (il, ih)'s holes now (does nothing in mask mode).
  void compact(int il, int ih);
  void set_compact_fraction(double f) { compact_fraction_ = f; }
  double compact_fraction() const { return compact_fraction_; }

  // Slots attention can see (not masked).
  size_t n_live(int il, int ih) const { return head(il, ih).n_live(); }
  // Bytes held by a head's live slots: keys, values, position and extras, plus any pre-RoPE key
  // rows held. Holes and masked slots are counted as freed (what full compaction would hold).
  size_t bytes(int il, int ih) const;
  size_t bytes_total() const;
  size_t n_live_total() const;
  static size_t bytes_per_slot(int d_head, kv_type type = kv_type::f16);
  size_t bytes_per_slot() const { return bytes_per_slot(d_head_, type_); }

  // Drops every head's slots at positions >= pos_end (the newest ones: positions increase), with
  // their pre-RoPE keys. For a session rolled back to a prefix of what it has stepped.
  void truncate(int32_t pos_end);
  // Becomes a copy of from's slots at positions < pos_end (same shape and type; the mode flags
  // stay this cache's own). Copies only those slots' rows.
  void assign_prefix(const kv_cache& from, int32_t pos_end);

  void clear();

 private:
  size_t index(int il, int ih) const { return static_cast<size_t>(il) * n_kv_head_ + ih; }
  // Cuts every per-slot array of h but k_pre to its first n slots.
  static void keep_first_slots(kv_head& h, size_t n);
  int n_layer_, n_kv_head_, d_head_;
  kv_type type_;
  bool mask_mode_ = false;
  bool keep_pre_rope_ = false;
  double compact_fraction_ = 0.125;
  std::vector<kv_head> heads_;  // [n_layer * n_kv_head]
};

inline float kv_half_to_float(uint16_t h) {
#if defined(__AVX2__) && defined(__F16C__)
  return _cvtsh_ss(h);
#else
  return gguf::f16_to_f32(h);
#endif
}

inline void kv_rows::row_to_float(size_t j, float* out) const {
  const uint8_t* p = row(j);
  switch (type_) {
    case kv_type::f32:
      std::memcpy(out, p, static_cast<size_t>(d_) * sizeof(float));
      return;
    case kv_type::f16: {
      int i = 0;
#if defined(__AVX2__) && defined(__F16C__)
      for (; i + 8 <= d_; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 * i))));
#endif
      for (; i < d_; ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);
        out[i] = kv_half_to_float(h);
      }
      return;
    }
    case kv_type::q8_0: {
      for (int b = 0; b * 32 < d_; ++b, p += 34) {
        uint16_t hs;
        std::memcpy(&hs, p, 2);
        const float s = kv_half_to_float(hs);
        const auto* q = reinterpret_cast<const int8_t*>(p + 2);
        const int n = d_ - 32 * b < 32 ? d_ - 32 * b : 32;
        float* o = out + 32 * b;
        int i = 0;
#if defined(__AVX2__) && defined(__F16C__)
        const __m256 vs = _mm256_set1_ps(s);
        for (; i + 8 <= n; i += 8) {
          const __m128i qi = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i));
          _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(qi)), vs));
        }
#endif
        for (; i < n; ++i) o[i] = static_cast<float>(q[i]) * s;
      }
      return;
    }
  }
}

}  // namespace kvgate
