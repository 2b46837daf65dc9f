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

namespace {

// The passes beside the kernel score tiles of queries against lists of slots through the kernel's
// scores pass (attend_scores): a tile is up to k_attn_max_group queries, the group's query heads
// for a few consecutive tokens, so each K row is read once per tile, not once per token.
struct score_tiles {
  int n_tok, n_head, n_group, d, n_tile;
  float scale;

  score_tiles(const model_config& c, int n_tok)
      : n_tok(n_tok), n_head(c.n_head), n_group(c.n_group()), d(c.d_head),
        n_tile(std::max(1, k_attn_max_group / c.n_group())), scale(1.0f / std::sqrt(static_cast<float>(c.d_head))) {}

  int n_tiles() const { return (n_tok + n_tile - 1) / n_tile; }

  // For tile `tile` of KV head h: the scores of its queries (token t0 + r / n_group, query head
  // r % n_group of the group) against the first slots of `slots` (ascending physical indices)
  // that its last token sees, as rows sc [n_q][n]; then per query f(t, gi, row, cnt) with the
  // cnt <= n slots that token sees. q: the step's queries [n_tok, n_head, d].
  template <typename F>
  void run(const kv_head& h, int ih, int tile, const float* q, const std::vector<uint32_t>& slots,
           std::vector<float>& qt, std::vector<float>& sc, F&& f) const {
    const int t0 = tile * n_tile, t1 = std::min(n_tok, t0 + n_tile);
    auto seen_by = [&](int t) {  // slots of the list token t sees (its own and those before)
      const uint32_t n_visible = static_cast<uint32_t>(h.n_slots() - static_cast<size_t>(n_tok - 1 - t));
      return static_cast<size_t>(std::lower_bound(slots.begin(), slots.end(), n_visible) - slots.begin());
    };
    const size_t n = seen_by(t1 - 1);
    const int n_q = (t1 - t0) * n_group;
    qt.resize(static_cast<size_t>(n_q) * d);
    for (int t = t0; t < t1; ++t) {
      const size_t src = (static_cast<size_t>(t) * n_head + static_cast<size_t>(ih) * n_group) * d;
      std::copy_n(q + src, static_cast<size_t>(n_group) * d, qt.data() + static_cast<size_t>(t - t0) * n_group * d);
    }
    sc.resize(static_cast<size_t>(n_q) * n);
    alignas(32) float s[k_attn_max_group][k_attn_block];
    for (int g0 = 0; g0 < n_q; g0 += k_attn_max_group) {
      const int ng = std::min(k_attn_max_group, n_q - g0);
      for (size_t j0 = 0; j0 < n; j0 += k_attn_block) {
        const int nb = static_cast<int>(std::min<size_t>(k_attn_block, n - j0));
        attend_scores(h.k, slots.data() + j0, nb, qt.data() + static_cast<size_t>(g0) * d, ng, scale, s);
        for (int g = 0; g < ng; ++g) std::copy_n(s[g], nb, sc.data() + static_cast<size_t>(g0 + g) * n + j0);
      }
    }
    for (int t = t0; t < t1; ++t) {
      const size_t cnt = seen_by(t);
      for (int gi = 0; gi < n_group; ++gi) f(t, gi, sc.data() + (static_cast<size_t>(t - t0) * n_group + gi) * n, cnt);
    }
  }
};

// The physical slots of h with masked[j] == want, ascending.
void slots_where(const kv_head& h, uint8_t want, std::vector<uint32_t>& out) {
  out.clear();
  for (size_t j = 0; j < h.n_slots(); ++j) {
    if (h.masked[j] == want) out.push_back(static_cast<uint32_t>(j));
  }
}

}  // namespace

// attn_weights_[g] [n_tok, n_slots]: exp(s - m) / l over the visible live slots, 0 elsewhere, with
// the kernel's statistics m, l.
void session::attention_weights(int il, int n_tok) {
  const model_config& c = model_.config();
  const int n_group = c.n_group();
  attn_weights_.resize(c.n_head);
  for (int g = 0; g < c.n_head; ++g) {
    attn_weights_[g].assign(static_cast<size_t>(n_tok) * cache_.head(il, g / n_group).n_slots(), 0.0f);
  }
  pass_slots_.resize(c.n_kv_head);
  for (int ih = 0; ih < c.n_kv_head; ++ih) slots_where(cache_.head(il, ih), 0, pass_slots_[ih]);
  const score_tiles tiles(c, n_tok);
  const int n_tasks = c.n_kv_head * tiles.n_tiles();
#pragma omp parallel num_threads(compute_threads())
  {
    std::vector<float> qt, sc;
#pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < n_tasks; ++task) {
      const int ih = task % c.n_kv_head, tile = task / c.n_kv_head;
      const kv_head& h = cache_.head(il, ih);
      const std::vector<uint32_t>& live = pass_slots_[ih];
      tiles.run(h, ih, tile, a_.q.data(), live, qt, sc, [&](int t, int gi, float* row, size_t cnt) {
        const size_t qi = static_cast<size_t>(t) * c.n_head + static_cast<size_t>(ih) * n_group + gi;
        simd::exp_shifted(row, attn_m_[qi], row, static_cast<int64_t>(cnt));
        const float inv_l = 1.0f / attn_l_[qi];
        float* w = attn_weights_[ih * n_group + gi].data() + static_cast<size_t>(t) * h.n_slots();
        for (size_t k = 0; k < cnt; ++k) w[live[k]] = row[k] * inv_l;
      });
    }
  }
}

// For every (query head, token): the live share of the softmax mass over every visible slot,
// masked ones included, relative to the kernel's m and l. The masked slots' scores may exceed m,
// so their mass is exp(mx - m) (in double) times the sum of exp(s - mx) (mx: their largest score).
// Summed per task, then over tasks in order (the same bits for any thread count).
void session::attention_recall(int il, int n_tok) {
  const model_config& c = model_.config();
  const int n_group = c.n_group();
  pass_slots_.resize(c.n_kv_head);
  for (int ih = 0; ih < c.n_kv_head; ++ih) slots_where(cache_.head(il, ih), 1, pass_slots_[ih]);
  const score_tiles tiles(c, n_tok);
  const int n_tasks = c.n_kv_head * tiles.n_tiles();
  std::vector<double> task_sum(n_tasks, 0.0);
#pragma omp parallel num_threads(compute_threads())
  {
    std::vector<float> qt, sc;
#pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < n_tasks; ++task) {
      const int ih = task % c.n_kv_head, tile = task / c.n_kv_head;
      tiles.run(cache_.head(il, ih), ih, tile, a_.q.data(), pass_slots_[ih], qt, sc,
                [&](int t, int gi, float* row, size_t cnt) {
                  const size_t qi = static_cast<size_t>(t) * c.n_head + static_cast<size_t>(ih) * n_group + gi;
                  double masked_mass = 0.0;
                  if (cnt > 0) {
                    const float mx = *std::max_element(row, row + cnt);
                    simd::exp_shifted(row, mx, row, static_cast<int64_t>(cnt));
                    masked_mass = std::exp(static_cast<double>(mx) - attn_m_[qi]) * simd::sum(row, static_cast<int64_t>(cnt));
                  }
                  const double live = attn_l_[qi];
                  task_sum[task] += live / (live + masked_mass);
                });
    }
  }
  for (double x : task_sum) recall_[il].sum += x;
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
