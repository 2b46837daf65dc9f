// kvgate perplexity: the file's ids cut into consecutive windows of --ctx tokens (last partial
// window dropped), each run from an empty cache; the mean negative log-likelihood of tokens
// 1..N-1 of every window, ppl = exp(mean). Windows are processed in chunks of --batch tokens and
// the policy (--policy ...) evicts between chunks, so later chunks see only what it kept.
#include <cmath>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/policy_options.h"
#include "common/error.h"
#include "common/files.h"
#include "eval/window_nll.h"
#include "model/model.h"

namespace kvgate::cli {

void register_perplexity(CLI::App& app) {
  auto* sub = app.add_subcommand("perplexity", "perplexity of a text file in windows of --ctx tokens");
  struct opts : model_options {
    std::string file;
    int n_ctx = 1024;
    int n_batch = 256;
    std::string kv_type = "f16";
    std::string prefill = "f32";  // exact: the measure of the model, not of the kernels
    int max_windows = 0;
    policy_flags policy;
  };
  auto o = std::make_shared<opts>();
  add_model_options(*sub, *o);
  sub->add_option("--file,-f", o->file, "text file")->required();
  sub->add_option("--ctx", o->n_ctx, "window length in tokens")->check(CLI::Range(2, 1 << 24));
  sub->add_option("--batch", o->n_batch, "prefill chunk size")->check(CLI::Range(1, 1 << 16));
  add_kv_type_option(*sub, o->kv_type);
  add_prefill_option(*sub, o->prefill);
  sub->add_option("--max-windows", o->max_windows, "stop after this many windows (0 = all)")->check(CLI::Range(0, 1 << 30));
  add_policy_options(*sub, o->policy, /*add_seed=*/true);

  sub->callback([o] {
    const std::string text = read_file(o->file);
    apply_threads(*o);
    auto m = model::load(resolve_model_path(*o));
    if (o->n_ctx > m->config().n_ctx_train) {
      fail("--ctx {} exceeds the model's context length {}", o->n_ctx, m->config().n_ctx_train);
    }
    auto policy = make_policy_runner(o->policy, *m);
    const std::vector<int32_t> ids = m->vocab().encode(text, false);
    int64_t n_windows = static_cast<int64_t>(ids.size()) / o->n_ctx;
    if (n_windows == 0) {
      fail("{} holds {} tokens, fewer than one window of --ctx {}", o->file, ids.size(), o->n_ctx);
    }
    if (o->max_windows > 0) n_windows = std::min<int64_t>(n_windows, o->max_windows);

    session s(*m, {.n_ctx = o->n_ctx, .n_batch = o->n_batch, .kv = parse_kv_type(o->kv_type),
                   .prefill = parse_prefill(o->prefill)});
    policy->attach(s);
    double nll_sum = 0.0;
    int64_t n_scored = 0;
    stopwatch clock;
    for (int64_t w = 0; w < n_windows; ++w) {
      s.reset();
      const std::span<const int32_t> window(ids.data() + w * o->n_ctx, static_cast<size_t>(o->n_ctx));
      n_scored += add_window_nll(s, window, o->n_batch, &nll_sum);
      const double elapsed = clock.seconds();
      const double done = static_cast<double>(w + 1) / n_windows;
      std::fprintf(stderr, "\rperplexity: window %lld/%lld, %.0f tok/s, ppl so far %.4f, ETA %.0f s   ",
                   static_cast<long long>(w + 1), static_cast<long long>(n_windows),
                   (w + 1) * o->n_ctx / elapsed, std::exp(nll_sum / n_scored), elapsed / done - elapsed);
    }
    std::fprintf(stderr, "\n");
    const double mean = nll_sum / n_scored;
    nlohmann::ordered_json j = {
        {"ppl", std::exp(mean)},
        {"nll", mean},
        {"n_tokens", n_scored},
        {"n_windows", n_windows},
        {"ctx", o->n_ctx},
        {"prefill", o->prefill},
        {"file_tokens", ids.size()},
        {"tok_s", n_windows * o->n_ctx / clock.seconds()},
    };
    add_policy_stats_json(j, *policy);
    std::printf("%s\n", j.dump().c_str());
  });
}

}  // namespace kvgate::cli
