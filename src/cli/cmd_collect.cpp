// kvgate collect: runs the model with the full cache over a corpus, labels every head's tokens
// from their attention (DESIGN.md, "The label") and writes the dataset directory. Progress on
// stderr, a JSON summary on stdout. Restarted with the same parameters it resumes.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "common/error.h"
#include "data/collect.h"
#include "data/label_sources.h"
#include "model/model.h"

namespace kvgate::cli {

namespace {

std::string format_duration(double s) {
  if (s < 0) return "?";
  const long t = static_cast<long>(s + 0.5);
  if (t < 60) return fmt::format("{}s", t);
  if (t < 3600) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}h{:02d}m", t / 3600, t / 60 % 60);
}

}  // namespace

void register_collect(CLI::App& app) {
  auto* sub = app.add_subcommand("collect", "label every head's tokens from attention over a corpus; write a dataset");
  struct opts : model_options {
    collect_options c;
    bool held_out = false;
    std::string labels = "future";
  };
  auto o = std::make_shared<opts>();
  collect_options& c = o->c;
  add_model_options(*sub, *o);
  sub->add_option("--corpus", c.corpus,
                  fmt::format("text files and directories (default: {})", k_default_train_corpus));
  sub->add_flag("--held-out", o->held_out, fmt::format("use the default held-out corpus ({})", k_default_heldout_corpus));
  sub->add_option("--out,-o", c.out_dir, "dataset directory (resumed when it holds a matching dataset)")->required();
  sub->add_option("--sinks", c.label.sinks, "first positions always kept, never labelled")->capture_default_str();
  sub->add_option("--window", c.label.window, "the policy's local window W")->capture_default_str();
  sub->add_option("--tau", c.label.tau, "attention weight that counts as significant")->capture_default_str();
  sub->add_option("--horizon", c.label.horizon, "queries looked at past the window")->capture_default_str();
  sub->add_option("--ctx", c.ctx, "document window in tokens")->capture_default_str();
  sub->add_option("--batch", c.n_batch, "prefill chunk size")->capture_default_str()->check(CLI::Range(1, 1 << 16));
  sub->add_option("--max-tokens", c.max_tokens, "stop after the document that reaches N tokens (0: all)")->check(CLI::Range(int64_t{0}, INT64_MAX));
  sub->add_option("--max-docs", c.max_docs, "stop after N documents (0: all)")->check(CLI::Range(int64_t{0}, INT64_MAX));
  sub->add_option("--key", c.label.key_kind, "gate input: key before or after RoPE")
      ->capture_default_str()->check(CLI::IsMember({"pre-rope", "post-rope"}));
  sub->add_option("--negative-keep", c.negative_keep, "share of negative examples stored")->capture_default_str();
  c.chat_share = 0.5f;
  sub->add_option("--chat-share", c.chat_share,
                  "share of documents run inside the chat template, as a user message the assistant answers")
      ->capture_default_str();
  sub->add_option("--seed", c.seed, "seed of the negative subsampling and the file order")->capture_default_str();
  sub->add_flag("--shuffle,!--no-shuffle", c.shuffle, "read files in an order drawn from --seed (default), or sorted by path");
  sub->add_option("--shard-docs", c.shard_docs, "documents per shard")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  sub->add_option("--ext", c.extensions, "file name endings taken from directories")->capture_default_str();
  sub->add_option("--labels", o->labels,
                  "label sources, a comma list merged by max: future (attention W+1..W+horizon tokens later), "
                  "reconstruct (KVzip: attention from a teacher-forced copy of the document), answer (synthetic "
                  "facts, a question, attention from the answer)")
      ->capture_default_str();
  sub->add_option("--tau-sweep", c.tau_sweep, "also report the positive rate at these tau (this run's documents)");

  sub->callback([o] {
    collect_options& c = o->c;
    if (o->held_out && !c.corpus.empty()) fail("give either --corpus or --held-out, not both");
    c.label_sources = parse_label_sources(o->labels);
    if (c.corpus.empty()) c.corpus = {o->held_out ? k_default_heldout_corpus : k_default_train_corpus};
    apply_threads(*o);
    c.model_path = resolve_model_path(*o);
    auto m = model::load(c.model_path);
    const nlohmann::ordered_json summary = collect(*m, c, [](const collect_progress& p) {
      std::fprintf(stderr, "\rcollect: %lld docs (%lld this run), %lld tokens, %.0f tok/s, ETA %s, positives %.2f%%   ",
                   static_cast<long long>(p.n_docs), static_cast<long long>(p.run_docs),
                   static_cast<long long>(p.n_tokens), p.tok_s, format_duration(p.eta_s).c_str(),
                   100.0 * p.positive_rate);
      std::fflush(stderr);
    });
    std::fprintf(stderr, "\n");
    std::printf("%s\n", summary.dump().c_str());
  });
}

}  // namespace kvgate::cli
