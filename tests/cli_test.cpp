// The kvgate executable end to end on the real model: the JSON contracts of info, tokenize,
// generate and perplexity, and clear errors with a non-zero exit for bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.h"
#include "tiny_model.h"

namespace kvgate {
namespace {

using result = test::kvgate_result;

result run(const std::string& args) { return test::run_kvgate(args); }

std::string model_arg() { return "--model " + test::default_model_path() + " --threads 1"; }

std::string write_file(const std::string& name, const std::string& text) {
  const std::string path = test::temp_dir() + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(cli, info_reports_the_model_shape_as_json) {
  const result r = run("info " + model_arg());
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["architecture"], "llama");
  EXPECT_EQ(j["n_layer"], 30);
  EXPECT_EQ(j["n_head"], 9);
  EXPECT_EQ(j["n_kv_head"], 3);
  EXPECT_EQ(j["d_head"], 64);
  EXPECT_EQ(j["context_length"], 8192);
  EXPECT_EQ(j["tensor_types"]["Q4_1"], 210);
}

TEST(cli, tokenize_gives_ids_and_treats_special_text_as_plain_unless_asked) {
  const result plain = run("tokenize " + model_arg() + " --text '<|im_start|>user'");
  ASSERT_EQ(plain.status, 0) << plain.err;
  const auto ids = nlohmann::json::parse(plain.out);
  EXPECT_GT(ids.size(), 2u);
  EXPECT_NE(ids[0], 1);
  const result special = run("tokenize " + model_arg() + " --special --text '<|im_start|>user'");
  ASSERT_EQ(special.status, 0) << special.err;
  const auto sids = nlohmann::json::parse(special.out);
  ASSERT_GE(sids.size(), 2u);
  EXPECT_EQ(sids[0], 1);  // <|im_start|>
}

TEST(cli, generate_chat_answers_and_reports_speed_on_stderr) {
  const result r = run("generate " + model_arg() + " --chat --prompt 'What are the three primary colors?' -n 16 --temp 0");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("Red"), std::string::npos) << r.out;
  const size_t at = r.err.find("kvgate: {");
  ASSERT_NE(at, std::string::npos) << r.err;
  const auto j = nlohmann::json::parse(r.err.substr(at + 8));
  EXPECT_GT(j["prompt_tokens"].get<int>(), 10);
  EXPECT_GT(j["decode_tok_s"].get<double>(), 0.0);
  EXPECT_GT(j["prefill_tok_s"].get<double>(), 0.0);
  EXPECT_GT(j["kv_bytes"].get<double>(), 0.0);
  EXPECT_GT(j["peak_rss_mb"].get<double>(), 0.0);
}

TEST(cli, kvgate_isa_picks_the_kernels_with_the_same_tokens_and_refuses_unknown_names) {
  // KVGATE_ISA chooses the kernels; the AVX-512 ones give the AVX2 bits, so greedy text is the
  // same. The summary names the set that ran.
  auto run_with = [](const std::string& isa, const std::string& args) {
    const std::string dir = test::temp_dir();
    result r;
    r.status = test::run_command("KVGATE_ISA=" + isa + " " + std::string(KVGATE_BINARY) + " " + args + " 2>" + dir +
                                     "/isa_stderr </dev/null",
                                 &r.out);
    std::ifstream in(dir + "/isa_stderr", std::ios::binary);
    r.err.assign(std::istreambuf_iterator<char>(in), {});
    return r;
  };
  const std::string gen = "generate " + model_arg() + " --prompt 'The history of the river' -n 24 --temp 0 --ignore-eos";
  const result bogus = run_with("sse9", gen);
  EXPECT_NE(bogus.status, 0);
  EXPECT_NE(bogus.err.find("KVGATE_ISA=sse9: unknown instruction set"), std::string::npos) << bogus.err;
  const result native = run(gen), avx2 = run_with("avx2", gen);
  ASSERT_EQ(native.status, 0) << native.err;
  ASSERT_EQ(avx2.status, 0) << avx2.err;
  EXPECT_EQ(native.out, avx2.out);
  auto isa_of = [](const result& r) {
    const size_t at = r.err.find("kvgate: {");
    return at == std::string::npos ? std::string() : nlohmann::json::parse(r.err.substr(at + 8))["isa"].get<std::string>();
  };
  EXPECT_EQ(isa_of(avx2), "avx2");
  const std::string best = isa_of(native);
  EXPECT_TRUE(best == "avx2" || best == "avx512") << best;
  if (best == "avx2") {  // a CPU without AVX-512 refuses it
    const result r = run_with("avx512", gen);
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.err.find("not available on this CPU"), std::string::npos) << r.err;
  }
}

TEST(cli, generate_with_seed_is_reproducible) {
  const std::string args = "generate " + model_arg() + " --prompt 'Once upon a time' -n 10 --temp 0.9 --seed 7";
  const result a = run(args), b = run(args);
  ASSERT_EQ(a.status, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
}

TEST(cli, perplexity_follows_the_window_definition) {
  std::string text;
  for (int i = 0; i < 40; ++i) text += "The cache keeps the tokens that matter and evicts the rest. ";
  const std::string path = write_file("ppl.txt", text);
  const result r = run("perplexity " + model_arg() + " --file " + path + " --ctx 64");
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  const int n_windows = j["n_windows"];
  EXPECT_EQ(n_windows, j["file_tokens"].get<int>() / 64);
  EXPECT_EQ(j["n_tokens"].get<int>(), n_windows * 63);
  EXPECT_NEAR(std::log(j["ppl"].get<double>()), j["nll"].get<double>(), 1e-9);
  EXPECT_LT(j["ppl"].get<double>(), 10.0);  // repetitive text is easy
  EXPECT_GT(j["ppl"].get<double>(), 1.0);
}

TEST(cli, bad_input_gives_clear_error_and_nonzero_exit) {
  struct bad_case {
    std::string args, expected;
  };
  const std::string tiny_dir = test::temp_dir();
  test::tiny_spec spec;
  spec.arch = "mamba";
  test::write_tiny_model(tiny_dir + "/mamba.gguf", spec);
  spec.arch = "llama";
  test::write_tiny_model(tiny_dir + "/llama.gguf", spec);
  {
    std::ifstream in(tiny_dir + "/llama.gguf", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(tiny_dir + "/truncated.gguf", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    std::ofstream(tiny_dir + "/garbage.gguf", std::ios::binary) << "this is not a gguf file at all";
  }
  std::string long_prompt;
  for (int i = 0; i < 100; ++i) long_prompt += "word ";
  const std::string long_file = write_file("long.txt", long_prompt);
  const std::vector<bad_case> cases = {
      {"generate --model /nonexistent/m.gguf --prompt hi", "/nonexistent/m.gguf"},
      {"generate --model " + tiny_dir + "/mamba.gguf --prompt hi", "mamba"},
      {"info --model " + tiny_dir + "/truncated.gguf", "truncated.gguf"},
      {"info --model " + tiny_dir + "/garbage.gguf", "garbage.gguf"},
      {"generate " + model_arg() + " --prompt ''", "empty prompt"},
      {"generate " + model_arg() + " --prompt-file " + long_file + " --ctx 32", "does not fit the context"},
      {"perplexity " + model_arg() + " --file " + long_file + " --ctx 4096", "fewer than one window"},
      {"tokenize " + model_arg() + " --file /nonexistent/input.txt", "/nonexistent/input.txt"},
      {"generate " + model_arg(), "empty prompt"},
  };
  for (const bad_case& c : cases) {
    const result r = run(c.args);
    EXPECT_NE(r.status, 0) << c.args;
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << c.args << "\nstderr: " << r.err;
    EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  }
}

// The server's policy flags make the default policy whole, --budget-pool included: a pool that
// cannot apply is refused at start (before, serve dropped --budget-pool and started with a
// per-head budget; the timeout ends such a server).
TEST(cli, serve_refuses_a_default_policy_its_budget_pool_cannot_apply_to) {
  const std::string err_file = test::temp_dir() + "/serve_pool_err.txt";
  const int status = test::run_command("timeout 120 " + std::string(KVGATE_BINARY) + " serve --port 0 " + model_arg() +
                                           " --policy h2o --threshold 0.1 --budget-pool model 2>" + err_file,
                                       nullptr);
  std::ifstream in(err_file);
  const std::string err((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(status, 1) << err;
  EXPECT_NE(err.find("--budget-pool model"), std::string::npos) << err;
}

}  // namespace
}  // namespace kvgate
