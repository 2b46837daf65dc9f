// Every policy's scorer: recency (window, streaming), accumulated attention (H2O), last-query
// attention (TOVA), key norm, key dissimilarity (KeyDiff), attention from the last 64 queries
// (SnapKV), random, and the learned gates (one batched gate-bank call for the candidates of every
// head).
#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "common/error.h"
#include "common/random.h"
#include "model/forward.h"
#include "policy/policy.h"

namespace kvgate {

namespace {

// Calls f(head, il, ih) for every head with a non-empty range.
template <typename F>
void for_each_range(kv_cache& cache, const score_request& req, F&& f) {
  const int n_kv = cache.n_kv_head();
  for (int il = 0; il < cache.n_layer(); ++il) {
    for (int ih = 0; ih < n_kv; ++ih) {
      const slot_range r = req.ranges[il * n_kv + ih];
      if (r.size()) f(cache.head(il, ih), r);
    }
  }
}

// StreamingLLM's rule as a score: newer is better, so a budget keeps the most recent slots.
class recency_scorer final : public scorer {
 public:
  scorer_needs needs() const override { return {}; }
  void score(kv_cache& cache, const score_request& req) override {
    for_each_range(cache, req, [](kv_head& h, slot_range r) {
      for (uint32_t j = r.begin; j < r.end; ++j) h.score[j] = static_cast<float>(h.pos[j]);
    });
  }
};

// H2O with kvpress ObservedAttention's normalization: the attention a slot has received, divided
// by the number of queries that could see it (every position from its own to t, all of which it
// was live for: evicted slots never come back), averaged over the query group. Without the
// division old tokens win merely for having been seen longer.
class h2o_scorer final : public scorer {
 public:
  explicit h2o_scorer(int n_group) : n_group_(n_group) {}
  scorer_needs needs() const override { return {.track_attention = true, .dynamic = true}; }
  void score(kv_cache& cache, const score_request& req) override {
    for_each_range(cache, req, [&](kv_head& h, slot_range r) {
      for (uint32_t j = r.begin; j < r.end; ++j) {
        const double n_queries = static_cast<double>(req.t_last) - h.pos[j] + 1;
        h.score[j] = static_cast<float>(h.attn_sum[j] / (n_group_ * n_queries));
      }
    });
  }

 private:
  int n_group_;
};

// TOVA: the attention of the newest query, averaged over the group (kv_head::attn_last).
class tova_scorer final : public scorer {
 public:
  scorer_needs needs() const override { return {.track_attention = true, .dynamic = true}; }
  void score(kv_cache& cache, const score_request& req) override {
    for_each_range(cache, req, [](kv_head& h, slot_range r) {
      for (uint32_t j = r.begin; j < r.end; ++j) h.score[j] = h.attn_last[j];
    });
  }
};

// -||k||: low-norm keys draw attention. RoPE is a rotation, so the stored (rotated) key has the
// norm of the key the model computed.
class knorm_scorer final : public scorer {
 public:
  explicit knorm_scorer(int d_head) : d_(d_head) {}
  scorer_needs needs() const override { return {}; }
  void score(kv_cache& cache, const score_request& req) override {
    std::vector<float> k(d_);
    for_each_range(cache, req, [&](kv_head& h, slot_range r) {
      for (uint32_t j = r.begin; j < r.end; ++j) {
        h.k.to_float(j, 1, k.data());
        double ss = 0.0;
        for (int i = 0; i < d_; ++i) ss += static_cast<double>(k[i]) * k[i];
        h.score[j] = -static_cast<float>(std::sqrt(ss));
      }
    });
  }

 private:
  int d_;
};

// KeyDiff: a key unlike the others is kept. Score = -cos(k_j, m), m the mean of the head's live
// unit-normalized keys (sinks and window included), recomputed every step as the set changes.
// Keys after RoPE, as the cache stores them (kvpress scores the cached keys too).
class keydiff_scorer final : public scorer {
 public:
  explicit keydiff_scorer(int d_head) : d_(d_head), mean_(d_head) {}
  scorer_needs needs() const override { return {.dynamic = true}; }
  void score(kv_cache& cache, const score_request& req) override {
    for_each_range(cache, req, [&](kv_head& h, slot_range r) {
      std::fill(mean_.begin(), mean_.end(), 0.0);
      keys_.resize(h.n_slots() * d_);
      h.k.to_float(0, h.n_slots(), keys_.data());
      for (size_t j = 0; j < h.n_slots(); ++j) {
        if (!h.masked.empty() && h.masked[j]) continue;
        const float* k = keys_.data() + j * d_;
        const double inv = 1.0 / std::max(norm(k), 1e-12);
        for (int i = 0; i < d_; ++i) mean_[i] += k[i] * inv;
      }
      const double mean_norm = std::max(norm(mean_.data()), 1e-12);
      for (uint32_t j = r.begin; j < r.end; ++j) {
        const float* k = keys_.data() + static_cast<size_t>(j) * d_;
        double dot = 0.0;
        for (int i = 0; i < d_; ++i) dot += k[i] * mean_[i];
        h.score[j] = -static_cast<float>(dot / (std::max(norm(k), 1e-12) * mean_norm));
      }
    });
  }

 private:
  template <typename T>
  double norm(const T* x) const {
    double ss = 0.0;
    for (int i = 0; i < d_; ++i) ss += static_cast<double>(x[i]) * x[i];
    return std::sqrt(ss);
  }
  int d_;
  std::vector<double> mean_;  // [d_head] sum of the live unit keys
  std::vector<float> keys_;   // [n_slots, d_head] the head's keys as floats
};

// SnapKV (kvpress SnapKVPress: window_size 64, kernel_size 5), in an engine that evicts after
// every step instead of once after the prompt:
//   raw(j)   = mean over the last 64 query positions the engine processed (fewer at the start of
//              a sequence) of the softmax weight slot j received, averaged over the query heads
//              of its group; a query that could not see j (j after it) or that ran while j was
//              already evicted contributes 0, a query's softmax covers the slots live at its step;
//   score(j) = mean of raw over j and its two live neighbours on each side in slot order (a
//              1-D average pool of width 5 with zero padding: torch's avg_pool1d default divides
//              by 5 at the ends too). Neighbours are live slots of the head, sinks and window
//              included; kvpress pools the prefix keys only, with zeros past the window edge.
// "The last 64 queries" is realised exactly: per head, each slot holds a ring of 64 weights, entry
// q % 64 written by the query at position q for every slot live at that step (the observer
// shows every query's weights, prefill chunks included), so the ring always holds the latest 64
// queries and the score needs no history beyond it. Memory: 64 floats per live slot per head
// (256 bytes, as much as an f16 key + value of d_head 64), freed when the cache compacts: at
// 8k context with 25% of the KV kept, 90 heads x 2,048 slots x 256 B = 47 MB; with nothing
// evicted (or in mask mode, where holes stay) 189 MB at 8k for SmolLM2-135M.
// When the question ends the prompt, the last 64 queries are the question: SnapKV sees it.
// policy_config::observe_end stops observing at a position (the question-outside variant).
class snapkv_scorer final : public scorer, public observer {
 public:
  snapkv_scorer(const model_config& model, int32_t observe_end)
      : n_kv_(model.n_kv_head), n_group_(model.n_group()), observe_end_(observe_end),
        rings_(static_cast<size_t>(model.n_layer) * model.n_kv_head) {}
  scorer_needs needs() const override { return {.dynamic = true}; }
  observer* attention_observer() override { return this; }

  void on_layer(const layer_observation& obs) override {
    if (obs.n_tok <= 0) return;
    if (obs.pos[0] == 0) {  // a new sequence
      for (int ih = 0; ih < n_kv_; ++ih) rings_[obs.il * n_kv_ + ih] = {};
      if (obs.il == 0) n_observed_ = 0;
    }
    // The step's queries before observe_end; only the last 64 of them can still be in the window.
    int t_end = obs.n_tok;
    while (t_end > 0 && observe_end_ >= 0 && obs.pos[t_end - 1] >= observe_end_) --t_end;
    const int t_first = std::max(0, t_end - k_snapkv_queries);
    for (int ih = 0; ih < n_kv_; ++ih) {
      const kv_head& h = obs.cache->head(obs.il, ih);
      ring& r = rings_[obs.il * n_kv_ + ih];
      sync(r, h);
      const size_t n = h.n_slots();
      for (int t = t_first; t < t_end; ++t) {
        const int e = obs.pos[t] % k_snapkv_queries;
        for (size_t j = 0; j < n; ++j) r.w[j * k_snapkv_queries + e] = 0.0f;
        for (int g = ih * n_group_; g < (ih + 1) * n_group_; ++g) {
          const float* a = obs.attn[g] + static_cast<size_t>(t) * n;
          for (size_t j = 0; j < n; ++j) r.w[j * k_snapkv_queries + e] += a[j] / n_group_;
        }
      }
    }
    if (obs.il == 0) n_observed_ += t_end - t_first;
  }

  size_t bytes() const override {
    size_t n = 0;
    for (const ring& r : rings_) n += r.pos.size() * sizeof(int32_t) + r.w.size() * sizeof(float);
    return n;
  }

  void score(kv_cache& cache, const score_request& req) override {
    const float inv_queries = 1.0f / static_cast<float>(std::clamp<int64_t>(n_observed_, 1, k_snapkv_queries));
    const int half = k_snapkv_pool / 2;
    for (int il = 0; il < cache.n_layer(); ++il) {
      for (int ih = 0; ih < n_kv_; ++ih) {
        const slot_range rg = req.ranges[il * n_kv_ + ih];
        if (!rg.size()) continue;
        kv_head& h = cache.head(il, ih);
        const ring& r = rings_[il * n_kv_ + ih];
        if (r.pos.size() != h.n_slots() || r.pos.empty() || r.pos.back() != h.pos.back()) {
          fail("snapkv: its observer did not see the step (another observer replaced it on the session)");
        }
        auto raw = [&](size_t j) {
          const float* w = r.w.data() + j * k_snapkv_queries;
          float sum = 0.0f;
          for (int e = 0; e < k_snapkv_queries; ++e) sum += w[e];
          return sum * inv_queries;
        };
        // Live slots from `half` live neighbours before the range to `half` after it.
        live_.clear();
        size_t b = rg.begin;
        for (int k = 0; k < half && b > 0;) k += !h.masked[--b];
        size_t e = rg.end;
        for (int k = 0; k < half && e < h.n_slots(); ++e) k += !h.masked[e];
        for (size_t j = b; j < e; ++j)
          if (!h.masked[j]) live_.push_back(static_cast<uint32_t>(j));
        raw_.resize(live_.size());
        for (size_t i = 0; i < live_.size(); ++i) raw_[i] = raw(live_[i]);
        for (size_t i = 0; i < live_.size(); ++i) {
          const uint32_t j = live_[i];
          if (j < rg.begin || j >= rg.end) continue;
          float sum = 0.0f;
          for (int d = -half; d <= half; ++d) {
            const int64_t k = static_cast<int64_t>(i) + d;
            if (k >= 0 && k < static_cast<int64_t>(live_.size())) sum += raw_[k];
          }
          h.score[j] = sum / k_snapkv_pool;
        }
        for (uint32_t j = rg.begin; j < rg.end; ++j)
          if (h.masked[j]) h.score[j] = 0.0f;  // gone already; never decided on
      }
    }
  }

 private:
  // One head's rings, aligned with its slots after sync: w [n_slots, 64].
  struct ring {
    std::vector<int32_t> pos;
    std::vector<float> w;
  };

  // Aligns r with h's slots: the cache only drops slots (compaction) and appends newer ones.
  static void sync(ring& r, const kv_head& h) {
    const size_t n_old = r.pos.size(), n = h.n_slots();
    const size_t row = k_snapkv_queries;
    if (n_old <= n && (n_old == 0 || h.pos[n_old - 1] == r.pos.back())) {
      r.pos.assign(h.pos.begin(), h.pos.end());
      r.w.resize(n * row, 0.0f);
      return;
    }
    std::vector<float> w(n * row, 0.0f);
    size_t i = 0;
    for (size_t j = 0; j < n; ++j) {
      while (i < n_old && r.pos[i] < h.pos[j]) ++i;
      if (i < n_old && r.pos[i] == h.pos[j]) std::copy_n(r.w.data() + i * row, row, w.data() + j * row);
    }
    r.pos.assign(h.pos.begin(), h.pos.end());
    r.w = std::move(w);
  }

  int n_kv_, n_group_;
  int32_t observe_end_;
  std::vector<ring> rings_;  // [n_layer * n_kv_head]
  int64_t n_observed_ = 0;   // query positions observed in this sequence
  std::vector<uint32_t> live_;  // live slots around a range
  std::vector<float> raw_;      // [live_] unpooled scores
};

// A uniform score in [0, 1) that depends only on (seed, head, position), so the floor is
// reproducible whatever the chunking.
class random_scorer final : public scorer {
 public:
  explicit random_scorer(uint64_t seed) : seed_(seed) {}
  scorer_needs needs() const override { return {}; }
  void score(kv_cache& cache, const score_request& req) override {
    const int n_kv = cache.n_kv_head();
    for (int il = 0; il < cache.n_layer(); ++il) {
      for (int ih = 0; ih < n_kv; ++ih) {
        const slot_range r = req.ranges[il * n_kv + ih];
        kv_head& h = cache.head(il, ih);
        for (uint32_t j = r.begin; j < r.end; ++j) {
          const uint64_t key = (static_cast<uint64_t>(il * n_kv + ih) << 32) ^ static_cast<uint32_t>(h.pos[j]);
          h.score[j] = static_cast<float>(mix(seed_ ^ mix(key)) >> 40) / static_cast<float>(1ull << 24);
        }
      }
    }
  }

 private:
  static uint64_t mix(uint64_t x) { return splitmix64(x); }
  uint64_t seed_;
};

// The learned gates: the candidates of all heads go to the gate bank as one [H, n, d_head] block.
// Candidates arrive at the same positions in every head (nothing in the window or pending is ever
// evicted), so n is the same for all heads.
class learned_scorer final : public scorer {
 public:
  learned_scorer(std::shared_ptr<const gate_bank> gates, const model_config& model, int block, int window)
      : gates_(std::move(gates)), model_(model), block_(block), window_(window),
        pre_rope_(gates_->meta().key_kind == "pre-rope") {}
  // Pre-RoPE keys are recovered from the stored keys (forward::unrope), so the cache keeps no copy.
  scorer_needs needs() const override { return {.pre_rope_keys = false, .block = block_}; }

  void score(kv_cache& cache, const score_request& req) override {
    const int n_kv = cache.n_kv_head(), d = cache.d_head();
    const size_t n_heads = req.ranges.size();
    const uint32_t n = req.ranges[0].size();
    for (const slot_range& r : req.ranges) {
      if (r.size() != n) fail("learned policy: heads have different numbers of candidates ({} vs {})", r.size(), n);
    }
    if (n == 0) return;
    keys_.resize(n_heads * n * d);  // [H, n, d_head]
    for (size_t hd = 0; hd < n_heads; ++hd) {
      const int il = static_cast<int>(hd) / n_kv, ih = static_cast<int>(hd) % n_kv;
      const kv_head& h = cache.head(il, ih);
      const slot_range r = req.ranges[hd];
      float* keys = keys_.data() + hd * n * d;
      h.k.to_float(r.begin, n, keys);
      if (pre_rope_) {
        unrope_.build(model_, h.pos.data() + r.begin, static_cast<int>(n));  // usually once for all heads
        forward::unrope(model_, keys, unrope_);
      }
    }
    const int n_out = gates_->n_out();
    logits_.resize(n_heads * n * n_out);  // [H, n, n_out]
    gates_->score(keys_.data(), n, logits_.data());
    for (size_t hd = 0; hd < n_heads; ++hd) {
      kv_head& h = cache.head(static_cast<int>(hd) / n_kv, static_cast<int>(hd) % n_kv);
      const uint32_t b = req.ranges[hd].begin;
      for (uint32_t j = 0; j < n; ++j) {
        h.score[b + j] = gate_probability(logits_.data() + (hd * n + j) * n_out, n_out, window_);
      }
    }
  }

 private:
  std::shared_ptr<const gate_bank> gates_;
  model_config model_;
  int block_, window_;
  bool pre_rope_;
  forward::unrope_table unrope_;
  std::vector<float> keys_;    // [H, n, d_head]
  std::vector<float> logits_;  // [H, n, n_out]
};

}  // namespace

float gate_probability(const float* logits, int n_out, int window) {
  if (n_out == 1) return 1.0f / (1.0f + std::exp(-logits[0]));
  // Lifetime buckets: bucket b holds lifetimes [4^b, 4^(b+1)); a token is worth keeping when it
  // will still be attended after it leaves the window, i.e. lifetime >= window.
  int first = 0;
  for (int64_t span = 4; span <= window && first < n_out - 1; span *= 4) ++first;
  float max_logit = logits[0];
  for (int o = 1; o < n_out; ++o) max_logit = std::max(max_logit, logits[o]);
  double total = 0.0, kept = 0.0;
  for (int o = 0; o < n_out; ++o) {
    const double e = std::exp(static_cast<double>(logits[o]) - max_logit);
    total += e;
    if (o >= first) kept += e;
  }
  return static_cast<float>(kept / total);
}

namespace {

std::unique_ptr<scorer> make_learned(const policy_config& config, const model_config& model,
                                     std::shared_ptr<const gate_bank> gates) {
  if (!gates) fail("--policy learned needs --gates FILE: a gate bank trained for this model");
  const gate_meta& m = gates->meta();
  check_matches(m, model.name, model.arch, model.n_layer, model.n_kv_head, model.d_head);
  if (m.key_kind != "pre-rope" && m.key_kind != "post-rope") {
    fail("gate file key kind '{}' is neither pre-rope nor post-rope", m.key_kind);
  }
  if (config.gate_block < 1) fail("gate block {} must be at least 1", config.gate_block);
  return std::make_unique<learned_scorer>(std::move(gates), model, config.gate_block, config.window);
}

using gates_ptr = std::shared_ptr<const gate_bank>;

// The table (policy.h): one row per policy, in the order names are listed.
const policy_row k_policy_table[] = {
    {policy_kind::full, "full", selection_rule::keep_all, true, false, "-", "keeps every token (no eviction)",
     nullptr},
    {policy_kind::window, "window", selection_rule::recency, false, true, "--budget (default 0)",
     "the most recent tokens only, no sinks",
     [](const policy_config&, const model_config&, gates_ptr) -> std::unique_ptr<scorer> {
       return std::make_unique<recency_scorer>();
     }},
    {policy_kind::streaming, "streaming", selection_rule::recency, true, true, "--budget (default 0)",
     "StreamingLLM: sinks + the most recent tokens",
     [](const policy_config&, const model_config&, gates_ptr) -> std::unique_ptr<scorer> {
       return std::make_unique<recency_scorer>();
     }},
    {policy_kind::h2o, "h2o", selection_rule::scored, true, true, "--budget | --threshold",
     "H2O: mean attention received since the token arrived",
     [](const policy_config&, const model_config& m, gates_ptr) -> std::unique_ptr<scorer> {
       return std::make_unique<h2o_scorer>(m.n_group());
     }},
    {policy_kind::tova, "tova", selection_rule::scored, true, true, "--budget | --threshold",
     "TOVA: attention from the newest query",
     [](const policy_config&, const model_config&, gates_ptr) -> std::unique_ptr<scorer> {
       return std::make_unique<tova_scorer>();
     }},
    {policy_kind::knorm, "knorm", selection_rule::scored, true, true, "--budget | --threshold",
     "keys of low norm kept",
     [](const policy_config&, const model_config& m, gates_ptr) -> std::unique_ptr<scorer> {
       return std::make_unique<knorm_scorer>(m.d_head);
     }},
    {policy_kind::keydiff, "keydiff", selection_rule::scored, true, true, "--budget | --threshold",
     "KeyDiff: keys unlike the head's mean key kept",
     [](const policy_config&, const model_config& m, gates_ptr) -> std::unique_ptr<scorer> {
       return std::make_unique<keydiff_scorer>(m.d_head);
     }},
    {policy_kind::snapkv, "snapkv", selection_rule::scored, true, true, "--budget | --threshold",
     "SnapKV: attention from the last 64 queries, pooled over 5 neighbours",
     [](const policy_config& c, const model_config& m, gates_ptr) -> std::unique_ptr<scorer> {
       return std::make_unique<snapkv_scorer>(m, c.observe_end);
     }},
    {policy_kind::random, "random", selection_rule::scored, true, true, "--budget | --threshold, --seed",
     "a uniform random score (the floor)",
     [](const policy_config& c, const model_config&, gates_ptr) -> std::unique_ptr<scorer> {
       return std::make_unique<random_scorer>(c.seed);
     }},
    {policy_kind::learned, "learned", selection_rule::learned, true, false, "--gates, --threshold | --budget",
     "the learned per-head gates (sinks, window, threshold default to the gate file's)", make_learned},
};

}  // namespace

std::span<const policy_row> policy_table() { return k_policy_table; }

const policy_row& policy_row_of(policy_kind kind) {
  for (const policy_row& row : k_policy_table)
    if (row.kind == kind) return row;
  fail("policy {} has no row in the policy table", static_cast<int>(kind));
}

size_t scorer_bytes_per_slot(policy_kind kind) {
  return kind == policy_kind::snapkv ? sizeof(int32_t) + k_snapkv_queries * sizeof(float) : 0;
}

std::string policy_names() {
  std::string s;
  for (const policy_row& row : k_policy_table) s += (s.empty() ? "" : ", ") + std::string(row.name);
  return s;
}

std::vector<std::string> baseline_policy_names() {
  std::vector<std::string> names;
  for (const policy_row& row : k_policy_table)
    if (row.baseline) names.push_back(row.name);
  return names;
}

std::string policy_help() {
  std::string s;
  for (const policy_row& row : k_policy_table) {
    s += fmt::format("{}  {:<10} {}{}", s.empty() ? "" : "\n", row.name, row.help,
                     std::string_view(row.knobs) == "-" ? "" : fmt::format(" [{}]", row.knobs));
  }
  return s;
}

std::unique_ptr<scorer> make_scorer(const policy_config& config, const model_config& model,
                                    std::shared_ptr<const gate_bank> gates) {
  const policy_row& row = policy_row_of(config.kind);
  return row.make ? row.make(config, model, std::move(gates)) : nullptr;
}

}  // namespace kvgate
