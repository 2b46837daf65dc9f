// The retrieval suite (eval/retrieval.h): its generator (deterministic, every answer in the
// haystack exactly once, needles where they were asked for), its scoring, its errors, and the
// bench running it alone.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "common/error.h"
#include "eval/retrieval.h"
#include "model/model.h"
#include "test_util.h"

namespace kvgate {
namespace {

namespace fs = std::filesystem;

// Plain prose, one sentence a line, from a small vocabulary without digits.
std::string prose(uint64_t seed, int n_sentences) {
  static const char* const words[] = {"the", "cache", "keeps", "tokens", "that", "matter", "later", "while",
                                      "others", "leave", "window", "model", "reads", "every", "line", "and",
                                      "answers", "questions", "about", "old", "text", "with", "small", "gates"};
  std::mt19937_64 rng(seed);
  std::string s;
  for (int i = 0; i < n_sentences; ++i) {
    const int n = 6 + static_cast<int>(rng() % 8);
    for (int w = 0; w < n; ++w) s += std::string(words[rng() % std::size(words)]) + (w + 1 < n ? " " : ".\n");
  }
  return s;
}

struct suite_fixture : ::testing::Test {
  static void SetUpTestSuite() {
    m = model::load(test::default_model_path());
    corpus = test::temp_dir() + "/haystacks";
    fs::create_directories(corpus);
    for (int i = 0; i < 3; ++i) std::ofstream(corpus + "/doc" + std::to_string(i) + ".txt") << prose(i + 11, 500);
  }
  static void TearDownTestSuite() { m.reset(); }
  static std::unique_ptr<model> m;
  static std::string corpus;
};
std::unique_ptr<model> suite_fixture::m;
std::string suite_fixture::corpus;

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

TEST_F(suite_fixture, generator_is_deterministic_in_its_seed) {
  const auto& tasks = eval::retrieval_task_names();
  const auto a = eval::retrieval_cases({corpus}, *m, tasks, 1024, 3, 7);
  const auto b = eval::retrieval_cases({corpus}, *m, tasks, 1024, 3, 7);
  const auto c = eval::retrieval_cases({corpus}, *m, tasks, 1024, 3, 8);
  ASSERT_EQ(a.size(), 12u);
  ASSERT_EQ(b.size(), a.size());
  int differ = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].task, tasks[i / 3]);
    EXPECT_EQ(a[i].prompt, b[i].prompt) << i;
    EXPECT_EQ(a[i].answers, b[i].answers) << i;
    differ += a[i].prompt != c[i].prompt;
  }
  EXPECT_EQ(differ, 12);
}

TEST_F(suite_fixture, every_answer_sits_in_the_haystack_exactly_once_and_the_prompt_fits) {
  for (int ctx : {512, 2048}) {
    const auto cases = eval::retrieval_cases({corpus}, *m, eval::retrieval_task_names(), ctx, 9, 3);
    for (const eval::retrieval_case& c : cases) {
      SCOPED_TRACE(c.task + " " + c.prompt_text.substr(0, 0));
      EXPECT_LE(static_cast<int>(c.prompt.size()) + c.max_new_tokens, ctx);
      EXPECT_GT(static_cast<int>(c.prompt.size()) + c.max_new_tokens, ctx - 64);  // the haystack fills the context
      EXPECT_EQ(c.prompt, m->vocab().encode(c.prompt_text, true));
      EXPECT_NE(c.prompt_text.find(c.haystack), std::string::npos);
      // The question starts where the haystack ends (within the token that may join them), and
      // more than 64 tokens before the prompt's end only if the question is that long.
      const std::string before = m->vocab().decode(std::span(c.prompt).first(c.question_start));
      const size_t haystack_end = c.prompt_text.find(c.haystack) + c.haystack.size();
      EXPECT_EQ(c.prompt_text.substr(0, before.size()), before);
      EXPECT_GE(before.size() + 2, haystack_end);
      EXPECT_LE(before.size(), haystack_end + 1);
      for (const std::string& n : c.needles) EXPECT_EQ(count(c.haystack, n + "\n"), 1u) << n;
      // The asked spans: one per needle holding an answer, in order, each the needle's tokens
      // (within the token that may join it to the line around it), and every answer inside one.
      const size_t n_asked = c.task == "niah_multikey" ? 1u : c.needles.size();
      ASSERT_EQ(c.asked_spans.size(), n_asked);
      std::string spans_text;
      for (size_t k = 0; k < n_asked; ++k) {
        const auto [first, end] = c.asked_spans[k];
        ASSERT_LT(first, end);
        if (k > 0) {
          EXPECT_LE(c.asked_spans[k - 1].second, first);
        }
        const std::string text = m->vocab().decode(std::span(c.prompt).subspan(first, end - first));
        const std::string& needle = c.task == "niah_multikey"
                                        ? *std::find_if(c.needles.begin(), c.needles.end(),
                                                        [&](const std::string& n) { return n.find(c.answers[0]) != std::string::npos; })
                                        : c.needles[k];
        EXPECT_NE(needle.find(text.substr(1)), std::string::npos) << text << " / " << needle;
        EXPECT_GE(text.size() + 2, needle.size()) << text << " / " << needle;
        spans_text += text + "\n";
      }
      for (const std::string& a : c.answers) EXPECT_NE(spans_text.find(a), std::string::npos) << a;
      if (c.task == "variable_tracking") {
        ASSERT_GE(c.answers.size(), 3u);
        ASSERT_LE(c.answers.size(), 4u);
        // The chain: the value in the first link only, each name assigned exactly once.
        const std::string value = c.needles[0].substr(c.needles[0].find("= ") + 2);
        EXPECT_EQ(count(c.haystack, value.substr(0, value.size() - 1)), 1u);
        for (size_t k = 0; k < c.answers.size(); ++k) {
          EXPECT_EQ(count(c.haystack, "VAR " + c.answers[k] + " ="), 1u);
          if (k > 0) {
            EXPECT_EQ(c.needles[k], "VAR " + c.answers[k] + " = VAR " + c.answers[k - 1] + ".");
          }
        }
      } else {
        EXPECT_EQ(c.answers.size(), c.task == "niah_multivalue" ? 3u : 1u);
        EXPECT_EQ(c.needles.size(), c.task == "niah_multikey" ? 4u : c.answers.size());
        for (const std::string& a : c.answers) {
          EXPECT_EQ(count(c.haystack, a), 1u) << a;
          EXPECT_EQ(count(c.prompt_text, a), 1u) << a;  // not in the question either
          ASSERT_GE(a.size(), 5u);
          ASSERT_LE(a.size(), 7u);
          EXPECT_EQ(a.find_first_not_of("0123456789"), std::string::npos) << a;
        }
      }
    }
  }
}

TEST_F(suite_fixture, needles_sit_at_the_line_start_at_or_before_the_depth_asked) {
  const auto cases = eval::retrieval_cases({corpus}, *m, eval::retrieval_task_names(), 2048, 9, 5);
  std::vector<int> asked_tenths(10, 0);
  for (const eval::retrieval_case& c : cases) {
    // The filler without the needles, and where each needle was in it.
    std::string filler = c.haystack;
    std::vector<size_t> at;
    for (const std::string& n : c.needles) {
      const size_t p = filler.find(n + "\n");
      ASSERT_NE(p, std::string::npos);
      filler.erase(p, n.size() + 1);
      at.push_back(p);
    }
    ASSERT_EQ(c.depths.size(), c.needles.size());
    for (size_t k = 0; k < at.size(); ++k) {
      EXPECT_NEAR(c.depths[k], static_cast<double>(at[k]) / filler.size(), 1e-12);
      EXPECT_TRUE(at[k] == 0 || filler[at[k] - 1] == '\n');
      const size_t asked = static_cast<size_t>(c.depths_asked[k] * filler.size());
      ASSERT_LE(at[k], asked);
      // No line starts between the needle and the depth asked.
      EXPECT_EQ(filler.substr(at[k], asked - at[k]).find('\n'), std::string::npos);
      EXPECT_NEAR(c.depths[k], c.depths_asked[k], 0.03);
    }
    // The first needle of a case (the asked key, the first value, the chain's start) cycles 0.1 .. 0.9.
    EXPECT_NE(std::find(c.depths_asked.begin(), c.depths_asked.end(), c.depth), c.depths_asked.end());
    ++asked_tenths[static_cast<int>(std::lround(c.depth * 10))];
  }
  for (int tenth = 1; tenth <= 9; ++tenth) EXPECT_GE(asked_tenths[tenth], 2) << tenth;  // 4 tasks x 9 cases
}

TEST(retrieval, scoring_is_case_insensitive_and_needs_every_answer) {
  EXPECT_TRUE(eval::retrieval_correct(" The number is 48213.", {"48213"}));
  EXPECT_FALSE(eval::retrieval_correct(" 4821", {"48213"}));
  EXPECT_TRUE(eval::retrieval_correct("abcde, FGHIJ", {"ABCDE", "fghij"}));
  EXPECT_FALSE(eval::retrieval_correct("ABCDE", {"ABCDE", "FGHIJ"}));
  EXPECT_FALSE(eval::retrieval_correct("anything", {}));
}

TEST_F(suite_fixture, unknown_tasks_and_contexts_too_small_are_errors_naming_them) {
  try {
    eval::retrieval_cases({corpus}, *m, {"niah_single", "niah_nosuch"}, 1024, 1, 1);
    FAIL() << "no error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown retrieval task 'niah_nosuch'"), std::string::npos) << e.what();
  }
  try {
    eval::retrieval_cases({corpus}, *m, {"niah_multikey"}, 200, 1, 1);
    FAIL() << "no error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("too small for retrieval task niah_multikey"), std::string::npos) << e.what();
  }
}

TEST_F(suite_fixture, bench_runs_the_suite_alone_and_refuses_bad_names) {
  const std::string common = " --model " + test::default_model_path() + " --threads 2 --corpus " + corpus;
  const std::string out = test::temp_dir() + "/suite";
  const test::kvgate_result r =
      test::run_kvgate("bench" + common + " --out " + out + " --suite retrieval --ctx 512 --tasks niah_single "
                       "--retrieval-cases 2 --baselines streaming --shares 0.5");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("niah_single"), std::string::npos) << r.out;
  for (const char* f : {"report.json", "retrieval.csv", "retrieval_cases.csv", "retrieval.png", "index.html"})
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  const auto report = nlohmann::json::parse(std::ifstream(out + "/report.json"));
  const auto& runs = report["retrieval"]["runs"];
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0]["curve"], "full");
  EXPECT_EQ(runs[0]["kv_share_final"], 1.0);
  EXPECT_EQ(runs[1]["curve"], "streaming");
  EXPECT_NEAR(runs[1]["kv_share_final"].get<double>(), 0.5, 0.05);
  EXPECT_EQ(runs[1]["tasks"][0]["n_cases"], 2);
  // The full cache holds every needle; streaming at half the context holds the sinks and the
  // last ~250 tokens, and the two cases' needles sit at depths 0.1 and 0.2 of the haystack.
  EXPECT_EQ(runs[0]["tasks"][0]["needle_kept"], 1.0);
  EXPECT_EQ(runs[1]["tasks"][0]["needle_kept"], 0.0);
  EXPECT_TRUE(report["rows"].empty());

  const std::string bad = " --out " + test::temp_dir() + "/bad";
  test::kvgate_result e = test::run_kvgate("bench" + common + bad + " --suite nosuch");
  EXPECT_EQ(e.status, 1);
  EXPECT_NE(e.err.find("kvgate: error: unknown suite 'nosuch'"), std::string::npos) << e.err;
  e = test::run_kvgate("bench" + common + bad + " --tasks niah_single,vt");
  EXPECT_EQ(e.status, 1);
  EXPECT_NE(e.err.find("unknown retrieval task 'vt'"), std::string::npos) << e.err;
  e = test::run_kvgate("bench" + common + bad + " --suite retrieval --ctx 512 --retrieval-ctx 200 --no-plots");
  EXPECT_EQ(e.status, 1);
  EXPECT_NE(e.err.find("too small for retrieval task"), std::string::npos) << e.err;
  EXPECT_FALSE(fs::exists(test::temp_dir() + "/bad/report.json"));
}

TEST_F(suite_fixture, an_oracle_curve_keeps_the_asked_needles_its_policy_evicts) {
  const std::string out = test::temp_dir() + "/oracle";
  const test::kvgate_result r = test::run_kvgate(
      "bench --model " + test::default_model_path() + " --threads 2 --corpus " + corpus + " --out " + out +
      " --suite retrieval --ctx 512 --tasks niah_single --retrieval-cases 2 --baselines streaming --shares 0.5 "
      "--oracle-keep needles,question --no-plots");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto report = nlohmann::json::parse(std::ifstream(out + "/report.json"));
  const auto& runs = report["retrieval"]["runs"];
  ASSERT_EQ(runs.size(), 4u);
  EXPECT_EQ(runs[1]["curve"], "streaming");
  EXPECT_EQ(runs[2]["curve"], "streaming-oracle-needles");
  EXPECT_EQ(runs[3]["curve"], "streaming-oracle-question");
  // Streaming at half the context loses both needles (depths 0.1 and 0.2); the needle oracle
  // keeps every slot of them within the same budget; the question oracle keeps the question,
  // which streaming's window holds anyway, and no needle.
  EXPECT_EQ(runs[1]["tasks"][0]["needle_kept"], 0.0);
  EXPECT_EQ(runs[2]["tasks"][0]["needle_kept"], 1.0);
  EXPECT_EQ(runs[3]["tasks"][0]["needle_kept"], 0.0);
  for (int i = 1; i < 4; ++i) EXPECT_NEAR(runs[i]["kv_share_final"].get<double>(), 0.5, 0.05) << i;
  // Full keeps the full cache: no oracle curve for it.
  EXPECT_EQ(runs[0]["curve"], "full");
}

}  // namespace
}  // namespace kvgate
