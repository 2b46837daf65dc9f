// The policy flags shared by the subcommands that run the engine (generate, perplexity): parsing,
// building the policy runner for a model, and the KV-memory fields of their JSON summaries.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "policy/policy.h"

namespace kvgate {
class model;
}

namespace kvgate::cli {

struct policy_flags {
  std::string policy = "full";
  int sinks = 4, window = 128, budget = 0;
  float threshold = 0.5f;
  std::string layout = "per-head";
  std::string budget_pool = "head";
  std::string gates;
  uint64_t seed = 0;
  // Set by add_policy_options: which knobs were given (the others take the policy's defaults).
  CLI::Option* sinks_opt = nullptr;
  CLI::Option* window_opt = nullptr;
  CLI::Option* budget_opt = nullptr;
  CLI::Option* threshold_opt = nullptr;
};

// Adds --policy, --sinks, --window, --threshold, --budget, --budget-pool, --layout, --gates and, when add_seed
// (a subcommand without a --seed of its own), --seed. flags must outlive the parse.
void add_policy_options(CLI::App& app, policy_flags& flags, bool add_seed);

// The request the flags make: the knobs given, has_gates when --policy learned has --gates
// (a server keeps --gates for the requests that ask for learned whatever its own policy).
policy_request policy_request_of(const policy_flags& flags);

// Checks the flags for model m (a gate file is loaded and refused unless it was trained for m)
// and builds the runner; attach it to a session with policy_runner::attach.
std::unique_ptr<policy_runner> make_policy_runner(const policy_flags& flags, const model& m);

// Adds "policy" and, for an evicting policy, "layout", "sinks", "window", "budget" (and
// "budget_pool" when pooled) | "threshold" to a summary line.
void add_policy_json(nlohmann::ordered_json& out, const policy_config& config);

// add_policy_json plus what the runner measured: "kv_share_mean", "kv_share_peak" (kept slots
// over the slots a full cache would hold, over all heads), "kv_bytes_peak" and "gate_ms" (time
// spent scoring: the gate bank for --policy learned).
void add_policy_stats_json(nlohmann::ordered_json& out, const policy_runner& runner);

}  // namespace kvgate::cli
