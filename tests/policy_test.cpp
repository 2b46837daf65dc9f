// Policies through the one path (score -> select -> layout -> cache evicts), checked on the cache
// contents and on the attention weights the engine reports, never on the runner's own counters:
// sinks and window stay, evicted slots are never attended again, `full` changes no bit, layouts
// hold what their votes say, H2O / TOVA / SnapKV scores match brute force over observed attention,
// budgets hold, thresholds keep exactly what is above them, the learned gates score in blocks, and
// the table of policies is the one list everything reads. Pooled budgets: policy_pool_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "policy/policy.h"
#include "policy_test_util.h"
#include "test_util.h"
#include "tiny_model.h"

namespace kvgate {
namespace {

using namespace policy_testing;

struct policy_case {
  policy_kind kind;
  select_mode mode;
  layout_kind layout;
  bool mask_mode = false;
};

std::string case_name(const ::testing::TestParamInfo<policy_case>& info) {
  std::string s = std::string(policy_name(info.param.kind)) + "_" +
                  (info.param.mode == select_mode::budget ? "budget" : "threshold") + "_" +
                  layout_name(info.param.layout) + (info.param.mask_mode ? "_masked" : "");
  for (char& ch : s) if (ch == '-') ch = '_';
  return s;
}

class every_policy : public ::testing::TestWithParam<policy_case> {};

TEST_P(every_policy, sinks_and_window_never_evicted_and_evicted_slots_never_attended) {
  const policy_case pc = GetParam();
  const model& m = tiny_model();
  const model_config& c = m.config();
  policy_config cfg = make_config(pc.kind, pc.mode, pc.layout);
  if (pc.layout == layout_kind::global) cfg.threshold = 0.95f;  // a union of 6 votes keeps much more
  auto runner = make_policy(cfg, c, default_stub(c));
  session s(m, {.n_ctx = k_ctx, .n_batch = 24});
  s.cache().set_mask_mode(pc.mask_mode);
  runner->attach(s);
  recorder rec(c);
  observe(s, rec, *runner);
  int n_steps = 0, n_missing = 0;
  checked_hook hook(*runner, [&](const kv_cache& cache, int32_t t) {
    ++n_steps;
    for (int il = 0; il < c.n_layer; ++il) {
      for (int ih = 0; ih < c.n_kv_head; ++ih) {
        const std::vector<int32_t> pos = live_positions(cache, il, ih);
        const std::set<int32_t> held(pos.begin(), pos.end());
        for (int32_t p = 0; p <= t; ++p) {
          const bool protected_pos = p < cfg.sinks || p > t - cfg.window;
          if (protected_pos && !held.count(p)) ++n_missing;
        }
        // What the cache holds beyond sinks and window: budget mode never more than B.
        if (cfg.mode == select_mode::budget) {
          size_t n_long = 0;
          for (int32_t p : pos) n_long += p >= cfg.sinks && p <= t - cfg.window;
          EXPECT_LE(n_long, static_cast<size_t>(cfg.budget)) << "head " << il << "," << ih << " at " << t;
          // and it is filled: min(B, long-term positions) are held.
          const int64_t n_cand = std::max<int64_t>(0, t - cfg.window - cfg.sinks + 1);
          EXPECT_EQ(n_long, static_cast<size_t>(std::min<int64_t>(cfg.budget, n_cand)));
        }
      }
    }
  });
  s.set_step_hook(&hook);
  run(s, random_tokens(120, 11), 50);
  EXPECT_EQ(n_steps, 3 + 70);
  EXPECT_EQ(n_missing, 0);
  EXPECT_EQ(rec.n_came_back, 0);
  EXPECT_EQ(rec.n_attended_gone, 0);
  EXPECT_GT(rec.n_evictions_seen, 0);  // the checks above had something to check
  EXPECT_GT(runner->stats().n_evicted, 0);
}

std::vector<policy_case> all_cases() {
  std::vector<policy_case> v;
  for (layout_kind l : {layout_kind::per_head, layout_kind::global}) {
    for (policy_kind k : {policy_kind::window, policy_kind::streaming, policy_kind::h2o, policy_kind::tova,
                          policy_kind::knorm, policy_kind::keydiff, policy_kind::snapkv, policy_kind::random,
                          policy_kind::learned}) {
      v.push_back({k, select_mode::budget, l});
    }
    v.push_back({policy_kind::snapkv, select_mode::threshold, l});
    v.push_back({policy_kind::random, select_mode::threshold, l});
    v.push_back({policy_kind::learned, select_mode::threshold, l});
    v.push_back({policy_kind::h2o, select_mode::threshold, l});
  }
  v.push_back({policy_kind::h2o, select_mode::budget, layout_kind::per_layer});
  v.push_back({policy_kind::h2o, select_mode::budget, layout_kind::per_head, true});
  v.push_back({policy_kind::snapkv, select_mode::budget, layout_kind::per_layer});
  v.push_back({policy_kind::snapkv, select_mode::budget, layout_kind::per_head, true});
  v.push_back({policy_kind::learned, select_mode::threshold, layout_kind::per_head, true});
  return v;
}

INSTANTIATE_TEST_SUITE_P(policies, every_policy, ::testing::ValuesIn(all_cases()), case_name);

TEST(policy, full_through_policy_path_bit_identical_logits) {
  auto m = model::load(test::default_model_path());
  const auto tokens = m->vocab().encode(
      "Attention sinks keep the first tokens; a local window keeps the last ones; learned gates decide "
      "about everything in between, one small MLP per head, scored in blocks.");
  const int n_prefill = static_cast<int>(tokens.size()) - 6;
  session plain(*m, {.n_ctx = 256, .n_batch = 8});
  const std::vector<float> ref = run(plain, tokens, n_prefill);

  policy_config full;  // kind full
  auto runner = make_policy(full, m->config());
  session with(*m, {.n_ctx = 256, .n_batch = 8});
  runner->attach(with);
  const std::vector<float> got = run(with, tokens, n_prefill);
  ASSERT_EQ(ref.size(), got.size());
  EXPECT_EQ(0, std::memcmp(ref.data(), got.data(), ref.size() * sizeof(float)));
  EXPECT_EQ(runner->stats().n_evicted, 0);
  EXPECT_DOUBLE_EQ(runner->stats().kv_share_mean(), 1.0);

  // Attention tracking (H2O's input) with a budget nothing exceeds is just as invisible...
  policy_config h2o = make_config(policy_kind::h2o, select_mode::budget);
  h2o.budget = 1000;
  auto tracked = make_policy(h2o, m->config());
  session with_h2o(*m, {.n_ctx = 256, .n_batch = 8});
  tracked->attach(with_h2o);
  const std::vector<float> got_h2o = run(with_h2o, tokens, n_prefill);
  EXPECT_EQ(0, std::memcmp(ref.data(), got_h2o.data(), ref.size() * sizeof(float)));

  // ...and a real eviction is not (the comparison can fail).
  h2o.budget = 2;
  auto evicting = make_policy(h2o, m->config());
  session with_evicting(*m, {.n_ctx = 256, .n_batch = 8});
  evicting->attach(with_evicting);
  const std::vector<float> got_evicting = run(with_evicting, tokens, n_prefill);
  EXPECT_NE(0, std::memcmp(ref.data(), got_evicting.data(), ref.size() * sizeof(float)));
}

TEST(policy, mask_mode_bit_identical_to_hard_eviction_through_policy_path) {
  const model& m = tiny_model();
  std::vector<float> out[2];
  for (int masked = 0; masked < 2; ++masked) {
    auto runner = make_policy(make_config(policy_kind::h2o, select_mode::budget), m.config());
    session s(m, {.n_ctx = k_ctx, .n_batch = 16});
    s.cache().set_mask_mode(masked);
    runner->attach(s);
    out[masked] = run(s, random_tokens(90, 5), 40);
    EXPECT_GT(runner->stats().n_evicted, 0);
  }
  EXPECT_EQ(0, std::memcmp(out[0].data(), out[1].data(), out[0].size() * sizeof(float)));
}

// Scores that are a known function of (head, position), through the public scorer interface:
// the layout test's votes are then exact.
struct hashed_scorer : scorer {
  int n_kv;
  explicit hashed_scorer(int n_kv_head) : n_kv(n_kv_head) {}
  static float value(int head, int32_t pos) {
    uint64_t x = (static_cast<uint64_t>(head) << 32 | static_cast<uint32_t>(pos)) * 0x9e3779b97f4a7c15ull;
    x ^= x >> 29;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 32;
    return static_cast<float>(x % 1000) / 1000.0f;
  }
  scorer_needs needs() const override { return {}; }
  void score(kv_cache& cache, const score_request& req) override {
    for (int hd = 0; hd < static_cast<int>(req.ranges.size()); ++hd) {
      kv_head& h = cache.head(hd / n_kv, hd % n_kv);
      for (uint32_t j = req.ranges[hd].begin; j < req.ranges[hd].end; ++j) h.score[j] = value(hd, h.pos[j]);
    }
  }
};

class layouts : public ::testing::TestWithParam<layout_kind> {};

TEST_P(layouts, each_head_holds_exactly_what_its_group_voted) {
  const model& m = tiny_model();
  const model_config& c = m.config();
  const int n_heads = c.n_layer * c.n_kv_head;
  policy_config cfg = make_config(policy_kind::random, select_mode::threshold, GetParam());
  cfg.threshold = GetParam() == layout_kind::global ? 0.97f : 0.7f;  // so the union still evicts
  policy_runner runner(cfg, c, std::make_unique<hashed_scorer>(c.n_kv_head));
  session s(m, {.n_ctx = k_ctx, .n_batch = 32});
  runner.attach(s);
  int n_bad = 0, n_checked = 0;
  checked_hook hook(runner, [&](const kv_cache& cache, int32_t t) {
    for (int hd = 0; hd < n_heads; ++hd) {
      // The heads whose votes count for this head: itself, its layer, or everyone.
      std::vector<int> voters;
      for (int v = 0; v < n_heads; ++v) {
        const bool same = GetParam() == layout_kind::global ||
                          (GetParam() == layout_kind::per_layer && v / c.n_kv_head == hd / c.n_kv_head) || v == hd;
        if (same) voters.push_back(v);
      }
      std::vector<int32_t> expected;
      for (int32_t p = 0; p <= t; ++p) {
        bool keep = p < cfg.sinks || p > t - cfg.window;
        for (int v : voters) keep = keep || hashed_scorer::value(v, p) > cfg.threshold;
        if (keep) expected.push_back(p);
      }
      n_bad += live_positions(cache, hd / c.n_kv_head, hd % c.n_kv_head) != expected;
      ++n_checked;
    }
    if (GetParam() != layout_kind::per_head) {  // grouped heads hold identical position lists
      for (int hd = 1; hd < n_heads; ++hd) {
        const bool same_group = GetParam() == layout_kind::global || hd % c.n_kv_head != 0;
        if (same_group) {
          EXPECT_EQ(cache.head(hd / c.n_kv_head, hd % c.n_kv_head).pos,
                    cache.head((hd - 1) / c.n_kv_head, (hd - 1) % c.n_kv_head).pos);
        }
      }
    }
  });
  s.set_step_hook(&hook);
  run(s, random_tokens(110, 3), 64);
  EXPECT_EQ(n_bad, 0) << "of " << n_checked;
  EXPECT_GT(runner.stats().n_evicted, 0);
  // Per-head caches really differ from head to head (else the test could not tell layouts apart).
  if (GetParam() == layout_kind::per_head) {
    EXPECT_NE(s.cache().head(0, 0).pos, s.cache().head(0, 1).pos);
  }
}

INSTANTIATE_TEST_SUITE_P(policy, layouts,
                         ::testing::Values(layout_kind::per_head, layout_kind::per_layer, layout_kind::global),
                         [](const auto& info) {
                           std::string s = layout_name(info.param);
                           for (char& ch : s) if (ch == '-') ch = '_';
                           return s;
                         });

TEST(policy, threshold_mode_keeps_exactly_the_knorm_candidates_above_it) {
  const model& m = tiny_model();
  const model_config& c = m.config();
  const auto tokens = random_tokens(100, 9);
  // A threshold in the middle of the key norms, from a full-cache run.
  float threshold = 0.0f;
  {
    session s(m, {.n_ctx = k_ctx, .n_batch = 32, .kv = kv_type::f32});  // exact keys: the reference reads f32 activations
    run(s, tokens, 60);
    std::vector<float> norms;
    for (int il = 0; il < c.n_layer; ++il)
      for (int ih = 0; ih < c.n_kv_head; ++ih) {
        const kv_head& h = s.cache().head(il, ih);
        std::vector<float> k(c.d_head);
        for (size_t j = 0; j < h.n_slots(); ++j) {
          h.k.to_float(j, 1, k.data());
          double ss = 0;
          for (int i = 0; i < c.d_head; ++i) ss += double(k[i]) * k[i];
          norms.push_back(static_cast<float>(std::sqrt(ss)));
        }
      }
    std::nth_element(norms.begin(), norms.begin() + norms.size() / 2, norms.end());
    threshold = -norms[norms.size() / 2];
  }
  policy_config cfg = make_config(policy_kind::knorm, select_mode::threshold);
  cfg.threshold = threshold;
  auto runner = make_policy(cfg, c);
  session s(m, {.n_ctx = k_ctx, .n_batch = 32, .kv = kv_type::f32});  // exact keys: the reference reads f32 activations
  runner->attach(s);
  recorder rec(c);
  s.set_observer(&rec);
  run(s, tokens, 60);
  const int32_t t = static_cast<int32_t>(tokens.size()) - 1;
  int n_bad = 0, n_kept = 0, n_evicted = 0;
  for (int il = 0; il < c.n_layer; ++il) {
    for (int ih = 0; ih < c.n_kv_head; ++ih) {
      const int hd = il * c.n_kv_head + ih;
      const std::vector<int32_t> pos = live_positions(s.cache(), il, ih);
      const std::set<int32_t> held(pos.begin(), pos.end());
      for (int32_t p = cfg.sinks; p <= t - cfg.window; ++p) {
        double ss = 0;
        for (int i = 0; i < c.d_head; ++i) ss += std::pow(double(rec.k_post[hd][size_t(p) * c.d_head + i]), 2);
        const double score = -std::sqrt(ss);
        if (std::abs(score - threshold) < 1e-4) continue;  // too close to call in float
        n_bad += held.count(p) != (score > threshold);
        (score > threshold ? n_kept : n_evicted)++;
      }
    }
  }
  EXPECT_EQ(n_bad, 0);
  EXPECT_GT(n_kept, 0);
  EXPECT_GT(n_evicted, 0);
}

TEST(policy, streaming_budget_keeps_the_most_recent_candidates) {
  const model& m = tiny_model();
  policy_config cfg = make_config(policy_kind::streaming, select_mode::budget);
  auto runner = make_policy(cfg, m.config());
  session s(m, {.n_ctx = k_ctx, .n_batch = 20});
  runner->attach(s);
  run(s, random_tokens(80, 4), 45);
  std::vector<int32_t> expected;
  const int32_t t = 79;
  for (int32_t p = 0; p <= t; ++p)
    if (p < cfg.sinks || p > t - cfg.window - cfg.budget) expected.push_back(p);
  for (int il = 0; il < m.config().n_layer; ++il)
    for (int ih = 0; ih < m.config().n_kv_head; ++ih) EXPECT_EQ(s.cache().head(il, ih).pos, expected);
}

// H2O and TOVA read what the engine accumulated; the recorder sums the same weights per position
// in double from the observer, across evictions and compactions.
class attention_scores : public ::testing::TestWithParam<policy_kind> {};

TEST_P(attention_scores, match_brute_force_from_observed_attention) {
  const model& m = tiny_model();
  const model_config& c = m.config();
  for (int budget : {1000, 6}) {  // nothing evicted (full attention), then heavy eviction
    policy_config cfg = make_config(GetParam(), select_mode::budget);
    cfg.budget = budget;
    auto runner = make_policy(cfg, c);
    session s(m, {.n_ctx = k_ctx, .n_batch = 16});
    runner->attach(s);
    recorder rec(c);
    s.set_observer(&rec);
    const auto tokens = random_tokens(90, 21);
    run(s, tokens, 48);
    const int32_t t = static_cast<int32_t>(tokens.size()) - 1;
    double max_err = 0.0;
    int n_compared = 0;
    for (int il = 0; il < c.n_layer; ++il) {
      for (int ih = 0; ih < c.n_kv_head; ++ih) {
        const int hd = il * c.n_kv_head + ih;
        const kv_head& h = s.cache().head(il, ih);
        for (size_t j = 0; j < h.n_slots(); ++j) {
          const int32_t p = h.pos[j];
          if (p < cfg.sinks || p > t - cfg.window) continue;  // only long-term slots are scored
          const double expected = GetParam() == policy_kind::h2o
                                      ? rec.attn_sum[hd][p] / (c.n_group() * double(t - p + 1))
                                      : rec.attn_last[hd][p];
          max_err = std::max(max_err, std::abs(h.score[j] - expected) / std::max(expected, 1e-3));
          ++n_compared;
        }
      }
    }
    std::printf("%s budget %d: %d scores, max relative error %.3g\n", policy_name(GetParam()), budget,
                n_compared, max_err);
    EXPECT_GT(n_compared, 0);
    EXPECT_LT(max_err, 1e-4);
    if (budget < 100) {
      EXPECT_GT(rec.n_evictions_seen, 0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(policy, attention_scores, ::testing::Values(policy_kind::h2o, policy_kind::tova),
                         [](const auto& info) { return std::string(policy_name(info.param)); });

// KeyDiff from the keys the engine showed: -cos(k_p, mean of the live unit keys), in double.
TEST(policy, keydiff_scores_match_brute_force_from_observed_keys) {
  const model& m = tiny_model();
  const model_config& c = m.config();
  policy_config cfg = make_config(policy_kind::keydiff, select_mode::budget);
  cfg.budget = 10;
  auto runner = make_policy(cfg, c);
  session s(m, {.n_ctx = k_ctx, .n_batch = 16, .kv = kv_type::f32});  // exact keys: the reference reads f32 activations
  runner->attach(s);
  recorder rec(c);
  s.set_observer(&rec);
  const auto tokens = random_tokens(90, 33);
  run(s, tokens, 48);
  const int32_t t = static_cast<int32_t>(tokens.size()) - 1;
  const int d = c.d_head;
  // Score the cache as it stands (the runner scored it before its last eviction, over a larger
  // set): every long-term slot of every head.
  std::vector<slot_range> ranges;
  for (int il = 0; il < c.n_layer; ++il) {
    for (int ih = 0; ih < c.n_kv_head; ++ih) {
      const kv_head& h = s.cache().head(il, ih);
      uint32_t b = 0, e = 0;
      for (size_t j = 0; j < h.n_slots(); ++j) {
        if (h.pos[j] < cfg.sinks) b = e = static_cast<uint32_t>(j + 1);
        else if (h.pos[j] <= t - cfg.window) e = static_cast<uint32_t>(j + 1);
      }
      ranges.push_back({b, e});
    }
  }
  runner->get_scorer()->score(s.cache(), {.t_last = t, .ranges = ranges});
  double max_err = 0.0;
  int n_compared = 0;
  for (int il = 0; il < c.n_layer; ++il) {
    for (int ih = 0; ih < c.n_kv_head; ++ih) {
      const int hd = il * c.n_kv_head + ih;
      const kv_head& h = s.cache().head(il, ih);
      const float* k = rec.k_post[hd].data();
      auto unit = [&](int32_t p, int i) {
        double ss = 0;
        for (int x = 0; x < d; ++x) ss += double(k[size_t(p) * d + x]) * k[size_t(p) * d + x];
        return k[size_t(p) * d + i] / std::sqrt(ss);
      };
      std::vector<double> mean(d, 0.0);
      auto live = [&](size_t j) { return h.masked.empty() || !h.masked[j]; };  // holes wait for compaction
      for (size_t j = 0; j < h.n_slots(); ++j)
        if (live(j))
          for (int i = 0; i < d; ++i) mean[i] += unit(h.pos[j], i);
      double mean_norm = 0;
      for (double v : mean) mean_norm += v * v;
      mean_norm = std::sqrt(mean_norm);
      for (size_t j = 0; j < h.n_slots(); ++j) {
        const int32_t p = h.pos[j];
        if (!live(j) || p < cfg.sinks || p > t - cfg.window) continue;
        double cos = 0;
        for (int i = 0; i < d; ++i) cos += unit(p, i) * mean[i] / mean_norm;
        max_err = std::max(max_err, std::abs(h.score[j] + cos));
        ++n_compared;
      }
      EXPECT_EQ(s.cache().n_live(il, ih), size_t(cfg.sinks + cfg.window + cfg.budget));  // the budget held
    }
  }
  std::printf("keydiff: %d scores, max abs error %.3g\n", n_compared, max_err);
  EXPECT_GT(n_compared, 0);
  EXPECT_LT(max_err, 1e-5);
}

// SnapKV from the attention rows the engine showed, in double: the mean over the last 64 observed
// query positions of each key's group-mean weight, pooled over its live neighbours (width 5, zero
// padding, /5). Prefill in chunks of 16 and decode, so the 64 queries span several steps; with
// observe_end the queries from it on are ignored.
TEST(policy, snapkv_scores_match_brute_force_from_observed_attention) {
  const model& m = tiny_model();
  const model_config& c = m.config();
  for (int32_t observe_end : {-1, 70, 30}) {
    for (int budget : {1000, 6}) {  // nothing evicted, then heavy eviction (holes, compaction)
      policy_config cfg = make_config(policy_kind::snapkv, select_mode::budget);
      cfg.budget = budget;
      cfg.observe_end = observe_end;
      auto runner = make_policy(cfg, c);
      session s(m, {.n_ctx = k_ctx, .n_batch = 16});
      runner->attach(s);
      recorder rec(c);
      rec.record_rows = true;
      observe(s, rec, *runner);
      const auto tokens = random_tokens(90, 21);
      run(s, tokens, 48);
      const int32_t t = static_cast<int32_t>(tokens.size()) - 1;
      runner->get_scorer()->score(s.cache(), {.t_last = t, .ranges = long_term_ranges(s.cache(), cfg.sinks, cfg.window, t)});
      const int32_t q_end = observe_end < 0 ? t + 1 : observe_end;  // queries [q_end - 64, q_end)
      const int32_t q_begin = std::max(0, q_end - k_snapkv_queries);
      double max_err = 0.0;
      int n_compared = 0;
      for (int il = 0; il < c.n_layer; ++il) {
        for (int ih = 0; ih < c.n_kv_head; ++ih) {
          const int hd = il * c.n_kv_head + ih;
          const std::vector<int32_t> live = live_positions(s.cache(), il, ih);
          auto raw = [&](int32_t p) {
            double sum = 0.0;
            for (int32_t q = q_begin; q < q_end; ++q) sum += rec.rows[hd][size_t(q) * k_ctx + p];
            return sum / (q_end - q_begin);
          };
          const kv_head& h = s.cache().head(il, ih);
          for (size_t j = 0; j < h.n_slots(); ++j) {
            const int32_t p = h.pos[j];
            if (h.masked[j] || p < cfg.sinks || p > t - cfg.window) continue;
            const size_t i = std::find(live.begin(), live.end(), p) - live.begin();
            double pooled = 0.0;
            for (int64_t k = int64_t(i) - 2; k <= int64_t(i) + 2; ++k)
              if (k >= 0 && k < int64_t(live.size())) pooled += raw(live[k]);
            pooled /= k_snapkv_pool;
            max_err = std::max(max_err, std::abs(h.score[j] - pooled) / std::max(pooled, 1e-3));
            ++n_compared;
          }
          if (budget < 100) {
            EXPECT_EQ(live.size(), size_t(cfg.sinks + cfg.window + cfg.budget));
          }
        }
      }
      std::printf("snapkv observe_end %d budget %d: %d scores, max relative error %.3g\n", observe_end, budget,
                  n_compared, max_err);
      EXPECT_GT(n_compared, 0);
      EXPECT_LT(max_err, 1e-4);
      EXPECT_EQ(rec.n_came_back, 0);
      if (budget < 100) {
        EXPECT_GT(rec.n_evictions_seen, 0);
      }
    }
  }
}

TEST(policy, snapkv_refuses_to_score_when_its_observer_was_replaced) {
  const model& m = tiny_model();
  policy_config cfg = make_config(policy_kind::snapkv, select_mode::budget);
  auto runner = make_policy(cfg, m.config());
  session s(m, {.n_ctx = k_ctx, .n_batch = 16});
  runner->attach(s);
  recorder rec(m.config());
  s.prefill(random_tokens(40, 2));
  s.set_observer(&rec);  // without passing it on
  try {
    s.prefill(random_tokens(20, 3));
    FAIL() << "expected an error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("observer"), std::string::npos) << e.what();
  }
}

// A session reused with another policy (a server slot) must not keep calling the observer of the
// policy attached before: attach replaces it even when the new scorer has none.
TEST(policy, attach_replaces_the_observer_of_a_previous_snapkv_runner) {
  const model& m = tiny_model();
  policy_config cfg = make_config(policy_kind::snapkv, select_mode::budget);
  auto snap = make_policy(cfg, m.config());
  session s(m, {.n_ctx = k_ctx, .n_batch = 16});
  snap->attach(s);
  s.prefill(random_tokens(40, 4));
  auto h2o = make_policy(make_config(policy_kind::h2o, select_mode::budget), m.config());
  h2o->attach(s);
  s.prefill(random_tokens(20, 6));
  EXPECT_GT(h2o->stats().n_evicted, 0);
  // The snapkv scorer saw nothing of the second prefill: its rings no longer match the cache.
  const int32_t t = s.n_past() - 1;
  EXPECT_THROW(snap->get_scorer()->score(s.cache(), {.t_last = t, .ranges = long_term_ranges(s.cache(), cfg.sinks, cfg.window, t)}),
               error);
}

TEST(policy, snapkv_rings_count_in_the_kv_bytes) {
  // snapkv keeps 64 weights per live slot and head beside the cache: with the same budget as h2o
  // (so the same slots at every step), its peak bytes are h2o's plus exactly that per slot.
  const model& m = tiny_model();
  std::vector<size_t> peak, slots;
  for (policy_kind kind : {policy_kind::h2o, policy_kind::snapkv}) {
    auto runner = make_policy(make_config(kind, select_mode::budget), m.config());
    session s(m, {.n_ctx = k_ctx, .n_batch = 16});
    s.cache().set_compact_fraction(0.0);  // no holes: the rings cover exactly the live slots
    runner->attach(s);
    s.prefill(random_tokens(60, 8));
    EXPECT_GT(runner->stats().n_evicted, 0);
    peak.push_back(runner->stats().bytes_peak);
    slots.push_back(runner->stats().slots_peak);
    if (kind == policy_kind::h2o) EXPECT_EQ(runner->state_bytes(), 0u);
    else EXPECT_GT(runner->state_bytes(), 0u);
  }
  ASSERT_EQ(slots[0], slots[1]);
  EXPECT_EQ(scorer_bytes_per_slot(policy_kind::snapkv), sizeof(int32_t) + k_snapkv_queries * sizeof(float));
  EXPECT_EQ(peak[1], peak[0] + slots[1] * scorer_bytes_per_slot(policy_kind::snapkv));
}

TEST(policy, evict_from_holds_eviction_until_the_prompt_is_whole) {
  // A prompt of 60 tokens in chunks of 16 with evict_from 59: nothing goes until the last chunk,
  // which then leaves every head at sinks + window + budget; decode steps evict as usual, unless
  // evict_until 59 ends eviction there (the cache then grows by every decoded token).
  const model& m = tiny_model();
  const int n_heads = m.config().n_layer * m.config().n_kv_head;
  policy_config cfg = make_config(policy_kind::h2o, select_mode::budget);
  cfg.evict_from = 59;
  auto once = make_policy(cfg, m.config());
  session s(m, {.n_ctx = k_ctx, .n_batch = 16});
  once->attach(s);
  const std::vector<int32_t> prompt = random_tokens(60, 3);
  s.prefill(std::span<const int32_t>(prompt.data(), 48));
  EXPECT_EQ(once->stats().n_evicted, 0);
  EXPECT_EQ(s.cache().n_live_total(), static_cast<size_t>(n_heads) * 48);
  s.prefill(std::span<const int32_t>(prompt.data() + 48, 12));
  const size_t kept = static_cast<size_t>(n_heads) * (cfg.sinks + cfg.window + cfg.budget);
  EXPECT_EQ(s.cache().n_live_total(), kept);
  EXPECT_EQ(once->stats().slots_peak, static_cast<size_t>(n_heads) * 60);  // the whole prompt was held
  const int32_t next = 5;
  s.step(std::span<const int32_t>(&next, 1), logits_mode::last);
  EXPECT_EQ(s.cache().n_live_total(), kept);
  // Once: the same prompt, then two decoded tokens that all stay.
  cfg.evict_until = 59;
  auto only_once = make_policy(cfg, m.config());
  session u(m, {.n_ctx = k_ctx, .n_batch = 16});
  only_once->attach(u);
  u.prefill(prompt);
  EXPECT_EQ(u.cache().n_live_total(), kept);
  for (int i = 0; i < 2; ++i) u.step(std::span<const int32_t>(&next, 1), logits_mode::last);
  EXPECT_EQ(u.cache().n_live_total(), kept + 2 * static_cast<size_t>(n_heads));
  cfg.evict_until = -1;
  // Without it the same prompt never holds more than the budget plus one chunk.
  cfg.evict_from = -1;
  auto every = make_policy(cfg, m.config());
  session t(m, {.n_ctx = k_ctx, .n_batch = 16});
  every->attach(t);
  t.prefill(prompt);
  EXPECT_LT(every->stats().slots_peak, once->stats().slots_peak);
  EXPECT_EQ(t.cache().n_live_total(), kept);
}

class learned_keys : public ::testing::TestWithParam<const char*> {};

TEST_P(learned_keys, gates_score_blocks_of_candidates_and_threshold_keeps_exactly_those_above) {
  const model& m = tiny_model();
  const model_config& c = m.config();
  const std::string key_kind = GetParam();
  auto gates = stub_gates(c, key_kind, {0.1f, -0.2f, 0.3f});
  policy_config cfg = make_config(policy_kind::learned, select_mode::threshold);
  auto runner = make_policy(cfg, c, gates);
  session s(m, {.n_ctx = k_ctx, .n_batch = 40, .kv = kv_type::f32});  // exact keys: the reference reads f32 activations
  runner->attach(s);
  EXPECT_FALSE(s.cache().keep_pre_rope());  // pre-RoPE keys come from undoing RoPE, no copy is kept
  recorder rec(c);
  s.set_observer(&rec);
  const int n_heads = c.n_layer * c.n_kv_head;
  auto prob = [&](int hd, int32_t p) {
    const auto& keys = key_kind == "pre-rope" ? rec.k_pre : rec.k_post;
    const double logit = keys[hd][static_cast<size_t>(p) * c.d_head] + gates->b3()[hd];
    return 1.0 / (1.0 + std::exp(-logit));
  };
  std::vector<int32_t> scored_until;
  int n_bad = 0, n_kept = 0, n_evicted = 0;
  double max_err = 0.0;
  checked_hook hook(*runner, [&](const kv_cache& cache, int32_t t) {
    const int32_t done = runner->scored_until();
    scored_until.push_back(done);
    for (int hd = 0; hd < n_heads; ++hd) {
      const int il = hd / c.n_kv_head, ih = hd % c.n_kv_head;
      const kv_head& h = cache.head(il, ih);
      const std::vector<int32_t> live = live_positions(cache, il, ih);  // holes are gone
      const std::set<int32_t> held(live.begin(), live.end());
      for (int32_t p = cfg.sinks; p <= t - cfg.window; ++p) {
        if (p > done) {  // pending: not scored yet, kept
          n_bad += !held.count(p);
          continue;
        }
        const double expected = prob(hd, p);
        if (std::abs(expected - cfg.threshold) < 1e-5) continue;
        n_bad += held.count(p) != (expected > cfg.threshold);
        (expected > cfg.threshold ? n_kept : n_evicted)++;
      }
      for (size_t j = 0; j < h.n_slots(); ++j) {  // the gate probability is recorded per slot
        if (h.pos[j] >= cfg.sinks && h.pos[j] <= done) max_err = std::max(max_err, std::abs(h.score[j] - prob(hd, h.pos[j])));
      }
      EXPECT_EQ(cache.n_pre_rope(il, ih), 0u);  // no pre-RoPE copies held
    }
  });
  s.set_step_hook(&hook);
  const auto tokens = random_tokens(110, 13);
  run(s, tokens, 40);  // one prefill step of 40: 20 candidates, scored at once
  EXPECT_EQ(n_bad, 0);
  EXPECT_GT(n_kept, 0);
  EXPECT_GT(n_evicted, 0);
  EXPECT_LT(max_err, 1e-5);
  // In decode, one candidate arrives per step and the gates run once 16 are waiting.
  ASSERT_EQ(scored_until.size(), 1u + 70u);
  EXPECT_EQ(scored_until[0], 40 - 1 - cfg.window);
  int n_calls_in_decode = 0;
  for (size_t i = 1; i < scored_until.size(); ++i) {
    const int32_t t = 40 + static_cast<int32_t>(i) - 1;
    if (scored_until[i] != scored_until[i - 1]) {
      ++n_calls_in_decode;
      EXPECT_EQ(scored_until[i] - scored_until[i - 1], cfg.gate_block);
      EXPECT_EQ(scored_until[i], t - cfg.window);
    }
  }
  EXPECT_EQ(n_calls_in_decode, 70 / cfg.gate_block);
  EXPECT_EQ(runner->stats().n_score_calls, 1 + n_calls_in_decode);  // one batched call for all heads
}

INSTANTIATE_TEST_SUITE_P(policy, learned_keys, ::testing::Values("pre-rope", "post-rope"),
                         [](const auto& info) { return std::string(info.param[1] == 'r' ? "pre_rope" : "post_rope"); });

TEST(policy, gate_file_for_another_model_is_refused) {
  const model& m = tiny_model();
  model_config other = m.config();
  other.n_layer += 1;
  auto gates = default_stub(other);
  try {
    make_policy(make_config(policy_kind::learned, select_mode::threshold), m.config(), gates);
    FAIL() << "expected an error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("layers"), std::string::npos) << e.what();
  }
}

TEST(policy, flag_combinations_are_checked_with_clear_errors) {
  auto error_of = [](const policy_request& r, const gate_meta* g = nullptr) -> std::string {
    try {
      resolve_policy(r, g);
    } catch (const error& e) {
      return e.what();
    }
    return "";
  };
  policy_request r;
  r.policy = "learned";
  EXPECT_NE(error_of(r).find("--gates"), std::string::npos);
  r.policy = "h2o";
  EXPECT_NE(error_of(r).find("--budget"), std::string::npos);
  r.has_gates = true;
  r.budget = 64;
  EXPECT_NE(error_of(r).find("--gates is read only by --policy learned"), std::string::npos);
  r.has_gates = false;
  r.threshold = 0.1f;
  EXPECT_NE(error_of(r).find("give one"), std::string::npos);
  r = {};
  r.budget = 8;
  EXPECT_NE(error_of(r).find("full keeps every token"), std::string::npos);
  r = {};
  r.policy = "window";
  r.sinks = 4;
  EXPECT_NE(error_of(r).find("streaming"), std::string::npos);
  r = {};
  r.policy = "streaming";
  r.threshold = 3.0f;
  EXPECT_NE(error_of(r).find("recency"), std::string::npos);
  r = {};
  r.policy = "lru";
  EXPECT_NE(error_of(r).find("h2o"), std::string::npos);
  r = {};
  r.layout = "per-token";
  EXPECT_NE(error_of(r).find("per-layer"), std::string::npos);

  // Defaults: learned takes sinks, window and threshold from the gate file.
  gate_meta meta;
  meta.sinks = 2;
  meta.window = 64;
  meta.threshold = 0.3f;
  r = {};
  r.policy = "learned";
  r.has_gates = true;
  policy_config c = resolve_policy(r, &meta);
  EXPECT_EQ(c.sinks, 2);
  EXPECT_EQ(c.window, 64);
  EXPECT_EQ(c.mode, select_mode::threshold);
  EXPECT_FLOAT_EQ(c.threshold, 0.3f);
  r.window = 32;
  r.budget = 100;
  c = resolve_policy(r, &meta);
  EXPECT_EQ(c.window, 32);
  EXPECT_EQ(c.mode, select_mode::budget);
  EXPECT_EQ(c.budget, 100);
  r = {};
  r.policy = "window";
  c = resolve_policy(r, nullptr);
  EXPECT_EQ(c.sinks, 0);
  EXPECT_EQ(c.window, 128);
  EXPECT_EQ(c.mode, select_mode::budget);
  EXPECT_EQ(c.budget, 0);
  r.policy = "streaming";
  r.layout = "global";
  c = resolve_policy(r, nullptr);
  EXPECT_EQ(c.sinks, 4);
  EXPECT_EQ(c.layout, layout_kind::global);
}

// The table is the one list of policies: every kind has one row, names parse back to it, the
// scorer comes from the row, and the lists built from it (names, baselines, help) agree.
TEST(policy, table_has_one_row_per_policy_and_everything_reads_it) {
  const model_config& c = tiny_model().config();
  std::set<std::string> names;
  for (const policy_row& row : policy_table()) {
    EXPECT_TRUE(names.insert(row.name).second) << row.name;
    EXPECT_EQ(parse_policy_kind(row.name), row.kind);
    EXPECT_EQ(&policy_row_of(row.kind), &row);
    EXPECT_STREQ(policy_name(row.kind), row.name);
    EXPECT_NE(policy_help().find(std::string(row.name) + " "), std::string::npos) << row.name;
    EXPECT_NE(policy_names().find(row.name), std::string::npos) << row.name;
    policy_config cfg = make_config(row.kind, select_mode::budget);
    const auto s = make_scorer(cfg, c, default_stub(c));
    EXPECT_EQ(s == nullptr, row.selection == selection_rule::keep_all) << row.name;
    // The baselines are the heuristics: neither full nor learned.
    EXPECT_EQ(row.baseline, row.selection == selection_rule::recency || row.selection == selection_rule::scored);
  }
  EXPECT_EQ(static_cast<int>(names.size()), static_cast<int>(policy_kind::learned) + 1);
  const std::vector<std::string> baselines = baseline_policy_names();
  EXPECT_NE(std::find(baselines.begin(), baselines.end(), "snapkv"), baselines.end());
  EXPECT_EQ(std::find(baselines.begin(), baselines.end(), "learned"), baselines.end());
}

TEST(policy, lifetime_gates_keep_the_mass_of_buckets_past_the_window) {
  const float logits[4] = {0.0f, 1.0f, 2.0f, 3.0f};  // buckets [0,4) [4,16) [16,64) [64,...)
  double total = 0;
  for (float l : logits) total += std::exp(l);
  EXPECT_NEAR(gate_probability(logits, 4, 128), std::exp(3.0) / total, 1e-6);
  EXPECT_NEAR(gate_probability(logits, 4, 16), (std::exp(2.0) + std::exp(3.0)) / total, 1e-6);
  const float one = 0.0f;
  EXPECT_FLOAT_EQ(gate_probability(&one, 1, 128), 0.5f);
}

// ---- the command line (the kvgate binary, built with the rest of the project) ----------------

struct cli_result {
  int status = -1;
  std::string out, err;
};

cli_result kvgate_cli(const std::string& args) {
  const std::string err_file = test::temp_dir() + "/stderr.txt";
  cli_result r;
  r.status = test::run_command(std::string(KVGATE_BINARY) + " " + args + " --threads 1 2>" + err_file, &r.out);
  std::ifstream in(err_file);
  r.err.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return r;
}

TEST(policy_cli, perplexity_and_generate_report_kv_kept_and_refuse_foreign_gates) {
  const std::string dir = test::temp_dir();
  const std::string model_path = tiny_model_path();
  {
    std::mt19937_64 rng(1);
    std::ofstream text(dir + "/text.txt");
    for (int i = 0; i < 400; ++i) text << static_cast<char>('a' + rng() % 26) << (i % 7 == 6 ? " " : "");
  }
  const std::string ppl = "perplexity --model " + model_path + " -f " + dir + "/text.txt --ctx 64 --batch 16 ";
  const cli_result plain = kvgate_cli(ppl);
  ASSERT_EQ(plain.status, 0) << plain.err;
  const cli_result full = kvgate_cli(ppl + "--policy full");
  ASSERT_EQ(full.status, 0) << full.err;
  const auto j_plain = nlohmann::json::parse(plain.out), j_full = nlohmann::json::parse(full.out);
  EXPECT_EQ(j_plain["ppl"].get<double>(), j_full["ppl"].get<double>());
  EXPECT_EQ(j_full["kv_share_mean"].get<double>(), 1.0);
  EXPECT_EQ(j_full["kv_share_peak"].get<double>(), 1.0);
  EXPECT_GT(j_full["kv_bytes_peak"].get<double>(), 0);

  const cli_result stream = kvgate_cli(ppl + "--policy streaming --window 8 --budget 4");
  ASSERT_EQ(stream.status, 0) << stream.err;
  const auto j_stream = nlohmann::json::parse(stream.out);
  EXPECT_LT(j_stream["kv_share_mean"].get<double>(), 0.9);
  EXPECT_LT(j_stream["kv_bytes_peak"].get<double>(), j_full["kv_bytes_peak"].get<double>());
  EXPECT_EQ(j_stream["policy"], "streaming");
  EXPECT_EQ(j_stream["budget"], 4);

  const model_config& c = tiny_model().config();
  default_stub(c)->save(dir + "/gates.gguf");
  const cli_result learned = kvgate_cli(ppl + "--policy learned --gates " + dir + "/gates.gguf --layout global");
  ASSERT_EQ(learned.status, 0) << learned.err;
  const auto j_learned = nlohmann::json::parse(learned.out);
  EXPECT_EQ(j_learned["window"], 16);  // from the gate file
  EXPECT_EQ(j_learned["threshold"], 0.5);
  EXPECT_GT(j_learned["gate_ms"].get<double>(), 0.0);
  EXPECT_LT(j_learned["kv_share_mean"].get<double>(), 1.0);

  model_config other = c;
  other.n_kv_head = 4;
  default_stub(other)->save(dir + "/foreign.gguf");
  const cli_result foreign = kvgate_cli(ppl + "--policy learned --gates " + dir + "/foreign.gguf");
  EXPECT_EQ(foreign.status, 1);
  EXPECT_NE(foreign.err.find("gate file is for"), std::string::npos) << foreign.err;
  const cli_result no_gates = kvgate_cli(ppl + "--policy learned");
  EXPECT_EQ(no_gates.status, 1);
  EXPECT_NE(no_gates.err.find("--gates"), std::string::npos) << no_gates.err;

  const cli_result gen = kvgate_cli("generate --model " + model_path +
                                    " -p 'the quick brown fox jumps over the lazy dog' -n 24 --temp 0 --ignore-eos "
                                    "--policy h2o --budget 4 --window 8");
  ASSERT_EQ(gen.status, 0) << gen.err;
  const size_t at = gen.err.find("kvgate: {");
  ASSERT_NE(at, std::string::npos) << gen.err;
  const auto summary = nlohmann::json::parse(gen.err.substr(at + 8));
  for (const char* key : {"kv_share_mean", "kv_share_peak", "kv_bytes_peak", "gate_ms", "gate_share"}) {
    EXPECT_TRUE(summary.contains(key)) << key;
  }
  EXPECT_LT(summary["kv_share_mean"].get<double>(), 1.0);
}

}  // namespace
}  // namespace kvgate
