// Grouped-query attention over the per-head cache. Each (query head, token) pair walks its kv
// head's slots in cache order, skipping masked slots and slots after the query's position; a
// skipped slot contributes nothing, so mask mode and hard eviction give the same bits.
#include <algorithm>
#include <cmath>
#include <limits>

#include <omp.h>

#include "model/model.h"
#include "model/simd.h"

namespace kvgate {

void session::attention(int il, int n_tok, const int32_t* pos) {
  const model_config& c = model_.config();
  const int d = c.d_head;
  const int n_group = c.n_group();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const bool keep_weights = observer_ != nullptr || track_attention_;

  attn_out_.assign(static_cast<size_t>(n_tok) * c.n_head * d, 0.0f);
  if (keep_weights) {
    attn_weights_.resize(c.n_head);
    for (int g = 0; g < c.n_head; ++g) {
      attn_weights_[g].assign(static_cast<size_t>(n_tok) * cache_.head(il, g / n_group).n_slots(), 0.0f);
    }
  }

  const int n_pairs = c.n_head * n_tok;
  const bool recall = measure_recall_ && cache_.mask_mode();
  double recall_sum = 0.0;
#pragma omp parallel num_threads(compute_threads())
  {
    std::vector<float> scores;  // [n_slots] of the current pair
#pragma omp for schedule(dynamic, 4) reduction(+ : recall_sum)
    for (int pair = 0; pair < n_pairs; ++pair) {
      const int g = pair / n_tok, t = pair % n_tok;
      const kv_head& h = cache_.head(il, g / n_group);
      // Slots are in increasing position order: the causal limit is a prefix.
      const size_t n_visible = std::upper_bound(h.pos.begin(), h.pos.end(), pos[t]) - h.pos.begin();
      const float* q = q_.data() + (static_cast<size_t>(t) * c.n_head + g) * d;
      scores.resize(n_visible);
      float max_score = -std::numeric_limits<float>::infinity();
      for (size_t j = 0; j < n_visible; ++j) {
        if (h.masked[j]) continue;
        scores[j] = simd::dot(q, h.k.data() + j * d, d) * scale;
        max_score = std::max(max_score, scores[j]);
      }
      float sum = 0.0f;
      for (size_t j = 0; j < n_visible; ++j) {
        if (h.masked[j]) continue;
        scores[j] = std::exp(scores[j] - max_score);
        sum += scores[j];
      }
      if (recall) {
        // The masked slots' mass relative to the live slots' (same max, so the live part is
        // exactly what the output used); double, since a masked score may exceed the live max.
        double masked_mass = 0.0;
        for (size_t j = 0; j < n_visible; ++j) {
          if (!h.masked[j]) continue;
          masked_mass += std::exp(static_cast<double>(simd::dot(q, h.k.data() + j * d, d) * scale) - max_score);
        }
        recall_sum += sum / (sum + masked_mass);
      }
      const float inv = 1.0f / sum;
      float* out = attn_out_.data() + (static_cast<size_t>(t) * c.n_head + g) * d;
      float* weights = keep_weights ? attn_weights_[g].data() + static_cast<size_t>(t) * h.n_slots() : nullptr;
      for (size_t j = 0; j < n_visible; ++j) {
        if (h.masked[j]) continue;
        const float w = scores[j] * inv;
        simd::axpy(w, h.v.data() + j * d, out, d);
        if (weights) weights[j] = w;
      }
    }
  }

  if (recall) {
    recall_[il].sum += recall_sum;
    recall_[il].n += n_pairs;
  }

  if (track_attention_) {
    for (int ih = 0; ih < c.n_kv_head; ++ih) {
      kv_head& h = cache_.head(il, ih);
      for (int g = ih * n_group; g < (ih + 1) * n_group; ++g) {
        const float* w = attn_weights_[g].data();
        for (int t = 0; t < n_tok; ++t)
          for (size_t j = 0; j < h.n_slots(); ++j) h.attn_sum[j] += w[static_cast<size_t>(t) * h.n_slots() + j];
      }
      // The step's last query, mean over the group (what TOVA ranks by).
      std::fill(h.attn_last.begin(), h.attn_last.end(), 0.0f);
      for (int g = ih * n_group; g < (ih + 1) * n_group; ++g) {
        const float* w = attn_weights_[g].data() + static_cast<size_t>(n_tok - 1) * h.n_slots();
        for (size_t j = 0; j < h.n_slots(); ++j) h.attn_last[j] += w[j] / n_group;
      }
    }
  }
  if (observer_) {
    std::vector<const float*> ptrs(c.n_head);
    for (int g = 0; g < c.n_head; ++g) ptrs[g] = attn_weights_[g].data();
    layer_observation obs;
    obs.il = il;
    obs.n_tok = n_tok;
    obs.pos = pos;
    obs.n_head = c.n_head;
    obs.n_kv_head = c.n_kv_head;
    obs.d_head = d;
    obs.k_pre_rope = k_pre_.data();
    obs.k_post_rope = k_.data();
    obs.attn = ptrs;
    obs.cache = &cache_;
    observer_->on_layer(obs);
  }
}

}  // namespace kvgate
