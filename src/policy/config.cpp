// Policy names and the checks on a combination of knobs (what the command-line flags give).
#include <cmath>

#include "common/error.h"
#include "policy/policy.h"

namespace kvgate {

namespace {

constexpr policy_kind k_kinds[] = {policy_kind::full,  policy_kind::window, policy_kind::streaming,
                                   policy_kind::h2o,   policy_kind::tova,   policy_kind::knorm,
                                   policy_kind::keydiff, policy_kind::random, policy_kind::learned};
constexpr layout_kind k_layouts[] = {layout_kind::per_head, layout_kind::per_layer, layout_kind::global};

template <typename T, size_t N, typename Name>
std::string list_names(const T (&values)[N], Name name) {
  std::string s;
  for (size_t i = 0; i < N; ++i) s += (i ? ", " : "") + std::string(name(values[i]));
  return s;
}

}  // namespace

const char* policy_name(policy_kind kind) {
  switch (kind) {
    case policy_kind::full: return "full";
    case policy_kind::window: return "window";
    case policy_kind::streaming: return "streaming";
    case policy_kind::h2o: return "h2o";
    case policy_kind::tova: return "tova";
    case policy_kind::knorm: return "knorm";
    case policy_kind::keydiff: return "keydiff";
    case policy_kind::random: return "random";
    case policy_kind::learned: return "learned";
  }
  return "?";
}

const char* layout_name(layout_kind layout) {
  switch (layout) {
    case layout_kind::per_head: return "per-head";
    case layout_kind::per_layer: return "per-layer";
    case layout_kind::global: return "global";
  }
  return "?";
}

policy_kind parse_policy_kind(std::string_view name) {
  for (policy_kind k : k_kinds) {
    if (name == policy_name(k)) return k;
  }
  fail("unknown policy '{}' (one of: {})", name, list_names(k_kinds, policy_name));
}

layout_kind parse_layout(std::string_view name) {
  for (layout_kind l : k_layouts) {
    if (name == layout_name(l)) return l;
  }
  fail("unknown layout '{}' (one of: {})", name, list_names(k_layouts, layout_name));
}

policy_config resolve_policy(const policy_request& req, const gate_meta* gates) {
  policy_config c;
  c.kind = parse_policy_kind(req.policy);
  c.layout = parse_layout(req.layout);
  c.seed = req.seed;
  const char* name = policy_name(c.kind);
  const bool learned = c.kind == policy_kind::learned;

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
  switch (c.kind) {
    case policy_kind::full:
      if (req.threshold || req.budget) fail("--policy full keeps every token; --threshold and --budget need another policy");
      c.mode = select_mode::keep_all;
      break;
    case policy_kind::window:
      if (req.sinks && *req.sinks != 0) fail("--policy window keeps no sinks; use --policy streaming for sinks + window");
      c.sinks = 0;
      [[fallthrough]];
    case policy_kind::streaming:
      if (req.threshold) {
        fail("--policy {} ranks by recency: it takes --budget B (B more recent slots per head), not --threshold", name);
      }
      c.mode = select_mode::budget;
      c.budget = req.budget.value_or(0);
      break;
    case policy_kind::h2o:
    case policy_kind::tova:
    case policy_kind::knorm:
    case policy_kind::keydiff:
    case policy_kind::random:
      if (!req.threshold && !req.budget) {
        fail("--policy {} needs --budget B (long-term slots kept per head) or --threshold X", name);
      }
      [[fallthrough]];
    case policy_kind::learned:
      if (req.budget) {
        c.mode = select_mode::budget;
        c.budget = *req.budget;
      } else {
        c.mode = select_mode::threshold;
        c.threshold = req.threshold.value_or(learned ? gates->threshold : 0.0f);
      }
      break;
  }
  return c;
}

}  // namespace kvgate
