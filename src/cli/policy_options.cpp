#include "cli/policy_options.h"

#include <cstdio>

#include "model/model.h"

namespace kvgate::cli {

void add_policy_options(CLI::App& app, policy_flags& f, bool add_seed) {
  app.add_option("--policy", f.policy, "KV-cache policy (default full):\n" + policy_help());
  f.sinks_opt = app.add_option("--sinks", f.sinks, "first positions always kept (default 4; learned: the gate file's)");
  f.window_opt = app.add_option("--window", f.window, "last positions always kept (default 128; learned: the gate file's)");
  f.threshold_opt = app.add_option("--threshold", f.threshold,
                                   "threshold mode: keep a candidate iff its score is above (learned: default the gate file's)");
  f.budget_opt = app.add_option("--budget", f.budget, "budget mode: long-term slots kept per head beyond sinks and window");
  app.add_option("--budget-pool", f.budget_pool,
                 "what one --budget covers: head (B slots per head), layer (B x its kv heads, shared by a layer's "
                 "heads), model (B x all heads, shared by every head; the highest scores across heads win). "
                 "Default head");
  app.add_option("--layout", f.layout, "how heads combine: per-head, per-layer, global (default per-head)");
  app.add_option("--gates", f.gates, "gate bank file (.gguf) for --policy learned");
  if (add_seed) app.add_option("--seed", f.seed, "seed of --policy random");
}

policy_request policy_request_of(const policy_flags& f) {
  policy_request req;
  req.policy = f.policy;
  if (f.sinks_opt->count()) req.sinks = f.sinks;
  if (f.window_opt->count()) req.window = f.window;
  if (f.budget_opt->count()) req.budget = f.budget;
  if (f.threshold_opt->count()) req.threshold = f.threshold;
  req.layout = f.layout;
  req.pool = f.budget_pool;
  req.has_gates = f.policy == "learned" && !f.gates.empty();
  req.seed = f.seed;
  return req;
}

std::unique_ptr<policy_runner> make_policy_runner(const policy_flags& f, const model& m) {
  policy_request req = policy_request_of(f);
  req.has_gates = !f.gates.empty();  // here --gates with another policy is refused by name

  std::shared_ptr<const gate_bank> gates;
  const model_config& c = m.config();
  if (!f.gates.empty() && f.policy == "learned") {
    gates = std::make_shared<const gate_bank>(gate_bank::load(f.gates));
    check_matches(gates->meta(), c.name, c.arch, c.n_layer, c.n_kv_head, c.d_head);
    if (f.budget_pool != "head") check_pooled_gates(gates->meta(), "gate file " + f.gates);
  }
  const policy_config config = resolve_policy(req, gates ? &gates->meta() : nullptr);
  if (gates && config.window != gates->meta().window) {
    std::fprintf(stderr, "kvgate: note: --window %d differs from the window the gates were trained for (%d)\n",
                 config.window, gates->meta().window);
  }
  return make_policy(config, c, gates);
}

void add_policy_json(nlohmann::ordered_json& j, const policy_config& config) {
  j["policy"] = policy_name(config.kind);
  if (config.mode == select_mode::keep_all) return;
  j["layout"] = layout_name(config.layout);
  j["sinks"] = config.sinks;
  j["window"] = config.window;
  if (config.mode == select_mode::budget) {
    j["budget"] = config.budget;
    if (config.pool != budget_pool::head) j["budget_pool"] = budget_pool_name(config.pool);
  } else {
    j["threshold"] = config.threshold;
  }
}

void add_policy_stats_json(nlohmann::ordered_json& j, const policy_runner& runner) {
  add_policy_json(j, runner.config());
  const policy_stats& ps = runner.stats();
  j["kv_share_mean"] = ps.kv_share_mean();
  j["kv_share_peak"] = ps.kv_share_peak();
  j["kv_bytes_peak"] = ps.bytes_peak;
  j["gate_ms"] = ps.score_s * 1e3;
}

}  // namespace kvgate::cli
