// The one path every policy takes after an engine step: find the candidates, ask the scorer,
// select (threshold or budget), combine per layout, let the cache evict.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "model/model.h"
#include "policy/policy.h"

namespace kvgate {

namespace {

using steady = std::chrono::steady_clock;

double seconds_since(steady::time_point t0) {
  return std::chrono::duration<double>(steady::now() - t0).count();
}

// Slots of h with positions in [first, last] (positions increase along the slots).
slot_range slots_between(const kv_head& h, int32_t first, int32_t last) {
  const auto a = std::lower_bound(h.pos.begin(), h.pos.end(), first);
  const auto b = std::upper_bound(a, h.pos.end(), last);
  return {static_cast<uint32_t>(a - h.pos.begin()), static_cast<uint32_t>(b - h.pos.begin())};
}

}  // namespace

policy_runner::policy_runner(const policy_config& config, const model_config& model,
                             std::unique_ptr<scorer> s)
    : config_(config), n_layer_(model.n_layer), n_kv_head_(model.n_kv_head), scorer_(std::move(s)) {
  if (scorer_) needs_ = scorer_->needs();
  if (config_.mode != select_mode::keep_all && !scorer_) {
    fail("policy {}: a selector without a scorer", policy_name(config_.kind));
  }
  // A dynamic score is only meaningful when every slot is re-scored on the step it is used.
  if (needs_.dynamic && needs_.block != 1) fail("policy {}: dynamic scores cannot wait in blocks", policy_name(config_.kind));

  // The layout's groups, then the pools that share a budget (whole groups only).
  const int n_heads = n_layer_ * n_kv_head_;
  switch (config_.layout) {
    case layout_kind::per_head:
      for (int h = 0; h < n_heads; ++h) groups_.push_back({h});
      break;
    case layout_kind::per_layer:
      for (int il = 0; il < n_layer_; ++il) {
        groups_.emplace_back();
        for (int ih = 0; ih < n_kv_head_; ++ih) groups_.back().push_back(il * n_kv_head_ + ih);
      }
      break;
    case layout_kind::global:
      groups_.emplace_back();
      for (int h = 0; h < n_heads; ++h) groups_.back().push_back(h);
      break;
  }
  const int n_groups = static_cast<int>(groups_.size());
  for (int g = 0; g < n_groups; ++g) {
    const int il = groups_[g].front() / n_kv_head_;
    const bool same_pool = !pools_.empty() &&
        (config_.pool == budget_pool::model ||
         (config_.pool == budget_pool::layer && groups_[pools_.back().back()].front() / n_kv_head_ == il));
    if (!same_pool) pools_.emplace_back();
    pools_.back().push_back(g);
    if (config_.pool == budget_pool::layer && groups_[g].back() / n_kv_head_ != il) {
      fail("policy {}: a layer budget pool cannot hold {} groups", policy_name(config_.kind), layout_name(config_.layout));
    }
  }
}

void policy_runner::attach(session& s) {
  s.set_step_hook(this);
  // Always set, null included: a runner attached before this one (a server slot's previous
  // request) may have installed its own observer and be gone now.
  s.set_observer(scorer_ ? scorer_->attention_observer() : nullptr);
  s.set_track_attention(needs_.track_attention);
  s.cache().set_keep_pre_rope(needs_.pre_rope_keys);
}

void policy_runner::on_step(kv_cache& cache, std::span<const int32_t> step_positions) {
  if (step_positions.empty()) return;
  const auto t0 = steady::now();
  if (step_positions.front() == 0) reset();
  const int32_t t_last = step_positions.back();
  const size_t n_full = static_cast<size_t>(n_layer_) * n_kv_head_ * (static_cast<size_t>(t_last) + 1);

  // The step has appended its tokens and not evicted yet: the most this step held.
  stats_.slots_peak = std::max(stats_.slots_peak, cache.n_live_total());
  stats_.bytes_peak = std::max(stats_.bytes_peak, cache.bytes_total() + state_bytes());
  stats_.slots_full_peak = std::max(stats_.slots_full_peak, n_full);

  const bool in_span = t_last >= config_.evict_from && (config_.evict_until < 0 || t_last <= config_.evict_until);
  if (config_.mode != select_mode::keep_all && in_span) select_and_evict(cache, t_last);

  const int64_t n_tok = static_cast<int64_t>(step_positions.size());
  stats_.n_steps += 1;
  stats_.n_tokens += n_tok;
  stats_.share_token_sum += n_tok * (static_cast<double>(cache.n_live_total()) / n_full);
  stats_.step_s += seconds_since(t0);
}

void policy_runner::select_and_evict(kv_cache& cache, int32_t t_last) {
  const int32_t sinks = config_.sinks;
  const int32_t last = t_last - config_.window;  // newest long-term position
  if (last < sinks) return;                      // nothing has left the window yet
  const int n_heads = n_layer_ * n_kv_head_;
  const bool budget = config_.mode == select_mode::budget;

  const int32_t first_new = std::max(scored_until_ + 1, sinks);
  const int32_t n_new = last - first_new + 1;
  // Pending candidates count against a budget, so they may not outnumber it.
  const int block = budget ? std::min(needs_.block, config_.budget + 1) : needs_.block;
  int32_t score_first = -1;  // positions [score_first, last] are scored this step
  if (budget && needs_.dynamic) {
    score_first = sinks;
  } else if (n_new > 0 && n_new >= block) {
    score_first = first_new;
  }
  if (score_first >= 0) {
    ranges_.resize(n_heads);
    int64_t n_pairs = 0;
    for (int il = 0; il < n_layer_; ++il) {
      for (int ih = 0; ih < n_kv_head_; ++ih) {
        slot_range& r = ranges_[il * n_kv_head_ + ih];
        r = slots_between(cache.head(il, ih), score_first, last);
        n_pairs += r.size();
      }
    }
    if (n_pairs > 0) {
      const auto t0 = steady::now();
      scorer_->score(cache, {.t_last = t_last, .ranges = ranges_});
      stats_.score_s += seconds_since(t0);
      stats_.n_score_calls += 1;
      stats_.n_scored += n_pairs;
    }
  }

  // What gets decided: threshold mode, the candidates just scored (once, never again); budget
  // mode, every scored long-term slot, with room left for the pending ones.
  int32_t decide_first, decide_last;
  size_t n_keep = 0;
  if (!budget) {
    if (score_first < 0 || n_new <= 0) return;
    decide_first = first_new;
    decide_last = last;
  } else {
    const int32_t scored_last = score_first >= 0 ? last : scored_until_;
    if (scored_last < sinks) return;
    const int32_t n_pending = last - scored_last;
    decide_first = sinks;
    decide_last = scored_last;
    n_keep = static_cast<size_t>(std::max(0, config_.budget - n_pending));
  }
  if (score_first >= 0) scored_until_ = last;

  if (budget && config_.pool != budget_pool::head) {
    for (const std::vector<int>& pool : pools_) evict_pool(cache, pool, decide_first, decide_last, n_keep);
  } else {
    for (const std::vector<int>& group : groups_) evict_group(cache, group, decide_first, decide_last, n_keep);
  }

  // The pre-RoPE keys were needed only until their slot was scored.
  if (needs_.pre_rope_keys) {
    const int32_t release_end = std::max(scored_until_ + 1, sinks);
    for (int il = 0; il < n_layer_; ++il)
      for (int ih = 0; ih < n_kv_head_; ++ih) cache.release_pre_rope(il, ih, release_end);
  }
}

slot_range policy_runner::score_group(const kv_cache& cache, std::span<const int> group, int32_t first,
                                      int32_t last) {
  auto head_of = [&](int h) -> const kv_head& { return cache.head(h / n_kv_head_, h % n_kv_head_); };
  const kv_head& h0 = head_of(group[0]);
  // The heads of a group hold the same positions: they started equal and always evict together.
  for (size_t g = 1; g < group.size(); ++g) {
    const kv_head& hg = head_of(group[g]);
    if (hg.n_slots() != h0.n_slots() || (h0.n_slots() && hg.pos.back() != h0.pos.back())) {
      fail("policy {}: heads of a {} group hold different slots ({} vs {})", policy_name(config_.kind),
           layout_name(config_.layout), h0.n_slots(), hg.n_slots());
    }
  }
  const slot_range r = slots_between(h0, first, last);
  const uint32_t m = r.size();
  // Group score: the best any head of the group gives; a NaN score counts as the worst.
  group_score_.assign(m, -std::numeric_limits<float>::infinity());
  for (int h : group) {
    const float* s = head_of(h).score.data() + r.begin;
    for (uint32_t j = 0; j < m; ++j) {
      if (!std::isnan(s[j])) group_score_[j] = std::max(group_score_[j], s[j]);
    }
  }
  return r;
}

void policy_runner::evict_group(kv_cache& cache, std::span<const int> group, int32_t first,
                                int32_t last, size_t n_keep) {
  const slot_range r = score_group(cache, group, first, last);
  const uint32_t m = r.size();
  if (m == 0) return;
  const kv_head& h0 = cache.head(group[0] / n_kv_head_, group[0] % n_kv_head_);

  keep_.assign(h0.n_slots(), 1);
  size_t n_evict = 0;
  if (config_.mode == select_mode::threshold) {
    for (uint32_t j = 0; j < m; ++j) {
      if (h0.masked[r.begin + j] || group_score_[j] > config_.threshold) continue;
      keep_[r.begin + j] = 0;
      ++n_evict;
    }
  } else {
    order_.clear();
    for (uint32_t j = 0; j < m; ++j) {
      if (!h0.masked[r.begin + j]) order_.push_back(j);  // masked slots are gone already
    }
    if (order_.size() > n_keep) {
      // Best first: higher score, then the more recent slot.
      auto better = [&](uint32_t a, uint32_t b) {
        return group_score_[a] != group_score_[b] ? group_score_[a] > group_score_[b] : a > b;
      };
      std::nth_element(order_.begin(), order_.begin() + n_keep, order_.end(), better);
      for (size_t i = n_keep; i < order_.size(); ++i) keep_[r.begin + order_[i]] = 0;
      n_evict = order_.size() - n_keep;
    }
  }
  if (n_evict == 0) return;
  for (int h : group) stats_.n_evicted += cache.evict(h / n_kv_head_, h % n_kv_head_, keep_);
}

void policy_runner::evict_pool(kv_cache& cache, std::span<const int> pool, int32_t first, int32_t last,
                              size_t n_keep_per_group) {
  items_.clear();
  for (int g : pool) {
    const slot_range r = score_group(cache, groups_[g], first, last);
    const kv_head& h0 = cache.head(groups_[g][0] / n_kv_head_, groups_[g][0] % n_kv_head_);
    for (uint32_t j = 0; j < r.size(); ++j) {
      const uint32_t slot = r.begin + j;
      if (!h0.masked[slot]) items_.push_back({group_score_[j], h0.pos[slot], static_cast<uint32_t>(g), slot});
    }
  }
  // Every group of a pool has as many heads, so each kept item costs the same slots.
  const size_t n_keep = n_keep_per_group * pool.size();
  if (items_.size() <= n_keep) return;
  // Best first: higher score, then the more recent position, then the lower group.
  auto better = [](const pool_item& a, const pool_item& b) {
    if (a.score != b.score) return a.score > b.score;
    if (a.pos != b.pos) return a.pos > b.pos;
    return a.group < b.group;
  };
  std::nth_element(items_.begin(), items_.begin() + n_keep, items_.end(), better);
  std::sort(items_.begin() + n_keep, items_.end(),
            [](const pool_item& a, const pool_item& b) { return a.group < b.group; });
  for (size_t i = n_keep; i < items_.size();) {
    const uint32_t g = items_[i].group;
    const std::vector<int>& group = groups_[g];
    keep_.assign(cache.head(group[0] / n_kv_head_, group[0] % n_kv_head_).n_slots(), 1);
    for (; i < items_.size() && items_[i].group == g; ++i) keep_[items_[i].slot] = 0;
    for (int h : group) stats_.n_evicted += cache.evict(h / n_kv_head_, h % n_kv_head_, keep_);
  }
}

std::unique_ptr<policy_runner> make_policy(const policy_config& config, const model_config& model,
                                           std::shared_ptr<const gate_bank> gates) {
  return std::make_unique<policy_runner>(config, model, make_scorer(config, model, std::move(gates)));
}

}  // namespace kvgate
