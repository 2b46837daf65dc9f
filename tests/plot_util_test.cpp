// What the report writers hand to gnuplot and to browsers: names taken from files (a model's
// general.name, gate names, paths) must not run commands through gnuplot nor inject HTML.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "eval/plot_util.h"
#include "test_util.h"
#include "tiny_model.h"

namespace kvgate {
namespace {

namespace fs = std::filesystem;

// Backquotes run a shell command inside a double-quoted gnuplot string; a '"' closes it and lets
// system() follow. Both were in the titles before gnuplot_quote.
const char* const k_hostile_names[] = {"x `touch PWNED` y", "\"; system(\"touch PWNED2\"); \"",
                                       "it's '; system('touch PWNED3'); '"};

TEST(plot_util, gnuplot_quote_single_quotes_doubles_quotes_and_drops_controls) {
  EXPECT_EQ(eval::gnuplot_quote("abc"), "'abc'");
  EXPECT_EQ(eval::gnuplot_quote("it's"), "'it''s'");
  EXPECT_EQ(eval::gnuplot_quote("a`b`\"c\\d"), "'a`b`\"c\\d'");
  EXPECT_EQ(eval::gnuplot_quote(std::string("a\tb\rc\x01\x7f") + "d"), "'abcd'");
  EXPECT_EQ(eval::gnuplot_quote("one\ntwo"), "'one'.\"\\n\".'two'");
  EXPECT_EQ(eval::gnuplot_data_label("a \"b\"\nc"), "\"a bc\"");
}

// gnuplot itself reads the quoted strings back unchanged and runs nothing.
TEST(plot_util, gnuplot_reads_quoted_hostile_text_literally) {
  const std::string dir = test::temp_dir();
  std::string gp = "set print '-'\n";
  for (const char* name : k_hostile_names) gp += "print " + eval::gnuplot_quote(name) + "\n";
  gp += "print " + eval::gnuplot_quote("a\nb") + "\n";
  std::ofstream(dir + "/t.gp") << gp;
  std::string out;
  ASSERT_EQ(test::run_command("cd '" + dir + "' && gnuplot t.gp 2>&1", &out), 0) << out;
  std::string expected;
  for (const char* name : k_hostile_names) expected += std::string(name) + "\n";
  expected += "a\nb\n";
  EXPECT_EQ(out, expected);
  for (const char* f : {"PWNED", "PWNED2", "PWNED3"}) EXPECT_FALSE(fs::exists(dir + "/" + f)) << f;
}

TEST(plot_util, html_escape_escapes_markup_and_quotes) {
  EXPECT_EQ(eval::html_escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;");
  EXPECT_EQ(eval::html_escape("plain text"), "plain text");
}

bool any_file_named(const std::string& dir, const std::string& prefix) {
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.path().filename().string().rfind(prefix, 0) == 0) return true;
  }
  return false;
}

// The reproduction: a model whose general.name is a gnuplot injection, benched with plots.
TEST(plot_util, bench_on_a_model_with_a_hostile_name_runs_no_command) {
  const std::string dir = test::temp_dir();
  // As the issue found it: one name that both runs a backquote and closes the double quotes.
  const std::string name = "x `touch PWNED` \"; system(\"touch PWNED2\"); \" <b>it's";
  test::tiny_spec spec;
  spec.n_ctx = 512;
  spec.name = name;
  const std::string model = dir + "/hostile.gguf";
  test::write_tiny_model(model, spec);
  fs::create_directories(dir + "/corpus");
  {
    std::ofstream text(dir + "/corpus/a.txt");
    for (int i = 0; i < 60; ++i) text << "The quick brown fox jumps over the lazy dog, line " << i << ".\n";
  }
  const std::string out = dir + "/report";
  std::string log;
  const int status = test::run_command(
      "cd '" + dir + "' && '" + std::string(KVGATE_BINARY) + "' bench --model '" + model + "' --threads 1 --corpus '" +
          dir + "/corpus' --out '" + out +
          "' --ctx 512 --batch 64 --window 64 --windows 1 --needle-cases 0 --retrieval-cases 0 --baselines streaming --shares 0.5 2>&1",
      &log);
  EXPECT_FALSE(any_file_named(dir, "PWNED")) << log;
  ASSERT_EQ(status, 0) << log;
  ASSERT_TRUE(fs::exists(out + "/quality_vs_kv.png")) << log;
  // The name is in the script, quoted, and in the page, escaped.
  std::ifstream gp_in(out + "/plots/quality_vs_kv.gp");
  const std::string gp((std::istreambuf_iterator<char>(gp_in)), std::istreambuf_iterator<char>());
  EXPECT_NE(gp.find("'x `touch PWNED` \"; system(\"touch PWNED2\"); \" <b>it''s: quality"), std::string::npos) << gp;
  std::ifstream html_in(out + "/index.html");
  const std::string html((std::istreambuf_iterator<char>(html_in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(html.find("<b>it"), std::string::npos);
  EXPECT_NE(html.find("&lt;b&gt;it&#39;s"), std::string::npos);
}

}  // namespace
}  // namespace kvgate
