// kvgate demo: answers a question about a document with an evicting policy (the learned gates by
// default) and writes a page showing which of the document's tokens the KV cache still holds at
// the end (demo.html), the same data as JSON (demo.json), and a short summary on stdout.
#include <nlohmann/json.hpp>

#include <cctype>
#include <cstddef>
#include <cstdio>
#include <filesystem>

#include "cli/common.h"
#include "model/decode_loop.h"
#include "cli/policy_options.h"
#include "common/error.h"
#include "common/files.h"
#include "eval/demo.h"
#include "model/model.h"
#include "model/sampler.h"

namespace kvgate::cli {

namespace {

// "learned (per-head, sinks 4, window 128, threshold 0.5)" from add_policy_json's fields.
std::string describe_policy(const policy_config& config) {
  nlohmann::ordered_json j;
  add_policy_json(j, config);
  std::string knobs;
  for (const auto& [key, value] : j.items()) {
    if (key == "policy") continue;
    if (!knobs.empty()) knobs += ", ";
    knobs += key == "layout" ? value.get<std::string>() : key + " " + value.dump();
  }
  const std::string name = j["policy"].get<std::string>();
  return knobs.empty() ? name : name + " (" + knobs + ")";
}

// The document cut at a line boundary (else a space, else a character boundary) so that it
// tokenizes to about max_tokens tokens; the document itself when it already fits.
std::string cut_document(const tokenizer& vocab, const std::string& doc, int max_tokens) {
  const std::vector<int32_t> ids = vocab.encode(doc);
  if (max_tokens <= 0 || static_cast<int>(ids.size()) <= max_tokens) return doc;
  size_t end = 0;  // bytes of the first max_tokens tokens
  for (int i = 0; i < max_tokens; ++i) end += vocab.token_bytes(ids[i]).size();
  size_t cut = doc.rfind('\n', end - 1);
  if (cut == std::string::npos || cut == 0) cut = doc.rfind(' ', end - 1);
  if (cut == std::string::npos || cut == 0) {
    cut = end;
    while (cut > 0 && (static_cast<unsigned char>(doc[cut]) & 0xC0) == 0x80) --cut;
  }
  std::string kept = doc.substr(0, cut);
  std::fprintf(stderr, "kvgate: note: the document has %zu tokens; cut at byte %zu to %zu tokens (--max-doc-tokens %d)\n",
               ids.size(), cut, vocab.encode(kept).size(), max_tokens);
  return kept;
}

}  // namespace

void register_demo(CLI::App& app) {
  auto* sub = app.add_subcommand("demo", "answer a question about a document and draw what the KV cache kept");
  struct opts : model_options {
    std::string doc, question, out;
    int n_predict = 128;
    int max_doc_tokens = 1800;
    int n_ctx = 0;
    int n_batch = 256;
    policy_flags policy;
  };
  auto o = std::make_shared<opts>();
  o->policy.policy = "learned";
  add_model_options(*sub, *o);
  sub->add_option("--doc", o->doc, "text file holding the document")->required();
  sub->add_option("--question", o->question, "question asked after the document")->required();
  sub->add_option("--out", o->out, "directory for demo.html and demo.json (created)")->required();
  sub->add_option("-n,--n-predict", o->n_predict, "most answer tokens (greedy)")->check(CLI::Range(1, 1 << 20));
  sub->add_option("--max-doc-tokens", o->max_doc_tokens,
                  "cut the document at a line boundary to about this many tokens (0 = no cut)")
      ->check(CLI::Range(0, 1 << 24));
  sub->add_option("--ctx", o->n_ctx, "context size (default: the model's)")->check(CLI::Range(0, 1 << 24));
  sub->add_option("--batch", o->n_batch, "prefill chunk size: the policy evicts between chunks")
      ->check(CLI::Range(1, 1 << 16));
  add_policy_options(*sub, o->policy, /*add_seed=*/true);
  sub->get_option("--policy")->description(
      "KV-cache policy: learned (default here; needs --gates), full, window, streaming, h2o, tova, knorm, random");

  sub->callback([o] {
    std::string doc = read_file(o->doc);
    if (o->question.empty()) fail("empty --question");
    apply_threads(*o);
    auto m = model::load(resolve_model_path(*o));
    const tokenizer& vocab = m->vocab();
    auto policy = make_policy_runner(o->policy, *m);
    std::filesystem::create_directories(o->out);

    // Round-trip through the tokenizer first: it drops bytes it has no token for, and the
    // document's token range below is found by matching its bytes in the decoded prompt.
    doc = vocab.decode(vocab.encode(doc));
    doc = cut_document(vocab, doc, o->max_doc_tokens);
    while (!doc.empty() && std::isspace(static_cast<unsigned char>(doc.back()))) doc.pop_back();
    if (doc.empty()) fail("the document {} holds no text", o->doc);
    const std::string user = doc + "\n\n" + o->question;
    const std::vector<chat_message> messages = {{"user", user}};
    const std::string prompt = vocab.apply_chat(messages, true);
    const std::vector<int32_t> tokens = vocab.encode(prompt, true);

    // Byte offset of each token in the prompt, to find the tokens that lie inside the document.
    std::vector<std::string> token_bytes(tokens.size());
    std::vector<size_t> token_begin(tokens.size() + 1, 0);
    for (size_t i = 0; i < tokens.size(); ++i) {
      token_bytes[i] = vocab.token_bytes(tokens[i]);
      token_begin[i + 1] = token_begin[i] + token_bytes[i].size();
    }
    const size_t doc_at = prompt.rfind(user);
    size_t doc_first = tokens.size(), doc_end = 0;  // document tokens [doc_first, doc_end)
    for (size_t i = 0; i < tokens.size() && doc_at != std::string::npos; ++i) {
      if (token_begin[i] >= doc_at && token_begin[i + 1] <= doc_at + doc.size()) {
        doc_first = std::min(doc_first, i);
        doc_end = i + 1;
      }
    }
    if (doc_first >= doc_end) fail("internal: the document's tokens were not found in the prompt");

    session s(*m, {.n_ctx = o->n_ctx, .n_batch = o->n_batch});
    policy->attach(s);  // eviction after every prefill chunk and every decoded token
    if (static_cast<int64_t>(tokens.size()) >= s.n_ctx()) {
      fail("prompt of {} tokens does not fit the context of {} tokens (lower --max-doc-tokens or raise --ctx)",
           tokens.size(), s.n_ctx());
    }
    std::fprintf(stderr, "kvgate: prefilling %zu tokens (document: %zu) with %s\n", tokens.size(),
                 doc_end - doc_first, describe_policy(policy->config()).c_str());

    std::vector<float> logits;
    {
      auto last = s.prefill(tokens);
      logits.assign(last.begin(), last.end());
    }
    sampler greedy({.temperature = 0.0f});
    const decode_result d = decode_loop(s, greedy, logits, {.n_predict = o->n_predict}, [](int32_t) {});
    const std::vector<int32_t>& answer_ids = d.ids;
    const std::string& stop = d.stop;
    // The answer may end inside a UTF-8 character (-n); JSON and HTML need valid text.
    const std::string answer = eval::sanitize_utf8(vocab.decode(answer_ids));
    const std::string question = eval::sanitize_utf8(o->question);

    // Heads holding each position now: walk every head's positions (masked slots do not count).
    const kv_cache& cache = s.cache();
    const int n_heads = cache.n_layer() * cache.n_kv_head();
    const int n_past = s.n_past();
    std::vector<int> kept(n_past, 0);  // [n_past]
    for (int il = 0; il < cache.n_layer(); ++il) {
      for (int ih = 0; ih < cache.n_kv_head(); ++ih) {
        const kv_head& h = cache.head(il, ih);
        for (size_t j = 0; j < h.n_slots(); ++j) {
          if (!h.masked.empty() && h.masked[j]) continue;
          ++kept.at(h.pos[j]);
        }
      }
    }
    size_t doc_evicted = 0;
    for (size_t p = doc_first; p < doc_end; ++p) doc_evicted += kept[p] == 0;

    const policy_config& config = policy->config();
    const policy_stats& ps = policy->stats();
    eval::demo_page page;
    page.question = question;
    page.answer = answer;
    page.n_heads = n_heads;
    page.token_bytes = std::move(token_bytes);
    page.kept_heads = kept;
    if (config.mode != select_mode::keep_all) {
      page.sinks = config.sinks;
      page.window_begin = n_past - config.window;  // kept: pos > t_last - window, t_last = n_past - 1
    }
    eval::demo_figures& f = page.figures;
    f.policy = describe_policy(config);
    f.prompt_tokens = static_cast<int64_t>(tokens.size());
    f.answer_tokens = static_cast<int64_t>(answer_ids.size());
    f.kv_share_mean = ps.kv_share_mean();
    f.kv_share_peak = ps.kv_share_peak();
    f.kv_bytes_peak = ps.bytes_peak;
    f.kv_bytes_full = static_cast<size_t>(n_heads) * n_past * cache.bytes_per_slot();
    f.kept_share_final = static_cast<double>(cache.n_live_total()) / (static_cast<double>(n_heads) * n_past);
    f.doc_evicted_share = static_cast<double>(doc_evicted) / (doc_end - doc_first);

    nlohmann::ordered_json j = {
        {"question", question},
        {"answer", answer},
        {"stop", stop},
        {"prompt_tokens", f.prompt_tokens},
        {"answer_tokens", f.answer_tokens},
    };
    add_policy_json(j, config);
    j["kv_share_mean"] = f.kv_share_mean;
    j["kv_share_peak"] = f.kv_share_peak;
    j["kv_bytes_peak"] = f.kv_bytes_peak;
    j["kv_bytes_full"] = f.kv_bytes_full;
    j["kept_share_final"] = f.kept_share_final;
    j["n_heads"] = n_heads;
    j["document_tokens"] = {doc_first, doc_end};  // [first, end) positions in the prompt
    j["doc_evicted_share"] = f.doc_evicted_share;
    // Heads holding each prompt position at the end (answer positions left out).
    j["kept_heads"] = std::vector<int>(kept.begin(), kept.begin() + static_cast<ptrdiff_t>(tokens.size()));

    const std::string html_path = (std::filesystem::path(o->out) / "demo.html").string();
    const std::string json_path = (std::filesystem::path(o->out) / "demo.json").string();
    write_file_atomically(html_path, eval::render_demo_html(page));
    write_file_atomically(json_path, j.dump(1) + "\n");

    std::printf("answer: %s\n", answer.c_str());
    std::printf("KV kept: %.1f%% of a full cache on average, %.1f%% at the peak, %.1f%% at the end; "
                "%.1f%% of the document's tokens evicted by every head\n",
                100 * f.kv_share_mean, 100 * f.kv_share_peak, 100 * f.kept_share_final, 100 * f.doc_evicted_share);
    std::printf("page: %s (data: %s)\n", html_path.c_str(), json_path.c_str());
  });
}

}  // namespace kvgate::cli
