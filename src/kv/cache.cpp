#include "kv/cache.h"

#include <algorithm>
#include <cassert>

#include "common/error.h"

namespace kvgate {

kv_cache::kv_cache(int n_layer, int n_kv_head, int d_head)
    : n_layer_(n_layer), n_kv_head_(n_kv_head), d_head_(d_head),
      heads_(static_cast<size_t>(n_layer) * n_kv_head) {}

void kv_cache::append(int il, const float* k, const float* v, const int32_t* pos, int n_tok,
                      const float* k_pre) {
  const size_t d = d_head_;
  if (keep_pre_rope_ && !k_pre) fail("kv_cache::append: keep_pre_rope is on but no pre-RoPE keys were given");
  for (int ih = 0; ih < n_kv_head_; ++ih) {
    kv_head& h = head(il, ih);
    for (int t = 0; t < n_tok; ++t) {
      const size_t src = (static_cast<size_t>(t) * n_kv_head_ + ih) * d;
      h.k.insert(h.k.end(), k + src, k + src + d);
      h.v.insert(h.v.end(), v + src, v + src + d);
      h.pos.push_back(pos[t]);
      h.masked.push_back(0);
      h.attn_sum.push_back(0.0f);
      h.attn_last.push_back(0.0f);
      h.score.push_back(0.0f);
      if (keep_pre_rope_) h.k_pre.insert(h.k_pre.end(), k_pre + src, k_pre + src + d);
    }
  }
}

size_t kv_cache::evict(int il, int ih, std::span<const uint8_t> keep) {
  kv_head& h = head(il, ih);
  const size_t n = h.n_slots();
  if (keep.size() != n) fail("kv_cache::evict: keep mask has {} entries for {} slots", keep.size(), n);
  size_t n_evicted = 0;
  if (mask_mode_) {
    for (size_t j = 0; j < n; ++j) {
      if (!keep[j] && !h.masked[j]) {
        h.masked[j] = 1;
        ++n_evicted;
      }
    }
    return n_evicted;
  }
  const size_t d = d_head_;
  const size_t pre_first = n - h.k_pre.size() / d;  // first slot with a pre-RoPE key row
  size_t w = 0;      // write index: compaction keeps the slot order
  size_t w_pre = 0;  // write row of k_pre (kept slots of the suffix stay a suffix)
  for (size_t j = 0; j < n; ++j) {
    if (!keep[j]) continue;
    if (w != j) {
      std::copy_n(h.k.begin() + j * d, d, h.k.begin() + w * d);
      std::copy_n(h.v.begin() + j * d, d, h.v.begin() + w * d);
      h.pos[w] = h.pos[j];
      h.masked[w] = h.masked[j];
      h.attn_sum[w] = h.attn_sum[j];
      h.attn_last[w] = h.attn_last[j];
      h.score[w] = h.score[j];
    }
    if (j >= pre_first) {
      const size_t r = j - pre_first;
      if (w_pre != r) std::copy_n(h.k_pre.begin() + r * d, d, h.k_pre.begin() + w_pre * d);
      ++w_pre;
    }
    ++w;
  }
  n_evicted = n - w;
  h.k.resize(w * d);
  h.v.resize(w * d);
  h.pos.resize(w);
  h.masked.resize(w);
  h.attn_sum.resize(w);
  h.attn_last.resize(w);
  h.score.resize(w);
  h.k_pre.resize(w_pre * d);
  // Give memory back once the arrays are mostly empty, so eviction really shrinks the footprint.
  if (h.k.capacity() > 2 * h.k.size() + 4096) {
    h.k.shrink_to_fit();
    h.v.shrink_to_fit();
  }
  return n_evicted;
}

void kv_cache::release_pre_rope(int il, int ih, int32_t pos_end) {
  kv_head& h = head(il, ih);
  const size_t d = d_head_;
  const size_t n_pre = h.k_pre.size() / d;
  const size_t pre_first = h.n_slots() - n_pre;
  const size_t below = std::lower_bound(h.pos.begin(), h.pos.end(), pos_end) - h.pos.begin();
  if (below <= pre_first) return;
  const size_t n_drop = std::min(below, h.n_slots()) - pre_first;
  h.k_pre.erase(h.k_pre.begin(), h.k_pre.begin() + n_drop * d);
}

size_t kv_cache::n_live(int il, int ih) const {
  const kv_head& h = head(il, ih);
  return h.n_slots() - static_cast<size_t>(std::count(h.masked.begin(), h.masked.end(), 1));
}

size_t kv_cache::bytes_per_slot(int d_head) {
  return 2 * static_cast<size_t>(d_head) * sizeof(float) + sizeof(int32_t) + sizeof(uint8_t) +
         3 * sizeof(float);
}

size_t kv_cache::bytes(int il, int ih) const {
  return n_live(il, ih) * bytes_per_slot(d_head_) + head(il, ih).k_pre.size() * sizeof(float);
}

size_t kv_cache::bytes_total() const {
  size_t total = 0;
  for (int il = 0; il < n_layer_; ++il)
    for (int ih = 0; ih < n_kv_head_; ++ih) total += bytes(il, ih);
  return total;
}

size_t kv_cache::n_live_total() const {
  size_t total = 0;
  for (int il = 0; il < n_layer_; ++il)
    for (int ih = 0; ih < n_kv_head_; ++ih) total += n_live(il, ih);
  return total;
}

void kv_cache::clear() {
  for (kv_head& h : heads_) h = kv_head{};
}

}  // namespace kvgate
