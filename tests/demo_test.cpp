// kvgate demo: the page renderer on hand-made data (escaping, shading by heads kept, UTF-8 that
// straddles tokens, bad input) and the subcommand end to end on the real model with a baseline
// policy whose evictions are known exactly (streaming: sinks + window + the most recent budget).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "eval/demo.h"
#include "test_util.h"

namespace kvgate {
namespace {

// An independent strict UTF-8 check (not eval::sanitize_utf8, which it is here to judge).
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = 0;
    uint32_t cp = 0;
    if (c < 0x80) { len = 1; cp = c; }
    else if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    static const uint32_t min_cp[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// The class attribute of the span whose whole text is `text`; "" when there is none.
std::string span_class(const std::string& html, const std::string& text) {
  const size_t at = html.find(">" + text + "</span>");
  if (at == std::string::npos) return "";
  const size_t open = html.rfind("<span class='", at);
  if (open == std::string::npos) return "";
  const size_t begin = open + 13;
  return html.substr(begin, html.find('\'', begin) - begin);
}

eval::demo_page page_of(std::vector<std::string> tokens, std::vector<int> kept, int n_heads = 90) {
  eval::demo_page page;
  page.question = "What?";
  page.answer = "That.";
  page.n_heads = n_heads;
  page.token_bytes = std::move(tokens);
  page.kept_heads = std::move(kept);
  page.figures.policy = "streaming (per-head, sinks 1, window 1, budget 0)";
  return page;
}

TEST(demo_page, escapes_markup_in_question_answer_and_tokens) {
  eval::demo_page page = page_of({"<script>", "&\"x'", "</script>"}, {90, 90, 90});
  page.question = "<script>&\"";
  page.answer = "<b>bold</b> & 'quoted'";
  const std::string html = eval::render_demo_html(page);
  EXPECT_EQ(html.find("<script>"), std::string::npos);
  EXPECT_EQ(html.find("</script>"), std::string::npos);
  EXPECT_EQ(html.find("<b>"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;&amp;&quot;"), std::string::npos);  // the question
  EXPECT_NE(html.find("&lt;b&gt;bold&lt;/b&gt; &amp; &#39;quoted&#39;"), std::string::npos);
  EXPECT_NE(html.find(">&amp;&quot;x&#39;</span>"), std::string::npos);  // a token
  // Self-contained: no external stylesheet, script or image.
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
}

TEST(demo_page, shade_follows_the_heads_that_kept_the_token) {
  eval::demo_page page = page_of({"gone", "all", "half", "one", "\nnext line"}, {0, 90, 45, 1, 89});
  const std::string html = eval::render_demo_html(page);
  EXPECT_EQ(span_class(html, "gone"), "k0");
  EXPECT_EQ(span_class(html, "all"), "k10");
  EXPECT_EQ(span_class(html, "half"), "k5");
  EXPECT_EQ(span_class(html, "one"), "k1");               // one head is not "evicted"
  EXPECT_EQ(span_class(html, "\nnext line"), "k9");      // nor is 89 of 90 "kept by all"
  EXPECT_NE(html.find(".k0{color:#c4c4c4}"), std::string::npos);  // evicted = light grey
  EXPECT_NE(html.find(".k10{color:#1a1a1a}"), std::string::npos); // kept = normal dark text
  EXPECT_NE(html.find("white-space:pre-wrap"), std::string::npos);
  EXPECT_NE(html.find("title='pos 2: kept by 45/90 heads'"), std::string::npos);
}

TEST(demo_page, marks_sinks_and_the_final_window) {
  eval::demo_page page = page_of({"s0", "s1", "mid", "w3", "w4"}, {90, 90, 0, 90, 90});
  page.sinks = 2;
  page.window_begin = 3;
  const std::string html = eval::render_demo_html(page);
  EXPECT_EQ(span_class(html, "s1"), "k10 sink");
  EXPECT_EQ(span_class(html, "mid"), "k0");
  EXPECT_EQ(span_class(html, "w3"), "k10 win");
}

TEST(demo_page, utf8_character_split_across_tokens_stays_whole) {
  // "é" = C3 A9 split over two tokens; "😀" = F0 9F 98 80 split over four byte tokens; a stray
  // invalid byte must not swallow the token after it.
  const std::vector<std::string> tokens = {"caf", "\xC3", "\xA9 ok", "\xF0", "\x9F", "\x98", "\x80", "\xFF", "end"};
  const std::string html = eval::render_demo_html(page_of(tokens, {90, 90, 0, 90, 90, 90, 90, 90, 90}));
  EXPECT_TRUE(valid_utf8(html));
  EXPECT_NE(html.find("title='pos 1-2: kept by 90/90, 0/90 heads'>\xC3\xA9 ok</span>"), std::string::npos) << html;
  EXPECT_EQ(span_class(html, "\xC3\xA9 ok"), "k5");  // half the pair's slots are held
  EXPECT_NE(html.find(">\xF0\x9F\x98\x80</span>"), std::string::npos);
  EXPECT_NE(html.find(">\xEF\xBF\xBD</span>"), std::string::npos);  // the stray byte as U+FFFD
  EXPECT_EQ(span_class(html, "end"), "k10");

  const auto groups = eval::group_utf8_tokens(tokens);
  ASSERT_EQ(groups.size(), 5u);
  EXPECT_EQ(groups[1].begin, 1u);
  EXPECT_EQ(groups[1].end, 3u);
  EXPECT_EQ(groups[2].end, 7u);
}

TEST(demo_page, sanitize_replaces_only_invalid_sequences) {
  EXPECT_EQ(eval::sanitize_utf8("plain \xC3\xA9 \xE2\x82\xAC"), "plain \xC3\xA9 \xE2\x82\xAC");
  EXPECT_EQ(eval::sanitize_utf8("a\xC3"), "a\xEF\xBF\xBD");             // truncated at the end
  EXPECT_EQ(eval::sanitize_utf8("\xC0\xAFx"), "\xEF\xBF\xBD\xEF\xBF\xBDx");  // overlong
  EXPECT_EQ(eval::sanitize_utf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_TRUE(valid_utf8(eval::sanitize_utf8("\xE2\x82 \xF4\x90\x80\x80 \x80")));
}

TEST(demo_page, refuses_counts_that_do_not_cover_the_tokens) {
  EXPECT_THROW(eval::render_demo_html(page_of({"a", "b", "c"}, {90, 90})), error);
  EXPECT_THROW(eval::render_demo_html(page_of({"a"}, {91})), error);
  EXPECT_THROW(eval::render_demo_html(page_of({"a"}, {-1})), error);
  EXPECT_THROW(eval::render_demo_html(page_of({"a"}, {0}, /*n_heads=*/0)), error);
  EXPECT_NO_THROW(eval::render_demo_html(page_of({"a"}, {0, 90})));  // answer positions may follow
}

// ---- the subcommand on the real model ------------------------------------------------------

using result = test::kvgate_result;

result run(const std::string& args) { return test::run_kvgate(args); }

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string write_doc(const std::string& dir) {
  std::string text;
  const char* towns[] = {"Aldermoor", "Brightwater", "Cinderfall", "Dunmere", "Eastholm", "Fernhollow"};
  for (int i = 0; i < 32; ++i) {
    text += std::string("The village of ") + towns[i % 6] + " keeps " + std::to_string(10 + 7 * i) +
            " goats and trades wool with its neighbours every spring.\n";
  }
  const std::string path = dir + "/doc.txt";
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(demo_cli, streaming_run_writes_page_and_json_with_known_evictions) {
  const std::string dir = test::temp_dir();
  const std::string out = dir + "/out";
  const result r = run("demo --model " + test::default_model_path() + " --threads 1 --doc " + write_doc(dir) +
                       " --question 'How many goats does Aldermoor keep?' --out " + out +
                       " --policy streaming --window 32 --budget 16 -n 4");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("answer: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("demo.html"), std::string::npos) << r.out;
  ASSERT_TRUE(std::filesystem::exists(out + "/demo.html"));
  ASSERT_TRUE(std::filesystem::exists(out + "/demo.json"));

  const auto j = nlohmann::json::parse(read_all(out + "/demo.json"));
  EXPECT_EQ(j["policy"], "streaming");
  EXPECT_LT(j["kv_share_peak"].get<double>(), 1.0);
  EXPECT_LT(j["kv_share_mean"].get<double>(), j["kv_share_peak"].get<double>());
  EXPECT_LT(j["kv_bytes_peak"].get<double>(), j["kv_bytes_full"].get<double>());
  const int n_heads = j["n_heads"];
  EXPECT_EQ(n_heads, 90);  // SmolLM2-135M: 30 layers x 3 kv heads
  const auto kept = j["kept_heads"].get<std::vector<int>>();
  const int n_prompt = j["prompt_tokens"];
  ASSERT_EQ(static_cast<int>(kept.size()), n_prompt);
  ASSERT_GT(n_prompt, 500);
  const int doc_first = j["document_tokens"][0], doc_end = j["document_tokens"][1];
  EXPECT_GT(doc_end - doc_first, 450);
  // Streaming keeps sinks 4 + the newest 32 + budget 16: every head holds the same positions.
  for (int p = 0; p < 4; ++p) EXPECT_EQ(kept[p], n_heads) << "sink " << p;
  for (int p = n_prompt - 16; p < n_prompt; ++p) EXPECT_EQ(kept[p], n_heads) << "window " << p;
  for (int p = doc_first + 20; p < doc_end - 60; ++p) ASSERT_EQ(kept[p], 0) << "middle " << p;
  EXPECT_GT(j["doc_evicted_share"].get<double>(), 0.8);

  const std::string html = read_all(out + "/demo.html");
  EXPECT_TRUE(valid_utf8(html));
  EXPECT_NE(html.find("How many goats does Aldermoor keep?"), std::string::npos);
  EXPECT_NE(html.find("kept by 0/90 heads"), std::string::npos);
  EXPECT_NE(html.find("kept by 90/90 heads"), std::string::npos);
}

TEST(demo_cli, bad_input_gives_clear_error_and_nonzero_exit) {
  const std::string dir = test::temp_dir();
  const std::string doc = write_doc(dir);
  const std::string base = "demo --model " + test::default_model_path() + " --threads 1 --question 'Why?' --out " + dir + "/out";
  const struct {
    std::string args, expected;
  } cases[] = {
      {base + " --doc /nonexistent/doc.txt --policy streaming", "/nonexistent/doc.txt"},
      {base + " --doc " + doc + " --policy learned", "--gates"},
      {base + " --doc " + doc, "--gates"},  // learned is the default policy
  };
  for (const auto& c : cases) {
    const result r = run(c.args);
    EXPECT_NE(r.status, 0) << c.args;
    EXPECT_NE(r.err.find(c.expected), std::string::npos) << c.args << "\nstderr: " << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir + "/out/demo.html"));
  }
}

}  // namespace
}  // namespace kvgate
