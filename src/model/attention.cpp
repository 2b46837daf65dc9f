// Grouped-query attention over the per-head cache: the kernel (model/attention_kernel.h) per
// (kv head, token) or, in decode, per (kv head, chunk of slots), then the optional passes that
// only analysis and attention-based policies need: the attention weights (observer, H2O/TOVA
// accumulation) and attention-mass recall in mask mode. A pass recomputes the scores it needs;
// decode without them runs the kernel alone.
#include <algorithm>
#include <cmath>
#include <limits>

#include <omp.h>

#include "model/attention_kernel.h"
#include "model/model.h"
#include "model/simd.h"

namespace kvgate {

void session::attention(int il, int n_tok, const int32_t* pos) {
  const model_config& c = model_.config();
  const int d = c.d_head;
  const int n_group = c.n_group();
  const int n_kv = c.n_kv_head;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  // The step's tokens are the newest n_tok slots of every head, all live: token t sees every
  // live slot but the n_tok - 1 - t after it.
  runs_.resize(n_kv);
  for (int ih = 0; ih < n_kv; ++ih) {
    const kv_head& h = cache_.head(il, ih);
    live_runs(h, h.n_slots(), runs_[ih]);
  }
  a_.attn_out.resize(static_cast<size_t>(n_tok) * c.n_head * d);
  attn_m_.resize(static_cast<size_t>(n_tok) * c.n_head);
  attn_l_.resize(static_cast<size_t>(n_tok) * c.n_head);
  auto group_offset = [&](int t, int ih) { return static_cast<size_t>(t) * c.n_head + static_cast<size_t>(ih) * n_group; };

  if (n_tok == 1) {
    // Decode: every (kv head, chunk) is a task; partials merged per head in chunk order.
    task_first_.resize(n_kv + 1);
    task_first_[0] = 0;
    for (int ih = 0; ih < n_kv; ++ih) task_first_[ih + 1] = task_first_[ih] + attn_n_chunks(cache_.head(il, ih).n_live());
    const size_t n_tasks = task_first_[n_kv];
    const size_t stride = static_cast<size_t>(n_group) * (d + 2);
    partials_.resize(n_tasks * stride);
#pragma omp parallel for schedule(dynamic, 1) num_threads(std::min<int>(compute_threads(), static_cast<int>(n_tasks)))
    for (size_t task = 0; task < n_tasks; ++task) {
      const int ih = static_cast<int>(std::upper_bound(task_first_.begin(), task_first_.end(), task) - task_first_.begin()) - 1;
      const size_t p = task - task_first_[ih];
      const kv_head& h = cache_.head(il, ih);
      float* part = partials_.data() + task * stride;
      attend_chunk(h.k, h.v, runs_[ih], p * k_attn_chunk, std::min(h.n_live(), (p + 1) * k_attn_chunk),
                   a_.q.data() + group_offset(0, ih) * d, n_group, nullptr, scale, part, part + n_group,
                   part + 2 * n_group);
    }
    // Each task's partial is [m n_group | l n_group | o n_group*d]: regroup for the merge.
    for (int ih = 0; ih < n_kv; ++ih) {
      const size_t n_parts = task_first_[ih + 1] - task_first_[ih];
      merge_buf_.resize(n_parts * stride);
      float* m = merge_buf_.data();
      float* l = m + n_parts * n_group;
      float* o = l + n_parts * n_group;
      for (size_t p = 0; p < n_parts; ++p) {
        const float* part = partials_.data() + (task_first_[ih] + p) * stride;
        std::copy_n(part, n_group, m + p * n_group);
        std::copy_n(part + n_group, n_group, l + p * n_group);
        std::copy_n(part + 2 * n_group, static_cast<size_t>(n_group) * d, o + p * n_group * d);
      }
      const size_t off = group_offset(0, ih);
      attend_merge(static_cast<int>(n_parts), n_group, d, m, l, o, a_.attn_out.data() + off * d,
                   attn_m_.data() + off, attn_l_.data() + off);
    }
  } else {
    // Prefill: tiles of n_tile tokens, so each K/V row is read once for the queries of n_tile
    // tokens x the group; token t's queries stop at its own slot (limit).
    const int n_tile = std::max(1, k_attn_max_group * 3 / 4 / n_group);
    const int n_tiles = (n_tok + n_tile - 1) / n_tile;
    const int n_tasks = n_kv * n_tiles;
#pragma omp parallel num_threads(compute_threads())
    {
      std::vector<float> scratch, qt, ot, mt, lt;
      std::vector<uint32_t> limit;
#pragma omp for schedule(dynamic, 1)
      for (int task = 0; task < n_tasks; ++task) {
        // Late tiles first: they see the most slots.
        const int ih = task % n_kv, tile = n_tiles - 1 - task / n_kv;
        const int t0 = tile * n_tile, t1 = std::min(n_tok, t0 + n_tile);
        const int n_q = (t1 - t0) * n_group;
        const kv_head& h = cache_.head(il, ih);
        qt.resize(static_cast<size_t>(n_q) * d);
        ot.resize(qt.size());
        mt.resize(n_q);
        lt.resize(n_q);
        limit.resize(n_q);
        for (int t = t0; t < t1; ++t) {
          const size_t r = static_cast<size_t>(t - t0) * n_group;
          std::copy_n(a_.q.data() + group_offset(t, ih) * d, static_cast<size_t>(n_group) * d, qt.data() + r * d);
          std::fill_n(limit.data() + r, n_group, static_cast<uint32_t>(h.n_live() - (n_tok - 1 - t)));
        }
        attend(h.k, h.v, runs_[ih], limit[n_q - 1], qt.data(), n_q, limit.data(), scale, ot.data(), mt.data(),
               lt.data(), scratch);
        for (int t = t0; t < t1; ++t) {
          const size_t r = static_cast<size_t>(t - t0) * n_group, off = group_offset(t, ih);
          std::copy_n(ot.data() + r * d, static_cast<size_t>(n_group) * d, a_.attn_out.data() + off * d);
          std::copy_n(mt.data() + r, n_group, attn_m_.data() + off);
          std::copy_n(lt.data() + r, n_group, attn_l_.data() + off);
        }
      }
    }
  }

  const bool keep_weights = observer_ != nullptr || track_attention_;
  if (keep_weights) attention_weights(il, n_tok);
  if (measure_recall_ && cache_.mask_mode()) attention_recall(il, n_tok);
  if (track_attention_) accumulate_attention(il, n_tok);
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
    obs.k_pre_rope = a_.k_pre.data();
    obs.k_post_rope = a_.k.data();
    obs.attn = ptrs;
    obs.cache = &cache_;
    observer_->on_layer(obs);
  }
}

// attn_weights_[g] [n_tok, n_slots]: exp(s - m) / l over the visible live slots, 0 elsewhere, with
// the kernel's statistics m, l.
void session::attention_weights(int il, int n_tok) {
  const model_config& c = model_.config();
  const int d = c.d_head;
  const int n_group = c.n_group();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  attn_weights_.resize(c.n_head);
  for (int g = 0; g < c.n_head; ++g) {
    attn_weights_[g].assign(static_cast<size_t>(n_tok) * cache_.head(il, g / n_group).n_slots(), 0.0f);
  }
  const int n_pairs = c.n_kv_head * n_tok;
#pragma omp parallel num_threads(compute_threads())
  {
    std::vector<float> kbuf(d);
#pragma omp for schedule(dynamic, 4)
    for (int pair = 0; pair < n_pairs; ++pair) {
      const int ih = pair / n_tok, t = pair % n_tok;
      const kv_head& h = cache_.head(il, ih);
      const size_t n_visible = h.n_slots() - static_cast<size_t>(n_tok - 1 - t);
      for (size_t j = 0; j < n_visible; ++j) {
        if (h.masked[j]) continue;
        h.k.row_to_float(j, kbuf.data());
        for (int gi = 0; gi < n_group; ++gi) {
          const size_t qi = static_cast<size_t>(t) * c.n_head + static_cast<size_t>(ih) * n_group + gi;
          const float s = simd::dot(a_.q.data() + qi * d, kbuf.data(), d) * scale;
          attn_weights_[ih * n_group + gi][static_cast<size_t>(t) * h.n_slots() + j] =
              std::exp(s - attn_m_[qi]) / attn_l_[qi];
        }
      }
    }
  }
}

// For every (query head, token): the live share of the softmax mass over every visible slot,
// masked ones included, relative to the kernel's m and l (the masked slots' scores may exceed m:
// double).
void session::attention_recall(int il, int n_tok) {
  const model_config& c = model_.config();
  const int d = c.d_head;
  const int n_group = c.n_group();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int n_pairs = c.n_kv_head * n_tok;
  double recall_sum = 0.0;
#pragma omp parallel num_threads(compute_threads())
  {
    std::vector<float> kbuf(d);
    std::vector<double> masked_mass(n_group);
#pragma omp for schedule(dynamic, 4) reduction(+ : recall_sum)
    for (int pair = 0; pair < n_pairs; ++pair) {
      const int ih = pair / n_tok, t = pair % n_tok;
      const kv_head& h = cache_.head(il, ih);
      const size_t n_visible = h.n_slots() - static_cast<size_t>(n_tok - 1 - t);
      const size_t q0 = static_cast<size_t>(t) * c.n_head + static_cast<size_t>(ih) * n_group;
      std::fill(masked_mass.begin(), masked_mass.end(), 0.0);
      for (size_t j = 0; j < n_visible; ++j) {
        if (!h.masked[j]) continue;
        h.k.row_to_float(j, kbuf.data());
        for (int gi = 0; gi < n_group; ++gi) {
          const float s = simd::dot(a_.q.data() + (q0 + gi) * d, kbuf.data(), d) * scale;
          masked_mass[gi] += std::exp(static_cast<double>(s) - attn_m_[q0 + gi]);
        }
      }
      for (int gi = 0; gi < n_group; ++gi) {
        const double live = attn_l_[q0 + gi];
        recall_sum += live / (live + masked_mass[gi]);
      }
    }
  }
  recall_[il].sum += recall_sum;
  recall_[il].n += static_cast<int64_t>(c.n_head) * n_tok;
}

// H2O's received attention (summed over the group and the step's queries) and TOVA's last-query
// attention (mean over the group), from attn_weights_.
void session::accumulate_attention(int il, int n_tok) {
  const model_config& c = model_.config();
  const int n_group = c.n_group();
  for (int ih = 0; ih < c.n_kv_head; ++ih) {
    kv_head& h = cache_.head(il, ih);
    const size_t n = h.n_slots();
    for (int g = ih * n_group; g < (ih + 1) * n_group; ++g) {
      const float* w = attn_weights_[g].data();
      for (int t = 0; t < n_tok; ++t)
        for (size_t j = 0; j < n; ++j) h.attn_sum[j] += w[static_cast<size_t>(t) * n + j];
    }
    std::fill(h.attn_last.begin(), h.attn_last.end(), 0.0f);
    for (int g = ih * n_group; g < (ih + 1) * n_group; ++g) {
      const float* w = attn_weights_[g].data() + static_cast<size_t>(n_tok - 1) * n;
      for (size_t j = 0; j < n; ++j) h.attn_last[j] += w[j] / n_group;
    }
  }
}

}  // namespace kvgate
