#include "eval/retrieval.h"

#include <algorithm>
#include <cctype>
#include <limits>
#include <memory>
#include <random>

#include <fmt/format.h>

#include "common/error.h"
#include "model/decode_loop.h"
#include "model/sampler.h"
#include "common/files.h"
#include "data/corpus.h"
#include "model/model.h"

namespace kvgate::eval {

namespace {

// Keys are two-word compounds, unlikely to occur in any haystack.
const char* const k_adjectives[] = {"amber", "brisk", "copper", "dusty", "eager", "frozen", "gentle", "hollow",
                                    "ivory", "jolly", "lunar", "misty", "noble", "olive", "quiet", "rusty",
                                    "silent", "tidal", "velvet", "woolen"};
const char* const k_nouns[] = {"falcon", "lantern", "meadow", "harbor", "violin", "pebble", "glacier", "orchard",
                               "compass", "thimble", "canyon", "beacon", "saddle", "walrus", "quartz", "tulip",
                               "anchor", "kettle", "mosaic", "sparrow"};

// What a task generator produces before the haystack is put around it.
struct task_draw {
  std::vector<std::string> needles;    // statements in haystack order
  std::vector<double> depths;          // [needles] asked depths, non-decreasing
  std::vector<std::string> answers;
  std::string intro, question, answer_prefix;
  int max_new_tokens = 16;
};

// Numbers of 5-7 digits (RULER uses 7; shorter ones vary the answer length).
std::string draw_number(std::mt19937_64& rng) {
  const int n_digits = 5 + static_cast<int>(rng() % 3);
  int64_t lo = 1;
  for (int i = 1; i < n_digits; ++i) lo *= 10;
  return std::to_string(lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(9 * lo)));
}

std::string draw_key(std::mt19937_64& rng) {
  return fmt::format("{}-{}", k_adjectives[rng() % std::size(k_adjectives)], k_nouns[rng() % std::size(k_nouns)]);
}

std::string draw_variable(std::mt19937_64& rng) {
  std::string s(5, 'A');
  for (char& c : s) c = static_cast<char>('A' + rng() % 26);
  return s;
}

// A string not in `avoid` (the haystack, case-insensitively) and not already drawn.
template <typename F>
std::string draw_fresh(std::mt19937_64& rng, F draw, const std::string& avoid_lower, std::vector<std::string>& used) {
  for (int attempt = 0; attempt < 100000; ++attempt) {
    std::string s = draw(rng);
    std::string lower = s;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    bool clash = avoid_lower.find(lower) != std::string::npos;
    for (const std::string& u : used) clash = clash || u.find(s) != std::string::npos || s.find(u) != std::string::npos;
    if (clash) continue;
    used.push_back(s);
    return s;
  }
  fail("retrieval: could not draw a value absent from the haystack after 100000 tries");
}

const char* const k_magic_intro =
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. I will quiz you "
    "about the numbers afterwards.\n";

std::string magic_needle(const std::string& key, const std::string& value) {
  return fmt::format("One of the special magic numbers for {} is: {}.", key, value);
}

// The asked depth of case ic: 0.1, 0.2, ..., 0.9, cycling.
double asked_depth(int ic) { return 0.1 + 0.1 * (ic % 9); }

task_draw draw_task(const std::string& task, int ic, std::mt19937_64& rng, const std::string& haystack_lower) {
  task_draw d;
  std::vector<std::string> used;
  std::uniform_real_distribution<double> anywhere(0.05, 0.95);
  const double depth = asked_depth(ic);
  auto number = [&] { return draw_fresh(rng, draw_number, haystack_lower, used); };
  auto key = [&] { return draw_fresh(rng, draw_key, haystack_lower, used); };
  if (task == "niah_single" || task == "niah_multikey") {
    const int n_keys = task == "niah_single" ? 1 : 4;
    const int asked = static_cast<int>(rng() % n_keys);
    std::vector<std::pair<double, std::string>> placed;
    std::string asked_key;
    for (int k = 0; k < n_keys; ++k) {
      const std::string kk = key(), v = number();
      if (k == asked) {
        asked_key = kk;
        d.answers = {v};
      }
      placed.emplace_back(k == asked ? depth : anywhere(rng), magic_needle(kk, v));
    }
    std::stable_sort(placed.begin(), placed.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& [dp, s] : placed) {
      d.depths.push_back(dp);
      d.needles.push_back(std::move(s));
    }
    d.intro = k_magic_intro;
    d.question = fmt::format("What is the special magic number for {} mentioned in the provided text?", asked_key);
    d.answer_prefix = fmt::format("The special magic number for {} mentioned in the provided text is", asked_key);
    d.max_new_tokens = 16;
  } else if (task == "niah_multivalue") {
    const std::string kk = key();
    // The first value at the asked depth, the other two after it.
    std::vector<double> depths = {depth, anywhere(rng), anywhere(rng)};
    for (int k = 1; k < 3; ++k) depths[k] = depth + (0.95 - depth) * (depths[k] - 0.05) / 0.9;
    std::sort(depths.begin(), depths.end());
    for (int k = 0; k < 3; ++k) {
      d.answers.push_back(number());
      d.needles.push_back(magic_needle(kk, d.answers.back()));
      d.depths.push_back(depths[k]);
    }
    d.intro = k_magic_intro;
    d.question = fmt::format("What are all the special magic numbers for {} mentioned in the provided text?", kk);
    d.answer_prefix = fmt::format("The special magic numbers for {} mentioned in the provided text are", kk);
    d.max_new_tokens = 40;
  } else if (task == "variable_tracking") {
    const int n_links = 3 + static_cast<int>(rng() % 2);
    const std::string value = number();
    std::vector<double> depths = {depth};
    for (int k = 1; k < n_links; ++k) depths.push_back(depth + (0.95 - depth) * (anywhere(rng) - 0.05) / 0.9);
    std::sort(depths.begin(), depths.end());
    std::string previous;
    for (int k = 0; k < n_links; ++k) {
      const std::string var = draw_fresh(rng, draw_variable, haystack_lower, used);
      d.needles.push_back(k == 0 ? fmt::format("VAR {} = {}.", var, value) : fmt::format("VAR {} = VAR {}.", var, previous));
      d.depths.push_back(depths[k]);
      d.answers.push_back(var);
      previous = var;
    }
    d.intro = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n";
    d.question = fmt::format("Question: Find all variables that are assigned the value {} in the text above.", value);
    d.answer_prefix = fmt::format(
        "Answer: According to the chain(s) of variable assignment in the text above, {} variables are assigned the "
        "value {}, they are:",
        n_links, value);
    d.max_new_tokens = 32;
  } else {
    check_retrieval_tasks({task});
  }
  return d;
}

// The filler cut at its last line end, needles inserted at the line start at or before each
// asked depth (deepest first, so earlier offsets stay valid; equal offsets keep their order).
// depths: [needles] where each went, as a share of the filler without the needles.
std::string insert_needles(std::string filler, const task_draw& d, std::vector<double>* depths = nullptr) {
  const size_t cut = filler.rfind('\n');
  filler.resize(cut == std::string::npos ? filler.size() : cut + 1);
  std::vector<size_t> at(d.needles.size());
  for (size_t k = 0; k < d.needles.size(); ++k) {
    size_t off = static_cast<size_t>(d.depths[k] * filler.size());
    const size_t line = off == 0 ? std::string::npos : filler.rfind('\n', off - 1);
    at[k] = line == std::string::npos ? 0 : line + 1;
  }
  if (depths) {
    depths->clear();
    for (size_t k = 0; k < at.size(); ++k) depths->push_back(filler.empty() ? 0.0 : double(at[k]) / filler.size());
  }
  for (size_t k = d.needles.size(); k-- > 0;) filler.insert(at[k], d.needles[k] + "\n");
  return filler;
}

// Share of the (layer, KV head, token) slots of spans (positions) that are live; 1 for no span.
double span_share_live(const kv_cache& cache, const std::vector<std::pair<int, int>>& spans) {
  int64_t n_live = 0, n_all = 0;
  for (int il = 0; il < cache.n_layer(); ++il) {
    for (int ih = 0; ih < cache.n_kv_head(); ++ih) {
      const kv_head& h = cache.head(il, ih);
      for (const auto& [first, end] : spans) {
        n_all += end - first;
        const auto lo = std::lower_bound(h.pos.begin(), h.pos.end(), first);
        const auto hi = std::lower_bound(lo, h.pos.end(), end);
        for (auto it = lo; it != hi; ++it) n_live += !h.masked[it - h.pos.begin()];
      }
    }
  }
  return n_all > 0 ? static_cast<double>(n_live) / n_all : 1.0;
}

std::string lowercase(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

}  // namespace

const std::vector<std::string>& retrieval_task_names() {
  static const std::vector<std::string> names = {"niah_single", "niah_multikey", "niah_multivalue",
                                                 "variable_tracking"};
  return names;
}

void check_retrieval_tasks(const std::vector<std::string>& tasks) {
  const auto& known = retrieval_task_names();
  if (tasks.empty()) fail("no retrieval task given (known: {})", fmt::join(known, ", "));
  for (const std::string& t : tasks) {
    if (std::find(known.begin(), known.end(), t) == known.end()) {
      fail("unknown retrieval task '{}' (known: {})", t, fmt::join(known, ", "));
    }
  }
}

bool retrieval_correct(const std::string& output, const std::vector<std::string>& answers) {
  const std::string out = lowercase(output);
  for (const std::string& a : answers)
    if (out.find(lowercase(a)) == std::string::npos) return false;
  return !answers.empty();
}

std::vector<retrieval_case> retrieval_cases(const std::vector<std::string>& corpus, const model& m,
                                            const std::vector<std::string>& tasks, int ctx, int n_cases,
                                            uint64_t seed) {
  check_retrieval_tasks(tasks);
  const tokenizer& vocab = m.vocab();
  const int k_min_haystack = 128;  // tokens of haystack a case needs at least
  corpus_listing listing = list_corpus(corpus);
  shuffle_files(listing, seed + 2);  // another order than the quality windows and the needles
  std::vector<std::pair<std::string, std::vector<int32_t>>> fillers;  // files of >= ctx tokens
  size_t next_file = 0;
  auto filler = [&](size_t i) -> const std::pair<std::string, std::vector<int32_t>>& {
    while (fillers.size() <= i && next_file < listing.files.size()) {
      std::vector<int32_t> ids = vocab.encode(read_file(listing.files[next_file]), false);
      if (static_cast<int>(ids.size()) >= ctx) fillers.emplace_back(listing.files[next_file], std::move(ids));
      ++next_file;
    }
    if (fillers.empty()) fail("no held-out file holds {} tokens for the retrieval haystack (lower the context)", ctx);
    return fillers[i % fillers.size()];
  };

  auto build_prompt = [&](const task_draw& d, const std::string& haystack) {
    const std::vector<chat_message> messages = {{"user", d.intro + haystack + "\n" + d.question}};
    return vocab.apply_chat(messages, true) + d.answer_prefix;
  };

  std::vector<retrieval_case> cases;
  for (size_t it = 0; it < tasks.size(); ++it) {
    const std::string& task = tasks[it];
    for (int ic = 0; ic < n_cases; ++ic) {
      const auto& [source, ids] = filler(it * n_cases + ic);
      std::mt19937_64 rng(seed * 1000003 + it * 7919 + ic);
      // The haystack text a prompt of ctx tokens can hold at most: the draw avoids its strings.
      const std::string longest = vocab.decode(std::span<const int32_t>(ids.data(), static_cast<size_t>(ctx)));
      const task_draw d = draw_task(task, ic, rng, lowercase(longest));
      const int overhead = static_cast<int>(vocab.encode(build_prompt(d, insert_needles("", d)), true).size());
      if (overhead + d.max_new_tokens + k_min_haystack > ctx) {
        fail("a context of {} tokens is too small for retrieval task {}: its needles, question and answer take {} "
             "tokens, leaving less than {} for the haystack",
             ctx, task, overhead + d.max_new_tokens, k_min_haystack);
      }
      int filler_tokens = ctx - overhead - d.max_new_tokens;
      bool done = false;
      for (int attempt = 0; attempt < 8 && !done; ++attempt) {
        const std::string text = vocab.decode(std::span<const int32_t>(ids.data(), static_cast<size_t>(filler_tokens)));
        retrieval_case c;
        c.task = task;
        c.source = source;
        c.haystack = insert_needles(text, d, &c.depths);
        c.prompt_text = build_prompt(d, c.haystack);
        c.prompt = vocab.encode(c.prompt_text, true);
        const int excess = static_cast<int>(c.prompt.size()) + d.max_new_tokens - ctx;
        if (excess > 0) {
          filler_tokens -= excess + 8;
          continue;
        }
        c.question_start =
            question_prompt_start(vocab, c.prompt_text, c.prompt_text.rfind("\n" + d.question), c.prompt);
        c.answers = d.answers;
        c.needles = d.needles;
        for (const std::string& needle : d.needles) {
          if (!std::any_of(d.answers.begin(), d.answers.end(),
                           [&](const std::string& a) { return needle.find(a) != std::string::npos; })) {
            continue;
          }
          const size_t at = c.prompt_text.find(needle);
          if (at == std::string::npos) continue;
          c.asked_spans.emplace_back(question_prompt_start(vocab, c.prompt_text, at, c.prompt),
                                     question_prompt_start(vocab, c.prompt_text, at + needle.size(), c.prompt));
        }
        c.depths_asked = d.depths;
        c.depth = asked_depth(ic);
        c.max_new_tokens = d.max_new_tokens;
        cases.push_back(std::move(c));
        done = true;
      }
      if (!done) fail("retrieval case {} of {} does not fit a context of {} tokens", ic, task, ctx);
    }
  }
  return cases;
}

namespace {

// bench --oracle-keep: the policy's own scores, with the slots of the given prompt spans above them all.
class oracle_scorer final : public scorer {
 public:
  oracle_scorer(std::unique_ptr<scorer> inner, std::vector<std::pair<int, int>> spans)
      : inner_(std::move(inner)), spans_(std::move(spans)) {}
  scorer_needs needs() const override { return inner_->needs(); }
  observer* attention_observer() override { return inner_->attention_observer(); }
  size_t bytes() const override { return inner_->bytes(); }
  void score(kv_cache& cache, const score_request& request) override {
    inner_->score(cache, request);
    for (int il = 0; il < cache.n_layer(); ++il) {
      for (int ih = 0; ih < cache.n_kv_head(); ++ih) {
        kv_head& h = cache.head(il, ih);
        const slot_range r = request.ranges[il * cache.n_kv_head() + ih];
        for (uint32_t j = r.begin; j < r.end; ++j) {
          for (const auto& [first, end] : spans_) {
            if (h.pos[j] >= first && h.pos[j] < end) h.score[j] = std::numeric_limits<float>::infinity();
          }
        }
      }
    }
  }

 private:
  std::unique_ptr<scorer> inner_;
  std::vector<std::pair<int, int>> spans_;
};

}  // namespace

retrieval_result run_retrieval(const model& m, std::shared_ptr<const gate_bank> gates, const bench_config& config,
                               const std::vector<retrieval_case>& cases, int batch, linear_rows prefill,
                               const bench_progress& progress) {
  const tokenizer& vocab = m.vocab();
  retrieval_result r;
  double share = 0.0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const retrieval_case& c = cases[i];
    session s(m, {.n_ctx = static_cast<int>(c.prompt.size()) + c.max_new_tokens, .n_batch = batch, .prefill = prefill});
    const policy_config pc = policy_for_prompt(config, c.question_start, static_cast<int>(c.prompt.size()));
    std::unique_ptr<scorer> sc = make_scorer(pc, m.config(), gates);
    if ((config.oracle_needles || config.oracle_question) && sc) {
      std::vector<std::pair<int, int>> spans;
      if (config.oracle_needles) spans = c.asked_spans;
      if (config.oracle_question) spans.emplace_back(c.question_start, static_cast<int>(c.prompt.size()));
      sc = std::make_unique<oracle_scorer>(std::move(sc), std::move(spans));
    }
    auto runner = std::make_unique<policy_runner>(pc, m.config(), std::move(sc));
    runner->attach(s);
    std::vector<float> logits;
    {
      // Evicting after the context: its last chunk must end where the question starts.
      const std::span<const int32_t> prompt(c.prompt);
      const size_t split = config.evict_after_context ? static_cast<size_t>(c.question_start) : 0;
      if (split > 0) s.prefill(prompt.first(split));
      auto l = s.prefill(prompt.subspan(split));
      logits.assign(l.begin(), l.end());
    }
    share += kv_share_live(s.cache(), s.n_past());
    r.needle_kept.push_back(span_share_live(s.cache(), c.asked_spans));
    // Greedy decoding until the end of the turn or max_new_tokens.
    sampler greedy(sampler_params{});
    const std::vector<int32_t> out =
        decode_loop(s, greedy, logits, {.n_predict = c.max_new_tokens}, [](int32_t) {}).ids;
    r.outputs.push_back(vocab.decode(out));
    const bool ok = retrieval_correct(r.outputs.back(), c.answers);
    r.correct.push_back(ok);
    auto task = std::find_if(r.tasks.begin(), r.tasks.end(), [&](const auto& t) { return t.task == c.task; });
    if (task == r.tasks.end()) {
      r.tasks.push_back({c.task});
      task = r.tasks.end() - 1;
    }
    ++task->n_cases;
    task->n_correct += ok;
    task->needle_kept += r.needle_kept.back();
    progress(fmt::format("retrieval {} {} {:g}", config.curve, config.knob_name, config.knob), i + 1, cases.size());
  }
  for (retrieval_task_result& t : r.tasks) {
    t.accuracy = static_cast<double>(t.n_correct) / t.n_cases;
    t.needle_kept /= t.n_cases;
    std::tie(t.ci_low, t.ci_high) = wilson_interval(t.n_correct, t.n_cases);
    r.accuracy_mean += t.accuracy / r.tasks.size();
  }
  r.share_final = cases.empty() ? 1.0 : share / cases.size();
  return r;
}

}  // namespace kvgate::eval
