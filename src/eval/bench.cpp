#include "eval/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>

#include <omp.h>

#include <fmt/format.h>

#include "common/error.h"
#include "common/files.h"
#include "data/corpus.h"
#include "eval/window_nll.h"
#include "model/linear.h"
#include "model/model.h"
#include "model/sampler.h"

namespace kvgate::eval {

namespace {

using steady = std::chrono::steady_clock;

double seconds_since(steady::time_point t0) {
  return std::chrono::duration<double>(steady::now() - t0).count();
}

}  // namespace

double kv_share_live(const kv_cache& cache, int n_past) {
  const double n_full = static_cast<double>(cache.n_layer()) * cache.n_kv_head() * n_past;
  return n_full > 0 ? cache.n_live_total() / n_full : 1.0;
}

int budget_for_share(double share, int ctx, int sinks, int window) {
  return std::max(0, static_cast<int>(std::lround(share * ctx)) - sinks - window);
}

int window_for_share(double share, int ctx, int window, double window_share) {
  if (window_share <= 0.0) return window;
  const int w = static_cast<int>(std::lround(window_share * share * ctx));
  return std::clamp(w, std::min(16, window), window);
}

std::vector<bench_config> bench_configs(const bench_options& o, const gate_meta* gates) {
  std::vector<bench_config> configs;
  configs.push_back({"full", resolve_policy({}, nullptr), 0.0, "-"});
  auto add = [&](const std::string& curve, policy_request req, double knob, const char* knob_name) {
    req.seed = o.seed;
    configs.push_back({curve, resolve_policy(req, req.has_gates ? gates : nullptr), knob, knob_name});
  };
  auto request = [&](const std::string& policy, int sinks, const std::string& layout) {
    policy_request req;
    req.policy = policy;
    if (policy != "window") req.sinks = sinks;
    req.window = o.window;
    req.layout = layout;
    req.has_gates = policy == "learned";
    return req;
  };
  for (const std::string& name : o.baselines) {
    const int sinks = name == "window" ? 0 : o.sinks;
    for (int outside = 0; outside < (name == "snapkv" ? 2 : 1); ++outside) {
      for (double share : o.shares) {
        policy_request req = request(name, sinks, "per-head");
        req.window = window_for_share(share, o.ctx, o.window, o.window_share);
        req.budget = budget_for_share(share, o.ctx, sinks, *req.window);
        add(outside ? name + "-ctx" : name, req, *req.budget, "budget");
        configs.back().question_outside = outside;
        configs.back().evict_once = name == "snapkv";
      }
    }
  }
  if (gates) {
    const std::pair<const char*, const std::vector<float>*> layouts[] = {
        {"per-head", &o.thresholds}, {"per-layer", &o.thresholds_layer}, {"global", &o.thresholds_global}};
    for (const auto& [layout, thresholds] : layouts) {
      const std::string curve = std::string(layout) == "per-head" ? "learned" : std::string("learned-") + layout;
      for (float t : *thresholds) {
        policy_request req = request("learned", o.sinks, layout);
        req.threshold = t;
        add(curve, req, t, "threshold");
      }
    }
    for (const std::string& pool : o.budget_pools) {
      for (double share : o.shares) {
        policy_request req = request("learned", o.sinks, "per-head");
        req.window = window_for_share(share, o.ctx, o.window, o.window_share);
        req.budget = budget_for_share(share, o.ctx, o.sinks, *req.window);
        req.pool = pool;
        add(pool == "head" ? std::string("learned-budget") : "learned-budget-" + pool, req, *req.budget, "budget");
      }
    }
  }
  return configs;
}

int question_prompt_start(const tokenizer& vocab, const std::string& prompt_text, size_t question_offset,
                          const std::vector<int32_t>& prompt) {
  const std::vector<int32_t> before = vocab.encode(prompt_text.substr(0, question_offset), true);
  size_t common = 0;
  while (common < before.size() && common < prompt.size() && before[common] == prompt[common]) ++common;
  return static_cast<int>(common);
}

policy_config policy_for_prompt(const bench_config& config, int question_start, int n_prompt) {
  policy_config p = config.policy;
  if (config.question_outside) p.observe_end = question_start;
  if (config.evict_once) p.evict_from = p.evict_until = n_prompt - 1;
  if (config.evict_after_context && !config.evict_once) p.evict_from = question_start - 1;
  return p;
}

std::pair<double, double> wilson_interval(int k, int n) {
  if (n <= 0) return {0.0, 1.0};
  const double z = 1.959963984540054;
  const double p = static_cast<double>(k) / n;
  const double denom = 1.0 + z * z / n;
  const double center = (p + z * z / (2.0 * n)) / denom;
  const double half = z * std::sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom;
  return {std::max(0.0, center - half), std::min(1.0, center + half)};
}

double interpolate(const std::vector<std::pair<double, double>>& points, double x) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (points.empty()) return nan;
  for (size_t i = 0; i < points.size(); ++i) {
    if (points[i].first == x) return points[i].second;
    if (i > 0 && points[i - 1].first < x && x < points[i].first) {
      const auto [x0, y0] = points[i - 1];
      const auto [x1, y1] = points[i];
      return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
    }
  }
  return nan;
}

namespace {

// The held-out files in seeded order, each tokenized once when first needed.
class heldout_files {
 public:
  heldout_files(const std::vector<std::string>& corpus, const model& m, uint64_t seed)
      : listing_(list_corpus(corpus)), m_(m) {
    shuffle_files(listing_, seed);
  }
  size_t size() const { return listing_.files.size(); }
  const std::string& path(size_t i) const { return listing_.files[i]; }
  std::vector<int32_t> tokens(size_t i) const { return m_.vocab().encode(read_file(listing_.files[i]), false); }

 private:
  corpus_listing listing_;
  const model& m_;
};

}  // namespace

std::vector<bench_text> bench_windows(const std::vector<std::string>& corpus, const model& m, int ctx, int n,
                                      uint64_t seed) {
  heldout_files files(corpus, m, seed);
  std::vector<bench_text> windows;
  for (size_t i = 0; i < files.size() && static_cast<int>(windows.size()) < n; ++i) {
    std::vector<int32_t> ids = files.tokens(i);
    if (static_cast<int>(ids.size()) < ctx) continue;
    ids.resize(ctx);
    windows.push_back({files.path(i), std::move(ids)});
  }
  if (static_cast<int>(windows.size()) < n) {
    fail("the held-out corpus has {} files of at least {} tokens; the bench asked for {} windows (lower "
         "--windows or --ctx, or give a larger --corpus)",
         windows.size(), ctx, n);
  }
  return windows;
}

std::vector<needle_case> needle_cases(const std::vector<std::string>& corpus, const model& m, int ctx, int n_cases,
                                      uint64_t seed) {
  static const char* const k_labels[] = {"red", "green", "blue", "yellow", "purple", "orange",
                                         "silver", "golden", "black", "white", "brown", "pink"};
  static const double k_depths[] = {0.1, 0.3, 0.5, 0.7, 0.9};
  const tokenizer& vocab = m.vocab();
  heldout_files files(corpus, m, seed + 1);  // another order than the quality windows
  std::vector<std::pair<std::string, std::vector<int32_t>>> fillers;  // files long enough
  std::vector<needle_case> cases;
  size_t next_file = 0;
  for (int ic = 0; ic < n_cases; ++ic) {
    // Filler: the next long-enough file, cycling once the files run out.
    while (fillers.size() <= static_cast<size_t>(ic) && next_file < files.size()) {
      std::vector<int32_t> ids = files.tokens(next_file);
      if (static_cast<int>(ids.size()) >= ctx) fillers.emplace_back(files.path(next_file), std::move(ids));
      ++next_file;
    }
    if (fillers.empty()) fail("no held-out file holds {} tokens for the needle filler (lower --ctx)", ctx);
    const auto& [source, ids] = fillers[ic % fillers.size()];

    std::mt19937_64 rng(seed * 1000003 + ic);
    std::vector<int> label_ids(std::size(k_labels));
    for (size_t i = 0; i < label_ids.size(); ++i) label_ids[i] = static_cast<int>(i);
    std::shuffle(label_ids.begin(), label_ids.end(), rng);
    struct key {
      std::string label, number;
      double depth;
    };
    std::vector<key> keys(3);
    std::uniform_int_distribution<int> number(10000, 99999);
    std::uniform_real_distribution<double> anywhere(0.05, 0.95);
    for (int k = 0; k < 3; ++k) {
      keys[k].label = k_labels[label_ids[k]];
      keys[k].number = std::to_string(number(rng));
      keys[k].depth = anywhere(rng);
    }
    const int asked = static_cast<int>(rng() % 3);
    keys[asked].depth = k_depths[ic % std::size(k_depths)];

    int filler_tokens = ctx - 160;
    for (int attempt = 0; attempt < 4; ++attempt) {
      std::string filler = vocab.decode(std::span<const int32_t>(ids.data(), std::min<size_t>(filler_tokens, ids.size())));
      filler.resize(filler.rfind('\n') == std::string::npos ? filler.size() : filler.rfind('\n') + 1);
      // Insert at line starts, deepest first so earlier offsets stay valid.
      std::vector<std::pair<size_t, int>> at;  // (offset, key)
      for (int k = 0; k < 3; ++k) {
        size_t off = static_cast<size_t>(keys[k].depth * filler.size());
        const size_t line = filler.rfind('\n', off);
        off = line == std::string::npos ? 0 : line + 1;
        at.emplace_back(off, k);
      }
      std::sort(at.begin(), at.end(), [](auto a, auto b) { return a.first != b.first ? a.first > b.first : a.second > b.second; });
      double asked_depth = 0.0;
      for (const auto& [off, k] : at) {
        filler.insert(off, fmt::format("The secret number for the {} key is {}.\n", keys[k].label, keys[k].number));
        if (k == asked) asked_depth = static_cast<double>(off) / filler.size();
      }
      const std::string question =
          fmt::format("\nWhat is the secret number for the {} key? Answer with the number only.", keys[asked].label);
      const std::vector<chat_message> messages = {{"user", filler + question}};
      const std::string prompt_text =
          vocab.apply_chat(messages, true) + fmt::format("The secret number for the {} key is", keys[asked].label);
      const std::string answer = " " + keys[asked].number;
      const std::vector<int32_t> prompt = vocab.encode(prompt_text, true);
      const std::vector<int32_t> full = vocab.encode(prompt_text + answer, true);
      size_t common = 0;
      while (common < prompt.size() && common < full.size() && prompt[common] == full[common]) ++common;
      const int excess = static_cast<int>(full.size()) - ctx;
      if (excess > 0) {
        filler_tokens -= excess + 8;
        continue;
      }
      needle_case c;
      c.label = keys[asked].label;
      c.answer = answer;
      c.depth = asked_depth;
      c.source = source;
      c.prompt.assign(full.begin(), full.begin() + common);
      c.question_start = question_prompt_start(vocab, prompt_text, prompt_text.rfind(question), c.prompt);
      c.answer_tokens.assign(full.begin() + common, full.end());
      cases.push_back(std::move(c));
      break;
    }
    if (static_cast<int>(cases.size()) != ic + 1) fail("needle case {} does not fit --ctx {}", ic, ctx);
  }
  return cases;
}

std::vector<quality_result> run_quality(const model& m, std::shared_ptr<const gate_bank> gates,
                                        const std::vector<bench_config>& configs,
                                        const std::vector<bench_text>& windows, int batch, linear_rows prefill,
                                        const bench_progress& progress) {
  const model_config& mc = m.config();
  const int n_vocab = mc.n_vocab;
  std::vector<quality_result> results(configs.size());
  struct sums {
    double nll = 0, kl = 0, agree = 0, share_final = 0, share_mean = 0, bytes_final = 0;
    std::vector<double> recall_sum;
    std::vector<int64_t> recall_n;
  };
  std::vector<sums> acc(configs.size());
  for (quality_result& r : results) r.share_peak = 0.0;  // a max over windows
  for (sums& a : acc) {
    a.recall_sum.assign(mc.n_layer, 0.0);
    a.recall_n.assign(mc.n_layer, 0);
  }
  const double total_work = static_cast<double>(windows.size()) * (configs.size() + 1);
  double done = 0;

  for (const bench_text& w : windows) {
    const int ctx = static_cast<int>(w.tokens.size());
    const int n_pred = ctx - 1;  // positions 0..ctx-2 predict tokens 1..ctx-1
    // The full cache's next-token log-probabilities and argmaxes: the reference of every config.
    std::vector<float> ref(static_cast<size_t>(n_pred) * n_vocab);  // [n_pred, n_vocab]
    std::vector<int32_t> ref_top(n_pred);
    double ref_nll = 0.0;
    size_t ref_bytes = 0;
    {
      const auto t0 = steady::now();
      session s(m, {.n_ctx = ctx, .n_batch = batch, .prefill = prefill});
      run_window_chunks(s, w.tokens, batch, [&](int first, std::span<const float> logits, int n_rows) {
        double nll = 0.0;
#pragma omp parallel for num_threads(compute_threads()) reduction(+ : nll)
        for (int t = 0; t < n_rows; ++t) {
          const size_t p = static_cast<size_t>(first + t);
          float* lp = ref.data() + p * n_vocab;
          log_softmax(logits.data() + static_cast<size_t>(t) * n_vocab, n_vocab, lp);
          ref_top[p] = argmax(lp, n_vocab);
          nll -= lp[w.tokens[p + 1]];
        }
        ref_nll += nll;
      });
      ref_bytes = s.cache().bytes_total();
      // The full configuration is the reference itself (the policy path gives it bit for bit:
      // policy_test holds that), so it is not run twice.
      for (size_t ic = 0; ic < configs.size(); ++ic) {
        if (configs[ic].policy.kind != policy_kind::full) continue;
        acc[ic].nll += ref_nll;
        acc[ic].agree += n_pred;
        acc[ic].share_final += 1.0;
        acc[ic].share_mean += 1.0;
        acc[ic].bytes_final += static_cast<double>(ref_bytes);
        results[ic].bytes_peak = std::max(results[ic].bytes_peak, ref_bytes);
        results[ic].seconds += seconds_since(t0);
        for (int il = 0; il < mc.n_layer; ++il) {
          acc[ic].recall_sum[il] += 1.0;
          acc[ic].recall_n[il] += 1;
        }
      }
    }
    progress(w.source + ": full cache", ++done, total_work);

    std::vector<float> row(static_cast<size_t>(compute_threads()) * n_vocab);
    for (size_t ic = 0; ic < configs.size(); ++ic) {
      const bench_config& config = configs[ic];
      if (config.policy.kind == policy_kind::full) {
        progress("full", ++done, total_work);
        continue;
      }
      const auto t0 = steady::now();
      session s(m, {.n_ctx = ctx, .n_batch = batch, .prefill = prefill});
      s.cache().set_mask_mode(true);
      s.set_measure_recall(true);
      auto runner = make_policy(config.policy, mc, gates);
      runner->attach(s);
      sums& a = acc[ic];
      run_window_chunks(s, w.tokens, batch, [&](int first, std::span<const float> logits, int n_rows) {
        double nll = 0, kl = 0, agree = 0;
#pragma omp parallel for num_threads(compute_threads()) reduction(+ : nll, kl, agree)
        for (int t = 0; t < n_rows; ++t) {
          const size_t p = static_cast<size_t>(first + t);
          float* lq = row.data() + static_cast<size_t>(omp_get_thread_num()) * n_vocab;
          log_softmax(logits.data() + static_cast<size_t>(t) * n_vocab, n_vocab, lq);
          const float* lp = ref.data() + p * n_vocab;
          kl += std::max(0.0, kl_from_log_probs(lp, lq, n_vocab));
          nll -= lq[w.tokens[p + 1]];
          agree += argmax(lq, n_vocab) == ref_top[p];
        }
        a.nll += nll;
        a.kl += kl;
        a.agree += agree;
      });
      const policy_stats& ps = runner->stats();
      a.share_final += kv_share_live(s.cache(), ctx);
      a.share_mean += ps.kv_share_mean();
      a.bytes_final += static_cast<double>(s.cache().bytes_total() + runner->state_bytes());
      quality_result& r = results[ic];
      r.share_peak = std::max(r.share_peak, ps.kv_share_peak());
      r.bytes_peak = std::max(r.bytes_peak, ps.bytes_peak);
      r.gate_s += ps.score_s;
      r.seconds += seconds_since(t0);
      for (int il = 0; il < mc.n_layer; ++il) {
        a.recall_sum[il] += s.recall()[il].sum / std::max<int64_t>(1, s.recall()[il].n);
        a.recall_n[il] += 1;
      }
      progress(fmt::format("{} {} {:g}", config.curve, config.knob_name, config.knob), ++done, total_work);
    }
  }

  const double n_windows = static_cast<double>(windows.size());
  const int64_t n_tokens = [&] {
    int64_t n = 0;
    for (const bench_text& w : windows) n += static_cast<int64_t>(w.tokens.size()) - 1;
    return n;
  }();
  for (size_t ic = 0; ic < configs.size(); ++ic) {
    quality_result& r = results[ic];
    const sums& a = acc[ic];
    if (configs[ic].policy.kind == policy_kind::full) r.share_peak = 1.0;
    r.n_tokens = n_tokens;
    r.nll = a.nll / n_tokens;
    r.ppl = std::exp(r.nll);
    r.kl = a.kl / n_tokens;
    r.top1_agree = a.agree / n_tokens;
    r.share_final = a.share_final / n_windows;
    r.share_mean = a.share_mean / n_windows;
    r.bytes_final = a.bytes_final / n_windows;
    r.recall_layer.resize(mc.n_layer);
    double recall = 0.0;
    for (int il = 0; il < mc.n_layer; ++il) {
      r.recall_layer[il] = a.recall_sum[il] / std::max<int64_t>(1, a.recall_n[il]);
      recall += r.recall_layer[il];
    }
    r.recall = recall / mc.n_layer;
  }
  return results;
}

needle_result run_needle(const model& m, std::shared_ptr<const gate_bank> gates, const bench_config& config,
                         const std::vector<needle_case>& cases, int batch, linear_rows prefill,
                         const bench_progress& progress) {
  const int n_vocab = m.config().n_vocab;
  needle_result r;
  r.n_cases = static_cast<int>(cases.size());
  double prefill_tokens = 0, prefill_s = 0, share = 0, nll_sum = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const needle_case& c = cases[i];
    session s(m, {.n_ctx = static_cast<int>(c.prompt.size() + c.answer_tokens.size()), .n_batch = batch, .prefill = prefill});
    auto runner = make_policy(policy_for_prompt(config, c.question_start, static_cast<int>(c.prompt.size())),
                              m.config(), gates);
    runner->attach(s);
    const auto t0 = steady::now();
    std::vector<float> last;
    {
      auto l = s.prefill(c.prompt);
      last.assign(l.begin(), l.end());
    }
    prefill_s += seconds_since(t0);
    prefill_tokens += static_cast<double>(c.prompt.size());
    share += kv_share_live(s.cache(), s.n_past());

    // Teacher-forced answer: while every argmax matches, this is exactly greedy decoding.
    std::vector<float> rows(last);  // [n_answer, n_vocab]: row k predicts answer token k
    if (c.answer_tokens.size() > 1) {
      auto l = s.step(std::span<const int32_t>(c.answer_tokens.data(), c.answer_tokens.size() - 1), logits_mode::all);
      rows.insert(rows.end(), l.begin(), l.end());
    }
    bool correct = true;
    double nll = 0.0;
    std::vector<float> lp(n_vocab);
    for (size_t k = 0; k < c.answer_tokens.size(); ++k) {
      const float* logits = rows.data() + k * n_vocab;
      log_softmax(logits, n_vocab, lp.data());
      nll -= lp[c.answer_tokens[k]];
      correct = correct && argmax(logits, n_vocab) == c.answer_tokens[k];
    }
    r.correct.push_back(correct);
    r.nll.push_back(nll);
    r.n_correct += correct;
    nll_sum += nll;
    progress(fmt::format("needle {} {} {:g}", config.curve, config.knob_name, config.knob), i + 1, cases.size());
  }
  r.accuracy = r.n_cases ? static_cast<double>(r.n_correct) / r.n_cases : 0.0;
  std::tie(r.ci_low, r.ci_high) = wilson_interval(r.n_correct, r.n_cases);
  r.answer_nll = r.n_cases ? nll_sum / r.n_cases : 0.0;
  r.share_final = r.n_cases ? share / r.n_cases : 1.0;
  r.prefill_tok_s = prefill_s > 0 ? prefill_tokens / prefill_s : 0.0;
  return r;
}

}  // namespace kvgate::eval
