// kvgate bench: quality against KV memory for every policy over a sweep of its knob (budget for
// the heuristics, threshold per layout and budget for the learned gates), on the held-out corpus
// at long context; then needle retrieval for each curve at the matched budget. Writes the report
// directory (eval/bench_report.h) and prints the one-screen summary.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "cli/common.h"
#include "common/error.h"
#include "data/corpus.h"
#include "eval/bench.h"
#include "eval/bench_report.h"
#include "eval/plots.h"
#include "eval/retrieval.h"
#include "model/model.h"

namespace kvgate::cli {

void register_bench(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "bench", "every KV policy over a sweep of its knob on held-out text: perplexity, KL from the full cache, "
               "attention-mass recall, needle retrieval, KV kept; writes a report directory");
  struct opts : model_options {
    std::string gates, out;
    std::vector<std::string> corpus = {k_default_heldout_corpus};
    eval::bench_options bench;
    bool no_plots = false;
    std::vector<std::string> oracle_keep;
    bool evict_after_context = false;
    bool retrieval_no_full = false;
    std::string suite = "all";
    std::string prefill = "f32";  // exact to float rounding, as perplexity; int8 as generate and serve
  };
  auto o = std::make_shared<opts>();
  add_model_options(*sub, *o);
  sub->add_option("--gates", o->gates, "gate bank (.gguf) for the learned curves (without it only the baselines run)");
  sub->add_option("--out", o->out, "report directory")->required();
  sub->add_option("--corpus", o->corpus, "held-out text files or directories (default: git-doc)")->delimiter(',');
  sub->add_option("--ctx", o->bench.ctx, "tokens per quality window and needle prompt")->check(CLI::Range(64, 1 << 20));
  sub->add_option("--batch", o->bench.batch, "prefill chunk: the policy evicts between chunks")->check(CLI::Range(1, 4096));
  add_prefill_option(*sub, o->prefill);
  sub->add_option("--windows", o->bench.n_windows, "quality windows (held-out files)")->check(CLI::Range(1, 100000));
  sub->add_option("--sinks", o->bench.sinks, "sinks of every policy but window")->check(CLI::Range(0, 1 << 20));
  sub->add_option("--window", o->bench.window, "local window of every policy")->check(CLI::Range(1, 1 << 20));
  sub->add_option("--window-share", o->bench.window_share,
                  "budget curves: the window takes this share of a share's slots per head (at least 16, at most "
                  "--window), the scored budget the rest; 0 = always --window (default)")
      ->check(CLI::Range(0.0, 1.0));
  sub->add_option("--shares", o->bench.shares, "budget sweep as shares of --ctx kept (sinks + window + budget)")
      ->delimiter(',')->check(CLI::Range(0.0, 1.0));
  // A threshold sweep: numbers, or none (that layout's threshold curve is left out).
  auto sweep = [sub](const std::string& flag, std::vector<float>& dst, const std::string& what) {
    sub->add_option_function<std::vector<std::string>>(
           flag,
           [&dst, flag](const std::vector<std::string>& values) {
             dst.clear();
             if (values.size() == 1 && values[0] == "none") return;
             for (const std::string& v : values) {
               float t = 0.0f;
               if (!CLI::detail::lexical_cast(v, t) || !std::isfinite(t)) {
                 fail("{} takes finite numbers or none, not '{}'", flag, v);
               }
               dst.push_back(t);
             }
           },
           what + " (numbers, or none)")
        ->delimiter(',');
  };
  sweep("--thresholds", o->bench.thresholds, "learned per-head threshold sweep");
  sweep("--thresholds-layer", o->bench.thresholds_layer, "learned per-layer threshold sweep");
  sweep("--thresholds-global", o->bench.thresholds_global, "learned global (union) threshold sweep");
  sub->add_option("--baselines", o->bench.baselines,
                  fmt::format("baseline policies ({}), or none", fmt::join(baseline_policy_names(), " ")))
      ->delimiter(',');
  sub->add_option("--budget-pools", o->bench.budget_pools,
                  "budget pools of the learned budget curves: head (learned-budget), layer, model (learned-budget-POOL)")
      ->delimiter(',');
  sub->add_option("--matched-share", o->bench.matched_share, "KV share the summary and the needle pass compare at")
      ->check(CLI::Range(0.01, 1.0));
  sub->add_option("--needle-cases", o->bench.needle_cases, "needle prompts per configuration (0 = no needle pass)")
      ->check(CLI::Range(0, 100000));
  sub->add_option("--needle-ctx", o->bench.needle_ctx, "tokens per needle prompt (default: --ctx)")
      ->check(CLI::Range(0, 1 << 20));
  sub->add_option("--suite", o->suite,
                  "all (quality, needle, retrieval at the matched share), quality (quality and needle) or retrieval "
                  "(the retrieval suite alone, every budget share and per-head threshold)");
  sub->add_option("--tasks", o->bench.retrieval_tasks,
                  "retrieval tasks (niah_single niah_multikey niah_multivalue variable_tracking)")->delimiter(',');
  sub->add_option("--retrieval-cases", o->bench.retrieval_cases, "retrieval cases per task (0 = no retrieval suite)")
      ->check(CLI::Range(0, 100000));
  sub->add_option("--retrieval-ctx", o->bench.retrieval_ctx, "tokens per retrieval prompt and answer (default: --ctx)")
      ->check(CLI::Range(0, 1 << 20));
  sub->add_option("--seed", o->bench.seed, "seed of file order, needle keys and the random policy");
  sub->add_flag("--no-plots", o->no_plots, "no gnuplot PNGs");
  sub->add_flag("--evict-after-context", o->evict_after_context,
                "retrieval suite: prefill the context before the question with nothing evicted, evict first when it "
                "is in, then after every step, as kvpress and KVzip compress a read context (default: evict after "
                "every prefill chunk from the start)");
  sub->add_flag("--retrieval-no-full", o->retrieval_no_full,
                "leave the full cache's curve out of the retrieval suite (another run measured the same cases)");
  sub->add_option("--oracle-keep", o->oracle_keep,
                  "diagnostic: in the retrieval suite these prompt parts (needles: the asked needles; question: the "
                  "question and answer prefix) score above every other slot, as a scorer that found them perfectly "
                  "would: each part adds a curve CURVE-oracle-PART beside every evicting curve")
      ->delimiter(',')->check(CLI::IsMember({"needles", "question"}));

  sub->callback([o] {
    o->bench.prefill = parse_prefill(o->prefill);
    const eval::bench_options& b = o->bench;
    if (o->suite != "all" && o->suite != "quality" && o->suite != "retrieval") {
      fail("unknown suite '{}' (known: all, quality, retrieval)", o->suite);
    }
    const bool run_quality = o->suite != "retrieval";
    const bool run_retrieval = o->suite != "quality" && b.retrieval_cases > 0;
    if (o->suite == "retrieval" && b.retrieval_cases == 0) fail("--suite retrieval needs --retrieval-cases > 0");
    eval::check_retrieval_tasks(b.retrieval_tasks);
    // "none": the full cache and the learned curves alone (a long retrieval run of the gates).
    if (b.baselines.size() == 1 && b.baselines[0] == "none") o->bench.baselines.clear();
    for (const std::string& name : b.baselines) {
      const policy_kind kind = parse_policy_kind(name);
      if (kind == policy_kind::full || kind == policy_kind::learned) {
        fail("--baselines takes heuristic policies; full and learned always run (learned with --gates)");
      }
    }
    for (const std::string& pool : b.budget_pools) parse_budget_pool(pool);
    if (b.sinks + b.window + b.batch >= b.ctx) {
      fail("--ctx {} leaves no room for eviction beyond --sinks {} + --window {} + --batch {}", b.ctx, b.sinks, b.window,
           b.batch);
    }
    if (!o->no_plots) eval::require_gnuplot();
    apply_threads(*o);
    const std::string model_path = resolve_model_path(*o);
    auto m = model::load(model_path);
    const model_config& mc = m->config();
    if (b.ctx > mc.n_ctx_train) fail("--ctx {} exceeds the model's context length {}", b.ctx, mc.n_ctx_train);
    std::shared_ptr<const gate_bank> gates;
    if (!o->gates.empty()) {
      gates = std::make_shared<const gate_bank>(gate_bank::load(o->gates));
      check_matches(gates->meta(), mc.name, mc.arch, mc.n_layer, mc.n_kv_head, mc.d_head);
    } else {
      std::fprintf(stderr, "kvgate bench: no --gates: the learned curves are left out\n");
    }
    std::filesystem::create_directories(o->out);

    eval::bench_input in;
    in.model_name = mc.name;
    in.model_path = model_path;
    in.gates_path = o->gates;
    in.corpus = o->corpus;
    in.options = b;
    const std::vector<eval::bench_config> configs =
        run_quality ? eval::bench_configs(b, gates ? &gates->meta() : nullptr) : std::vector<eval::bench_config>{};
    if (run_quality) in.windows = eval::bench_windows(o->corpus, *m, b.ctx, b.n_windows, b.seed);
    const int needle_ctx = b.needle_ctx > 0 ? b.needle_ctx : b.ctx;
    if (needle_ctx > mc.n_ctx_train) fail("--needle-ctx {} exceeds the model's context length {}", needle_ctx, mc.n_ctx_train);
    if (needle_ctx < 256) fail("--needle-ctx {} is too short for three keys, a question and filler (at least 256)", needle_ctx);
    if (run_quality && b.needle_cases > 0) in.cases = eval::needle_cases(o->corpus, *m, needle_ctx, b.needle_cases, b.seed);
    const int retrieval_ctx = b.retrieval_ctx > 0 ? b.retrieval_ctx : b.ctx;
    if (retrieval_ctx > mc.n_ctx_train) {
      fail("--retrieval-ctx {} exceeds the model's context length {}", retrieval_ctx, mc.n_ctx_train);
    }
    if (run_retrieval) {
      in.retrieval_cases =
          eval::retrieval_cases(o->corpus, *m, b.retrieval_tasks, retrieval_ctx, b.retrieval_cases, b.seed);
    }

    // The curves in configuration order.
    std::vector<std::string> curves;
    for (const auto& c : configs)
      if (std::find(curves.begin(), curves.end(), c.curve) == curves.end()) curves.push_back(c.curve);
    // A budget keeps the same share of a needle or retrieval prompt as of the quality window.
    auto rescaled = [&](eval::bench_config c, int ctx) {
      if (c.policy.mode == select_mode::budget) {
        const policy_config& p = c.policy;
        const double share = static_cast<double>(p.sinks + p.window + p.budget) / b.ctx;
        c.policy.window = eval::window_for_share(share, ctx, b.window, b.window_share);
        c.policy.budget = eval::budget_for_share(share, ctx, p.sinks, c.policy.window);
        c.knob = c.policy.budget;
      }
      return c;
    };
    // The retrieval suite alone runs every budget share and the per-head thresholds; inside the
    // whole bench it runs where the needle pass does.
    std::vector<eval::bench_config> retrieval_configs;
    if (run_retrieval && !run_quality) {
      eval::bench_options rb = b;
      rb.ctx = retrieval_ctx;
      for (const eval::bench_config& c : eval::bench_configs(rb, gates ? &gates->meta() : nullptr))
        if (c.curve != "learned-per-layer" && c.curve != "learned-global") retrieval_configs.push_back(c);
    }

    stopwatch clock;
    // Work units: a quality window of one configuration, or one needle or retrieval case (about
    // as long). The needle and retrieval passes run one configuration per curve.
    size_t n_twins = 0;  // snapkv-ctx rows take their twin's quality figures (below)
    for (const auto& c : configs) n_twins += c.question_outside;
    const double quality_units = static_cast<double>(in.windows.size()) * (configs.size() - n_twins + 1);
    // Known once the retrieval configurations are (below).
    double total_units = quality_units + static_cast<double>(curves.size()) * (in.cases.size() + in.retrieval_cases.size()) +
                         static_cast<double>(retrieval_configs.size()) * in.retrieval_cases.size();
    double units_before = 0;
    auto progress = [&](const std::string& what, double done, double) {
      const double units = units_before + done;
      const double elapsed = clock.seconds();
      const double eta = units > 0 ? elapsed * (total_units / units - 1.0) : 0.0;
      std::fprintf(stderr, "\rbench: %.0f/%.0f  %-40.40s  %.0f s elapsed, ETA %.0f s   ", units, total_units,
                   what.c_str(), elapsed, eta);
    };

    if (run_quality) {
      // A configuration that hides the question from its scorer (snapkv-ctx) scores the quality
      // windows, which hold no question, exactly as its twin does: it is not run twice.
      std::vector<eval::bench_config> measured;
      std::vector<size_t> source(configs.size());
      for (size_t i = 0; i < configs.size(); ++i) {
        const eval::bench_config& c = configs[i];
        source[i] = measured.size();
        if (c.question_outside) {
          for (size_t k = 0; k < i; ++k) {
            const eval::bench_config& twin = configs[k];
            if (!twin.question_outside && twin.curve + "-ctx" == c.curve && twin.knob == c.knob) source[i] = source[k];
          }
        }
        if (source[i] == measured.size()) measured.push_back(c);
      }
      const std::vector<eval::quality_result> quality =
          eval::run_quality(*m, gates, measured, in.windows, b.batch, b.prefill, progress);
      units_before = quality_units;
      for (size_t i = 0; i < configs.size(); ++i) {
        eval::bench_row row;
        row.config = configs[i];
        row.quality = quality[source[i]];
        in.rows.push_back(std::move(row));
      }
    }

    // Needle and retrieval: per curve, the configuration whose measured KV share is nearest the
    // matched share (exact for budgets); a curve that never comes within 0.05 of it is left out.
    for (const std::string& curve : curves) {
      eval::bench_row* best = nullptr;
      for (eval::bench_row& r : in.rows) {
        if (r.config.curve != curve) continue;
        const double d = std::abs(r.quality.share_final - b.matched_share);
        if (!best || d < std::abs(best->quality.share_final - b.matched_share)) best = &r;
      }
      if (curve != "full" && std::abs(best->quality.share_final - b.matched_share) > 0.05) continue;
      if (!in.cases.empty()) {
        best->needle = eval::run_needle(*m, gates, rescaled(best->config, needle_ctx), in.cases, b.batch, b.prefill, progress);
        best->has_needle = true;
        units_before += in.cases.size();
      }
      if (run_retrieval) retrieval_configs.push_back(rescaled(best->config, retrieval_ctx));
    }
    if (o->retrieval_no_full) {
      std::erase_if(retrieval_configs, [](const eval::bench_config& c) { return c.policy.kind == policy_kind::full; });
    }
    for (eval::bench_config& c : retrieval_configs) c.evict_after_context = o->evict_after_context;
    // Diagnostics: beside each evicting curve, one curve per --oracle-keep part.
    if (!o->oracle_keep.empty()) {
      std::vector<eval::bench_config> with_oracles;
      for (const eval::bench_config& c : retrieval_configs) {
        with_oracles.push_back(c);
        if (c.policy.mode == select_mode::keep_all) continue;
        for (const std::string& part : o->oracle_keep) {
          eval::bench_config oc = c;
          (part == "needles" ? oc.oracle_needles : oc.oracle_question) = true;
          oc.curve += "-oracle-" + part;
          with_oracles.push_back(std::move(oc));
        }
      }
      retrieval_configs = std::move(with_oracles);
    }
    total_units = units_before + static_cast<double>(retrieval_configs.size()) * in.retrieval_cases.size();
    for (const eval::bench_config& c : retrieval_configs) {
      in.retrieval.push_back({c, eval::run_retrieval(*m, gates, c, in.retrieval_cases, b.batch, b.prefill, progress)});
      units_before += in.retrieval_cases.size();
    }
    std::fprintf(stderr, "\n");
    in.seconds = clock.seconds();

    const auto summary = eval::bench_summary(in);
    eval::write_bench_report(in, summary, o->out, !o->no_plots);
    std::printf("%s", eval::bench_summary_text(in, summary).c_str());
    std::printf("report: %s/index.html (report.json, quality.csv, needle.csv)\n", o->out.c_str());
  });
}

}  // namespace kvgate::cli
