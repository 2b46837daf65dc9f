// kvgate generate: continue a prompt (optionally wrapped in the chat template) and stream the
// continuation to stdout; a one-line JSON summary with speeds, KV memory kept by the policy and
// the policy's scoring cost goes to stderr.
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "model/decode_loop.h"
#include "model/isa.h"
#include "cli/policy_options.h"
#include "common/error.h"
#include "common/files.h"
#include "model/model.h"
#include "model/sampler.h"

namespace kvgate::cli {

void register_generate(CLI::App& app) {
  auto* sub = app.add_subcommand("generate", "continue a prompt");
  struct opts : model_options {
    std::string prompt, prompt_file, system;
    int n_predict = 128;
    int n_ctx = 0;
    int n_batch = 256;
    std::string kv_type = "f16";
    std::string prefill = "int8";
    bool chat = false;
    bool ignore_eos = false;
    sampler_params sampling;
    policy_flags policy;
  };
  auto o = std::make_shared<opts>();
  add_model_options(*sub, *o);
  auto* prompt = sub->add_option("--prompt,-p", o->prompt, "prompt text");
  auto* prompt_file = sub->add_option("--prompt-file", o->prompt_file, "file holding the prompt");
  prompt->excludes(prompt_file);
  sub->add_option("-n,--n-predict", o->n_predict, "tokens to generate")->check(CLI::Range(0, 1 << 20));
  sub->add_option("--temp", o->sampling.temperature, "temperature; 0 = greedy")->check(CLI::Range(0.0, 100.0));
  sub->add_option("--top-k", o->sampling.top_k, "keep the k most likely tokens (0 = all)")->check(CLI::Range(0, 1 << 24));
  sub->add_option("--top-p", o->sampling.top_p, "nucleus sampling threshold")->check(CLI::Range(0.0, 1.0));
  sub->add_option("--seed", o->sampling.seed, "random seed for sampling");
  sub->add_flag("--chat", o->chat, "wrap the prompt in the model's chat template");
  sub->add_option("--system", o->system, "system message for --chat (default: the model's own)");
  sub->add_flag("--ignore-eos", o->ignore_eos, "keep generating past end-of-generation tokens");
  sub->add_option("--ctx", o->n_ctx, "context size (default: the model's)")->check(CLI::Range(0, 1 << 24));
  sub->add_option("--batch", o->n_batch, "prefill chunk size")->check(CLI::Range(1, 1 << 16));
  add_kv_type_option(*sub, o->kv_type);
  add_prefill_option(*sub, o->prefill);
  add_policy_options(*sub, o->policy, /*add_seed=*/false);  // --seed also seeds --policy random

  sub->callback([o, prompt_file] {
    const std::string text = prompt_file->count() ? read_file(o->prompt_file) : o->prompt;
    if (text.empty()) fail("empty prompt: give --prompt TEXT or a non-empty --prompt-file");
    apply_threads(*o);
    auto m = model::load(resolve_model_path(*o));
    const tokenizer& vocab = m->vocab();
    o->policy.seed = o->sampling.seed;
    auto policy = make_policy_runner(o->policy, *m);

    std::vector<int32_t> tokens;
    if (o->chat) {
      std::vector<chat_message> messages;
      if (!o->system.empty()) messages.push_back({"system", o->system});
      messages.push_back({"user", text});
      tokens = vocab.encode(vocab.apply_chat(messages, true), true);
    } else {
      tokens = vocab.encode(text, false);
    }
    if (tokens.empty()) fail("the prompt tokenizes to nothing");

    session s(*m, {.n_ctx = o->n_ctx, .n_batch = o->n_batch, .kv = parse_kv_type(o->kv_type),
                   .prefill = parse_prefill(o->prefill)});
    policy->attach(s);  // eviction after every prefill chunk and every decoded token
    if (static_cast<int64_t>(tokens.size()) >= s.n_ctx()) {
      fail("prompt of {} tokens does not fit the context of {} tokens (leave room for at least one "
           "generated token, or raise --ctx)", tokens.size(), s.n_ctx());
    }

    stopwatch prefill_clock;
    std::vector<float> logits;
    {
      auto last = s.prefill(tokens);
      logits.assign(last.begin(), last.end());
    }
    const double prefill_s = prefill_clock.seconds();

    sampler pick(o->sampling);
    const double prefill_score_s = policy->stats().score_s;
    const decode_result d = decode_loop(s, pick, logits, {.n_predict = o->n_predict, .stop_at_eos = !o->ignore_eos},
                                        [&](int32_t id) {
                                          const std::string piece = vocab.token_bytes(id);
                                          std::fwrite(piece.data(), 1, piece.size(), stdout);
                                          std::fflush(stdout);
                                        });
    const double decode_s = d.seconds;
    const int n_decoded = static_cast<int>(d.ids.size());
    const std::string& stop = d.stop;
    const double decode_score_s = policy->stats().score_s - prefill_score_s;
    std::printf("\n");

    nlohmann::ordered_json summary = {
        {"prompt_tokens", tokens.size()},
        {"prefill_s", prefill_s},
        {"prefill_tok_s", tokens.size() / std::max(prefill_s, 1e-9)},
        {"decode_tokens", n_decoded},
        {"decode_s", decode_s},
        {"decode_tok_s", n_decoded / std::max(decode_s, 1e-9)},
        {"stop", stop},
        {"kv_slots", s.cache().n_live_total()},
        {"kv_bytes", s.cache().bytes_total() + policy->state_bytes()},
        {"kv_type", kv_type_name(s.cache().type())},
        {"prefill", o->prefill},
        {"threads", compute_threads()},
        {"isa", isa::name(isa::active())},
        {"peak_rss_mb", peak_rss_mb()},
    };
    // KV kept: slots held / slots a full cache would hold, over all heads; gate_ms is the time
    // spent scoring (the gate bank for --policy learned), gate_share its part of decode time.
    add_policy_stats_json(summary, *policy);
    summary["gate_share"] = decode_s > 0 ? decode_score_s / decode_s : 0.0;
    std::fprintf(stderr, "kvgate: %s\n", summary.dump().c_str());
  });
}

}  // namespace kvgate::cli
