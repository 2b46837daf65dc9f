// kvgate chat: a multi-turn conversation in the model's chat template. User turns come from stdin,
// one per line (empty lines skipped; "/exit" or EOF ends); each reply streams to stdout followed
// by a newline, and a one-line JSON summary per turn goes to stderr.
//
// Incremental prefill: one session lives for the whole conversation and each turn prefills only
// its new tokens ("<|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n", the system message
// too on turn 1). The history is never re-encoded: the KV cache, with whatever the policy evicted,
// is the model's memory of the conversation, which is the point of running a policy over a chat.
// Every reply token is stepped into the cache, and so is the end of turn ("<|im_end|>\n") right
// after the reply, so the cache always holds a well-formed template and n_past counts the tokens
// of the whole conversation. Context is counted in positions: eviction frees slots, not
// positions, so a conversation stops fitting at --ctx tokens under any policy.
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "cli/common.h"
#include "model/decode_loop.h"
#include "cli/policy_options.h"
#include "common/error.h"
#include "model/model.h"
#include "model/sampler.h"

namespace kvgate::cli {
namespace {

// The template text a user turn adds. Turn 1 is the whole rendering of [system?, user] (the
// model's default system prompt when none is given, as generate --chat does). Later turns render
// [system, user] with an explicit (empty) system message, so that no default is inserted, and
// drop the system part: what is left is the user message and the assistant header.
std::string turn_text(const tokenizer& vocab, const std::string& system, const std::string& user,
                      bool first) {
  if (first) {
    std::vector<chat_message> messages;
    if (!system.empty()) messages.push_back({"system", system});
    messages.push_back({"user", user});
    return vocab.apply_chat(messages, true);
  }
  const chat_message head{"system", ""};
  const std::string prefix = vocab.apply_chat(std::span(&head, 1), false);
  const std::vector<chat_message> messages = {head, {"user", user}};
  const std::string full = vocab.apply_chat(messages, true);
  if (full.compare(0, prefix.size(), prefix) != 0) {
    fail("chat template: rendering [system, user] does not start with the rendering of [system]");
  }
  return full.substr(prefix.size());
}

}  // namespace

void register_chat(CLI::App& app) {
  auto* sub = app.add_subcommand("chat", "multi-turn chat, user turns read from stdin one per line");
  struct opts : model_options {
    std::string system;
    int n_predict = 256;
    int n_ctx = 0;
    int n_batch = 256;
    std::string kv_type = "f16";
    std::string prefill = "int8";
    sampler_params sampling;
    policy_flags policy;
  };
  auto o = std::make_shared<opts>();
  add_model_options(*sub, *o);
  sub->add_option("-n,--n-predict", o->n_predict, "most tokens per reply")->check(CLI::Range(0, 1 << 20));
  sub->add_option("--temp", o->sampling.temperature, "temperature; 0 = greedy")->check(CLI::Range(0.0, 100.0));
  sub->add_option("--top-k", o->sampling.top_k, "keep the k most likely tokens (0 = all)")->check(CLI::Range(0, 1 << 24));
  sub->add_option("--top-p", o->sampling.top_p, "nucleus sampling threshold")->check(CLI::Range(0.0, 1.0));
  sub->add_option("--seed", o->sampling.seed, "random seed for sampling");
  sub->add_option("--system", o->system, "system message (default: the model's own)");
  sub->add_option("--ctx", o->n_ctx, "context size for the whole conversation (default: the model's)")->check(CLI::Range(0, 1 << 24));
  sub->add_option("--batch", o->n_batch, "prefill chunk size")->check(CLI::Range(1, 1 << 16));
  add_kv_type_option(*sub, o->kv_type);
  add_prefill_option(*sub, o->prefill);
  add_policy_options(*sub, o->policy, /*add_seed=*/false);  // --seed also seeds --policy random

  sub->callback([o] {
    apply_threads(*o);
    auto m = model::load(resolve_model_path(*o));
    const tokenizer& vocab = m->vocab();
    o->policy.seed = o->sampling.seed;
    auto policy = make_policy_runner(o->policy, *m);

    // What the template puts after an assistant message's content.
    const std::vector<int32_t> end_of_turn = vocab.encode("<|im_end|>\n", true);
    const auto n_end = static_cast<int64_t>(end_of_turn.size());

    session s(*m, {.n_ctx = o->n_ctx, .n_batch = o->n_batch, .kv = parse_kv_type(o->kv_type),
                   .prefill = parse_prefill(o->prefill)});
    policy->attach(s);  // eviction after every prefill chunk and every decoded token
    sampler pick(o->sampling);
    const bool interactive = isatty(STDIN_FILENO);

    int turn = 0;
    std::string line;
    std::vector<float> logits;          // [n_vocab] of the last stepped token
    std::vector<int32_t> tail;          // the reply's unstepped last token, then end_of_turn
    while (true) {
      if (interactive) std::fprintf(stderr, "> ");
      if (!std::getline(std::cin, line)) break;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line == "/exit") break;
      if (line.find_first_not_of(" \t") == std::string::npos) continue;
      ++turn;

      const std::vector<int32_t> tokens = vocab.encode(turn_text(vocab, o->system, line, turn == 1), true);
      // Room for the turn, at least one reply token and the end of turn.
      const int64_t n_need = static_cast<int64_t>(tokens.size()) + 1 + n_end;
      if (s.n_past() + n_need > s.n_ctx()) {
        fail("turn {} does not fit the context: it needs {} more positions (its {} tokens, one "
             "reply token and the end of turn) but only {} of the {} are free; raise --ctx",
             turn, n_need, tokens.size(), s.n_ctx() - s.n_past(), s.n_ctx());
      }

      stopwatch prefill_clock;
      {
        auto last = s.prefill(tokens);
        logits.assign(last.begin(), last.end());
      }
      const double prefill_s = prefill_clock.seconds();

      // Each reply token is stepped before the next is sampled, except a last one left pending
      // (-n reached, or the context full), which goes in with the end of turn; the reserve keeps
      // room for it and the end of turn.
      const decode_result d = decode_loop(s, pick, logits, {.n_predict = o->n_predict, .reserve = 1 + static_cast<int>(n_end)},
                                          [&](int32_t id) {
                                            const std::string piece = vocab.token_bytes(id);
                                            std::fwrite(piece.data(), 1, piece.size(), stdout);
                                            std::fflush(stdout);
                                          });
      const int n_reply = static_cast<int>(d.ids.size());
      const std::string& stop = d.stop;
      const double decode_s = d.seconds;
      tail.clear();
      if (d.last_pending) tail.push_back(d.ids.back());
      std::printf("\n");
      std::fflush(stdout);
      // Whatever end-of-generation token the model chose, the template closes with <|im_end|>\n.
      tail.insert(tail.end(), end_of_turn.begin(), end_of_turn.end());
      s.step(tail, logits_mode::none);

      nlohmann::ordered_json summary = {
          {"turn", turn},
          {"prompt_tokens", tokens.size()},
          {"prefill_s", prefill_s},
          {"prefill_tok_s", tokens.size() / std::max(prefill_s, 1e-9)},
          {"reply_tokens", n_reply},
          {"decode_s", decode_s},
          {"decode_tok_s", n_reply / std::max(decode_s, 1e-9)},
          {"stop", stop},
          {"n_past", s.n_past()},
          {"kv_slots", s.cache().n_live_total()},
          {"kv_bytes", s.cache().bytes_total() + policy->state_bytes()},
      };
      // The policy's figures are over the conversation so far (all turns).
      add_policy_stats_json(summary, *policy);
      std::fprintf(stderr, "kvgate: %s\n", summary.dump().c_str());
    }
    if (turn == 0) std::fprintf(stderr, "kvgate: no user turns on stdin\n");
  });
}

}  // namespace kvgate::cli
