// Batched decode of several sessions (model/batch_decoder.h) against each session stepped alone:
// logits bit-identical, with attention-based policies evicting, with sessions joining and
// leaving, beyond the row count where linear layers switch path; bad batches refused untouched.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>

#include "model/batch_decoder.h"
#include "model/decode_loop.h"
#include "model/model.h"
#include "policy/policy.h"
#include "test_util.h"
#include "tiny_model.h"

namespace kvgate {
namespace {

using test::random_tokens;

// Writes the tiny model of a family into this test's temporary directory.
std::string tiny_file(const std::string& arch) {
  test::tiny_spec spec;
  spec.arch = arch;
  spec.tied = arch != "qwen2";
  const std::string path = test::temp_dir() + "/tiny_batch_" + arch + ".gguf";
  test::write_tiny_model(path, spec);
  return path;
}

const model& tiny(const std::string& arch) {
  static std::map<std::string, std::unique_ptr<model>> models;
  auto& m = models[arch];
  if (!m) m = model::load(tiny_file(arch));
  return *m;
}

policy_config policy_of(int i) {
  // Cycles through no policy, H2O (needs the attention weights) and streaming, both evicting.
  policy_config p;
  if (i % 3 == 1) {
    p.kind = policy_kind::h2o;
    p.sinks = 2;
    p.window = 6;
    p.mode = select_mode::budget;
    p.budget = 5;
  } else if (i % 3 == 2) {
    p.kind = policy_kind::streaming;
    p.sinks = 2;
    p.window = 8;
    p.mode = select_mode::budget;
    p.budget = 0;
  }
  return p;
}

// One sequence: a session, its policy, its prompt and the tokens it decodes (fixed, so that both
// runs step the same tokens), and the logits of every decode step.
struct sequence {
  std::unique_ptr<session> s;
  std::unique_ptr<policy_runner> runner;
  std::vector<int32_t> prompt, tokens;
  int first_round = 0;  // the round it joins the batch
  std::vector<float> logits;
};

std::vector<sequence> make_sequences(const model& m, int n, kv_type kv) {
  std::vector<sequence> seqs(n);
  for (int i = 0; i < n; ++i) {
    sequence& q = seqs[i];
    q.s = std::make_unique<session>(m, session_options{.n_ctx = 96, .n_batch = 7, .kv = kv});
    const policy_config p = policy_of(i);
    if (p.kind != policy_kind::full) {
      q.runner = make_policy(p, m.config(), nullptr);
      q.runner->attach(*q.s);
    }
    q.prompt = random_tokens(5 + 3 * i, 100 + i);
    q.tokens = random_tokens(20 + (i % 4) * 3, 200 + i);
    q.first_round = i % 5;
    q.s->prefill(q.prompt);
  }
  return seqs;
}

// Each sequence alone, one session::step per token.
void run_alone(std::vector<sequence>& seqs) {
  for (sequence& q : seqs) {
    for (int32_t id : q.tokens) {
      auto out = q.s->step(std::span<const int32_t>(&id, 1), logits_mode::last);
      q.logits.insert(q.logits.end(), out.begin(), out.end());
    }
  }
}

// All together: in round r, every sequence that has joined and has tokens left steps one.
void run_batched(const model& m, std::vector<sequence>& seqs, int* max_batch) {
  batch_decoder dec(m);
  const size_t n_vocab = m.config().n_vocab;
  std::vector<size_t> done(seqs.size(), 0);
  *max_batch = 0;
  for (int round = 0;; ++round) {
    std::vector<session*> batch;
    std::vector<int32_t> ids;
    std::vector<size_t> which;
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (round < seqs[i].first_round || done[i] == seqs[i].tokens.size()) continue;
      batch.push_back(seqs[i].s.get());
      ids.push_back(seqs[i].tokens[done[i]]);
      which.push_back(i);
    }
    bool left = false;
    for (size_t i = 0; i < seqs.size(); ++i) left = left || done[i] < seqs[i].tokens.size();
    if (!left) break;
    if (batch.empty()) continue;
    *max_batch = std::max(*max_batch, static_cast<int>(batch.size()));
    auto out = dec.step(batch, ids);
    ASSERT_EQ(out.size(), batch.size() * n_vocab);
    for (size_t b = 0; b < which.size(); ++b) {
      sequence& q = seqs[which[b]];
      q.logits.insert(q.logits.end(), out.begin() + b * n_vocab, out.begin() + (b + 1) * n_vocab);
      ++done[which[b]];
    }
  }
}

class batch_vs_alone : public ::testing::TestWithParam<std::tuple<const char*, int>> {};

TEST_P(batch_vs_alone, logits_bit_identical) {
  const auto [arch, n_seq] = GetParam();
  const model& m = tiny(arch);
  for (kv_type kv : {kv_type::f32, kv_type::f16}) {
    SCOPED_TRACE(std::string(arch) + " " + std::to_string(n_seq) + " sequences, kv " + kv_type_name(kv));
    std::vector<sequence> alone = make_sequences(m, n_seq, kv), together = make_sequences(m, n_seq, kv);
    run_alone(alone);
    int max_batch = 0;
    run_batched(m, together, &max_batch);
    EXPECT_EQ(max_batch, n_seq);  // at some round every sequence steps in one batch
    for (int i = 0; i < n_seq; ++i) {
      ASSERT_EQ(alone[i].logits.size(), together[i].logits.size());
      EXPECT_EQ(0, std::memcmp(alone[i].logits.data(), together[i].logits.data(), alone[i].logits.size() * sizeof(float)))
          << "sequence " << i;
      EXPECT_EQ(alone[i].s->n_past(), together[i].s->n_past());
      EXPECT_EQ(alone[i].s->cache().n_live_total(), together[i].s->cache().n_live_total());
      if (alone[i].runner) {
        EXPECT_GT(alone[i].runner->stats().n_evicted, 0) << "sequence " << i << "'s policy never evicted";
        EXPECT_EQ(alone[i].runner->stats().n_evicted, together[i].runner->stats().n_evicted);
      }
    }
  }
}

// 3 sequences stay on the small-row path; 10 pass k_sgemm_min_rows, where a plain linear layer
// would switch to sgemm and change the bits.
INSTANTIATE_TEST_SUITE_P(families, batch_vs_alone,
                         ::testing::Combine(::testing::Values("llama", "qwen2", "qwen3"), ::testing::Values(3, 10)));

TEST(batch_decoder, independent_rows_differ_from_automatic_past_the_sgemm_switch) {
  // Shows the comparison above can fail: past k_sgemm_min_rows, automatic rows give other bits.
  const model& m = tiny("llama");
  const linear& w = m.layer(0).w_gate;
  ASSERT_NE(w.type, gguf::tensor_type::f32) << "the tiny model's w_gate should be quantized";
  const int n_rows = static_cast<int>(k_sgemm_min_rows) + 2;
  std::vector<float> x(static_cast<size_t>(n_rows) * w.n_in);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (float& v : x) v = nd(rng);
  std::vector<float> ind(static_cast<size_t>(n_rows) * w.n_out), aut(ind.size()), one(w.n_out);
  linear_scratch scratch;
  linear_forward(w, x.data(), ind.data(), n_rows, scratch, linear_rows::independent);
  linear_forward(w, x.data(), aut.data(), n_rows, scratch, linear_rows::automatic);
  EXPECT_NE(0, std::memcmp(ind.data(), aut.data(), ind.size() * sizeof(float)));
  for (int r = 0; r < n_rows; ++r) {
    linear_forward(w, x.data() + static_cast<size_t>(r) * w.n_in, one.data(), 1, scratch);
    EXPECT_EQ(0, std::memcmp(one.data(), ind.data() + static_cast<size_t>(r) * w.n_out, one.size() * sizeof(float)));
  }
}

TEST(batch_decoder, bad_batches_are_refused_before_any_cache_changes) {
  const model& m = tiny("llama");
  const model& other = tiny("qwen3");
  session a(m, {.n_ctx = 8}), b(m, {.n_ctx = 8}), c(other, {.n_ctx = 8});
  a.prefill(random_tokens(3, 1));
  b.prefill(random_tokens(8, 2));  // full
  batch_decoder dec(m);
  auto refused = [&](std::vector<session*> ss, std::vector<int32_t> ids, const char* what) {
    const int a_past = a.n_past();
    const size_t a_live = a.cache().n_live_total();
    try {
      dec.step(ss, ids);
      ADD_FAILURE() << "no error for " << what;
    } catch (const error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
    EXPECT_EQ(a.n_past(), a_past);
    EXPECT_EQ(a.cache().n_live_total(), a_live);
  };
  refused({&a, &b}, {1, 2}, "context overflow");
  refused({&a, &a}, {1, 2}, "appears twice");
  refused({&a, &c}, {1, 2}, "another model");
  refused({&a}, {test::k_tiny_vocab}, "outside the vocabulary");
  refused({&a}, {1, 2}, "1 sessions but 2 tokens");
  refused({}, {}, "no sessions");
  // And a good batch goes through.
  const int32_t id = 5;
  session* one[] = {&a};
  EXPECT_EQ(dec.step(one, std::span<const int32_t>(&id, 1)).size(), static_cast<size_t>(test::k_tiny_vocab));
  EXPECT_EQ(a.n_past(), 4);
}

TEST(batch_decoder, prefill_segments_match_the_double_reference) {
  // Prompts of several lengths prefilled in one batch (the sgemm path for all their rows), then
  // decoded together: every logit against the double-precision reference of its own sequence.
  for (const char* arch : {"llama", "qwen2", "qwen3"}) {
    SCOPED_TRACE(arch);
    const std::string path = tiny_file(arch);
    auto loaded = model::load(path);
    const model& m = *loaded;
    const std::vector<int> lengths = {5, 19, 30};
    std::vector<std::vector<int32_t>> seqs;
    std::vector<std::unique_ptr<session>> ss;
    std::vector<batch_segment> segs;
    for (size_t i = 0; i < lengths.size(); ++i) {
      seqs.push_back(random_tokens(lengths[i] + 3, 300 + i));
      ss.push_back(std::make_unique<session>(m, session_options{.n_ctx = 64, .kv = kv_type::f32}));
    }
    for (size_t i = 0; i < lengths.size(); ++i) {
      segs.push_back({ss[i].get(), std::span<const int32_t>(seqs[i]).first(lengths[i]),
                      i == 1 ? logits_mode::all : logits_mode::last});
    }
    batch_decoder dec(m);
    const size_t n_vocab = test::k_tiny_vocab;
    auto out = dec.step(segs, linear_rows::automatic);
    ASSERT_EQ(out.size(), (1 + 19 + 1) * n_vocab);
    std::vector<std::vector<float>> got(lengths.size());
    got[0].assign(out.begin(), out.begin() + n_vocab);
    got[1].assign(out.begin() + n_vocab, out.begin() + 20 * n_vocab);
    got[2].assign(out.begin() + 20 * n_vocab, out.end());
    for (int t = 0; t < 3; ++t) {  // then three decode steps together
      std::vector<session*> batch;
      std::vector<int32_t> ids;
      for (size_t i = 0; i < lengths.size(); ++i) {
        batch.push_back(ss[i].get());
        ids.push_back(seqs[i][lengths[i] + t]);
      }
      auto step = dec.step(batch, ids);
      for (size_t i = 0; i < lengths.size(); ++i) got[i].insert(got[i].end(), step.begin() + i * n_vocab, step.begin() + (i + 1) * n_vocab);
    }
    for (size_t i = 0; i < lengths.size(); ++i) {
      const std::vector<double> ref = test::reference_logits(path, seqs[i]);
      const int first = i == 1 ? 0 : lengths[i] - 1;  // the reference row of got[i]'s first row
      ASSERT_EQ(got[i].size(), (ref.size() / n_vocab - first) * n_vocab);
      double max_err = 0.0, max_ref = 0.0;
      for (size_t j = 0; j < got[i].size(); ++j) {
        const double r = ref[first * n_vocab + j];
        max_err = std::max(max_err, std::abs(got[i][j] - r));
        max_ref = std::max(max_ref, std::abs(r));
      }
      // The decode steps quantize activations to 8 bits (see model_test's tolerance).
      EXPECT_LT(max_err, 1.5e-2 * std::max(1.0, max_ref)) << "sequence " << i;
      // The prefill rows alone are f32 throughout.
      double max_err_prefill = 0.0;
      const size_t n_prefill_rows = i == 1 ? 19 : 1;
      for (size_t j = 0; j < n_prefill_rows * n_vocab; ++j) {
        max_err_prefill = std::max(max_err_prefill, std::abs(got[i][j] - ref[first * n_vocab + j]));
      }
      EXPECT_LT(max_err_prefill, 1e-4 * std::max(1.0, max_ref)) << "sequence " << i;
    }
    EXPECT_THROW(dec.step(std::vector<batch_segment>{{ss[0].get(), {}, logits_mode::last}}, linear_rows::automatic), error);
  }
}

TEST(batch_decoder, real_model_greedy_replies_equal_decode_loop) {
  auto m = model::load(test::default_model_path());
  const std::vector<std::string> prompts = {"The capital of France is", "def fibonacci(n):",
                                            "Git is a distributed version control system that",
                                            "Once upon a time"};
  const int n_new = 12;
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& p : prompts) {
    session s(*m, {.n_ctx = 256});
    const auto prompt = m->vocab().encode(p);
    auto out = s.prefill(prompt);
    std::vector<float> logits(out.begin(), out.end());
    sampler greedy(sampler_params{});
    expected.push_back(decode_loop(s, greedy, logits, {.n_predict = n_new, .stop_at_eos = false}, [](int32_t) {}).ids);
  }
  std::vector<std::unique_ptr<session>> ss;
  std::vector<std::vector<float>> logits;
  for (const std::string& p : prompts) {
    ss.push_back(std::make_unique<session>(*m, session_options{.n_ctx = 256}));
    auto out = ss.back()->prefill(m->vocab().encode(p));
    logits.emplace_back(out.begin(), out.end());
  }
  batch_decoder dec(*m);
  std::vector<std::vector<int32_t>> got(prompts.size());
  const size_t n_vocab = m->config().n_vocab;
  for (int t = 0; t < n_new; ++t) {
    std::vector<session*> batch;
    std::vector<int32_t> ids;
    for (size_t i = 0; i < prompts.size(); ++i) {
      ids.push_back(argmax(logits[i]));
      got[i].push_back(ids.back());
      batch.push_back(ss[i].get());
    }
    auto out = dec.step(batch, ids);
    for (size_t i = 0; i < prompts.size(); ++i) logits[i].assign(out.begin() + i * n_vocab, out.begin() + (i + 1) * n_vocab);
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(got[i], expected[i]) << prompts[i];
    EXPECT_EQ(m->vocab().decode(got[i]).empty(), false);
  }
}

}  // namespace
}  // namespace kvgate
