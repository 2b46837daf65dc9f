// The engine against references that are not ours (tests/data/golden, made by
// tools/make_golden.py): llama.cpp (through llama-cpp-python) and an independent float64 numpy
// forward pass over gguf-py's dequantized weights, on the default model and on tiny random
// qwen2 / qwen3 / llama files written by tools/make_tiny_models.py.
//
// Tolerances. llama.cpp multiplies Q4_1/Q8_0 weights with activations quantized to 8 bits, so it
// is itself off the exact float64 result: on SmolLM2 by up to 1.66 in a logit (rms 0.23) over
// the four prompts (the "crosscheck" stats in the golden file). Our prefill path runs in f32 and
// must sit much closer to float64: measured max 4.2e-5 (rms 1.1e-5) on SmolLM2 and 1.5e-5 on the
// tiny models, so we allow max 2e-4 and rms 5e-5 (about 5x margin); against llama.cpp we allow what
// llama.cpp itself deviates (max 2.5, rms 0.35). Greedy continuations (our decode path) must
// match token for token until the first step where llama.cpp's own top-2 gap is below 0.5, a
// near-tie that 8-bit activation noise can flip; there the comparison stops.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/model.h"
#include "model/sampler.h"
#include "test_util.h"

namespace kvgate {
namespace {

nlohmann::json load_json(const std::string& name) {
  std::ifstream in(test::data_path("golden/" + name));
  if (!in) ADD_FAILURE() << "missing golden file " << name;
  return nlohmann::json::parse(in);
}

struct diff_stats {
  double max_abs = 0.0, sum_sq = 0.0;
  size_t n = 0;
  void add(double d) {
    max_abs = std::max(max_abs, std::abs(d));
    sum_sq += d * d;
    ++n;
  }
  double rms() const { return n ? std::sqrt(sum_sq / n) : 0.0; }
};

// Compares our prefill logits (f32 path, one step) with the top-20 of every position.
diff_stats compare_prompt(const model& m, const nlohmann::json& c) {
  const std::vector<int32_t> tokens = c["tokens"];
  session s(m, {.n_ctx = 512, .n_batch = 512, .kv = kv_type::f32});  // the references keep K/V in float
  auto logits = s.step(tokens, logits_mode::all);
  const int n_vocab = m.config().n_vocab;
  diff_stats st;
  for (size_t t = 0; t < tokens.size(); ++t) {
    for (const auto& pair : c["prompt_top"][t]) {
      const int id = pair[0];
      st.add(logits[t * n_vocab + id] - pair[1].get<double>());
    }
  }
  return st;
}

void check_file(const std::string& golden, const std::string& model_path, double max_tol, double rms_tol,
                bool check_greedy) {
  const nlohmann::json g = load_json(golden);
  auto m = model::load(model_path);
  for (const auto& c : g["cases"]) {
    const std::string name = c["name"];
    SCOPED_TRACE(golden + " case " + name);
    // Token ids identical.
    const std::vector<int32_t> expected = c["tokens"];
    EXPECT_EQ(m->vocab().encode(c["prompt"].get<std::string>(), c["special"].get<bool>()), expected);

    const diff_stats st = compare_prompt(*m, c);
    std::printf("%-28s %-8s top-20 logits: max |diff| %.2e rms %.2e over %zu\n", golden.c_str(), name.c_str(),
                st.max_abs, st.rms(), st.n);
    EXPECT_LE(st.max_abs, max_tol);
    EXPECT_LE(st.rms(), rms_tol);

    if (!check_greedy) continue;
    session s(*m, {.n_ctx = 512, .n_batch = 512, .kv = kv_type::f32});
    std::vector<float> logits;
    {
      auto last = s.prefill(expected);
      logits.assign(last.begin(), last.end());
    }
    const std::vector<int32_t> greedy = c["greedy"];
    size_t agreed = 0;
    for (size_t k = 0; k < greedy.size(); ++k) {
      const int32_t ours = argmax(logits);
      if (ours != greedy[k]) {
        const auto& top = c["greedy_top"][k];
        const double gap = top[0][1].get<double>() - top[1][1].get<double>();
        EXPECT_LT(gap, 0.5) << "greedy parts at step " << k << " where llama.cpp's top-2 gap is " << gap;
        break;
      }
      ++agreed;
      auto next = s.step(std::span<const int32_t>(&ours, 1), logits_mode::last);
      logits.assign(next.begin(), next.end());
    }
    std::printf("%-28s %-8s greedy: %zu/%zu tokens identical\n", golden.c_str(), name.c_str(), agreed, greedy.size());
  }
}

// Our f32 prefill against the float64 reference (see the header comment for the measured values).
constexpr double k_f64_max = 2e-4, k_f64_rms = 5e-5;

TEST(golden, smollm2_matches_llama_cpp) {
  check_file("smollm2_135m_q4_1.json", test::default_model_path(), 2.5, 0.35, true);
}

TEST(golden, smollm2_matches_float64_reference) {
  check_file("smollm2_135m_q4_1.numpy.json", test::default_model_path(), k_f64_max, k_f64_rms, false);
}

class golden_tiny : public ::testing::TestWithParam<const char*> {};

TEST_P(golden_tiny, matches_llama_cpp_and_float64_reference) {
  const std::string arch = GetParam();
  const std::string path = test::data_path("tiny/" + arch + ".gguf");
  check_file("tiny_" + arch + ".json", path, 2.5, 0.35, true);
  check_file("tiny_" + arch + ".numpy.json", path, k_f64_max, k_f64_rms, false);
}

INSTANTIATE_TEST_SUITE_P(families, golden_tiny, ::testing::Values("llama", "qwen2", "qwen3"));

}  // namespace
}  // namespace kvgate
