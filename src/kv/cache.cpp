#include "kv/cache.h"

#include <algorithm>
#include <cassert>

#include "common/error.h"

namespace kvgate {

const char* kv_type_name(kv_type t) {
  switch (t) {
    case kv_type::f32: return "f32";
    case kv_type::f16: return "f16";
    case kv_type::q8_0: return "q8_0";
  }
  return "?";
}

kv_type parse_kv_type(std::string_view name) {
  for (kv_type t : {kv_type::f32, kv_type::f16, kv_type::q8_0}) {
    if (name == kv_type_name(t)) return t;
  }
  fail("unknown KV type '{}' (expected f32, f16 or q8_0)", name);
}

namespace {

int padded(kv_type type, int d) { return type == kv_type::q8_0 ? (d + 31) / 32 * 32 : d; }

gguf::tensor_type tensor_type_of(kv_type type) {
  switch (type) {
    case kv_type::f32: return gguf::tensor_type::f32;
    case kv_type::f16: return gguf::tensor_type::f16;
    case kv_type::q8_0: return gguf::tensor_type::q8_0;
  }
  return gguf::tensor_type::f32;
}

}  // namespace

kv_rows::kv_rows(kv_type type, int d) : type_(type), d_(d), row_bytes_(row_bytes_for(type, d)) {}

size_t kv_rows::row_bytes_for(kv_type type, int d) {
  return gguf::row_bytes(tensor_type_of(type), padded(type, d));
}

void kv_rows::to_float(size_t first, size_t n, float* out) const {
  for (size_t r = 0; r < n; ++r) row_to_float(first + r, out + r * d_);
}

void kv_rows::append(const float* x) {
  const size_t at = data_.size();
  data_.resize(at + row_bytes_);
  const int d_pad = padded(type_, d_);
  if (d_pad == d_) {
    gguf::quantize(tensor_type_of(type_), x, data_.data() + at, d_);
  } else {  // q8_0 with d not a multiple of 32: zeros pad the last block (amax unchanged)
    float tmp[512];
    std::vector<float> big;
    float* buf = tmp;
    if (d_pad > 512) {
      big.resize(d_pad);
      buf = big.data();
    }
    std::copy_n(x, d_, buf);
    std::fill(buf + d_, buf + d_pad, 0.0f);
    gguf::quantize(tensor_type_of(type_), buf, data_.data() + at, d_pad);
  }
}

void kv_rows::move_row(size_t dst, size_t src) {
  std::memcpy(data_.data() + dst * row_bytes_, data_.data() + src * row_bytes_, row_bytes_);
}

void kv_rows::truncate(size_t n) { data_.resize(n * row_bytes_); }

void kv_rows::shrink() {
  if (data_.capacity() > 2 * data_.size() + 65536) data_.shrink_to_fit();
}

kv_cache::kv_cache(int n_layer, int n_kv_head, int d_head, kv_type type)
    : n_layer_(n_layer), n_kv_head_(n_kv_head), d_head_(d_head), type_(type),
      heads_(static_cast<size_t>(n_layer) * n_kv_head) {
  clear();
}

void kv_cache::append(int il, const float* k, const float* v, const int32_t* pos, int n_tok,
                      const float* k_pre) {
  const size_t d = d_head_;
  if (keep_pre_rope_ && !k_pre) fail("kv_cache::append: keep_pre_rope is on but no pre-RoPE keys were given");
  for (int ih = 0; ih < n_kv_head_; ++ih) {
    kv_head& h = head(il, ih);
    for (int t = 0; t < n_tok; ++t) {
      const size_t src = (static_cast<size_t>(t) * n_kv_head_ + ih) * d;
      h.k.append(k + src);
      h.v.append(v + src);
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
  for (size_t j = 0; j < n; ++j) {
    if (!keep[j] && !h.masked[j]) {
      h.masked[j] = 1;
      ++n_evicted;
    }
  }
  h.n_masked += n_evicted;
  if (!mask_mode_ && h.n_masked > compact_fraction_ * static_cast<double>(n)) compact(il, ih);
  return n_evicted;
}

void kv_cache::keep_first_slots(kv_head& h, size_t n) {
  h.k.truncate(n);
  h.v.truncate(n);
  h.pos.resize(n);
  h.masked.resize(n);
  h.attn_sum.resize(n);
  h.attn_last.resize(n);
  h.score.resize(n);
}

void kv_cache::compact(int il, int ih) {
  kv_head& h = head(il, ih);
  if (mask_mode_ || h.n_masked == 0) return;
  const size_t n = h.n_slots();
  const size_t d = d_head_;
  const size_t pre_first = n - h.k_pre.size() / d;  // first slot with a pre-RoPE key row
  size_t w = 0;      // write index: compaction keeps the slot order
  size_t w_pre = 0;  // write row of k_pre (kept slots of the suffix stay a suffix)
  for (size_t j = 0; j < n; ++j) {
    if (h.masked[j]) continue;
    if (w != j) {
      h.k.move_row(w, j);
      h.v.move_row(w, j);
      h.pos[w] = h.pos[j];
      h.masked[w] = 0;
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
  assert(n - w == h.n_masked);
  keep_first_slots(h, w);
  h.k_pre.resize(w_pre * d);
  h.n_masked = 0;
  // Give memory back once the arrays are mostly empty, so eviction really shrinks the footprint.
  h.k.shrink();
  h.v.shrink();
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

size_t kv_cache::bytes_per_slot(int d_head, kv_type type) {
  return 2 * kv_rows::row_bytes_for(type, d_head) + sizeof(int32_t) + sizeof(uint8_t) + 3 * sizeof(float);
}

size_t kv_cache::bytes(int il, int ih) const {
  return n_live(il, ih) * bytes_per_slot() + head(il, ih).k_pre.size() * sizeof(float);
}

size_t kv_cache::bytes_total() const {
  size_t total = 0;
  for (int il = 0; il < n_layer_; ++il)
    for (int ih = 0; ih < n_kv_head_; ++ih) total += bytes(il, ih);
  return total;
}

size_t kv_cache::n_live_total() const {
  size_t total = 0;
  for (const kv_head& h : heads_) total += h.n_live();
  return total;
}

void kv_cache::truncate(int32_t pos_end) {
  const size_t d = d_head_;
  for (kv_head& h : heads_) {
    const size_t keep = std::lower_bound(h.pos.begin(), h.pos.end(), pos_end) - h.pos.begin();
    const size_t n = h.n_slots();
    if (keep == n) continue;
    for (size_t j = keep; j < n; ++j) h.n_masked -= h.masked[j];
    const size_t n_pre = h.k_pre.size() / d;
    h.k_pre.resize((n_pre - std::min(n_pre, n - keep)) * d);  // the pre-RoPE rows are a suffix
    keep_first_slots(h, keep);
  }
}

void kv_cache::assign_prefix(const kv_cache& from, int32_t pos_end) {
  if (from.n_layer_ != n_layer_ || from.n_kv_head_ != n_kv_head_ || from.d_head_ != d_head_ || from.type_ != type_) {
    fail("kv_cache::assign_prefix: caches of different shapes or types");
  }
  const size_t d = d_head_;
  for (size_t i = 0; i < heads_.size(); ++i) {
    const kv_head& src = from.heads_[i];
    kv_head& h = heads_[i];
    const size_t keep = std::lower_bound(src.pos.begin(), src.pos.end(), pos_end) - src.pos.begin();
    const size_t n_pre = src.k_pre.size() / d, pre_first = src.n_slots() - n_pre;
    h.k.data_.assign(src.k.data_.begin(), src.k.data_.begin() + keep * src.k.row_bytes_);
    h.v.data_.assign(src.v.data_.begin(), src.v.data_.begin() + keep * src.v.row_bytes_);
    h.pos.assign(src.pos.begin(), src.pos.begin() + keep);
    h.masked.assign(src.masked.begin(), src.masked.begin() + keep);
    h.attn_sum.assign(src.attn_sum.begin(), src.attn_sum.begin() + keep);
    h.attn_last.assign(src.attn_last.begin(), src.attn_last.begin() + keep);
    h.score.assign(src.score.begin(), src.score.begin() + keep);
    h.k_pre.assign(src.k_pre.begin(), src.k_pre.begin() + (keep > pre_first ? keep - pre_first : 0) * d);
    h.n_masked = static_cast<size_t>(std::count(h.masked.begin(), h.masked.end(), uint8_t{1}));
  }
}

void kv_cache::clear() {
  for (kv_head& h : heads_) {
    h = kv_head{};
    h.k = kv_rows(type_, d_head_);
    h.v = kv_rows(type_, d_head_);
  }
}

}  // namespace kvgate
