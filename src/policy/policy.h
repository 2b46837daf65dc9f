// KV-cache policies (DESIGN.md, "The policy contract"). A policy is a scorer: after each engine
// step it scores the (head, slot) pairs it is asked about; one shared selector turns scores into
// keep / evict, one layout combines the heads' decisions, and only the cache mutates
// (kv_cache::evict). Every policy, the baselines included, runs through this one path, so their
// comparisons differ only in the scores.
//
// Zones of one head's slots after a step whose last token has position t (positions absolute):
//   sinks      pos < S              always kept
//   window     pos > t - W          always kept
//   long-term  S <= pos <= t - W    what the policy decides about
// A long-term slot that has not been scored yet is a candidate; it waits ("pending") until the
// scorer runs on it and counts as kept meanwhile. Heuristic scorers run every step; the learned
// gates wait for a block of candidates so one batched call reads the gate weights once per block.
//
// Selectors:
//   threshold  a candidate is kept iff its score > threshold, decided once, the step it is scored;
//   budget     each head keeps at most B long-term slots (pending ones included): every step the
//              scored long-term slots are ranked and the lowest go (ties: the older goes first).
//              Dynamic scores (accumulated or last-query attention) are recomputed every step.
//              A pooled budget (budget_pool layer | model) spends B x (heads in the pool) slots
//              over the heads of a layer or of the whole model: the pool keeps its highest-scored
//              long-term slots whichever head holds them, so heads whose slots score high get
//              more room and the total never exceeds the pool. Scores are compared across heads,
//              so they must be comparable: attention weights are; the learned gates must be
//              Platt-calibrated per head (check_pooled_gates).
// Layouts: the heads of a group (one head; the heads of a layer; every head of every layer) hold
// the same positions and decide together on the group score of a slot, the max of its heads'
// scores. In threshold mode that is exactly the union of the heads' votes (the seed's Global
// Union for the global layout); in budget mode the group keeps the B slots some head values most.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gate/gate_bank.h"
#include "kv/cache.h"
#include "model/config.h"
#include "model/observer.h"

namespace kvgate {

class session;
class scorer;
struct policy_config;

enum class policy_kind { full, window, streaming, h2o, tova, knorm, keydiff, snapkv, random, learned };
enum class select_mode { keep_all, threshold, budget };
enum class layout_kind { per_head, per_layer, global };
enum class budget_pool { head, layer, model };  // what one budget covers (budget mode)

const char* policy_name(policy_kind kind);  // "h2o", ...
const char* layout_name(layout_kind layout);  // "per-head", "per-layer", "global"
const char* budget_pool_name(budget_pool pool);  // "head", "layer", "model"
// Throw error listing the accepted names.
policy_kind parse_policy_kind(std::string_view name);
layout_kind parse_layout(std::string_view name);
budget_pool parse_budget_pool(std::string_view name);

// ---- the table of policies ----------------------------------------------------------------
// Every policy is one row: its name, how resolve_policy selects when no knob is given, the knobs
// it reads, a line of help, and its scorer's factory. --policy and its help, the bench's default
// baselines and the server's kv_policy names all read this table, so a new policy is its scorer,
// its enum value and its row (in src/policy/scorers.cpp, beside the factories).
enum class selection_rule {
  keep_all,  // keeps every token: takes neither --budget nor --threshold
  recency,   // ranks by recency: budget mode only, --budget defaults to 0 (nothing beyond the window)
  scored,    // needs --budget B or --threshold X
  learned,   // threshold mode at the gate file's threshold unless --budget; sinks and window
             // default to the gate file's; needs --gates
};

struct policy_row {
  policy_kind kind;
  const char* name;
  selection_rule selection;
  bool keeps_sinks;   // false: keeps no sinks (--sinks must be 0)
  bool baseline;      // a heuristic the bench runs by default
  const char* knobs;  // what it reads beyond --sinks, --window, --layout (help text)
  const char* help;   // one line
  // Its scorer (null for a policy that keeps everything).
  std::unique_ptr<scorer> (*make)(const policy_config& config, const model_config& model,
                                  std::shared_ptr<const gate_bank> gates);
};

std::span<const policy_row> policy_table();
const policy_row& policy_row_of(policy_kind kind);
std::string policy_names();                     // "full, window, ..." in table order
std::vector<std::string> baseline_policy_names();  // the rows marked baseline
std::string policy_help();                      // one line per row (name, help, knobs), no final newline

// SnapKV's observation window: the last k_snapkv_queries query positions, pooled over
// k_snapkv_pool neighbouring slots (kvpress's SnapKVPress defaults).
inline constexpr int k_snapkv_queries = 64;
inline constexpr int k_snapkv_pool = 5;

struct policy_config {
  policy_kind kind = policy_kind::full;
  int sinks = 4;
  int window = 128;
  select_mode mode = select_mode::keep_all;
  float threshold = 0.0f;  // threshold mode
  int budget = 0;          // budget mode: long-term slots per head (the mean over a pool's heads)
  budget_pool pool = budget_pool::head;  // budget mode: one budget per head, per layer, or for all
  layout_kind layout = layout_kind::per_head;
  uint64_t seed = 0;       // the random policy's seed
  int gate_block = 16;     // learned: candidates gathered before one batched gate call
  // snapkv: query positions >= observe_end are not observed, so the scores stay those of the 64
  // queries before it (-1: every position is observed). The bench sets it to a prompt's first
  // question token to run SnapKV with the question outside its window, as kvpress compresses the
  // context before the question arrives.
  int32_t observe_end = -1;
  // Eviction runs at the steps whose last position lies in [evict_from, evict_until] (-1: no
  // bound). The bench sets both to a prompt's last token for SnapKV, which compresses a
  // prefilled prompt once and lets the cache grow while it decodes, as kvpress does.
  int32_t evict_from = -1;
  int32_t evict_until = -1;
};

// What the user asked for (command-line flags); unset knobs take the policy's defaults.
struct policy_request {
  std::string policy = "full";
  std::optional<int> sinks, window, budget;
  std::optional<float> threshold;
  std::string layout = "per-head";
  std::string pool = "head";  // --budget-pool
  bool has_gates = false;
  uint64_t seed = 0;
};

// Checks the combination and fills the defaults: sinks 4 and window 128, except for `learned`,
// whose sinks, window and threshold default to the gate file's (gates = its meta, null when no
// --gates was given); `window` keeps no sinks; `window` and `streaming` rank by recency and take
// only --budget (default 0: nothing beyond the window); h2o, tova, knorm, keydiff, snapkv and
// random need --budget or --threshold. A pooled budget needs --budget and a layout whose groups
// fit inside the pool (a layer pool cannot hold global groups), and for `learned` calibrated gates.
// Throws error saying what is wrong and what to give instead.
policy_config resolve_policy(const policy_request& request, const gate_meta* gates);

// Throws error unless every head of the gate file has Platt calibration data (the trainer's
// metrics "heads"[h]."calibration" = [scale, bias], binary objective): a pooled budget compares
// gate probabilities across heads. `source` names the file in the message.
void check_pooled_gates(const gate_meta& gates, std::string_view source);

// ---- scorers ------------------------------------------------------------------------------

// Slots [begin, end) of one head.
struct slot_range {
  uint32_t begin = 0, end = 0;
  uint32_t size() const { return end - begin; }
};

struct score_request {
  int32_t t_last = 0;                  // position of the step's last token
  std::span<const slot_range> ranges;  // [n_layer * n_kv_head], head il * n_kv_head + ih
};

struct scorer_needs {
  bool track_attention = false;  // session::set_track_attention (kv_head::attn_sum, attn_last)
  bool pre_rope_keys = false;    // kv_cache::set_keep_pre_rope (kv_head::k_pre)
  bool dynamic = false;          // scores change every step (re-scored each step in budget mode)
  int block = 1;                 // candidates that must wait before the scorer runs
};

class scorer {
 public:
  virtual ~scorer() = default;
  virtual scorer_needs needs() const = 0;
  // A scorer that reads the attention weights of every query (snapkv) watches the engine through
  // this observer; policy_runner::attach installs it as the session's observer.
  virtual observer* attention_observer() { return nullptr; }
  // Writes kv_head::score[j] (higher = more worth keeping) for every slot j in ranges[head] of
  // every head: one call per step for the whole cache.
  virtual void score(kv_cache& cache, const score_request& request) = 0;
  // Bytes the scorer keeps beside the cache for its slots (snapkv's rings; 0 for the others).
  // Every KV memory figure counts them with the cache's own.
  virtual size_t bytes() const { return 0; }
};

// The most bytes a policy's scorer keeps per slot of a head (see scorer::bytes): a server's
// reservation adds them to kv_cache::bytes_per_slot.
size_t scorer_bytes_per_slot(policy_kind kind);

// The scorer of a policy (null for `full`). `learned` needs the gate bank (already checked
// against the model with check_matches); the others ignore it.
std::unique_ptr<scorer> make_scorer(const policy_config& config, const model_config& model,
                                    std::shared_ptr<const gate_bank> gates);

// Probability that a key is worth keeping from gate logits [n_out]: sigmoid for the binary
// objective; for the lifetime objective the probability mass of the buckets whose lifetimes
// reach past the window (bucket >= floor(log4(window))).
float gate_probability(const float* logits, int n_out, int window);

// ---- the runner: selector + layout, driven by the engine ----------------------------------

// KV memory and cost over everything the runner has seen (all sequences).
struct policy_stats {
  int64_t n_steps = 0;
  int64_t n_tokens = 0;
  double share_token_sum = 0.0;  // sum over steps of n_tok * (live slots / full slots) after eviction
  size_t slots_peak = 0;         // most live slots held (measured as a step ends, before eviction)
  size_t slots_full_peak = 0;    // most slots a full cache would have held (n_heads * n_past)
  size_t bytes_peak = 0;         // most bytes held (kv_cache::bytes_total plus the scorer's, before eviction)
  double score_s = 0.0;          // time inside the scorer (the gate bank for `learned`)
  double step_s = 0.0;           // time inside on_step, scoring included
  int64_t n_score_calls = 0;
  int64_t n_scored = 0;          // (head, slot) pairs scored
  int64_t n_evicted = 0;         // (head, slot) pairs evicted

  // Mean over processed tokens of the share of slots kept after their step (1 for `full`).
  double kv_share_mean() const { return n_tokens ? share_token_sum / n_tokens : 1.0; }
  // Peak memory as a share of the full cache's peak: slots_peak / slots_full_peak.
  double kv_share_peak() const { return slots_full_peak ? double(slots_peak) / slots_full_peak : 1.0; }
};

class policy_runner final : public step_hook {
 public:
  policy_runner(const policy_config& config, const model_config& model, std::unique_ptr<scorer> s);

  // Installs the runner as the session's step hook and turns on what its scorer reads; replaces
  // the session's observer with the scorer's own (none for most policies): set another observer
  // after attach, and pass the weights on to get_scorer()->attention_observer() (snapkv).
  void attach(session& s);
  // After every engine step (prefill chunk or decoded token): score, select, evict.
  void on_step(kv_cache& cache, std::span<const int32_t> step_positions) override;
  // Forget the sequence (called by itself when a step starts at position 0). Stats are kept.
  void reset() { scored_until_ = -1; }

  const policy_config& config() const { return config_; }
  const policy_stats& stats() const { return stats_; }
  scorer* get_scorer() const { return scorer_.get(); }
  // The scorer's bytes beside the cache (scorer::bytes); add to kv_cache::bytes_total.
  size_t state_bytes() const { return scorer_ ? scorer_->bytes() : 0; }
  // Candidates at positions <= scored_until() have been scored (and, in threshold mode, decided).
  int32_t scored_until() const { return scored_until_; }

 private:
  void select_and_evict(kv_cache& cache, int32_t t_last);
  // Fills group_score_ for the group's slots with positions in [first, last]; returns them.
  slot_range score_group(const kv_cache& cache, std::span<const int> group, int32_t first, int32_t last);
  void evict_group(kv_cache& cache, std::span<const int> group, int32_t first, int32_t last, size_t n_keep);
  // A pooled budget: the groups of pool keep n_keep_per_group x pool.size() slots together.
  void evict_pool(kv_cache& cache, std::span<const int> pool, int32_t first, int32_t last, size_t n_keep_per_group);

  policy_config config_;
  int n_layer_, n_kv_head_;
  std::unique_ptr<scorer> scorer_;
  scorer_needs needs_;
  int32_t scored_until_ = -1;
  policy_stats stats_;
  // Scratch reused across steps.
  std::vector<slot_range> ranges_;    // [n_heads]
  std::vector<float> group_score_;    // [slots in the decided range]
  std::vector<uint32_t> order_;       // [slots in the decided range]
  std::vector<uint8_t> keep_;         // [n_slots of a head]
  std::vector<std::vector<int>> groups_;  // [n_groups][heads of the group], per the layout
  std::vector<std::vector<int>> pools_;   // [n_pools][groups of the pool], per the budget pool
  struct pool_item {
    float score;
    int32_t pos;
    uint32_t group, slot;
  };
  std::vector<pool_item> items_;      // [slots in the decided range of a pool]
};

// A runner for the configuration: make_scorer + policy_runner.
std::unique_ptr<policy_runner> make_policy(const policy_config& config, const model_config& model,
                                           std::shared_ptr<const gate_bank> gates = nullptr);

}  // namespace kvgate
