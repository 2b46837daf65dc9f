// Tokenizer tests: BPE on hand-made vocabularies against a slow reference, pre-tokenizer pieces,
// special tokens, errors, chat formatting; then the SmolLM2 vocabulary against llama.cpp's ids
// (tests/data/tokenizer/golden.json, from tools/make_tokenizer_golden.py) under each supported
// pre-tokenizer, round trips and speed.
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "common/error.h"
#include "test_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/chat.h"
#include "tokenizer/pre_tokenizer.h"

namespace kvgate {
namespace {

using ids = std::vector<int32_t>;

// ---- hand-made vocabularies -------------------------------------------------------------------

// The 256 byte tokens (id = byte) followed by extra tokens; merges as given.
tokenizer_metadata byte_vocab(std::vector<std::string> extra, std::vector<std::string> merges,
                              std::string pre = "gpt2") {
  tokenizer_metadata m;
  m.model = "gpt2";
  m.pre = std::move(pre);
  for (int b = 0; b < 256; ++b) m.tokens.push_back(bpe::encode_bytes(std::string(1, char(b))));
  m.token_types.assign(256, static_cast<int32_t>(token_type::normal));
  for (auto& t : extra) {
    m.tokens.push_back(std::move(t));
    m.token_types.push_back(static_cast<int32_t>(token_type::normal));
  }
  m.merges = std::move(merges);
  return m;
}

int32_t id_of(const tokenizer& t, std::string_view text) {
  auto id = t.find_token(text);
  EXPECT_TRUE(id.has_value()) << text;
  return id.value_or(-1);
}

TEST(tokenizer_bpe, byte_map_is_gpt2s) {
  EXPECT_EQ(bpe::encode_bytes(" "), "\xC4\xA0");   // U+0120 'Ġ'
  EXPECT_EQ(bpe::encode_bytes("\n"), "\xC4\x8A");  // U+010A 'Ċ'
  EXPECT_EQ(bpe::encode_bytes("Az~"), "Az~");
  EXPECT_EQ(bpe::byte_to_code_point(0xAD), 0x143u);  // soft hyphen is shifted, last of them
  std::string all;
  for (int b = 0; b < 256; ++b) all += char(b);
  EXPECT_EQ(bpe::decode_text(bpe::encode_bytes(all)), all);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(bpe::code_point_to_byte(bpe::byte_to_code_point(b)), b);
}

TEST(tokenizer_bpe, merges_apply_by_rank_then_leftmost) {
  // "b c" outranks "a b": "abc" -> "a" + "bc"; "aaa" -> "aa" + "a" (leftmost pair first).
  auto t = tokenizer::from_metadata(byte_vocab({"bc", "ab", "aa"}, {"b c", "a b", "a a"}));
  EXPECT_EQ(t->encode("abc"), (ids{'a', id_of(*t, "bc")}));
  EXPECT_EQ(t->encode("aaa"), (ids{id_of(*t, "aa"), 'a'}));
  EXPECT_EQ(t->encode("aaaa"), (ids{id_of(*t, "aa"), id_of(*t, "aa")}));
  auto u = tokenizer::from_metadata(byte_vocab({"ab", "bc"}, {"a b", "b c"}));
  EXPECT_EQ(u->encode("abc"), (ids{id_of(*u, "ab"), 'c'}));
}

TEST(tokenizer_bpe, merges_never_cross_pieces) {
  auto t = tokenizer::from_metadata(byte_vocab({"Ġh", "ab", "Ġhab"}, {"Ġ h", "a b", "Ġh ab"}));
  EXPECT_EQ(t->encode(" hab"), ids{id_of(*t, "Ġhab")});
  EXPECT_EQ(t->encode("hab"), (ids{'h', id_of(*t, "ab")}));
  EXPECT_EQ(t->encode("a b"), (ids{'a', id_of(*t, "Ġ") /* no merge across " b" */, 'b'}));
}

TEST(tokenizer_bpe, intermediate_not_in_vocab_falls_back_to_bytes) {
  // "x y" produces "xy", which is no token: its bytes come out as byte tokens.
  auto t = tokenizer::from_metadata(byte_vocab({}, {"x y"}));
  EXPECT_EQ(t->encode("xy"), (ids{'x', 'y'}));
}

// The obvious quadratic BPE: merge the lowest-ranked adjacent pair (leftmost on ties) until none.
ids slow_bpe(const std::map<std::pair<std::string, std::string>, int>& ranks, const tokenizer& t,
             std::string_view piece) {
  std::vector<std::string> syms;
  for (char c : piece) syms.push_back(bpe::encode_bytes(std::string(1, c)));
  for (;;) {
    int best = -1, best_rank = INT32_MAX;
    for (size_t i = 0; i + 1 < syms.size(); ++i) {
      auto it = ranks.find({syms[i], syms[i + 1]});
      if (it != ranks.end() && it->second < best_rank) best = int(i), best_rank = it->second;
    }
    if (best < 0) break;
    syms[best] += syms[best + 1];
    syms.erase(syms.begin() + best + 1);
  }
  ids out;
  for (auto& s : syms) {
    if (auto id = t.find_token(s)) {
      out.push_back(*id);
    } else {
      for (char c : bpe::decode_text(s)) out.push_back(uint8_t(c));
    }
  }
  return out;
}

TEST(tokenizer_bpe, matches_slow_reference_on_random_vocabularies) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    // Random merges over a 4-letter alphabet, built bottom-up so most operands exist.
    std::vector<std::string> symbols = {"a", "b", "c", "d"}, extra, merges;
    std::map<std::pair<std::string, std::string>, int> ranks;
    for (int k = 0; k < 40; ++k) {
      const std::string& l = symbols[rng() % symbols.size()];
      const std::string& r = symbols[rng() % symbols.size()];
      if (ranks.count({l, r})) continue;
      ranks[{l, r}] = int(merges.size());
      merges.push_back(l + " " + r);
      if (rng() % 4) extra.push_back(l + r);  // sometimes the result is not a token
      symbols.push_back(l + r);
    }
    auto t = tokenizer::from_metadata(byte_vocab(extra, merges));
    for (int w = 0; w < 50; ++w) {
      std::string word;
      for (int n = 1 + rng() % 30; n > 0; --n) word += "abcd"[rng() % 4];
      ASSERT_EQ(t->encode(word), slow_bpe(ranks, *t, word)) << word;
    }
  }
}

// CPU seconds of this thread for f(), best of 3: immune to other processes on the machine.
template <typename F>
double cpu_seconds(F f) {
  double best = 1e300;
  for (int rep = 0; rep < 3; ++rep) {
    timespec a{}, b{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    f();
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    best = std::min(best, double(b.tv_sec - a.tv_sec) + 1e-9 * double(b.tv_nsec - a.tv_nsec));
  }
  return best;
}

// No wall-clock limit (it flakes under load and under sanitizers): the cost must grow linearly,
// so 4x the input may cost at most 12x the CPU time (measured 6.4x; a quadratic merge loop costs 16x).
TEST(tokenizer_bpe, long_runs_cost_linear_time) {
  auto t = tokenizer::from_metadata(byte_vocab({"aa", "aaaa"}, {"a a", "aa aa"}));
  const std::string small(100000, 'a'), large(400000, 'a');
  ids out;
  const double t_small = cpu_seconds([&] { out = t->encode(small); });
  EXPECT_EQ(out.size(), 25000u);
  const double t_large = cpu_seconds([&] { out = t->encode(large); });
  EXPECT_EQ(out.size(), 100000u);
  std::printf("  encode 100k / 400k 'a': %.2g / %.2g CPU s, ratio %.2f\n", t_small, t_large, t_large / t_small);
  EXPECT_LT(t_large, 12 * t_small + 0.005);
}

// ---- pre-tokenizers ---------------------------------------------------------------------------

std::vector<std::string> pieces(std::string_view pre, std::string_view text) {
  std::vector<std::string_view> views;
  pre::splitter::create(pre)->split(text, views);
  return {views.begin(), views.end()};
}

using strs = std::vector<std::string>;

TEST(tokenizer_pre, gpt2_pieces) {
  EXPECT_EQ(pieces("gpt2", "Hello world's 123!"), (strs{"Hello", " world", "'s", " 123", "!"}));
  // \s+(?!\S) leaves the last space to the next word; a lone "\n" before a word is kept as the
  // text between matches.
  EXPECT_EQ(pieces("gpt2", "a  \n\n  b\t\tc   "),
            (strs{"a", "  \n\n ", " b", "\t", "\t", "c", "   "}));
  EXPECT_EQ(pieces("gpt2", "x\ny"), (strs{"x", "\n", "y"}));
  EXPECT_EQ(pieces("default", "I'LL"), (strs{"I", "'", "LL"}));
  EXPECT_EQ(pieces("", "café"), strs{"café"});
}

TEST(tokenizer_pre, smollm_isolates_every_digit_first) {
  EXPECT_EQ(pieces("smollm", "abc123 4"), (strs{"abc", "1", "2", "3", " ", "4"}));
  EXPECT_EQ(pieces("smollm", "x٣y"), (strs{"x", "٣", "y"}));
}

TEST(tokenizer_pre, qwen2_pieces) {
  EXPECT_EQ(pieces("qwen2", "I'LL pay 123"), (strs{"I", "'LL", " pay", " ", "1", "2", "3"}));
  EXPECT_EQ(pieces("qwen2", "a\n\n  b"), (strs{"a", "\n\n", " ", " b"}));
  EXPECT_EQ(pieces("qwen2", "x!?\n\ny"), (strs{"x", "!?\n\n", "y"}));
}

TEST(tokenizer_pre, invalid_utf8_bytes_are_pieces_of_their_own) {
  EXPECT_EQ(pieces("gpt2", "ab\x80 cd"), (strs{"ab", "\x80", " cd"}));
  EXPECT_EQ(pieces("gpt2", "caf\xC3"), (strs{"caf", "\xC3"}));
  EXPECT_EQ(pieces("gpt2", "\xED\xA0\x80"), (strs{"\xED", "\xA0", "\x80"}));  // a surrogate
  EXPECT_EQ(pre::utf8_sequence_length("\xC0\xAF"), 0u);                       // overlong
  EXPECT_EQ(pre::utf8_sequence_length("\xF4\x90\x80\x80"), 0u);               // > U+10FFFF
  EXPECT_EQ(pre::utf8_sequence_length("\xF0\x9F\x99\x82"), 4u);
}

TEST(tokenizer_pre, unknown_pre_tokenizer_is_refused_by_name) {
  try {
    tokenizer::from_metadata(byte_vocab({}, {"a b"}, "llama-bpe"));
    FAIL() << "no error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("'llama-bpe'"), std::string::npos) << e.what();
  }
}

// ---- special tokens, decoding, errors ---------------------------------------------------------

tokenizer_metadata special_vocab() {
  auto m = byte_vocab({"<|im_start|>", "<|im_end|>", "<tool>", "<|im_end|>x", "ab"}, {"a b"});
  m.token_types[256] = m.token_types[257] = static_cast<int32_t>(token_type::control);
  m.token_types[258] = static_cast<int32_t>(token_type::user_defined);
  m.token_types[259] = static_cast<int32_t>(token_type::control);
  m.bos = 256;
  m.eos = 257;
  return m;
}

TEST(tokenizer_special, control_tokens_only_with_parse_special) {
  auto t = tokenizer::from_metadata(special_vocab());
  EXPECT_EQ(t->encode("<|im_start|>ab", true), (ids{256, 260}));
  const ids plain = t->encode("<|im_start|>ab", false);
  EXPECT_GT(plain.size(), 2u);
  EXPECT_EQ(t->decode(plain), "<|im_start|>ab");
}

TEST(tokenizer_special, user_defined_tokens_always_match) {
  auto t = tokenizer::from_metadata(special_vocab());
  EXPECT_EQ(t->encode("ab<tool>ab", false), (ids{260, 258, 260}));
  EXPECT_EQ(t->encode("ab<tool>ab", true), (ids{260, 258, 260}));
}

TEST(tokenizer_special, longest_match_first) {
  auto t = tokenizer::from_metadata(special_vocab());
  EXPECT_EQ(t->encode("<|im_end|>x<|im_end|><|im_end|>", true), (ids{259, 257, 257}));
}

TEST(tokenizer_special, decode_gives_control_text_and_bytes) {
  auto m = special_vocab();
  m.tokens.push_back("<0x0A>");
  m.token_types.push_back(static_cast<int32_t>(token_type::byte));
  auto t = tokenizer::from_metadata(m);
  EXPECT_EQ(t->token_bytes(257), "<|im_end|>");
  EXPECT_EQ(t->token_bytes(' '), " ");
  EXPECT_EQ(t->token_bytes(261), "\n");
  EXPECT_EQ(t->decode(ids{256, 260, 257}), "<|im_start|>ab<|im_end|>");
  EXPECT_THROW(t->token_bytes(262), error);
  EXPECT_TRUE(t->is_end_of_generation(257));
  EXPECT_FALSE(t->is_end_of_generation(256));
  EXPECT_EQ(t->type(258), token_type::user_defined);
}

std::string error_of(tokenizer_metadata m) {
  try {
    tokenizer::from_metadata(std::move(m));
  } catch (const error& e) {
    return e.what();
  }
  return "";
}

TEST(tokenizer_errors, refuses_what_it_does_not_implement) {
  auto m = byte_vocab({}, {"a b"});
  m.model = "llama";
  EXPECT_NE(error_of(m).find("'llama' (SentencePiece)"), std::string::npos) << error_of(m);
  m.model = "";
  EXPECT_NE(error_of(m).find("tokenizer.ggml.model"), std::string::npos);
  m = byte_vocab({}, {});
  EXPECT_NE(error_of(m).find("merges"), std::string::npos);
  m = byte_vocab({}, {"ab"});
  EXPECT_NE(error_of(m).find("'ab'"), std::string::npos);
  m = byte_vocab({}, {"a b"});
  m.token_types.pop_back();
  EXPECT_NE(error_of(m).find("token_type"), std::string::npos);
  m = byte_vocab({}, {"a b"});
  m.eos = 256;
  EXPECT_NE(error_of(m).find("eos"), std::string::npos);
}

gguf::value string_array(const std::vector<std::string>& strings) {
  gguf::value::array a;
  for (const auto& s : strings) a.push_back(gguf::value::of_string(s));
  return gguf::value::of_array(gguf::value_type::string, std::move(a));
}

TEST(tokenizer_gguf, reads_metadata_and_names_the_file_in_errors) {
  const std::string path = test::temp_dir() + "/vocab.gguf";
  gguf::writer w;
  w.set("tokenizer.ggml.model", gguf::value::of_string("gpt2"));
  w.set("tokenizer.ggml.tokens", string_array({"a", "b", "ab"}));
  w.set("tokenizer.ggml.merges", string_array({"a b"}));
  w.set("tokenizer.ggml.eos_token_id", gguf::value::of_u32(2));
  w.set("tokenizer.ggml.eot_token_id", gguf::value::of_u32(0xFFFFFFFF));  // "none"
  w.write(path);
  {
    auto t = tokenizer::from_gguf(*gguf::file::open(path));
    EXPECT_EQ(t->encode("ab ba"), (ids{2, 1, 0}));  // " " has no token: dropped
    EXPECT_EQ(t->eos(), 2);
    EXPECT_EQ(t->bos(), -1);
    EXPECT_EQ(t->type(0), token_type::normal);
    EXPECT_EQ(t->default_system_prompt(), std::nullopt);
  }
  w.set("tokenizer.ggml.model", gguf::value::of_string("llama"));
  w.write(path);
  try {
    tokenizer::from_gguf(*gguf::file::open(path));
    ADD_FAILURE() << "no error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'llama'"), std::string::npos) << e.what();
  }
  w.set("tokenizer.ggml.model", gguf::value::of_string("gpt2"));
  w.set("tokenizer.ggml.merges", gguf::value::of_u32(3));
  w.write(path);
  try {
    tokenizer::from_gguf(*gguf::file::open(path));
    ADD_FAILURE() << "no error";
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.ggml.merges"), std::string::npos) << e.what();
  }
}

// ---- chat --------------------------------------------------------------------------------------

const char* k_smollm2_template =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

TEST(tokenizer_chat, finds_default_system_prompt) {
  EXPECT_EQ(chat::find_default_system_prompt(k_smollm2_template),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  // Qwen2.5 style: escaped newlines, prompt in an else branch, after a partial literal.
  EXPECT_EQ(chat::find_default_system_prompt(
                "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + "
                "messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- "
                "'<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You\\'re "
                "helpful.<|im_end|>\\n' }}{%- endif %}"),
            "You are Qwen, created by Alibaba Cloud. You're helpful.");
  // Raw template text counts too; comments do not.
  EXPECT_EQ(
      chat::find_default_system_prompt("{# '<|im_start|>system\nX<|im_end|>' #}"
                                       "{% if a %}<|im_start|>system\nY<|im_end|>\n{% endif %}"),
      "Y");
  EXPECT_EQ(chat::find_default_system_prompt(
                "{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + "
                "message.content + '<|im_end|>\\n' }}{%- endfor %}"),
            std::nullopt);
  EXPECT_EQ(chat::find_default_system_prompt(""), std::nullopt);
}

TEST(tokenizer_chat, chatml_with_and_without_default_prompt) {
  const std::vector<chat_message> user{{"user", "hi"}};
  EXPECT_EQ(chat::format_chatml(user, true, "S"),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(chat::format_chatml(user, false, std::nullopt), "<|im_start|>user\nhi<|im_end|>\n");
  const std::vector<chat_message> sys{{"system", "A"}, {"user", "b"}};
  EXPECT_EQ(chat::format_chatml(sys, false, "S"),
            "<|im_start|>system\nA<|im_end|>\n<|im_start|>user\nb<|im_end|>\n");
  EXPECT_EQ(chat::format_chatml({}, true, "S"), "<|im_start|>assistant\n");
}

// ---- the SmolLM2 vocabulary against llama.cpp -----------------------------------------------

const nlohmann::json& golden() {
  static const nlohmann::json j = [] {
    std::ifstream in(test::data_path("tokenizer/golden.json"));
    EXPECT_TRUE(in.good()) << "missing tests/data/tokenizer/golden.json";
    return in.good() ? nlohmann::json::parse(in) : nlohmann::json::object();
  }();
  return j;
}

const tokenizer_metadata& smollm2_metadata() {
  static const tokenizer_metadata m = [] {
    auto file = gguf::file::open(test::default_model_path());
    return tokenizer::read_metadata(*file);
  }();
  return m;
}

// The SmolLM2 vocabulary under the named pre-tokenizer (the model's own is "smollm").
const tokenizer& smollm2(const std::string& pre) {
  static std::map<std::string, std::unique_ptr<tokenizer>> cache;
  auto& t = cache[pre];
  if (!t) {
    tokenizer_metadata m = smollm2_metadata();
    m.pre = pre;
    t = tokenizer::from_metadata(std::move(m));
  }
  return *t;
}

std::string hex_decode(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out += char(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

std::string case_text(const nlohmann::json& c) {
  return c.contains("hex") ? hex_decode(c["hex"]) : c["text"].get<std::string>();
}

TEST(tokenizer_smollm2, metadata_from_gguf) {
  auto file = gguf::file::open(test::default_model_path());
  auto t = tokenizer::from_gguf(*file);
  EXPECT_EQ(t->n_vocab(), 49152);
  EXPECT_EQ(t->bos(), 1);
  EXPECT_EQ(t->eos(), 2);
  EXPECT_EQ(t->find_token("<|im_start|>"), 1);
  EXPECT_EQ(smollm2_metadata().merges.size(), 48900u);
  EXPECT_EQ(smollm2_metadata().pre, "smollm");
  EXPECT_TRUE(t->is_end_of_generation(2));  // <|im_end|>, EOS
  EXPECT_TRUE(t->is_end_of_generation(0));  // <|endoftext|>
  EXPECT_FALSE(t->is_end_of_generation(1));
  EXPECT_EQ(t->default_system_prompt(),
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_EQ(t->encode("<|im_start|>user\nhi<|im_end|>", true), (ids{1, 4093, 198, 6004, 2}));
}

class tokenizer_golden : public testing::TestWithParam<std::string> {};

TEST_P(tokenizer_golden, ids_match_llama_cpp) {
  const std::string pre = GetParam();
  ASSERT_TRUE(golden().contains("pre_tokenizers"));
  const auto& cases = golden()["pre_tokenizers"][pre];
  ASSERT_GT(cases.size(), 100u);
  const tokenizer& t = smollm2(pre);
  int n_checked = 0;
  for (const auto& c : cases) {
    const std::string text = case_text(c);
    const bool special = c["special"];
    const ids got = t.encode(text, special);
    if (c.value("llama_replaces_invalid_utf8", false)) continue;  // see the header: we keep bytes
    EXPECT_EQ(got, c["ids"].get<ids>()) << pre << " " << c["name"] << " special=" << special;
    ++n_checked;
  }
  EXPECT_GT(n_checked, 100);
}

// text without the bytes the vocabulary has no token for (dropped by encode, see the header).
std::string representable(const tokenizer& t, std::string_view text) {
  std::string out;
  for (char c : text) {
    if (t.find_token(bpe::encode_bytes(std::string(1, c)))) out += c;
  }
  return out;
}

TEST_P(tokenizer_golden, decode_inverts_encode) {
  const tokenizer& t = smollm2(GetParam());
  for (const auto& c : golden()["pre_tokenizers"][GetParam()]) {
    const std::string text = case_text(c);
    EXPECT_EQ(t.decode(t.encode(text, c["special"])), representable(t, text)) << c["name"];
  }
}

INSTANTIATE_TEST_SUITE_P(pre, tokenizer_golden, testing::Values("smollm", "gpt2", "qwen2"));

TEST(tokenizer_smollm2, invalid_utf8_becomes_byte_tokens) {
  const tokenizer& t = smollm2("smollm");
  const ids got = t.encode(
      "ab\x80"
      "cd");
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(t.token_bytes(got[1]), "\x80");
  EXPECT_EQ(t.decode(got),
            "ab\x80"
            "cd");
}

TEST(tokenizer_smollm2, chat_matches_the_models_jinja_template) {
  const tokenizer& t = smollm2("smollm");
  ASSERT_TRUE(golden().contains("chat"));
  for (const auto& c : golden()["chat"]) {
    std::vector<chat_message> messages;
    for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
    EXPECT_EQ(t.apply_chat(messages, c["add_assistant_prompt"]), c["text"].get<std::string>());
  }
}

TEST(tokenizer_smollm2, corpus_round_trip_and_speed) {
  const std::string path = "/usr/share/doc/python3.11/html/_sources/tutorial/introduction.rst.txt";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is absent";
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  while (text.size() < 100000) text += text;
  text.resize(100000);
  // A cut in the middle of a character makes the tail invalid UTF-8: round trip holds anyway.
  for (const std::string pre : {"smollm", "gpt2", "qwen2"}) {
    const tokenizer& t = smollm2(pre);
    ids out;
    const double seconds = cpu_seconds([&] { out = t.encode(text); });
    EXPECT_EQ(t.decode(out), text) << pre;
    // Linear cost instead of a wall-clock limit: a quarter of the text costs about a quarter.
    const std::string quarter = text.substr(0, 25000);
    const double seconds_quarter = cpu_seconds([&] { (void)t.encode(quarter); });
    EXPECT_LT(seconds, 8 * seconds_quarter + 0.005) << pre << ": " << out.size() << " tokens";
    RecordProperty("encode_100kb_cpu_seconds_" + pre, std::to_string(seconds));
  }
}

}  // namespace
}  // namespace kvgate
