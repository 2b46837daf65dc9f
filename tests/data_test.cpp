// The data module: the label builder against a brute-force computation from full attention
// matrices (exact equality, any prefill chunking), corpus reading, the dataset's round trip
// through disk, resuming a killed collection, and the errors bad input must give.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>

#include "common/error.h"
#include "data/collect.h"
#include "data/corpus.h"
#include "data/dataset.h"
#include "data/label_sources.h"
#include "data/labeler.h"
#include "gguf/gguf.h"
#include "kv/cache.h"
#include "model/model.h"
#include "test_util.h"
#include "tiny_model.h"

namespace kvgate {
namespace {

namespace fs = std::filesystem;

using test::random_tokens;

const std::string& tiny_model_path() {
  static const std::string path = [] {
    const std::string p = test::temp_dir() + "/tiny_llama.gguf";
    test::write_tiny_model(p, test::tiny_spec{});
    return p;
  }();
  return path;
}

// Keeps everything: a[il][g] as a full [T, T] matrix (row = query position, column = key
// position) and each token's keys, straight from the observations.
class capture_observer final : public observer {
 public:
  capture_observer(int n_layer, int n_head, int n_kv_head, int d_head, int T)
      : n_head(n_head), n_kv_head(n_kv_head), d_head(d_head), T(T),
        attn(n_layer, std::vector<std::vector<float>>(n_head, std::vector<float>(static_cast<size_t>(T) * T, 0.0f))),
        k_pre(n_layer, std::vector<float>(static_cast<size_t>(T) * n_kv_head * d_head)),
        k_post(k_pre) {}

  void on_layer(const layer_observation& obs) override {
    for (int t = 0; t < obs.n_tok; ++t) {
      const int i = obs.pos[t];
      for (int g = 0; g < n_head; ++g) {
        const size_t n_slots = obs.cache->head(obs.il, g / (n_head / n_kv_head)).n_slots();
        for (size_t s = 0; s < n_slots; ++s) {
          const int j = obs.cache->head(obs.il, g / (n_head / n_kv_head)).pos[s];
          attn[obs.il][g][static_cast<size_t>(i) * T + j] = obs.attn[g][t * n_slots + s];
        }
      }
      const size_t row = static_cast<size_t>(n_kv_head) * d_head;
      std::copy_n(obs.k_pre_rope + t * row, row, k_pre[obs.il].begin() + i * row);
      std::copy_n(obs.k_post_rope + t * row, row, k_post[obs.il].begin() + i * row);
    }
  }

  int n_head, n_kv_head, d_head, T;
  std::vector<std::vector<std::vector<float>>> attn;  // [n_layer][n_head][T, T]
  std::vector<std::vector<float>> k_pre, k_post;      // [n_layer][T, n_kv_head, d_head]
};

class tee_observer final : public observer {
 public:
  tee_observer(observer& a, observer& b) : a_(a), b_(b) {}
  void on_layer(const layer_observation& obs) override {
    a_.on_layer(obs);
    b_.on_layer(obs);
  }

 private:
  observer &a_, &b_;
};

// The label of DESIGN.md, written out literally from the full matrices.
struct brute_label {
  float m = 0.0f;
  bool y = false;
  int lifetime = 0;
  int bucket = 0;
};

brute_label brute_force(const capture_observer& cap, int il, int ih, int j, const label_params& p) {
  const int n_group = cap.n_head / cap.n_kv_head, T = cap.T;
  brute_label out;
  int last = -1;
  for (int g = ih * n_group; g < (ih + 1) * n_group; ++g) {
    for (int i = 0; i < T; ++i) {
      const float a = cap.attn[il][g][static_cast<size_t>(i) * T + j];
      if (j + p.window < i && i <= std::min(T - 1, j + p.window + p.horizon)) out.m = std::max(out.m, a);
      if (i > j && a >= p.tau) last = std::max(last, i);
    }
  }
  out.y = out.m >= p.tau;
  out.lifetime = last < 0 ? 0 : last - j;
  int b = 0;
  while (out.lifetime >= 1 && std::pow(4.0, b + 1) <= out.lifetime) ++b;
  out.bucket = std::min(b, p.max_bucket);
  return out;
}

struct label_check {
  int64_t n_labelled = 0, n_pos = 0, n_bucket_above_0 = 0;
};

// Runs tokens through the engine with n_batch, a labeler and a capture attached; compares every
// labelled (head, j) to the brute force.
void check_labels(const model& m, const std::vector<int32_t>& tokens, int n_batch, const label_params& p,
                  label_check& out) {
  const model_config& c = m.config();
  const int T = static_cast<int>(tokens.size());
  session s(m, {.n_ctx = T, .n_batch = n_batch});
  labeler lab(c.n_layer, c.n_head, c.n_kv_head, c.d_head, p);
  capture_observer cap(c.n_layer, c.n_head, c.n_kv_head, c.d_head, T);
  tee_observer tee(lab, cap);
  s.set_observer(&tee);
  lab.begin(T);
  s.prefill(tokens);
  EXPECT_TRUE(lab.complete());

  const label_range r = labelled_range(T, p);
  for (int il = 0; il < c.n_layer; ++il) {
    for (int ih = 0; ih < c.n_kv_head; ++ih) {
      const int head = il * c.n_kv_head + ih;
      for (int j = r.first; j < r.end; ++j) {
        const brute_label b = brute_force(cap, il, ih, j, p);
        ASSERT_EQ(lab.max_future(head, j), b.m) << "head " << head << " j " << j;
        ASSERT_EQ(lab.label(head, j), b.y) << "head " << head << " j " << j;
        ASSERT_EQ(lab.lifetime(head, j), b.lifetime) << "head " << head << " j " << j;
        ASSERT_EQ(lab.bucket(head, j), b.bucket) << "head " << head << " j " << j;
        const std::vector<float>& keys = p.key_kind == "post-rope" ? cap.k_post[il] : cap.k_pre[il];
        for (int d = 0; d < c.d_head; ++d) {
          const float k = keys[(static_cast<size_t>(j) * c.n_kv_head + ih) * c.d_head + d];
          ASSERT_EQ(lab.key(head, j)[d], gguf::f32_to_f16(k));
        }
        ++out.n_labelled;
        out.n_pos += b.y;
        out.n_bucket_above_0 += b.bucket > 0;
      }
    }
  }
}

// A tau at the q-quantile of the brute-force m values, so both labels occur.
float tau_at_quantile(const model& m, const std::vector<int32_t>& tokens, label_params p, double q) {
  const model_config& c = m.config();
  const int T = static_cast<int>(tokens.size());
  session s(m, {.n_ctx = T, .n_batch = T});
  p.tau = 1.0f;
  labeler lab(c.n_layer, c.n_head, c.n_kv_head, c.d_head, p);
  s.set_observer(&lab);
  lab.begin(T);
  s.prefill(tokens);
  std::vector<float> ms;
  const label_range r = labelled_range(T, p);
  for (int h = 0; h < lab.n_heads(); ++h)
    for (int j = r.first; j < r.end; ++j) ms.push_back(lab.max_future(h, j));
  std::sort(ms.begin(), ms.end());
  return ms[static_cast<size_t>(q * (ms.size() - 1))];
}

TEST(labeler, lifetime_bucket_is_floor_log4_capped) {
  EXPECT_EQ(lifetime_bucket(0, 7), 0);
  EXPECT_EQ(lifetime_bucket(1, 7), 0);
  EXPECT_EQ(lifetime_bucket(3, 7), 0);
  EXPECT_EQ(lifetime_bucket(4, 7), 1);
  EXPECT_EQ(lifetime_bucket(15, 7), 1);
  EXPECT_EQ(lifetime_bucket(16, 7), 2);
  EXPECT_EQ(lifetime_bucket(1023, 7), 4);
  EXPECT_EQ(lifetime_bucket(1024, 7), 5);
  EXPECT_EQ(lifetime_bucket(1 << 30, 7), 7);
  EXPECT_EQ(lifetime_bucket(64, 2), 2);
}

TEST(labeler, labelled_range_has_a_nonempty_future) {
  label_params p;
  p.sinks = 4;
  p.window = 10;
  EXPECT_EQ(labelled_range(100, p).first, 4);
  EXPECT_EQ(labelled_range(100, p).end, 89);  // j = 88: future {99}; j = 89: future empty
  EXPECT_EQ(labelled_range(14, p).size(), 0);
}

TEST(labeler, labels_equal_brute_force_for_any_chunking) {
  auto m = model::load(tiny_model_path());
  const auto tokens = random_tokens(120, 11);
  label_params p;
  p.sinks = 3;
  p.window = 10;
  p.horizon = 20;
  for (double q : {0.5, 0.9}) {
    p.tau = tau_at_quantile(*m, tokens, p, q);
    for (int n_batch : {120, 32, 7, 1}) {
      SCOPED_TRACE(testing::Message() << "tau " << p.tau << " n_batch " << n_batch);
      label_check r;
      check_labels(*m, tokens, n_batch, p, r);
      EXPECT_GT(r.n_pos, 0);
      EXPECT_LT(r.n_pos, r.n_labelled);
      EXPECT_GT(r.n_bucket_above_0, 0);
    }
  }
}

TEST(labeler, labels_equal_brute_force_with_post_rope_keys_and_long_horizon) {
  auto m = model::load(tiny_model_path());
  const auto tokens = random_tokens(90, 5);
  label_params p;
  p.sinks = 0;
  p.window = 0;
  p.horizon = 1000;  // past the document's end: future(j) is cut at T - 1
  p.max_bucket = 2;
  p.key_kind = "post-rope";
  p.tau = tau_at_quantile(*m, tokens, p, 0.7);
  for (int n_batch : {90, 13}) {
    label_check r;
    check_labels(*m, tokens, n_batch, p, r);
    EXPECT_GT(r.n_pos, 0);
  }
}

TEST(labeler, refuses_a_cache_that_did_not_start_empty) {
  auto m = model::load(tiny_model_path());
  const model_config& c = m->config();
  session s(*m, {.n_ctx = 64, .n_batch = 8});
  s.prefill(random_tokens(8, 1));
  labeler lab(c.n_layer, c.n_head, c.n_kv_head, c.d_head, label_params{});
  lab.begin(16);
  s.set_observer(&lab);
  EXPECT_THROW(s.prefill(random_tokens(8, 2)), error);
}

// ---- corpus ----

void write_file(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

std::string text_of(int n, uint64_t seed) {
  static const char* words[] = {"the ", "cache ", "keeps ", "tokens ", "that ", "matter ", "later ", "and ",
                                "drops ", "others ", "\n", "gate ", "key ", "value "};
  std::mt19937_64 rng(seed);
  std::string s;
  while (static_cast<int>(s.size()) < n) s += words[rng() % 14];
  return s.substr(0, n);
}

TEST(corpus, utf8_check_rejects_bad_sequences) {
  EXPECT_TRUE(is_utf8_text("plain ascii\n"));
  EXPECT_TRUE(is_utf8_text("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_FALSE(is_utf8_text(std::string("nul\0byte", 8)));
  EXPECT_FALSE(is_utf8_text("\xc0\xaf"));          // overlong
  EXPECT_FALSE(is_utf8_text("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(is_utf8_text("\xf4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(is_utf8_text("cut \xe2\x82"));      // truncated
  EXPECT_FALSE(is_utf8_text("latin1 caf\xe9!"));
}

TEST(corpus, windows_are_consecutive_and_short_tails_skipped) {
  using w = std::vector<std::pair<int64_t, int>>;
  EXPECT_EQ(document_windows(300, 128, 72), (w{{0, 128}, {128, 128}}));
  EXPECT_EQ(document_windows(340, 128, 72), (w{{0, 128}, {128, 128}, {256, 84}}));
  EXPECT_EQ(document_windows(100, 128, 72), (w{{0, 100}}));
  EXPECT_EQ(document_windows(50, 128, 72), w{});
}

TEST(corpus, directories_give_sorted_text_files_only) {
  const std::string dir = test::temp_dir();
  write_file(dir + "/b/two.rst.txt", "two");
  write_file(dir + "/a.txt", "one");
  write_file(dir + "/a.html", "<p>html twin</p>");
  write_file(dir + "/empty.txt", "");
  write_file(dir + "/latin1.txt", "caf\xe9");
  const std::string extra = test::temp_dir() + "/notes.md";
  write_file(extra, "three");
  const corpus_listing l = list_corpus({dir, extra});
  EXPECT_EQ(l.files, (std::vector<std::string>{dir + "/a.txt", dir + "/b/two.rst.txt", extra}));
  EXPECT_EQ(l.skipped, (std::vector<std::string>{dir + "/latin1.txt"}));
  EXPECT_EQ(l.bytes, (std::vector<int64_t>{3, 3, 5}));
}

TEST(corpus, shuffle_is_a_permutation_fixed_by_the_seed) {
  corpus_listing l;
  for (int i = 0; i < 20; ++i) {
    l.files.push_back("f" + std::to_string(i));
    l.bytes.push_back(i);
  }
  corpus_listing a = l, b = l, c = l;
  shuffle_files(a, 1);
  shuffle_files(b, 1);
  shuffle_files(c, 2);
  EXPECT_EQ(a.files, b.files);
  EXPECT_NE(a.files, c.files);
  EXPECT_NE(a.files, l.files);
  for (size_t i = 0; i < a.files.size(); ++i) EXPECT_EQ(a.files[i], "f" + std::to_string(a.bytes[i]));
  std::sort(a.files.begin(), a.files.end());
  std::vector<std::string> sorted = l.files;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(a.files, sorted);
}

TEST(corpus, errors_for_missing_path_empty_corpus_and_binary_file) {
  const std::string dir = test::temp_dir();
  write_file(dir + "/empty.txt", "");
  write_file(dir + "/page.html", "<html></html>");
  write_file(dir + "/bin.dat", std::string("\0\1\2", 3));
  auto message = [](const std::vector<std::string>& paths) {
    try {
      list_corpus(paths);
    } catch (const error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({dir + "/nope"}).find("not found"), std::string::npos) << message({dir + "/nope"});
  EXPECT_NE(message({dir}).find("empty corpus"), std::string::npos) << message({dir});
  EXPECT_NE(message({}).find("empty corpus"), std::string::npos);
  EXPECT_NE(message({dir + "/bin.dat"}).find("not UTF-8"), std::string::npos);
}

// ---- collection ----

// Three documents with ctx 128 and window 8 (72 tokens at least): a.txt gives two full windows
// (its short tail is skipped), b.txt one short document, c.txt none.
std::string make_corpus() {
  const std::string dir = test::temp_dir() + "/corpus";
  write_file(dir + "/a.txt", text_of(300, 1));
  write_file(dir + "/b.txt", text_of(110, 2));
  write_file(dir + "/c.txt", text_of(40, 3));
  write_file(dir + "/a.html", "<p>not taken</p>");
  return dir;
}

collect_options tiny_options(const std::string& corpus, const std::string& out) {
  collect_options o;
  o.model_path = tiny_model_path();
  o.corpus = {corpus};
  o.out_dir = out;
  o.label.sinks = 2;
  o.label.window = 8;
  o.label.horizon = 16;
  o.label.tau = 0.08f;
  o.ctx = 128;
  o.n_batch = 32;
  o.negative_keep = 0.5f;
  o.seed = 7;
  o.shard_docs = 1;
  return o;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const error& e) {
    return e.what();
  }
  return "no error";
}

void expect_same(const dataset& a, const dataset& b) {
  EXPECT_EQ(a.manifest.n_docs, b.manifest.n_docs);
  EXPECT_EQ(a.manifest.n_tokens, b.manifest.n_tokens);
  EXPECT_EQ(a.manifest.n_pos, b.manifest.n_pos);
  EXPECT_EQ(a.manifest.n_neg, b.manifest.n_neg);
  EXPECT_EQ(a.manifest.n_stored, b.manifest.n_stored);
  EXPECT_EQ(a.manifest.shards, b.manifest.shards);
  ASSERT_EQ(a.heads.size(), b.heads.size());
  for (size_t h = 0; h < a.heads.size(); ++h) {
    EXPECT_EQ(a.heads[h].keys, b.heads[h].keys) << "head " << h;
    EXPECT_EQ(a.heads[h].label, b.heads[h].label) << "head " << h;
    EXPECT_EQ(a.heads[h].bucket, b.heads[h].bucket) << "head " << h;
    EXPECT_EQ(a.heads[h].pos, b.heads[h].pos) << "head " << h;
    EXPECT_EQ(a.heads[h].doc, b.heads[h].doc) << "head " << h;
  }
}

TEST(collect, dataset_round_trips_through_load) {
  const std::string corpus = make_corpus(), out = test::temp_dir() + "/ds";
  collect_options o = tiny_options(corpus, out);
  o.tau_sweep = {o.label.tau, 1.0f};
  auto m = model::load(o.model_path);
  const auto summary = collect(*m, o);
  EXPECT_EQ(summary["n_docs"], 3);
  const dataset d = dataset::load(out);

  // Expected: every document run again with its own labeler, negatives kept by keep_negative.
  const model_config& c = m->config();
  corpus_listing listing = list_corpus({corpus});
  shuffle_files(listing, o.seed);
  EXPECT_EQ(d.manifest.corpus_files, listing.files);
  corpus_reader reader(listing, m->vocab(), o.ctx, o.label.window + 64);
  std::vector<head_examples> want(c.n_heads_total());
  std::vector<int64_t> n_pos(want.size()), n_neg(want.size());
  corpus_document doc;
  int64_t n_docs = 0, n_tokens = 0;
  while (reader.next(doc)) {
    const int T = static_cast<int>(doc.tokens.size());
    session s(*m, {.n_ctx = T, .n_batch = o.n_batch});
    labeler lab(c.n_layer, c.n_head, c.n_kv_head, c.d_head, o.label);
    s.set_observer(&lab);
    lab.begin(T);
    s.prefill(doc.tokens);
    const label_range r = labelled_range(T, o.label);
    for (int h = 0; h < lab.n_heads(); ++h) {
      for (int j = r.first; j < r.end; ++j) {
        const bool y = lab.label(h, j);
        ++(y ? n_pos : n_neg)[h];
        if (!y && !keep_negative(o.seed, n_docs, h, j, o.negative_keep)) continue;
        want[h].keys.insert(want[h].keys.end(), lab.key(h, j), lab.key(h, j) + c.d_head);
        want[h].label.push_back(y);
        want[h].bucket.push_back(static_cast<uint8_t>(lab.bucket(h, j)));
        want[h].pos.push_back(j);
        want[h].doc.push_back(static_cast<int32_t>(n_docs));
      }
    }
    ++n_docs;
    n_tokens += T;
  }
  ASSERT_EQ(n_docs, 3);
  EXPECT_EQ(d.manifest.n_docs, 3);
  EXPECT_EQ(d.manifest.n_tokens, n_tokens);
  EXPECT_EQ(d.manifest.n_pos, n_pos);
  EXPECT_EQ(d.manifest.n_neg, n_neg);
  EXPECT_EQ(d.manifest.docs.size(), 3u);
  std::map<std::string, int> docs_per_file;
  for (const document_info& info : d.manifest.docs) ++docs_per_file[fs::path(d.manifest.corpus_files[info.file]).filename()];
  EXPECT_EQ(docs_per_file, (std::map<std::string, int>{{"a.txt", 2}, {"b.txt", 1}}));
  dataset expected;
  expected.manifest = d.manifest;
  expected.heads = want;
  expect_same(d, expected);

  // Both labels occur, negatives were thinned, positives all kept.
  const double rate = d.manifest.positive_rate();
  EXPECT_GT(rate, 0.0);
  EXPECT_LT(rate, 1.0);
  int64_t stored = 0, labelled = 0;
  for (size_t h = 0; h < want.size(); ++h) stored += d.heads[h].size(), labelled += n_pos[h] + n_neg[h];
  EXPECT_LT(stored, labelled);
  EXPECT_EQ(summary["n_stored"], stored);
  EXPECT_EQ(summary["positive_rate_by_tau"]["0.08"]["positive_rate"], rate);  // the sweep agrees with the labels
  EXPECT_LT(summary["positive_rate_by_tau"]["1"]["positive_rate"].get<double>(), rate);
  std::printf("tiny collection: positive rate %.3f, %lld of %lld labelled examples stored\n", rate,
              static_cast<long long>(stored), static_cast<long long>(labelled));
}

// With chat_share 1 every document runs as the user's message of the chat template: the counts
// equal labelling the wrapped token sequences built here from the template text.
TEST(collect, chat_share_runs_documents_inside_the_chat_template) {
  const std::string corpus = make_corpus();
  const std::string out = test::temp_dir() + "/chat";
  collect_options o = tiny_options(corpus, out);
  o.chat_share = 1.0f;
  auto m = model::load(o.model_path);
  collect(*m, o);
  const dataset d = dataset::load(out);
  EXPECT_FLOAT_EQ(d.manifest.chat_share, 1.0f);

  const tokenizer& vocab = m->vocab();
  const std::vector<chat_message> messages = {{"user", "@@doc@@"}};
  const std::string text = vocab.apply_chat(messages, true);
  const size_t at = text.find("@@doc@@");
  ASSERT_NE(at, std::string::npos);
  const auto prefix = vocab.encode(text.substr(0, at), true);
  const auto suffix = vocab.encode(text.substr(at + 7), true);
  ASSERT_GT(prefix.size(), 2u);
  EXPECT_EQ(prefix[0], vocab.encode("<|im_start|>", true)[0]);

  const model_config& c = m->config();
  corpus_listing listing = list_corpus({corpus});
  shuffle_files(listing, o.seed);
  corpus_reader reader(listing, vocab, o.ctx, o.label.window + 64);
  std::vector<int64_t> n_pos(c.n_heads_total()), n_neg(c.n_heads_total());
  corpus_document doc;
  int64_t n_tokens = 0;
  std::vector<int> window_tokens;
  while (reader.next(doc)) {
    std::vector<int32_t> run = prefix;
    const size_t room = o.ctx - prefix.size() - suffix.size();
    run.insert(run.end(), doc.tokens.begin(), doc.tokens.begin() + std::min(room, doc.tokens.size()));
    run.insert(run.end(), suffix.begin(), suffix.end());
    const int T = static_cast<int>(run.size());
    session s(*m, {.n_ctx = T, .n_batch = o.n_batch});
    labeler lab(c.n_layer, c.n_head, c.n_kv_head, c.d_head, o.label);
    s.set_observer(&lab);
    lab.begin(T);
    s.prefill(run);
    const label_range r = labelled_range(T, o.label);
    for (int h = 0; h < lab.n_heads(); ++h)
      for (int j = r.first; j < r.end; ++j) ++(lab.label(h, j) ? n_pos : n_neg)[h];
    n_tokens += T;
    window_tokens.push_back(static_cast<int>(doc.tokens.size()));
  }
  EXPECT_EQ(d.manifest.n_tokens, n_tokens);
  EXPECT_EQ(d.manifest.n_pos, n_pos);
  EXPECT_EQ(d.manifest.n_neg, n_neg);
  ASSERT_EQ(d.manifest.docs.size(), window_tokens.size());
  for (size_t i = 0; i < window_tokens.size(); ++i) EXPECT_EQ(d.manifest.docs[i].n_tokens, window_tokens[i]);

  // Half the documents: fewer tokens than all wrapped, more than none; resuming with another
  // share is refused.
  const std::string half_out = test::temp_dir() + "/half";
  collect_options half = tiny_options(corpus, half_out);
  half.chat_share = 0.5f;
  half.seed = 3;
  collect(*m, half);
  const int64_t half_tokens = dataset::load(half_out).manifest.n_tokens;
  EXPECT_LE(half_tokens, n_tokens);
  collect_options plain = tiny_options(corpus, half_out);
  plain.seed = 3;
  EXPECT_NE(error_of([&] { collect(*m, plain); }).find("chat_share"), std::string::npos);
}

TEST(collect, killed_run_resumes_without_loss_or_duplicates) {
  const std::string corpus = make_corpus(), ref = test::temp_dir() + "/ref", out = test::temp_dir() + "/ds";
  auto m = model::load(tiny_model_path());
  collect(*m, tiny_options(corpus, ref));

  // The killed run: one shard and its manifest complete, the next shard renamed but not yet in
  // the manifest (here: wrong content), and a half-written temporary.
  collect_options first = tiny_options(corpus, out);
  first.max_docs = 1;
  collect(*m, first);
  fs::copy_file(ref + "/shard-00002.bin", out + "/shard-00001.bin");
  write_file(out + "/shard-00002.bin.tmp", "partial");
  write_file(out + "/manifest.json.tmp", "{\"partial");

  const auto summary = collect(*m, tiny_options(corpus, out));
  EXPECT_EQ(summary["run"]["resumed_docs"], 1);
  EXPECT_EQ(summary["run"]["docs"], 2);
  expect_same(dataset::load(out), dataset::load(ref));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(out)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"manifest.json", "shard-00000.bin", "shard-00001.bin", "shard-00002.bin"}));

  // A finished dataset run again does nothing.
  const auto again = collect(*m, tiny_options(corpus, out));
  EXPECT_EQ(again["run"]["docs"], 0);
  expect_same(dataset::load(out), dataset::load(ref));
}

TEST(collect, resume_with_other_parameters_is_refused) {
  const std::string corpus = make_corpus(), out = test::temp_dir() + "/ds";
  auto m = model::load(tiny_model_path());
  collect_options o = tiny_options(corpus, out);
  o.max_docs = 1;
  collect(*m, o);

  collect_options other_tau = o;
  other_tau.label.tau = 0.09f;
  const std::string msg = error_of([&] { collect(*m, other_tau); });
  EXPECT_NE(msg.find("refusing to resume"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tau"), std::string::npos) << msg;

  collect_options other_key = o;
  other_key.label.key_kind = "post-rope";
  EXPECT_NE(error_of([&] { collect(*m, other_key); }).find("key"), std::string::npos);

  write_file(corpus + "/d.txt", text_of(200, 4));
  EXPECT_NE(error_of([&] { collect(*m, o); }).find("corpus"), std::string::npos);

  const std::string other_model = test::temp_dir() + "/other.gguf";
  test::tiny_spec spec;
  spec.seed = 2;
  test::write_tiny_model(other_model, spec);
  collect_options other = o;
  other.model_path = other_model;
  fs::remove(corpus + "/d.txt");
  auto m2 = model::load(other_model);
  EXPECT_NE(error_of([&] { collect(*m2, other); }).find("model_fingerprint"), std::string::npos);
}

TEST(collect, load_refuses_other_versions_and_damaged_shards) {
  const std::string corpus = make_corpus(), out = test::temp_dir() + "/ds";
  auto m = model::load(tiny_model_path());
  collect_options o = tiny_options(corpus, out);
  o.max_docs = 2;
  collect(*m, o);

  const std::string shard = out + "/shard-00001.bin";
  const std::string good = test::temp_dir() + "/good.bin";
  fs::copy_file(shard, good);
  {  // one flipped payload byte
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(shard) / 2));
    char c;
    f.read(&c, 1);
    f.seekp(static_cast<std::streamoff>(fs::file_size(shard) / 2));
    c ^= 0x10;
    f.write(&c, 1);
  }
  EXPECT_NE(error_of([&] { dataset::load(out); }).find("checksum"), std::string::npos);
  fs::resize_file(shard, fs::file_size(shard) - 3);
  const std::string truncated = error_of([&] { dataset::load(out); });
  EXPECT_NE(truncated.find("damaged shard"), std::string::npos) << truncated;
  fs::remove(shard);
  EXPECT_NE(error_of([&] { dataset::load(out); }).find("missing"), std::string::npos);
  fs::copy_file(good, shard);
  EXPECT_NO_THROW(dataset::load(out));

  nlohmann::json j = nlohmann::json::parse(std::ifstream(out + "/manifest.json"));
  j["version"] = 99;
  std::ofstream(out + "/manifest.json") << j.dump();
  const std::string msg = error_of([&] { dataset::load(out); });
  EXPECT_NE(msg.find("version 99"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { collect(*m, o); }).find("version 99"), std::string::npos);
  EXPECT_NE(error_of([&] { dataset::load(out + "/nope"); }).find("not found"), std::string::npos);
}

TEST(collect, errors_for_empty_corpus_and_documents_too_short) {
  auto m = model::load(tiny_model_path());
  const std::string empty = test::temp_dir();
  write_file(empty + "/empty.txt", "");
  const std::string out = test::temp_dir() + "/ds";
  EXPECT_NE(error_of([&] { collect(*m, tiny_options(empty, out)); }).find("empty corpus"), std::string::npos);
  EXPECT_NE(error_of([&] { collect(*m, tiny_options(empty + "/missing", out)); }).find("not found"), std::string::npos);

  const std::string short_docs = test::temp_dir();
  write_file(short_docs + "/short.txt", text_of(40, 5));
  const std::string msg = error_of([&] { collect(*m, tiny_options(short_docs, out)); });
  EXPECT_NE(msg.find("no document"), std::string::npos) << msg;

  collect_options bad = tiny_options(short_docs, out);
  bad.ctx = 50;  // shorter than window + 64
  EXPECT_NE(error_of([&] { collect(*m, bad); }).find("--ctx"), std::string::npos);
}


// ---- other label sources ----

const std::string& long_tiny_model_path() {
  static const std::string path = [] {
    const std::string p = test::temp_dir() + "/tiny_llama_long.gguf";
    test::tiny_spec spec;
    spec.n_ctx = 1024;
    test::write_tiny_model(p, spec);
    return p;
  }();
  return path;
}

// copy(j) and answer(j) written out from the full matrices: the max over the group's query heads
// and the region's queries; the future label of the context alone.
float brute_region_max(const capture_observer& cap, int il, int ih, int j, int begin, int end) {
  const int n_group = cap.n_head / cap.n_kv_head;
  float m = 0.0f;
  for (int g = ih * n_group; g < (ih + 1) * n_group; ++g)
    for (int i = begin; i < end; ++i) m = std::max(m, cap.attn[il][g][static_cast<size_t>(i) * cap.T + j]);
  return m;
}

float brute_future(const capture_observer& cap, int il, int ih, int j, int n_context, const label_params& p) {
  return brute_region_max(cap, il, ih, j, j + p.window + 1, std::min(n_context, j + p.window + p.horizon + 1));
}

TEST(labeler, copy_and_answer_scores_equal_brute_force_for_any_chunking) {
  auto m = model::load(long_tiny_model_path());
  const model_config& c = m->config();
  // context 70 | answer 9 | instruction 5 | copy of the context 70
  std::vector<int32_t> tokens = random_tokens(84, 21);
  tokens.insert(tokens.end(), tokens.begin(), tokens.begin() + 70);
  const int T = static_cast<int>(tokens.size());
  const label_regions regions = {.n_context = 70, .copy_begin = 84, .copy_end = T, .answer_begin = 70, .answer_end = 79};
  label_params p;
  p.sinks = 2;
  p.window = 6;
  p.horizon = 12;
  p.tau = 0.1f;
  for (int n_batch : {T, 16, 1}) {
    session s(*m, {.n_ctx = T, .n_batch = n_batch});
    labeler lab(c.n_layer, c.n_head, c.n_kv_head, c.d_head, p);
    capture_observer cap(c.n_layer, c.n_head, c.n_kv_head, c.d_head, T);
    tee_observer tee(lab, cap);
    s.set_observer(&tee);
    lab.begin(T, regions);
    s.prefill(tokens);
    ASSERT_TRUE(lab.complete());
    const label_mix all{true, true, true};
    EXPECT_EQ(all.range(lab).first, 2);
    EXPECT_EQ(all.range(lab).end, 70);
    EXPECT_EQ(label_mix{}.range(lab).end, 70 - 1 - 6);  // future alone: labelled_range of the context
    int n_copy_above = 0;
    for (int il = 0; il < c.n_layer; ++il) {
      for (int ih = 0; ih < c.n_kv_head; ++ih) {
        const int head = il * c.n_kv_head + ih;
        for (int j = 2; j < 70; ++j) {
          const float copy = brute_region_max(cap, il, ih, j, 84, T);
          const float answer = brute_region_max(cap, il, ih, j, 70, 79);
          const float future = brute_future(cap, il, ih, j, 70, p);
          ASSERT_EQ(lab.max_copy(head, j), copy) << head << " " << j;
          ASSERT_EQ(lab.max_answer(head, j), answer) << head << " " << j;
          ASSERT_EQ(lab.max_future(head, j), future) << head << " " << j;
          ASSERT_EQ(all.score(lab, head, j), std::max({copy, answer, future}));
          ASSERT_EQ((label_mix{false, true, false}.score(lab, head, j)), copy);
          n_copy_above += copy > future;
        }
      }
    }
    EXPECT_GT(n_copy_above, 0);  // the sources differ
  }
  labeler lab(c.n_layer, c.n_head, c.n_kv_head, c.d_head, p);
  EXPECT_THROW(lab.begin(T, {.n_context = 70, .copy_begin = 60, .copy_end = 80}), error);  // a query inside the context
}

TEST(label_sources, lists_parse_in_canonical_order_and_unknown_names_are_errors) {
  EXPECT_EQ(parse_label_sources("future"), std::vector<std::string>{"future"});
  EXPECT_EQ(parse_label_sources("answer,future,answer"), (std::vector<std::string>{"future", "answer"}));
  EXPECT_EQ(parse_label_sources("reconstruct,answer"), (std::vector<std::string>{"reconstruct", "answer"}));
  EXPECT_NE(error_of([] { parse_label_sources("future,kvzip"); }).find("unknown label source 'kvzip'"), std::string::npos);
  EXPECT_NE(error_of([] { parse_label_sources(""); }).find("unknown label source ''"), std::string::npos);
}

TEST(label_sources, answer_documents_hold_each_fact_once_and_the_answer_states_every_value) {
  const std::string text = text_of(3000, 9);
  size_t most_facts = 0, multi_valued = 0;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    const answer_document d = make_answer_document(text, seed);
    EXPECT_EQ(d, make_answer_document(text, seed)) << seed;
    ASSERT_GE(d.facts.size(), 1u);
    ASSERT_LE(d.facts.size(), 18u);
    most_facts = std::max(most_facts, d.facts.size());
    std::string stripped = d.context;
    for (const std::string& f : d.facts) {
      const size_t at = stripped.find(f + "\n");
      ASSERT_NE(at, std::string::npos) << f;
      EXPECT_TRUE(at == 0 || stripped[at - 1] == '\n');
      stripped.erase(at, f.size() + 1);
    }
    EXPECT_EQ(stripped, text);  // nothing else changed
    // Every fact's value (its last word) is in the answer, once per fact.
    for (const std::string& f : d.facts) {
      ASSERT_EQ(f.back(), '.') << f;
      const std::string value = f.substr(f.rfind(' ') + 1, f.size() - f.rfind(' ') - 2);
      EXPECT_NE(d.answer.find(" " + value), std::string::npos) << f << " / " << d.answer;
    }
    // One answer sentence per question; each sentence's last value sits in a fact.
    size_t n_questions = 0, n_sentences = 0;
    for (char c : d.question) n_questions += c == '?';
    for (size_t start = 0; start < d.answer.size();) {
      size_t end = d.answer.find(". ", start);
      end = end == std::string::npos ? d.answer.size() - 1 : end;
      const std::string sentence = d.answer.substr(start, end - start);
      const std::string value = sentence.substr(sentence.rfind(' ') + 1);
      int holding = 0;
      for (const std::string& f : d.facts) holding += f.find(" " + value + ".") != std::string::npos;
      EXPECT_GE(holding, 1) << d.answer;
      multi_valued += sentence.find(" are ") != std::string::npos;
      ++n_sentences;
      start = end + 2;
    }
    EXPECT_EQ(n_sentences, n_questions) << d.question << " / " << d.answer;
    EXPECT_LE(n_questions, d.facts.size());
    EXPECT_EQ(d.question.find("magic"), std::string::npos);  // no suite wording
    EXPECT_EQ(d.context.find("VAR "), std::string::npos);
  }
  EXPECT_GE(most_facts, 8u);   // several keys, some with several values
  EXPECT_GT(multi_valued, 20u);
}

// With --labels future,reconstruct and every negative stored, each example's score is the max of
// the brute-force future label and copy score over the run document + instruction + document.
TEST(collect, reconstruct_scores_equal_brute_force_over_the_copy_run) {
  const std::string corpus = make_corpus(), out = test::temp_dir() + "/rec";
  collect_options o = tiny_options(corpus, out);
  o.model_path = long_tiny_model_path();
  o.negative_keep = 1.0f;
  o.label_sources = {"future", "reconstruct"};
  auto m = model::load(o.model_path);
  const auto summary = collect(*m, o);
  EXPECT_TRUE(summary["run"]["positive_rate_by_source"].contains("reconstruct"));
  const dataset d = dataset::load(out);
  EXPECT_EQ(d.manifest.label_sources, o.label_sources);

  const model_config& c = m->config();
  corpus_listing listing = list_corpus({corpus});
  shuffle_files(listing, o.seed);
  corpus_reader reader(listing, m->vocab(), o.ctx, o.label.window + 64);
  const std::vector<int32_t> instruction = m->vocab().encode(k_repeat_instruction, false);
  corpus_document doc;
  int64_t n_docs = 0;
  std::vector<size_t> next(c.n_heads_total(), 0);
  int n_checked = 0, n_copy_wins = 0;
  while (reader.next(doc)) {
    const int n = static_cast<int>(doc.tokens.size());
    std::vector<int32_t> run = doc.tokens;
    run.insert(run.end(), instruction.begin(), instruction.end());
    run.insert(run.end(), doc.tokens.begin(), doc.tokens.end());
    const int T = static_cast<int>(run.size());
    session s(*m, {.n_ctx = T, .n_batch = o.n_batch});
    capture_observer cap(c.n_layer, c.n_head, c.n_kv_head, c.d_head, T);
    s.set_observer(&cap);
    s.prefill(run);
    for (int il = 0; il < c.n_layer; ++il) {
      for (int ih = 0; ih < c.n_kv_head; ++ih) {
        const int head = il * c.n_kv_head + ih;
        const head_examples& e = d.heads[head];
        for (int j = o.label.sinks; j < n; ++j) {  // every context token past the sinks
          const size_t row = next[head]++;
          ASSERT_LT(row, e.size());
          ASSERT_EQ(e.doc[row], n_docs);
          ASSERT_EQ(e.pos[row], j);
          const float future = brute_future(cap, il, ih, j, n, o.label);
          const float copy = brute_region_max(cap, il, ih, j, T - n, T);
          ASSERT_EQ(e.score[row], std::max(future, copy)) << head << " " << j;
          ASSERT_EQ(e.label[row], e.score[row] >= o.label.tau ? 1 : 0);
          ++n_checked;
          n_copy_wins += copy > future;
        }
      }
    }
    ++n_docs;
  }
  for (size_t h = 0; h < next.size(); ++h) EXPECT_EQ(next[h], d.heads[h].size());
  EXPECT_GT(n_checked, 0);
  EXPECT_GT(n_copy_wins, 0);

  // A resume with another list is refused, naming it.
  collect_options other = o;
  other.label_sources = {"future"};
  const std::string msg = error_of([&] { collect(*m, other); });
  EXPECT_NE(msg.find("label_sources"), std::string::npos) << msg;
}

TEST(collect, answer_documents_label_every_context_token_with_the_answer_score) {
  const std::string corpus = make_corpus(), out = test::temp_dir() + "/ans";
  collect_options o = tiny_options(corpus, out);
  o.model_path = long_tiny_model_path();
  o.negative_keep = 1.0f;
  o.label_sources = {"answer"};
  o.chat_share = 0.5f;
  o.ctx = 1024;  // the tiny tokenizer spends a token per byte on up to 4 facts, questions and answers
  auto m = model::load(o.model_path);
  collect(*m, o);
  const dataset d = dataset::load(out);
  int64_t n_pos = 0, n = 0;
  for (const head_examples& e : d.heads) {
    ASSERT_EQ(e.score.size(), e.size());
    for (size_t i = 0; i < e.size(); ++i) {
      ASSERT_GE(e.score[i], 0.0f);
      ASSERT_LE(e.score[i], 1.0f);
      ASSERT_EQ(e.label[i], e.score[i] >= o.label.tau ? 1 : 0);
      n_pos += e.label[i];
      ++n;
    }
  }
  EXPECT_EQ(n, d.manifest.n_labelled());  // every example stored
  EXPECT_GT(n_pos, 0);
  EXPECT_LT(n_pos, n);

  collect_options small = o;
  small.ctx = 80;
  small.out_dir = test::temp_dir() + "/ans_small";
  EXPECT_NE(error_of([&] { collect(*m, small); }).find("do not fit --ctx 80"), std::string::npos);
}

}  // namespace
}  // namespace kvgate
