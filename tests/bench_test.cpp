// kvgate bench: its statistics helpers, the configurations it sweeps, and an end-to-end run on
// the real model whose figures are checked against `kvgate perplexity` (another path: hard
// eviction, token_nll where the bench uses log_softmax; only the chunking is shared, in
// eval/window_nll.h, and tested on its own in eval_test) and against what the policies must keep.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "eval/bench.h"
#include "model/model.h"
#include "policy_test_util.h"
#include "test_util.h"

namespace kvgate {
namespace {

namespace fs = std::filesystem;

TEST(bench, wilson_interval_matches_textbook_values) {
  // 8/10 and 0/10 at 95% (Wilson 1927; e.g. Newcombe 1998, table I).
  auto [lo, hi] = eval::wilson_interval(8, 10);
  EXPECT_NEAR(lo, 0.4902, 1e-4);
  EXPECT_NEAR(hi, 0.9433, 1e-4);
  std::tie(lo, hi) = eval::wilson_interval(0, 10);
  EXPECT_NEAR(lo, 0.0, 1e-12);
  EXPECT_NEAR(hi, 0.2775, 1e-4);
  std::tie(lo, hi) = eval::wilson_interval(81, 263);
  EXPECT_NEAR(lo, 0.2553, 1e-3);
  EXPECT_NEAR(hi, 0.3662, 1e-3);
}

TEST(bench, interpolation_is_linear_inside_and_nan_outside) {
  const std::vector<std::pair<double, double>> p = {{0.1, 10.0}, {0.3, 6.0}, {0.5, 2.0}};
  EXPECT_DOUBLE_EQ(eval::interpolate(p, 0.2), 8.0);
  EXPECT_DOUBLE_EQ(eval::interpolate(p, 0.5), 2.0);
  EXPECT_DOUBLE_EQ(eval::interpolate(p, 0.4), 4.0);
  EXPECT_TRUE(std::isnan(eval::interpolate(p, 0.05)));
  EXPECT_TRUE(std::isnan(eval::interpolate(p, 0.6)));
}

TEST(bench, configurations_cover_every_policy_at_budgets_matching_the_shares) {
  eval::bench_options o;
  o.ctx = 2048;
  o.shares = {0.25};
  o.window_share = 0.0;  // the fixed window
  std::vector<eval::bench_config> configs = eval::bench_configs(o, nullptr);
  ASSERT_EQ(configs.size(), 2 + o.baselines.size());  // snapkv brings snapkv-ctx
  EXPECT_EQ(configs[0].policy.kind, policy_kind::full);
  int n_outside = 0;
  for (const auto& c : configs) {
    n_outside += c.question_outside;
    EXPECT_EQ(c.question_outside, c.curve == "snapkv-ctx") << c.curve;
    if (c.curve == "snapkv-ctx") {
      EXPECT_EQ(c.policy.kind, policy_kind::snapkv);
    }
    // The question-outside variant stops observing at the question; the others never do. Both
    // snapkv curves evict a prompt once, at its last token; the others after every chunk.
    const policy_config p = eval::policy_for_prompt(c, 1500, 2000);
    EXPECT_EQ(p.observe_end, c.question_outside ? 1500 : -1) << c.curve;
    EXPECT_EQ(c.evict_once, c.policy.kind == policy_kind::snapkv) << c.curve;
    EXPECT_EQ(p.evict_from, c.evict_once ? 1999 : -1) << c.curve;
    EXPECT_EQ(p.evict_until, c.evict_once ? 1999 : -1) << c.curve;
  }
  EXPECT_EQ(n_outside, 1);
  // Evicting after the context: the policy first evicts at the last context token, then at every
  // step; snapkv still compresses once, at the prompt's end.
  for (eval::bench_config c : configs) {
    c.evict_after_context = true;
    const policy_config p = eval::policy_for_prompt(c, 1500, 2000);
    EXPECT_EQ(p.evict_from, c.evict_once ? 1999 : 1499) << c.curve;
    EXPECT_EQ(p.evict_until, c.evict_once ? 1999 : -1) << c.curve;
  }
  for (size_t i = 1; i < configs.size(); ++i) {
    const policy_config& p = configs[i].policy;
    EXPECT_EQ(p.mode, select_mode::budget);
    EXPECT_EQ(p.sinks + p.window + p.budget, 512) << configs[i].curve;
    EXPECT_EQ(p.sinks, configs[i].curve == "window" ? 0 : 4);
  }

  gate_meta meta;
  meta.sinks = 4;
  meta.window = 128;
  meta.threshold = 0.5f;
  configs = eval::bench_configs(o, &meta);
  int learned = 0, global = 0, budget = 0;
  for (const auto& c : configs) {
    if (c.policy.kind != policy_kind::learned) continue;
    ++learned;
    global += c.policy.layout == layout_kind::global;
    if (c.policy.mode == select_mode::budget) {
      ++budget;
      EXPECT_EQ(c.policy.budget, 380);
    } else {
      EXPECT_FLOAT_EQ(c.policy.threshold, static_cast<float>(c.knob));
    }
  }
  EXPECT_EQ(learned, static_cast<int>(o.thresholds.size() + o.thresholds_layer.size() + o.thresholds_global.size() + 1));
  EXPECT_EQ(global, static_cast<int>(o.thresholds_global.size()));
  EXPECT_EQ(budget, 1);
}

TEST(bench, a_window_share_splits_every_budget_curve_and_keeps_its_total) {
  EXPECT_EQ(eval::window_for_share(0.125, 2048, 128, 0.0), 128);  // off: the fixed window
  EXPECT_EQ(eval::window_for_share(0.125, 2048, 128, 0.25), 64);  // 256 slots per head
  EXPECT_EQ(eval::window_for_share(0.5, 2048, 128, 0.25), 128);   // capped at --window
  EXPECT_EQ(eval::window_for_share(0.02, 2048, 128, 0.25), 16);   // at least 16
  EXPECT_EQ(eval::window_for_share(0.02, 2048, 8, 0.25), 8);      // never above --window

  eval::bench_options o;
  o.ctx = 2048;
  o.shares = {0.125, 0.25};
  o.window_share = 0.25;
  gate_meta meta;
  meta.sinks = 4;
  meta.window = 128;
  meta.threshold = 0.5f;
  int n_budget = 0;
  for (const auto& c : eval::bench_configs(o, &meta)) {
    const policy_config& p = c.policy;
    if (p.mode != select_mode::budget) {
      // Threshold curves keep the fixed window.
      if (p.kind == policy_kind::learned) {
        EXPECT_EQ(p.window, 128) << c.curve;
      }
      continue;
    }
    ++n_budget;
    const int total = p.sinks + p.window + p.budget;
    ASSERT_TRUE(total == 256 || total == 512) << c.curve;
    EXPECT_EQ(p.window, total == 256 ? 64 : 128) << c.curve << " " << total;
  }
  EXPECT_EQ(n_budget, 2 * static_cast<int>(o.baselines.size() + 1 + o.budget_pools.size()));
}

// Plain prose from a small vocabulary, long enough for a 256-token window.
std::string prose(uint64_t seed, int n_sentences) {
  static const char* const words[] = {"the", "cache", "keeps", "tokens", "that", "matter", "later", "while",
                                      "others", "leave", "window", "model", "reads", "every", "line", "and",
                                      "answers", "questions", "about", "old", "text", "with", "small", "gates"};
  std::mt19937_64 rng(seed);
  std::string s;
  for (int i = 0; i < n_sentences; ++i) {
    const int n = 6 + static_cast<int>(rng() % 8);
    for (int w = 0; w < n; ++w) {
      std::string word = words[rng() % std::size(words)];
      if (w == 0) word[0] = static_cast<char>(std::toupper(word[0]));
      s += word + (w + 1 < n ? " " : ".\n");
    }
  }
  return s;
}

using run_result = test::kvgate_result;

run_result run(const std::string& args) { return test::run_kvgate(args); }

TEST(bench, end_to_end_figures_agree_with_perplexity_and_the_budgets) {
  const std::string corpus = test::temp_dir() + "/corpus";
  fs::create_directories(corpus);
  for (int i = 0; i < 2; ++i) std::ofstream(corpus + "/doc" + std::to_string(i) + ".txt") << prose(i + 1, 80);
  const std::string out = test::temp_dir() + "/report";
  const std::string common = " --model " + test::default_model_path() + " --threads 2";
  const run_result r = run("bench" + common + " --corpus " + corpus + " --out " + out +
                           " --ctx 256 --batch 32 --windows 1 --window 32 --shares 0.5 --baselines streaming,h2o,snapkv "
                           "--needle-cases 2 --matched-share 0.5 --retrieval-ctx 512 --retrieval-cases 1 --tasks niah_single");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("index.html"), std::string::npos) << r.out;
  for (const char* f : {"report.json", "quality.csv", "needle.csv", "needle_cases.csv", "index.html", "quality_vs_kv.png",
                        "needle.png"}) {
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  }
  const auto report = nlohmann::json::parse(std::ifstream(out + "/report.json"));
  const auto& rows = report["rows"];
  ASSERT_EQ(rows.size(), 5u);  // full, streaming, h2o, snapkv, snapkv-ctx
  const std::string window_file = report["quality_windows"][0];

  // The full cache: what `kvgate perplexity` gives for the same window and chunks.
  const run_result full = run("perplexity" + common + " --file " + window_file + " --ctx 256 --batch 32 --max-windows 1");
  ASSERT_EQ(full.status, 0) << full.err;
  const double ppl_full = nlohmann::json::parse(full.out)["ppl"];
  EXPECT_NEAR(rows[0]["quality"]["ppl"].get<double>(), ppl_full, 1e-4 * ppl_full);
  EXPECT_EQ(rows[0]["quality"]["kl"], 0.0);

  for (int i = 1; i < 5; ++i) {
    const auto& q = rows[i]["quality"];
    const std::string policy = rows[i]["policy"];
    // Budget 128 - 4 - 32 = 92: sinks + window + budget slots of every head at the end.
    EXPECT_EQ(rows[i]["value"], 92);
    EXPECT_DOUBLE_EQ(q["kv_share_final"].get<double>(), 0.5) << policy;
    EXPECT_GT(q["kl"].get<double>(), 0.0) << policy;
    EXPECT_GT(q["attention_recall"].get<double>(), 0.5) << policy;
    EXPECT_LT(q["attention_recall"].get<double>(), 1.0) << policy;
    // Mask mode inside the bench, hard eviction in perplexity: the same logits.
    const run_result p = run("perplexity" + common + " --file " + window_file +
                             " --ctx 256 --batch 32 --max-windows 1 --window 32 --budget 92 --policy " + policy);
    ASSERT_EQ(p.status, 0) << p.err;
    const double ppl = nlohmann::json::parse(p.out)["ppl"];
    EXPECT_NEAR(q["ppl"].get<double>(), ppl, 1e-4 * ppl) << policy;
    EXPECT_NE(q["ppl"].get<double>(), rows[0]["quality"]["ppl"].get<double>()) << policy;
    EXPECT_EQ(rows[i]["needle"]["n_cases"], 2) << policy;
  }
  EXPECT_EQ(rows[0]["needle"]["n_cases"], 2);
  // snapkv-ctx hides only a question, and the quality windows have none: its quality figures are
  // its twin's (measured once), while its needle pass is its own.
  EXPECT_EQ(rows[4]["curve"], "snapkv-ctx");
  EXPECT_EQ(rows[4]["quality"], rows[3]["quality"]);
  // The retrieval suite where the needle pass ran: the full cache and each policy at its share.
  const auto& runs = report["retrieval"]["runs"];
  ASSERT_EQ(runs.size(), 5u);
  EXPECT_EQ(runs[0]["curve"], "full");
  for (int i = 1; i < 5; ++i) EXPECT_NEAR(runs[i]["kv_share_final"].get<double>(), 0.5, 0.05) << runs[i]["curve"];
  EXPECT_TRUE(fs::exists(out + "/retrieval.png"));
}

// --prefill int8 runs every session on the integer kernels: the full cache and a policy give what
// `kvgate perplexity --prefill int8` gives (hard eviction there, mask mode here), and not the f32
// figures.
TEST(bench, int8_prefill_figures_agree_with_int8_perplexity) {
  const std::string corpus = test::temp_dir() + "/corpus";
  fs::create_directories(corpus);
  std::ofstream(corpus + "/doc.txt") << prose(7, 80);
  const std::string common = " --model " + test::default_model_path() + " --threads 2";
  const std::string args = " --corpus " + corpus + " --ctx 256 --batch 32 --windows 1 --window 32 --shares 0.5 "
                           "--baselines h2o --needle-cases 0 --retrieval-cases 0 --no-plots";
  const std::string out8 = test::temp_dir() + "/int8", out32 = test::temp_dir() + "/f32";
  const run_result r8 = run("bench" + common + args + " --prefill int8 --out " + out8);
  ASSERT_EQ(r8.status, 0) << r8.err;
  const run_result r32 = run("bench" + common + args + " --out " + out32);
  ASSERT_EQ(r32.status, 0) << r32.err;
  const auto report = nlohmann::json::parse(std::ifstream(out8 + "/report.json"));
  const auto report32 = nlohmann::json::parse(std::ifstream(out32 + "/report.json"));
  EXPECT_EQ(report["options"]["prefill"], "int8");
  EXPECT_EQ(report32["options"]["prefill"], "f32");
  const std::string file = report["quality_windows"][0];
  const auto& rows = report["rows"];
  ASSERT_EQ(rows.size(), 2u);  // full, h2o
  for (int i = 0; i < 2; ++i) {
    const std::string policy = rows[i]["policy"];
    const run_result p = run("perplexity" + common + " --prefill int8 --file " + file + " --ctx 256 --batch 32 --max-windows 1" +
                             (policy == "full" ? "" : " --window 32 --budget 92 --policy " + policy));
    ASSERT_EQ(p.status, 0) << p.err;
    const double ppl = nlohmann::json::parse(p.out)["ppl"];
    const double bench_ppl = rows[i]["quality"]["ppl"].get<double>();
    EXPECT_NEAR(bench_ppl, ppl, 1e-4 * ppl) << policy;
    EXPECT_NE(bench_ppl, report32["rows"][i]["quality"]["ppl"].get<double>()) << policy;
  }
}

// --baselines none and --thresholds* none: only the curves asked for run (here the full cache and
// the learned budget per head, with stub gates for the real model).
TEST(bench, none_leaves_out_the_baselines_and_the_threshold_curves) {
  const std::string corpus = test::temp_dir() + "/corpus";
  fs::create_directories(corpus);
  std::ofstream(corpus + "/doc.txt") << prose(3, 80);
  const std::string dir = test::temp_dir(), gates = dir + "/stub_gates.gguf";
  policy_testing::default_stub(model::load(test::default_model_path())->config())->save(gates);
  const std::string args = "bench --model " + test::default_model_path() + " --threads 2 --corpus " + corpus +
                           " --ctx 256 --batch 32 --windows 1 --window 32 --shares 0.5 --baselines none "
                           "--needle-cases 0 --retrieval-cases 0 --no-plots --budget-pools head --gates " + gates;
  const run_result r = run(args + " --thresholds none --thresholds-layer none --thresholds-global none --out " + dir + "/a");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto report = nlohmann::json::parse(std::ifstream(dir + "/a/report.json"));
  ASSERT_EQ(report["rows"].size(), 2u);
  EXPECT_EQ(report["rows"][0]["curve"], "full");
  EXPECT_EQ(report["rows"][1]["curve"], "learned-budget");
  const run_result bad = run(args + " --thresholds 0.5,abc --out " + dir + "/c");
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.err.find("--thresholds takes finite numbers or none, not 'abc'"), std::string::npos) << bad.err;
}

TEST(bench, bad_options_fail_with_a_message) {
  const std::string common = " --model " + test::default_model_path() + " --threads 1 --out " + test::temp_dir() + "/x";
  run_result r = run("bench" + common + " --baselines learned");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("--baselines"), std::string::npos) << r.err;
  r = run("bench" + common + " --baselines nosuch");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("unknown policy"), std::string::npos) << r.err;
  r = run("bench" + common + " --ctx 128 --window 128");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("no room"), std::string::npos) << r.err;
  const std::string tiny_corpus = test::temp_dir() + "/short";
  fs::create_directories(tiny_corpus);
  std::ofstream(tiny_corpus + "/a.txt") << "Too short for a window.\n";
  r = run("bench" + common + " --corpus " + tiny_corpus + " --ctx 512 --no-plots");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("held-out corpus has 0 files"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace kvgate
