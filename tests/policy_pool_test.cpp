// Pooled budgets (--budget-pool layer | model): one budget of B x (heads in the pool) long-term
// slots spent on the highest scores across the pool's heads. Checked on the cache after every
// step against a brute-force top-K over every candidate seen (static scores: an evicted slot
// could only fall further behind, so the kept set is the top K of all candidates so far), and on
// the invariants every policy keeps: sinks and window stay, the pool is never exceeded, evicted
// slots are never attended again. Plus the checks on the flags and the gate file's calibration.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <tuple>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "policy/policy.h"
#include "policy_test_util.h"
#include "test_util.h"
#include "tiny_model.h"

namespace kvgate {
namespace {

using namespace policy_testing;

// A static score per (head, position) in [0, 1), plus a per-head offset: heads with a larger
// offset hold the slots that matter more.
float pool_score(int head, int32_t pos, float offset) {
  uint64_t x = (static_cast<uint64_t>(head) << 32 | static_cast<uint32_t>(pos)) * 0x9e3779b97f4a7c15ull;
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 29;
  return static_cast<float>(x % 997) / 997.0f + offset;
}

struct offset_scorer : scorer {
  int n_kv;
  std::vector<float> offset;  // [n_heads]
  offset_scorer(int n_kv_head, std::vector<float> o) : n_kv(n_kv_head), offset(std::move(o)) {}
  scorer_needs needs() const override { return {}; }
  void score(kv_cache& cache, const score_request& req) override {
    for (int hd = 0; hd < static_cast<int>(req.ranges.size()); ++hd) {
      kv_head& h = cache.head(hd / n_kv, hd % n_kv);
      for (uint32_t j = req.ranges[hd].begin; j < req.ranges[hd].end; ++j) h.score[j] = pool_score(hd, h.pos[j], offset[hd]);
    }
  }
};

struct pool_case {
  budget_pool pool;
  layout_kind layout;
};

class pooled_budget : public ::testing::TestWithParam<pool_case> {};

TEST_P(pooled_budget, keeps_the_top_scores_across_heads_and_never_exceeds_the_pool) {
  const model& m = tiny_model();
  const model_config& c = m.config();
  const int n_heads = c.n_layer * c.n_kv_head;
  const pool_case pc = GetParam();
  policy_config cfg = make_config(policy_kind::random, select_mode::budget, pc.layout);
  cfg.pool = pc.pool;
  cfg.budget = 6;
  std::vector<float> offset(n_heads, 0.0f);
  for (int hd = 0; hd < n_heads; hd += 2) offset[hd] = 0.5f;  // one head per layer: more worth keeping
  policy_runner runner(cfg, c, std::make_unique<offset_scorer>(c.n_kv_head, offset));
  session s(m, {.n_ctx = k_ctx, .n_batch = 24});
  runner.attach(s);
  recorder rec(c);
  s.set_observer(&rec);

  // The layout's groups and the pools, as lists of heads.
  auto group_of = [&](int hd) {
    return pc.layout == layout_kind::per_head ? hd : pc.layout == layout_kind::per_layer ? hd / c.n_kv_head : 0;
  };
  auto pool_of = [&](int hd) { return pc.pool == budget_pool::layer ? hd / c.n_kv_head : 0; };
  const int group_size = pc.layout == layout_kind::per_head ? 1 : pc.layout == layout_kind::per_layer ? c.n_kv_head : n_heads;

  int n_bad = 0, n_steps = 0, n_missing = 0;
  std::vector<int> held_at_end(n_heads, 0);  // long-term slots after the last step
  checked_hook hook(runner, [&](const kv_cache& cache, int32_t t) {
    ++n_steps;
    // Brute force: per pool, the top (B x heads in the pool / group size) (group, position)
    // items over every candidate so far, ranked by group score, then position, then group.
    std::map<int, std::vector<std::tuple<float, int32_t, int>>> items;  // pool -> (score, pos, group)
    std::map<int, int> heads_in_pool;
    for (int hd = 0; hd < n_heads; ++hd) heads_in_pool[pool_of(hd)] += 1;
    std::set<std::pair<int, int32_t>> seen_group_pos;
    for (int hd = 0; hd < n_heads; ++hd) {
      for (int32_t p = cfg.sinks; p <= t - cfg.window; ++p) {
        if (!seen_group_pos.insert({group_of(hd), p}).second) continue;
        float best = -1.0f;
        for (int v = 0; v < n_heads; ++v)
          if (group_of(v) == group_of(hd)) best = std::max(best, pool_score(v, p, offset[v]));
        items[pool_of(hd)].emplace_back(best, p, group_of(hd));
      }
    }
    std::set<std::pair<int, int32_t>> kept;  // (group, position)
    for (auto& [pool, list] : items) {
      std::sort(list.begin(), list.end(), [](const auto& a, const auto& b) {
        if (std::get<0>(a) != std::get<0>(b)) return std::get<0>(a) > std::get<0>(b);
        if (std::get<1>(a) != std::get<1>(b)) return std::get<1>(a) > std::get<1>(b);
        return std::get<2>(a) < std::get<2>(b);
      });
      const size_t k = static_cast<size_t>(cfg.budget) * heads_in_pool[pool] / group_size;
      for (size_t i = 0; i < std::min(k, list.size()); ++i) kept.insert({std::get<2>(list[i]), std::get<1>(list[i])});
    }
    std::map<int, size_t> long_term_in_pool;
    for (int hd = 0; hd < n_heads; ++hd) {
      const std::vector<int32_t> live = live_positions(cache, hd / c.n_kv_head, hd % c.n_kv_head);
      const std::set<int32_t> held(live.begin(), live.end());
      std::vector<int32_t> expected;
      int n_long = 0;
      for (int32_t p = 0; p <= t; ++p) {
        const bool protected_pos = p < cfg.sinks || p > t - cfg.window;
        if (protected_pos && !held.count(p)) ++n_missing;
        if (protected_pos || kept.count({group_of(hd), p})) expected.push_back(p);
        n_long += !protected_pos && held.count(p);
      }
      n_bad += live != expected;
      long_term_in_pool[pool_of(hd)] += n_long;
      if (t == 119) held_at_end[hd] = n_long;
    }
    for (auto& [pool, n] : long_term_in_pool) {
      EXPECT_LE(n, static_cast<size_t>(cfg.budget) * heads_in_pool[pool]) << "pool " << pool << " at " << t;
    }
  });
  s.set_step_hook(&hook);
  run(s, random_tokens(120, 17), 50);
  EXPECT_EQ(n_steps, 3 + 70);
  EXPECT_EQ(n_bad, 0);
  EXPECT_EQ(n_missing, 0);
  EXPECT_EQ(rec.n_came_back, 0);
  EXPECT_EQ(rec.n_attended_gone, 0);
  EXPECT_GT(runner.stats().n_evicted, 0);
  if (pc.layout == layout_kind::per_head) {
    // The heads with higher scores got more room than B, the others less.
    for (int hd = 0; hd < n_heads; ++hd) {
      if (offset[hd] > 0) EXPECT_GT(held_at_end[hd], cfg.budget) << "head " << hd;
      else EXPECT_LT(held_at_end[hd], cfg.budget) << "head " << hd;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(policy, pooled_budget,
                         ::testing::Values(pool_case{budget_pool::model, layout_kind::per_head},
                                           pool_case{budget_pool::layer, layout_kind::per_head},
                                           pool_case{budget_pool::model, layout_kind::per_layer},
                                           pool_case{budget_pool::layer, layout_kind::per_layer},
                                           pool_case{budget_pool::model, layout_kind::global}),
                         [](const auto& info) {
                           std::string s = std::string(budget_pool_name(info.param.pool)) + "_" + layout_name(info.param.layout);
                           for (char& ch : s) if (ch == '-') ch = '_';
                           return s;
                         });

// With attention scores (H2O, SnapKV) and the learned gates (scored in blocks) the pool holds
// too, and the heads end up unequal.
class pooled_attention : public ::testing::TestWithParam<policy_kind> {};

TEST_P(pooled_attention, total_never_exceeds_the_pool_and_heads_differ) {
  const model& m = tiny_model();
  const model_config& c = m.config();
  const int n_heads = c.n_layer * c.n_kv_head;
  policy_config cfg = make_config(GetParam(), select_mode::budget);
  cfg.pool = budget_pool::model;
  auto runner = make_policy(cfg, c, default_stub(c));  // learned: pending candidates count too
  session s(m, {.n_ctx = k_ctx, .n_batch = 16});
  runner->attach(s);
  recorder rec(c);
  observe(s, rec, *runner);
  int n_missing = 0;
  std::set<size_t> sizes;
  checked_hook hook(*runner, [&](const kv_cache& cache, int32_t t) {
    size_t total = 0;
    for (int hd = 0; hd < n_heads; ++hd) {
      const std::vector<int32_t> live = live_positions(cache, hd / c.n_kv_head, hd % c.n_kv_head);
      const std::set<int32_t> held(live.begin(), live.end());
      size_t n_long = 0;
      for (int32_t p = 0; p <= t; ++p) {
        const bool protected_pos = p < cfg.sinks || p > t - cfg.window;
        if (protected_pos && !held.count(p)) ++n_missing;
        n_long += !protected_pos && held.count(p);
      }
      total += n_long;
      if (t == 119) sizes.insert(n_long);
    }
    const int64_t n_cand = std::max<int64_t>(0, t - cfg.window - cfg.sinks + 1);
    EXPECT_EQ(total, static_cast<size_t>(std::min<int64_t>(int64_t(cfg.budget) * n_heads, n_cand * n_heads))) << t;
  });
  s.set_step_hook(&hook);
  run(s, random_tokens(120, 5), 50);
  EXPECT_EQ(n_missing, 0);
  EXPECT_EQ(rec.n_came_back, 0);
  EXPECT_EQ(rec.n_attended_gone, 0);
  EXPECT_GT(sizes.size(), 1u) << "every head kept the same number of slots";
}

INSTANTIATE_TEST_SUITE_P(policy, pooled_attention,
                         ::testing::Values(policy_kind::h2o, policy_kind::snapkv, policy_kind::learned),
                         [](const auto& info) { return std::string(policy_name(info.param)); });

// A model pool over the global layout is one group: exactly today's budget (bit-identical logits).
TEST(policy_pool, model_pool_over_one_global_group_equals_the_per_head_budget) {
  const model& m = tiny_model();
  std::vector<float> out[2];
  for (int pooled = 0; pooled < 2; ++pooled) {
    policy_config cfg = make_config(policy_kind::h2o, select_mode::budget, layout_kind::global);
    cfg.pool = pooled ? budget_pool::model : budget_pool::head;
    auto runner = make_policy(cfg, m.config());
    session s(m, {.n_ctx = k_ctx, .n_batch = 16});
    runner->attach(s);
    out[pooled] = run(s, random_tokens(90, 8), 40);
    EXPECT_GT(runner->stats().n_evicted, 0);
  }
  EXPECT_EQ(0, std::memcmp(out[0].data(), out[1].data(), out[0].size() * sizeof(float)));
}

std::string error_of(const policy_request& r, const gate_meta* g = nullptr) {
  try {
    resolve_policy(r, g);
  } catch (const error& e) {
    return e.what();
  }
  return "";
}

TEST(policy_pool, flags_are_checked_with_clear_errors) {
  policy_request r;
  r.policy = "h2o";
  r.budget = 8;
  r.pool = "galaxy";
  EXPECT_NE(error_of(r).find("one of: head, layer, model"), std::string::npos) << error_of(r);
  r.pool = "model";
  EXPECT_EQ(error_of(r), "");
  EXPECT_EQ(resolve_policy(r, nullptr).pool, budget_pool::model);
  r.layout = "global";
  r.pool = "layer";
  EXPECT_NE(error_of(r).find("--budget-pool layer cannot hold --layout global"), std::string::npos) << error_of(r);
  r = {};
  r.policy = "h2o";
  r.threshold = 0.1f;
  r.pool = "model";
  EXPECT_NE(error_of(r).find("needs --budget"), std::string::npos) << error_of(r);
  r = {};
  r.pool = "layer";
  EXPECT_NE(error_of(r).find("needs --budget"), std::string::npos) << error_of(r);
}

TEST(policy_pool, learned_gates_need_calibration_data) {
  const model_config& c = tiny_model().config();
  auto gates = default_stub(c);
  policy_request r;
  r.policy = "learned";
  r.has_gates = true;
  r.budget = 8;
  r.pool = "model";
  EXPECT_NE(error_of(r, &gates->meta()).find("no calibration data for 6 of its 6 heads"), std::string::npos)
      << error_of(r, &gates->meta());
  r.pool = "head";
  EXPECT_EQ(error_of(r, &gates->meta()), "");  // per-head budgets compare within a head only

  nlohmann::json heads = nlohmann::json::array();
  for (int h = 0; h < c.n_layer * c.n_kv_head; ++h) heads.push_back({{"calibration", {0.8, -0.1}}});
  gates->set_metrics({{"heads", heads}});
  r.pool = "model";
  EXPECT_EQ(error_of(r, &gates->meta()), "");
  heads[3].erase("calibration");
  gates->set_metrics({{"heads", heads}});
  EXPECT_NE(error_of(r, &gates->meta()).find("1 of its 6 heads"), std::string::npos) << error_of(r, &gates->meta());
}

TEST(policy_pool_cli, pooled_budget_runs_and_uncalibrated_gates_are_refused_by_name) {
  const std::string dir = test::temp_dir();
  {
    std::mt19937_64 rng(3);
    std::ofstream text(dir + "/pool_text.txt");
    for (int i = 0; i < 400; ++i) text << static_cast<char>('a' + rng() % 26) << (i % 7 == 6 ? " " : "");
  }
  const std::string ppl = std::string(KVGATE_BINARY) + " perplexity --threads 1 --model " + tiny_model_path() + " -f " +
                          dir + "/pool_text.txt --ctx 64 --batch 16 ";
  std::string out;
  ASSERT_EQ(test::run_command(ppl + "--policy snapkv --window 8 --budget 4 --budget-pool model 2>/dev/null", &out), 0);
  const auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j["policy"], "snapkv");
  EXPECT_EQ(j["budget_pool"], "model");
  EXPECT_LT(j["kv_share_mean"].get<double>(), 0.9);

  const std::string gates = dir + "/uncalibrated_gates.gguf";
  default_stub(tiny_model().config())->save(gates);
  const std::string err_file = dir + "/pool_err.txt";
  EXPECT_EQ(test::run_command(ppl + "--policy learned --gates " + gates + " --budget 4 --budget-pool model 2>" + err_file, &out), 1);
  std::ifstream in(err_file);
  const std::string err((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(err.find("kvgate: error: gate file " + gates + " has no calibration data"), std::string::npos) << err;
}

}  // namespace
}  // namespace kvgate
