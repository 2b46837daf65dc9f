#include "data/labeler.h"

#include <algorithm>
#include <bit>

#include "common/error.h"
#include "gguf/gguf.h"
#include "kv/cache.h"
#include "model/linear.h"

namespace kvgate {

int lifetime_bucket(int lifetime, int max_bucket) {
  if (lifetime < 1) return 0;
  const int log4 = (std::bit_width(static_cast<unsigned>(lifetime)) - 1) / 2;  // floor(log2 / 2)
  return std::min(max_bucket, log4);
}

label_range labelled_range(int n_tokens, const label_params& p) {
  // future(j) is not empty iff j + W + 1 <= T - 1.
  return {std::max(0, p.sinks), n_tokens - 1 - p.window};
}

labeler::labeler(int n_layer, int n_head, int n_kv_head, int d_head, const label_params& params)
    : n_layer_(n_layer), n_head_(n_head), n_kv_head_(n_kv_head), d_head_(d_head), params_(params),
      post_rope_(params.key_kind == "post-rope") {
  if (params.key_kind != "pre-rope" && params.key_kind != "post-rope") {
    fail("key kind must be pre-rope or post-rope, not '{}'", params.key_kind);
  }
  if (params.sinks < 0 || params.window < 0 || params.horizon < 1) {
    fail("label parameters out of range: sinks {} window {} horizon {}", params.sinks, params.window, params.horizon);
  }
  if (n_kv_head < 1 || n_head % n_kv_head != 0) fail("{} query heads do not group over {} kv heads", n_head, n_kv_head);
}

label_mix label_mix::of(const std::vector<std::string>& sources) {
  label_mix mix{false, false, false};
  for (const std::string& s : sources) {
    if (s == "future") mix.future = true;
    else if (s == "reconstruct") mix.reconstruct = true;
    else if (s == "answer") mix.answer = true;
    else fail("unknown label source '{}' (known: future, reconstruct, answer)", s);
  }
  if (!mix.future && !mix.reconstruct && !mix.answer) fail("no label source given");
  return mix;
}

label_range label_mix::range(const labeler& lab) const {
  const int n_context = lab.regions().n_context;
  if (!reconstruct && !answer) return labelled_range(n_context, lab.params());
  return {std::max(0, lab.params().sinks), n_context};
}

float label_mix::score(const labeler& lab, int head, int j) const {
  float s = 0.0f;
  if (future) s = std::max(s, lab.max_future(head, j));
  if (reconstruct) s = std::max(s, lab.max_copy(head, j));
  if (answer) s = std::max(s, lab.max_answer(head, j));
  return s;
}

void labeler::begin(int n_tokens) { begin(n_tokens, {.n_context = n_tokens}); }

void labeler::begin(int n_tokens, const label_regions& regions) {
  auto inside = [&](int b, int e) { return 0 <= b && b <= e && e <= n_tokens; };
  if (!inside(0, regions.n_context) || !inside(regions.copy_begin, regions.copy_end) ||
      !inside(regions.answer_begin, regions.answer_end) ||
      (regions.copy_begin < regions.copy_end && regions.copy_begin < regions.n_context) ||
      (regions.answer_begin < regions.answer_end && regions.answer_begin < regions.n_context)) {
    fail("labeler: query regions must lie inside the run of {} tokens, after its context of {}", n_tokens,
         regions.n_context);
  }
  n_tokens_ = n_tokens;
  regions_ = regions;
  const size_t n = static_cast<size_t>(n_heads()) * n_tokens;
  m_.assign(n, 0.0f);
  copy_.assign(n, 0.0f);
  answer_.assign(n, 0.0f);
  last_.assign(n, -1);
  keys_.resize(n * d_head_);
  n_seen_.assign(n_layer_, 0);
}

bool labeler::complete() const {
  return std::all_of(n_seen_.begin(), n_seen_.end(), [&](int n) { return n == n_tokens_; });
}

void labeler::on_layer(const layer_observation& obs) {
  const int il = obs.il, n_tok = obs.n_tok;
  if (obs.n_head != n_head_ || obs.n_kv_head != n_kv_head_ || obs.d_head != d_head_ || il < 0 || il >= n_layer_) {
    fail("labeler: observation of layer {} does not match the model it was built for", il);
  }
  const int first = n_seen_[il];
  if (first + n_tok > n_tokens_) fail("labeler: more tokens than the {} announced by begin()", n_tokens_);
  for (int t = 0; t < n_tok; ++t) {
    if (obs.pos[t] != first + t) fail("labeler: position {} arrived where {} was expected", obs.pos[t], first + t);
  }
  // The label indexes slots by position: only a full cache started empty has slot == position.
  const int n_slots = first + n_tok;
  for (int ih = 0; ih < n_kv_head_; ++ih) {
    const kv_head& h = obs.cache->head(il, ih);
    if (static_cast<int>(h.n_slots()) != n_slots || h.pos.front() != 0 || h.pos.back() != n_slots - 1) {
      fail("labeler: layer {} head {} holds {} slots for {} positions; collection needs the full cache from "
           "an empty start", il, ih, h.n_slots(), n_slots);
    }
  }

  const float* k = post_rope_ ? obs.k_post_rope : obs.k_pre_rope;  // [n_tok, n_kv_head, d_head]
  for (int t = 0; t < n_tok; ++t) {
    for (int ih = 0; ih < n_kv_head_; ++ih) {
      const float* src = k + (static_cast<size_t>(t) * n_kv_head_ + ih) * d_head_;
      uint16_t* dst = keys_.data() + idx(il * n_kv_head_ + ih, first + t) * d_head_;
      for (int d = 0; d < d_head_; ++d) dst[d] = gguf::f32_to_f16(src[d]);
    }
  }
  n_seen_[il] += n_tok;

  // Every context token past the sinks: the future label's range, extended to the context's end
  // for the other sources.
  const int n_context = regions_.n_context;
  const label_range r = {std::max(0, params_.sinks), n_context};
  if (r.size() == 0) return;
  // Work items: (kv head, block of labelled columns). Each item owns its columns of m_ and
  // last_, so items run in parallel without sharing a write.
  constexpr int block = 512;
  const int n_blocks = (r.size() + block - 1) / block;
  const int n_group = n_head_ / n_kv_head_;
  const int W = params_.window, horizon = params_.horizon;
  const float tau = params_.tau;
#pragma omp parallel for schedule(dynamic, 1) num_threads(compute_threads())
  for (int item = 0; item < n_kv_head_ * n_blocks; ++item) {
    const int ih = item / n_blocks;
    const int j0 = r.first + (item % n_blocks) * block, j1 = std::min(r.end, j0 + block);
    float* m = m_.data() + idx(il * n_kv_head_ + ih, 0);       // [T]
    int32_t* last = last_.data() + idx(il * n_kv_head_ + ih, 0);  // [T]
    float* copy = copy_.data() + idx(il * n_kv_head_ + ih, 0);      // [T]
    float* answer = answer_.data() + idx(il * n_kv_head_ + ih, 0);  // [T]
    for (int t = 0; t < n_tok; ++t) {
      const int i = first + t;  // query position; rows come in increasing i, so last[j] = i keeps the max
      float* region = nullptr;  // the max a query outside the context feeds
      if (i >= regions_.copy_begin && i < regions_.copy_end) region = copy;
      if (i >= regions_.answer_begin && i < regions_.answer_end) region = answer;
      if (i >= n_context && !region) continue;
      const int life_end = std::min(j1, i);                          // j < i
      const int band_begin = std::max(j0, i - W - horizon), band_end = std::min(j1, i - W);  // i in future(j)
      for (int g = ih * n_group; g < (ih + 1) * n_group; ++g) {
        const float* row = obs.attn[g] + static_cast<size_t>(t) * n_slots;  // [n_slots]
        if (region) {
          for (int j = j0; j < j1; ++j) region[j] = std::max(region[j], row[j]);
          continue;
        }
        for (int j = j0; j < life_end; ++j) {
          if (row[j] >= tau) last[j] = i;
        }
        for (int j = band_begin; j < band_end; ++j) m[j] = std::max(m[j], row[j]);
      }
    }
  }
}

}  // namespace kvgate
