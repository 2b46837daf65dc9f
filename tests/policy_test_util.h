// Helpers of tests/policy_test.cpp: a tiny model, an observer that records what the engine showed
// (the brute-force side of the checks), a hook that checks the cache after every step, and a
// stub gate bank with a known formula.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <random>

#include "model/model.h"
#include "policy/policy.h"
#include "test_util.h"
#include "tiny_model.h"

namespace kvgate::policy_testing {

inline constexpr int k_ctx = 256;

inline const std::string& tiny_model_path() {
  static const std::string path = [] {
    test::tiny_spec spec;
    spec.n_layer = 3;  // per-layer and global layouts differ only with more than one layer
    spec.n_ctx = k_ctx;
    const std::string p = test::temp_dir() + "/tiny_policy.gguf";
    test::write_tiny_model(p, spec);
    return p;
  }();
  return path;
}

inline const model& tiny_model() {
  static std::unique_ptr<model> m = model::load(tiny_model_path());
  return *m;
}

using test::random_tokens;

// Everything the engine showed an observer, keyed by (head, position): the brute-force side.
struct recorder : observer {
  int n_kv = 0, n_group = 0, d = 0;
  std::vector<std::vector<double>> attn_sum;    // [n_heads][k_ctx] attention received, all queries, group summed
  std::vector<std::vector<double>> attn_last;   // [n_heads][k_ctx] latest step's last query, group mean
  std::vector<std::vector<float>> k_pre, k_post;  // [n_heads][k_ctx * d]
  std::vector<std::vector<uint8_t>> seen, gone;   // [n_heads][k_ctx]
  // With record_rows: every query's attention, group mean: [n_heads][query pos * k_ctx + key pos].
  bool record_rows = false;
  std::vector<std::vector<double>> rows;
  observer* next = nullptr;   // also shown every layer (a policy's own observer: snapkv)
  int n_came_back = 0;        // evicted positions present again
  int n_attended_gone = 0;    // weight on a masked slot, or a distribution not summing to 1
  int n_evictions_seen = 0;

  explicit recorder(const model_config& c) : n_kv(c.n_kv_head), n_group(c.n_group()), d(c.d_head) {
    const size_t n_heads = static_cast<size_t>(c.n_layer) * n_kv;
    attn_sum.assign(n_heads, std::vector<double>(k_ctx, 0.0));
    attn_last = attn_sum;
    k_pre.assign(n_heads, std::vector<float>(static_cast<size_t>(k_ctx) * d));
    k_post = k_pre;
    seen.assign(n_heads, std::vector<uint8_t>(k_ctx, 0));
    gone = seen;
  }

  void on_layer(const layer_observation& obs) override {
    if (record_rows && rows.empty()) rows.assign(attn_sum.size(), std::vector<double>(size_t(k_ctx) * k_ctx, 0.0));
    for (int ih = 0; ih < n_kv; ++ih) {
      const int hd = obs.il * n_kv + ih;
      const kv_head& h = obs.cache->head(obs.il, ih);
      const size_t n = h.n_slots();
      std::vector<uint8_t> live(k_ctx, 0);
      for (size_t j = 0; j < n; ++j) {
        if (gone[hd][h.pos[j]] && !h.masked[j]) ++n_came_back;
        if (!h.masked[j]) live[h.pos[j]] = 1;
      }
      for (int p = 0; p < k_ctx; ++p) {
        if (seen[hd][p] && !live[p] && !gone[hd][p]) {
          gone[hd][p] = 1;
          ++n_evictions_seen;
        }
      }
      for (int t = 0; t < obs.n_tok; ++t) {
        const int p = obs.pos[t];
        seen[hd][p] = 1;
        const size_t src = (static_cast<size_t>(t) * n_kv + ih) * d;
        std::copy_n(obs.k_pre_rope + src, d, k_pre[hd].data() + static_cast<size_t>(p) * d);
        std::copy_n(obs.k_post_rope + src, d, k_post[hd].data() + static_cast<size_t>(p) * d);
      }
      std::fill(attn_last[hd].begin(), attn_last[hd].end(), 0.0);
      for (int g = ih * n_group; g < (ih + 1) * n_group; ++g) {
        for (int t = 0; t < obs.n_tok; ++t) {
          const float* w = obs.attn[g] + static_cast<size_t>(t) * n;
          double total = 0.0;
          for (size_t j = 0; j < n; ++j) {
            if (h.masked[j] && w[j] != 0.0f) ++n_attended_gone;
            total += w[j];
            attn_sum[hd][h.pos[j]] += w[j];
            if (t == obs.n_tok - 1) attn_last[hd][h.pos[j]] += w[j] / n_group;
            if (record_rows) rows[hd][size_t(obs.pos[t]) * k_ctx + h.pos[j]] += w[j] / n_group;
          }
          if (std::abs(total - 1.0) > 1e-4) ++n_attended_gone;
        }
      }
    }
    if (next) next->on_layer(obs);
  }
};

// Records what the engine shows and passes it on to the runner's own observer, if any.
inline void observe(session& s, recorder& rec, policy_runner& runner) {
  rec.next = runner.get_scorer() ? runner.get_scorer()->attention_observer() : nullptr;
  s.set_observer(&rec);
}

// Slot ranges of the long-term slots (sinks <= pos <= t - window) of every head, as the cache
// stands: to re-score it through the scorer interface.
inline std::vector<slot_range> long_term_ranges(const kv_cache& cache, int sinks, int window, int32_t t) {
  std::vector<slot_range> ranges;
  for (int il = 0; il < cache.n_layer(); ++il) {
    for (int ih = 0; ih < cache.n_kv_head(); ++ih) {
      const kv_head& h = cache.head(il, ih);
      uint32_t b = 0, e = 0;
      for (size_t j = 0; j < h.n_slots(); ++j) {
        if (h.pos[j] < sinks) b = e = static_cast<uint32_t>(j + 1);
        else if (h.pos[j] <= t - window) e = static_cast<uint32_t>(j + 1);
      }
      ranges.push_back({b, e});
    }
  }
  return ranges;
}

// Runs the policy, then a check on the cache after every step.
struct checked_hook : step_hook {
  policy_runner& runner;
  std::function<void(const kv_cache&, int32_t t_last)> check;
  checked_hook(policy_runner& r, std::function<void(const kv_cache&, int32_t)> f) : runner(r), check(std::move(f)) {}
  void on_step(kv_cache& cache, std::span<const int32_t> positions) override {
    runner.on_step(cache, positions);
    check(cache, positions.back());
  }
};

// Prefill in chunks of n_batch, then decode the rest one token at a time; logits of every step.
inline std::vector<float> run(session& s, const std::vector<int32_t>& tokens, int n_prefill) {
  std::vector<float> out;
  auto last = s.prefill(std::span(tokens).first(n_prefill));
  out.assign(last.begin(), last.end());
  for (size_t i = n_prefill; i < tokens.size(); ++i) {
    auto l = s.step(std::span(tokens).subspan(i, 1), logits_mode::last);
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

// A gate bank whose logit is (key[0] + bias[head]), built from the public API: hidden units
// relu(x0) and relu(-x0) carried through the second layer and subtracted in the output.
inline std::shared_ptr<gate_bank> stub_gates(const model_config& c, const std::string& key_kind,
                                      std::vector<float> bias) {
  gate_meta meta;
  meta.model_name = c.name;
  meta.model_arch = c.arch;
  meta.n_layer = c.n_layer;
  meta.n_kv_head = c.n_kv_head;
  meta.d_head = c.d_head;
  meta.key_kind = key_kind;
  meta.sinks = 4;
  meta.window = 16;
  meta.threshold = 0.5f;
  auto bank = std::make_shared<gate_bank>(meta, 1);
  const int H = bank->n_heads(), D = c.d_head, F = k_gate_hidden;
  for (int h = 0; h < H; ++h) {
    bank->w1()[(static_cast<size_t>(h) * D + 0) * F + 0] = 1.0f;
    bank->w1()[(static_cast<size_t>(h) * D + 0) * F + 1] = -1.0f;
    bank->w2()[(static_cast<size_t>(h) * F + 0) * F + 0] = 1.0f;
    bank->w2()[(static_cast<size_t>(h) * F + 1) * F + 1] = 1.0f;
    bank->w3()[static_cast<size_t>(h) * F + 0] = 1.0f;
    bank->w3()[static_cast<size_t>(h) * F + 1] = -1.0f;
    bank->b3()[h] = bias[h % bias.size()];
  }
  return bank;
}

inline policy_config make_config(policy_kind kind, select_mode mode, layout_kind layout = layout_kind::per_head) {
  policy_config c;
  c.kind = kind;
  c.sinks = kind == policy_kind::window ? 0 : 4;
  c.window = 16;
  c.mode = mode;
  c.budget = 8;
  c.threshold = 0.5f;  // random: about half the candidates; learned stub: logit > 0
  c.layout = layout;
  c.seed = 7;
  return c;
}

inline std::shared_ptr<gate_bank> default_stub(const model_config& c) {
  return stub_gates(c, "pre-rope", {0.0f, 0.3f, -0.2f});
}

// Positions held (live) by head (il, ih).
inline std::vector<int32_t> live_positions(const kv_cache& cache, int il, int ih) {
  const kv_head& h = cache.head(il, ih);
  std::vector<int32_t> out;
  for (size_t j = 0; j < h.n_slots(); ++j)
    if (!h.masked[j]) out.push_back(h.pos[j]);
  return out;
}

}  // namespace kvgate::policy_testing
