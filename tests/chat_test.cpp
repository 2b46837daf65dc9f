// kvgate chat end to end on the real model: one session across turns whose cache holds exactly the
// conversation's tokens, incremental prefill giving the same reply as a from-scratch generate, a
// policy evicting during the chat, and the context limits (a cut reply, an overflowing turn).
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace kvgate {
namespace {

struct result {
  int status;
  std::string out;  // stdout
  std::string err;  // stderr
  std::vector<nlohmann::json> turns;  // the "kvgate: {...}" lines of stderr, in order
};

// Runs kvgate with args and the given text on stdin.
result run(const std::string& args, const std::string& input = "") {
  const test::kvgate_result k = test::run_kvgate(args, input);
  result r{k.status, k.out, k.err, {}};
  std::istringstream lines(k.err);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind("kvgate: {", 0) == 0) r.turns.push_back(nlohmann::json::parse(line.substr(8)));
  }
  return r;
}

std::string model_arg() { return "--model " + test::default_model_path() + " --threads 1"; }

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  size_t begin = 0;
  for (size_t end; (end = text.find('\n', begin)) != std::string::npos; begin = end + 1) {
    lines.push_back(text.substr(begin, end - begin));
  }
  EXPECT_EQ(begin, text.size()) << "output does not end with a newline";
  return lines;
}

TEST(chat, two_turns_share_one_session_and_n_past_counts_the_whole_conversation) {
  const std::string system = "You are a helpful assistant.";
  const result r = run("chat " + model_arg() + " --system '" + system + "' -n 8 --temp 0",
                       "What is 2+2?\n\nAnd 3+3?\n");  // the empty line is skipped
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_EQ(r.turns.size(), 2u) << r.err;
  EXPECT_EQ(r.turns[0]["turn"], 1);
  EXPECT_EQ(r.turns[1]["turn"], 2);
  for (const auto& j : r.turns) {
    // A reply runs to the 8-token limit or ends early at the end of the turn; which one depends
    // on near-ties in the logits (the first token's top two are 0.12 apart in llama.cpp).
    const int n = j["reply_tokens"];
    EXPECT_TRUE((j["stop"] == "length" && n == 8) || (j["stop"] == "eos" && n > 0 && n < 8)) << j.dump();
    EXPECT_GT(j["decode_tok_s"].get<double>(), 0.0);
  }
  const int n_past_1 = r.turns[0]["n_past"], n_past_2 = r.turns[1]["n_past"];
  EXPECT_GT(n_past_2, n_past_1);
  // Turn 2 prefilled only its own tokens, far fewer than the conversation so far.
  EXPECT_LT(r.turns[1]["prompt_tokens"].get<int>(), n_past_1);

  // The cache holds the conversation as the template writes it, end-of-turn tokens included: its
  // position equals the token count of the whole conversation, tokenized in one go.
  const std::vector<std::string> replies = lines_of(r.out);
  ASSERT_EQ(replies.size(), 2u) << r.out;
  const std::string conversation =
      "<|im_start|>system\n" + system + "<|im_end|>\n"
      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n" + replies[0] + "<|im_end|>\n"
      "<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n" + replies[1] + "<|im_end|>\n";
  const std::string path = test::temp_dir() + "/conversation.txt";
  std::ofstream(path, std::ios::binary) << conversation;
  std::string ids;
  ASSERT_EQ(test::run_command(std::string(KVGATE_BINARY) + " tokenize " + model_arg() +
                                  " --special --file " + path, &ids), 0);
  EXPECT_EQ(n_past_2, static_cast<int>(nlohmann::json::parse(ids).size())) << conversation;
}

TEST(chat, incremental_first_reply_equals_generate_from_scratch) {
  const result chat = run("chat " + model_arg() + " -n 8 --temp 0", "What is 2+2?\nAnd 3+3?\n");
  ASSERT_EQ(chat.status, 0) << chat.err;
  ASSERT_EQ(chat.turns.size(), 2u) << chat.err;
  const result gen = run("generate " + model_arg() + " --chat --prompt 'What is 2+2?' -n 8 --temp 0");
  ASSERT_EQ(gen.status, 0) << gen.err;
  ASSERT_EQ(gen.turns.size(), 1u) << gen.err;
  // Same template (the model's default system prompt) and same greedy reply.
  EXPECT_EQ(chat.turns[0]["prompt_tokens"], gen.turns[0]["prompt_tokens"]);
  ASSERT_GT(gen.out.size(), 1u);
  EXPECT_EQ(chat.out.substr(0, gen.out.size()), gen.out) << "chat:\n" << chat.out << "generate:\n" << gen.out;
}

TEST(chat, streaming_policy_evicts_during_the_conversation) {
  const std::string turn =
      "Please summarize this: the cache keeps the tokens that matter and evicts the rest, so memory "
      "stays small while the model still answers well. The window holds recent tokens and the "
      "sinks hold the first ones.";
  const result r = run("chat " + model_arg() + " -n 8 --temp 0 --policy streaming --window 16 --budget 8",
                       turn + "\nAnd why?\n");
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_EQ(r.turns.size(), 2u) << r.err;
  for (const auto& j : r.turns) {
    EXPECT_EQ(j["policy"], "streaming");
    EXPECT_LT(j["kv_share_peak"].get<double>(), 1.0);
    // SmolLM2-135M: 30 layers x 3 KV heads; a full cache would hold one slot per head per position.
    EXPECT_LT(j["kv_slots"].get<int64_t>(), 30 * 3 * j["n_past"].get<int64_t>());
  }
}

TEST(chat, reply_cut_by_the_context_stops_with_context) {
  const result r = run("chat " + model_arg() + " -n 64 --temp 0 --ctx 64", "Write a long story about a cat.\n");
  ASSERT_EQ(r.status, 0) << r.err;
  ASSERT_EQ(r.turns.size(), 1u) << r.err;
  EXPECT_EQ(r.turns[0]["stop"], "context");
  EXPECT_EQ(r.turns[0]["n_past"], 64);  // the end of turn still went in
  EXPECT_GT(r.turns[0]["reply_tokens"].get<int>(), 0);
}

TEST(chat, turn_that_overflows_the_context_fails_with_a_message) {
  const result r = run("chat " + model_arg() + " -n 8 --temp 0 --ctx 64", "What is 2+2?\nAnd 3+3?\n");
  EXPECT_NE(r.status, 0);
  EXPECT_EQ(r.turns.size(), 1u) << r.err;  // turn 1 fits, turn 2 does not
  EXPECT_NE(r.err.find("turn 2 does not fit the context"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--ctx"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
}

TEST(chat, empty_input_or_exit_line_ends_with_no_turns) {
  for (const std::string input : {"", "\n\n", "/exit\nWhat is 2+2?\n"}) {
    const result r = run("chat " + model_arg() + " -n 8 --temp 0", input);
    EXPECT_EQ(r.status, 0) << r.err;
    EXPECT_EQ(r.out, "");
    EXPECT_TRUE(r.turns.empty()) << r.err;
  }
}

}  // namespace
}  // namespace kvgate
