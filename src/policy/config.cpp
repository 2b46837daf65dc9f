// Policy names and the checks on a combination of knobs (what the command-line flags give).
#include <cmath>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "policy/policy.h"

namespace kvgate {

namespace {

constexpr layout_kind k_layouts[] = {layout_kind::per_head, layout_kind::per_layer, layout_kind::global};
constexpr budget_pool k_pools[] = {budget_pool::head, budget_pool::layer, budget_pool::model};

template <typename T, size_t N, typename Name>
std::string list_names(const T (&values)[N], Name name) {
  std::string s;
  for (size_t i = 0; i < N; ++i) s += (i ? ", " : "") + std::string(name(values[i]));
  return s;
}

}  // namespace

const char* policy_name(policy_kind kind) { return policy_row_of(kind).name; }

const char* layout_name(layout_kind layout) {
  switch (layout) {
    case layout_kind::per_head: return "per-head";
    case layout_kind::per_layer: return "per-layer";
    case layout_kind::global: return "global";
  }
  return "?";
}

const char* budget_pool_name(budget_pool pool) {
  switch (pool) {
    case budget_pool::head: return "head";
    case budget_pool::layer: return "layer";
    case budget_pool::model: return "model";
  }
  return "?";
}

policy_kind parse_policy_kind(std::string_view name) {
  for (const policy_row& row : policy_table()) {
    if (name == row.name) return row.kind;
  }
  fail("unknown policy '{}' (one of: {})", name, policy_names());
}

layout_kind parse_layout(std::string_view name) {
  for (layout_kind l : k_layouts) {
    if (name == layout_name(l)) return l;
  }
  fail("unknown layout '{}' (one of: {})", name, list_names(k_layouts, layout_name));
}

budget_pool parse_budget_pool(std::string_view name) {
  for (budget_pool p : k_pools) {
    if (name == budget_pool_name(p)) return p;
  }
  fail("unknown budget pool '{}' (one of: {})", name, list_names(k_pools, budget_pool_name));
}

void check_pooled_gates(const gate_meta& gates, std::string_view source) {
  const int n_heads = gates.n_layer * gates.n_kv_head;
  const nlohmann::json& m = gates.metrics;
  const nlohmann::json* heads = m.is_object() && m.contains("heads") ? &m["heads"] : nullptr;
  int n_calibrated = 0;
  if (gates.objective == "binary" && heads && heads->is_array() && static_cast<int>(heads->size()) == n_heads) {
    for (const nlohmann::json& h : *heads) {
      const nlohmann::json* c = h.is_object() && h.contains("calibration") ? &h["calibration"] : nullptr;
      n_calibrated += c && c->is_array() && c->size() == 2 && (*c)[0].is_number() && (*c)[1].is_number() &&
                      std::isfinite((*c)[0].get<double>()) && std::isfinite((*c)[1].get<double>());
    }
  }
  if (n_calibrated != n_heads) {
    fail("{} has no calibration data for {} of its {} heads (objective {}): a pooled budget compares gate "
         "scores across heads, which needs Platt-calibrated binary gates (kvgate train without --no-calibrate); "
         "use --budget-pool head",
         source, n_heads - n_calibrated, n_heads, gates.objective);
  }
}

policy_config resolve_policy(const policy_request& req, const gate_meta* gates) {
  policy_config c;
  c.kind = parse_policy_kind(req.policy);
  c.layout = parse_layout(req.layout);
  c.pool = parse_budget_pool(req.pool);
  c.seed = req.seed;
  const policy_row& row = policy_row_of(c.kind);
  const char* name = row.name;
  const bool learned = row.selection == selection_rule::learned;

  if (req.has_gates && !learned) fail("--gates is read only by --policy learned (the policy is {})", name);
  if (learned && !gates) fail("--policy learned needs --gates FILE: a gate bank trained for this model");
  if (req.threshold && req.budget) {
    fail("--threshold and --budget are two ways to select; give one (threshold: keep a candidate "
         "whose score is above it; budget: keep at most B long-term slots per head)");
  }
  if (req.sinks && *req.sinks < 0) fail("--sinks {} must be >= 0", *req.sinks);
  if (req.window && *req.window < 1) fail("--window {} must be >= 1", *req.window);
  if (req.budget && *req.budget < 0) fail("--budget {} must be >= 0", *req.budget);
  if (req.threshold && !std::isfinite(*req.threshold)) fail("--threshold must be a finite number");

  c.sinks = req.sinks.value_or(learned ? gates->sinks : 4);
  c.window = req.window.value_or(learned ? gates->window : 128);
  switch (row.selection) {
    case selection_rule::keep_all:
      if (req.threshold || req.budget) fail("--policy {} keeps every token; --threshold and --budget need another policy", name);
      c.mode = select_mode::keep_all;
      break;
    case selection_rule::recency:
      if (!row.keeps_sinks) {
        if (req.sinks && *req.sinks != 0) fail("--policy {} keeps no sinks; use --policy streaming for sinks + window", name);
        c.sinks = 0;
      }
      if (req.threshold) {
        fail("--policy {} ranks by recency: it takes --budget B (B more recent slots per head), not --threshold", name);
      }
      c.mode = select_mode::budget;
      c.budget = req.budget.value_or(0);
      break;
    case selection_rule::scored:
      if (!req.threshold && !req.budget) {
        fail("--policy {} needs --budget B (long-term slots kept per head) or --threshold X", name);
      }
      [[fallthrough]];
    case selection_rule::learned:
      if (req.budget) {
        c.mode = select_mode::budget;
        c.budget = *req.budget;
      } else {
        c.mode = select_mode::threshold;
        c.threshold = req.threshold.value_or(learned ? gates->threshold : 0.0f);
      }
      break;
  }
  if (c.pool != budget_pool::head) {
    if (c.mode != select_mode::budget) {
      fail("--budget-pool {} shares a budget across heads: it needs --budget B (B x the pool's heads slots), "
           "not {}", budget_pool_name(c.pool), c.mode == select_mode::threshold ? "--threshold" : "--policy full");
    }
    if (c.pool == budget_pool::layer && c.layout == layout_kind::global) {
      fail("--budget-pool layer cannot hold --layout global (one token set for every layer); use --budget-pool model");
    }
    if (learned) check_pooled_gates(*gates, "the gate file");
  }
  return c;
}

}  // namespace kvgate
