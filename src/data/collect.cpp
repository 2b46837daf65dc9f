#include "data/collect.h"

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "common/random.h"
#include "data/label_sources.h"
#include "data/labeler.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace kvgate {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

// Puts a chosen share of the documents inside the chat template: the text becomes the user's
// message, followed by the assistant's header, as a served prompt holding a pasted document.
class chat_wrapper {
 public:
  chat_wrapper(const tokenizer& vocab, float share, uint64_t seed) : share_(share), seed_(seed) {
    if (share_ <= 0.0f) return;
    const std::string marker = "@@kvgate-document@@";
    const std::vector<chat_message> messages = {{"user", marker}};
    const std::string text = vocab.apply_chat(messages, true);
    const size_t at = text.find(marker);
    if (at == std::string::npos) fail("collect: the chat template lost the user's message");
    prefix_ = vocab.encode(text.substr(0, at), true);
    suffix_ = vocab.encode(text.substr(at + marker.size()), true);
  }

  // Whether document index doc runs inside the template (drawn from the seed).
  bool chosen(int64_t doc) const {
    if (share_ <= 0.0f) return false;
    const uint64_t h = splitmix64(splitmix64(seed_ ^ 0x636861745f646f63ull) ^ static_cast<uint64_t>(doc));
    return static_cast<double>(h >> 11) * 0x1.0p-53 < share_;
  }
  const std::vector<int32_t>& prefix() const { return prefix_; }
  const std::vector<int32_t>& suffix() const { return suffix_; }

  // The tokens to run for document index doc: the window itself, or (chosen from the seed)
  // prefix + as much of it as fits ctx + suffix, built in buffer.
  const std::vector<int32_t>& wrap(const std::vector<int32_t>& window, int64_t doc, int ctx,
                                   std::vector<int32_t>& buffer) const {
    if (!chosen(doc)) return window;
    const size_t room = static_cast<size_t>(std::max(0, ctx - static_cast<int>(prefix_.size() + suffix_.size())));
    buffer.assign(prefix_.begin(), prefix_.end());
    buffer.insert(buffer.end(), window.begin(), window.begin() + std::min(room, window.size()));
    buffer.insert(buffer.end(), suffix_.begin(), suffix_.end());
    return buffer;
  }

 private:
  float share_;
  uint64_t seed_;
  std::vector<int32_t> prefix_, suffix_;  // template tokens before and after the message
};

// The tokens run for one document and where the label sources' queries sit in them: the
// context (the window, chat-wrapped or not; with `answer`, the window's text cut short with facts
// inserted), then the question and the answer's tokens (answer), then the repeat
// instruction and the context again (reconstruct).
class run_builder {
 public:
  run_builder(const tokenizer& vocab, const chat_wrapper& chat, const label_mix& mix, int ctx, uint64_t seed)
      : vocab_(vocab), chat_(chat), mix_(mix), ctx_(ctx), seed_(seed),
        instruction_(vocab.encode(k_repeat_instruction, false)) {}

  // Tokens a session needs at most.
  int max_tokens() const { return mix_.reconstruct ? 2 * ctx_ + static_cast<int>(instruction_.size()) : ctx_; }

  const std::vector<int32_t>& build(const std::vector<int32_t>& window, int64_t doc, label_regions& regions) {
    run_.clear();
    regions = {};
    if (mix_.answer) {
      build_answer(window, doc, regions);
    } else {
      const std::vector<int32_t>& tokens = chat_.wrap(window, doc, ctx_, buffer_);
      run_.assign(tokens.begin(), tokens.end());
      regions.n_context = static_cast<int>(run_.size());
    }
    if (mix_.reconstruct) {
      const int n_context = regions.n_context;
      run_.insert(run_.end(), instruction_.begin(), instruction_.end());
      regions.copy_begin = static_cast<int>(run_.size());
      buffer_.assign(run_.begin(), run_.begin() + n_context);
      run_.insert(run_.end(), buffer_.begin(), buffer_.end());
      regions.copy_end = static_cast<int>(run_.size());
    }
    return run_;
  }

 private:
  void build_answer(const std::vector<int32_t>& window, int64_t doc, label_regions& regions) {
    const bool chat = chat_.chosen(doc);
    const int wrap = chat ? static_cast<int>(chat_.prefix().size() + chat_.suffix().size()) : 0;
    int keep = std::min(static_cast<int>(window.size()), std::max(16, ctx_ - wrap));
    for (int attempt = 0; attempt < 8; ++attempt) {
      const std::string text = vocab_.decode(std::span<const int32_t>(window.data(), static_cast<size_t>(keep)));
      const answer_document d = make_answer_document(text, splitmix64(seed_ ^ 0x616e73776572ull) ^ static_cast<uint64_t>(doc));
      // The context ends before the question: the question's tokens query too (they find the
      // facts' keys, the answer's tokens their values), and they are not labelled.
      const std::vector<int32_t> context = vocab_.encode(d.context + "\n\n", false);
      const std::vector<int32_t> question = vocab_.encode(chat ? d.question : d.question + "\n", false);
      const std::vector<int32_t> answer = vocab_.encode(d.answer, false);
      run_.clear();
      if (chat) run_ = chat_.prefix();
      run_.insert(run_.end(), context.begin(), context.end());
      const int n_context = static_cast<int>(run_.size());
      run_.insert(run_.end(), question.begin(), question.end());
      if (chat) run_.insert(run_.end(), chat_.suffix().begin(), chat_.suffix().end());
      const int excess = static_cast<int>(run_.size() + answer.size()) - ctx_;
      if (excess > 0) {
        if (keep <= 16) break;
        keep = std::max(16, keep - excess - 16);
        continue;
      }
      regions.n_context = n_context;
      regions.answer_begin = n_context;
      run_.insert(run_.end(), answer.begin(), answer.end());
      regions.answer_end = static_cast<int>(run_.size());
      return;
    }
    fail("collect: the facts, question and answer of answer document {} do not fit --ctx {}", doc, ctx_);
  }

  const tokenizer& vocab_;
  const chat_wrapper& chat_;
  label_mix mix_;
  int ctx_;
  uint64_t seed_;
  std::vector<int32_t> instruction_;
  std::vector<int32_t> run_, buffer_;
};

std::string shard_name(size_t index) { return fmt::format("shard-{:05d}.bin", index); }

bool is_our_file(const std::string& name) {
  return name == "manifest.json.tmp" || (name.rfind("shard-", 0) == 0 &&
                                         (name.ends_with(".bin") || name.ends_with(".bin.tmp")));
}

void validate(const model_config& c, const collect_options& o) {
  const label_params& p = o.label;
  if (!(p.tau > 0.0f && p.tau <= 1.0f)) fail("--tau must be in (0, 1], not {}", p.tau);
  if (p.sinks < 0 || p.window < 0 || p.horizon < 1) fail("--sinks and --window must be >= 0 and --horizon >= 1");
  if (p.max_bucket < 0 || p.max_bucket > 255) fail("max_bucket must be in [0, 255]");
  if (!(o.chat_share >= 0.0f && o.chat_share <= 1.0f)) fail("--chat-share must be in [0, 1], not {}", o.chat_share);
  if (p.key_kind != "pre-rope" && p.key_kind != "post-rope") fail("--key must be pre-rope or post-rope, not '{}'", p.key_kind);
  if (o.ctx < p.window + 64) fail("--ctx {} is too short for --window {}: documents need at least window + 64 tokens", o.ctx, p.window);
  if (o.ctx > c.n_ctx_train) fail("--ctx {} exceeds the model's context length {}", o.ctx, c.n_ctx_train);
  if (!(o.negative_keep >= 0.0f && o.negative_keep <= 1.0f)) fail("--negative-keep must be in [0, 1], not {}", o.negative_keep);
  if (o.n_batch < 1 || o.shard_docs < 1) fail("batch size and documents per shard must be >= 1");
  if (o.out_dir.empty()) fail("no output directory given");
  const label_mix mix = label_mix::of(o.label_sources);
  if (mix.reconstruct && 2 * o.ctx + 16 > c.n_ctx_train) {
    fail("--labels reconstruct runs each document twice: 2 x --ctx {} exceeds the model's context length {}", o.ctx,
         c.n_ctx_train);
  }
}

// Every way an existing dataset can disagree with this run; empty when it may be resumed.
std::vector<std::string> differences(const dataset_manifest& a, const dataset_manifest& b) {
  std::vector<std::string> out;
  auto check = [&](const char* name, const auto& x, const auto& y) {
    if (x != y) out.push_back(fmt::format("{} (dataset: {}, now: {})", name, x, y));
  };
  check("model_name", a.model_name, b.model_name);
  check("model_arch", a.model_arch, b.model_arch);
  check("model_fingerprint", a.model_fingerprint, b.model_fingerprint);
  check("n_layer", a.n_layer, b.n_layer);
  check("n_head", a.n_head, b.n_head);
  check("n_kv_head", a.n_kv_head, b.n_kv_head);
  check("d_head", a.d_head, b.d_head);
  check("sinks", a.label.sinks, b.label.sinks);
  check("window", a.label.window, b.label.window);
  check("tau", a.label.tau, b.label.tau);
  check("horizon", a.label.horizon, b.label.horizon);
  check("max_bucket", a.label.max_bucket, b.label.max_bucket);
  check("key", a.label.key_kind, b.label.key_kind);
  check("negative_keep", a.negative_keep, b.negative_keep);
  check("seed", a.seed, b.seed);
  check("ctx", a.ctx, b.ctx);
  check("min_doc_tokens", a.min_doc_tokens, b.min_doc_tokens);
  check("batch", a.n_batch, b.n_batch);
  check("chat_share", a.chat_share, b.chat_share);
  check("label_sources", fmt::format("{}", fmt::join(a.label_sources, ",")),
        fmt::format("{}", fmt::join(b.label_sources, ",")));
  if (a.corpus_files != b.corpus_files) {  // the order counts too (--seed, --no-shuffle)
    out.push_back(fmt::format("corpus ({} files in the dataset, {} now{})", a.corpus_files.size(), b.corpus_files.size(),
                              a.corpus_files.size() == b.corpus_files.size() ? ", names differ" : ""));
  }
  return out;
}

// Opens out_dir: a fresh manifest, or the existing one when the run may resume it. Removes what
// a killed run left behind (temporary files, shards renamed but never listed in the manifest).
dataset_manifest open_dataset(const collect_options& o, const dataset_manifest& fresh) {
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) fail("cannot create output directory {}: {}", o.out_dir, ec.message());
  dataset_manifest m = fresh;
  if (fs::exists(o.out_dir + "/manifest.json")) {
    dataset_manifest old = read_manifest(o.out_dir);
    const std::vector<std::string> diff = differences(old, fresh);
    if (!diff.empty()) {
      std::string list;
      for (const std::string& d : diff) list += "\n  " + d;
      fail("{} holds a dataset collected with other parameters; refusing to resume. Use another --out or "
           "the same parameters. Differences:{}", o.out_dir, list);
    }
    if (old.n_docs > 0 && static_cast<int64_t>(old.docs.size()) != old.n_docs) {
      fail("{}: the manifest does not list its documents; cannot resume", o.out_dir);
    }
    int64_t next_doc = 0;
    for (const std::string& name : old.shards) {
      const shard_header h = read_shard_header(o.out_dir + "/" + name);
      if (h.first_doc != next_doc || h.n_heads != old.n_heads() || h.d_head != old.d_head) {
        fail("{}: shard {} does not continue the dataset; cannot resume", o.out_dir, name);
      }
      next_doc += h.n_docs;
    }
    if (next_doc != old.n_docs) fail("{}: the shards hold {} documents, the manifest {}", o.out_dir, next_doc, old.n_docs);
    old.shard_docs = o.shard_docs;
    m = std::move(old);
  }
  for (const auto& entry : fs::directory_iterator(o.out_dir)) {
    const std::string name = entry.path().filename().string();
    if (is_our_file(name) && std::find(m.shards.begin(), m.shards.end(), name) == m.shards.end()) {
      fs::remove(entry.path(), ec);
    }
  }
  return m;
}

// Examples and counts of the documents not yet written to a shard.
struct shard_buffer {
  std::vector<head_examples> heads;  // [n_heads]
  std::vector<int64_t> n_pos, n_neg; // [n_heads]
  std::vector<document_info> docs;
  int64_t n_tokens = 0;

  explicit shard_buffer(int n_heads) { reset(n_heads); }
  void reset(int n_heads) {
    heads.assign(n_heads, {});
    n_pos.assign(n_heads, 0);
    n_neg.assign(n_heads, 0);
    docs.clear();
    n_tokens = 0;
  }
};

// Appends one labelled document to the buffer.
void emit(const labeler& lab, const label_mix& mix, int64_t doc, const collect_options& o, shard_buffer& buf) {
  const label_range r = mix.range(lab);
  const int d = lab.d_head();
  for (int head = 0; head < lab.n_heads(); ++head) {
    head_examples& e = buf.heads[head];
    for (int j = r.first; j < r.end; ++j) {
      const float score = mix.score(lab, head, j);
      const bool y = score >= o.label.tau;
      ++(y ? buf.n_pos : buf.n_neg)[head];
      if (!y && !keep_negative(o.seed, doc, head, j, o.negative_keep)) continue;
      const uint16_t* k = lab.key(head, j);
      e.keys.insert(e.keys.end(), k, k + d);
      e.label.push_back(y ? 1 : 0);
      e.bucket.push_back(static_cast<uint8_t>(lab.bucket(head, j)));
      e.pos.push_back(j);
      e.doc.push_back(static_cast<int32_t>(doc));
      e.score.push_back(score);
    }
  }
}

// {min, median, max} over heads of n_pos / n_labelled.
ojson head_rate_stats(const std::vector<int64_t>& n_pos, const std::vector<int64_t>& n_labelled) {
  std::vector<double> rates;
  for (size_t h = 0; h < n_pos.size(); ++h) rates.push_back(n_labelled[h] > 0 ? static_cast<double>(n_pos[h]) / n_labelled[h] : 0.0);
  if (rates.empty()) return {{"min", 0.0}, {"median", 0.0}, {"max", 0.0}};
  std::sort(rates.begin(), rates.end());
  const size_t n = rates.size();
  const double median = n % 2 ? rates[n / 2] : 0.5 * (rates[n / 2 - 1] + rates[n / 2]);
  return {{"min", rates.front()}, {"median", median}, {"max", rates.back()}};
}

}  // namespace

bool keep_negative(uint64_t seed, int64_t doc, int head, int pos, float keep) {
  if (keep >= 1.0f) return true;
  const uint64_t h = splitmix64(splitmix64(splitmix64(seed) ^ static_cast<uint64_t>(doc)) ^
                                (static_cast<uint64_t>(head) << 32 | static_cast<uint32_t>(pos)));
  return static_cast<double>(h >> 11) * 0x1.0p-53 < keep;
}

std::string model_fingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read model file {}", path);
  const int64_t size = static_cast<int64_t>(fs::file_size(path));
  constexpr int64_t span = 1 << 20;
  std::string buf;
  uint64_t h = 0xcbf29ce484222325ull;
  for (int64_t start : {int64_t{0}, std::max<int64_t>(0, size - span)}) {
    buf.resize(static_cast<size_t>(std::min(span, size - start)));
    in.seekg(start);
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    for (unsigned char c : buf) h = (h ^ c) * 0x100000001b3ull;
  }
  return fmt::format("{}:{:016x}", size, h);
}

ojson dataset_summary(const std::string& dir, const dataset_manifest& m) {
  int64_t n_stored = 0, bytes = 0;
  for (int64_t n : m.n_stored) n_stored += n;
  std::error_code ec;
  for (const std::string& s : m.shards) bytes += static_cast<int64_t>(fs::file_size(dir + "/" + s, ec));
  std::vector<int64_t> n_labelled(m.n_heads());
  for (int h = 0; h < m.n_heads(); ++h) n_labelled[h] = m.n_pos[h] + m.n_neg[h];
  return {
      {"out", dir},
      {"n_docs", m.n_docs},
      {"n_tokens", m.n_tokens},
      {"n_labelled", m.n_labelled()},
      {"positive_rate", m.positive_rate()},
      {"head_positive_rate", head_rate_stats(m.n_pos, n_labelled)},
      {"n_stored", n_stored},
      {"n_shards", m.shards.size()},
      {"bytes", bytes},
  };
}

ojson collect(const model& mdl, const collect_options& o, const collect_progress_fn& progress) {
  const model_config& c = mdl.config();
  validate(c, o);
  corpus_listing corpus = list_corpus(o.corpus, o.extensions);
  if (o.shuffle) shuffle_files(corpus, o.seed);

  dataset_manifest fresh;
  fresh.model_name = c.name;
  fresh.model_arch = c.arch;
  fresh.model_fingerprint = model_fingerprint(o.model_path);
  fresh.n_layer = c.n_layer;
  fresh.n_head = c.n_head;
  fresh.n_kv_head = c.n_kv_head;
  fresh.d_head = c.d_head;
  fresh.label = o.label;
  fresh.negative_keep = o.negative_keep;
  fresh.seed = o.seed;
  fresh.ctx = o.ctx;
  fresh.min_doc_tokens = o.label.window + 64;
  fresh.n_batch = o.n_batch;
  fresh.chat_share = o.chat_share;
  fresh.label_sources = o.label_sources;
  fresh.shard_docs = o.shard_docs;
  fresh.corpus_files = corpus.files;
  fresh.n_pos.assign(fresh.n_heads(), 0);
  fresh.n_neg.assign(fresh.n_heads(), 0);
  fresh.n_stored.assign(fresh.n_heads(), 0);
  dataset_manifest man = open_dataset(o, fresh);
  const int64_t resumed_docs = man.n_docs;

  corpus_reader reader(corpus, mdl.vocab(), o.ctx, man.min_doc_tokens);
  if (!man.docs.empty()) reader.seek(man.docs.back().file, man.docs.back().offset + man.docs.back().n_tokens);

  const label_mix mix = label_mix::of(o.label_sources);
  const chat_wrapper chat(mdl.vocab(), o.chat_share, o.seed);
  run_builder builder(mdl.vocab(), chat, mix, o.ctx, o.seed);
  session s(mdl, {.n_ctx = builder.max_tokens(), .n_batch = o.n_batch});
  labeler lab(c.n_layer, c.n_head, c.n_kv_head, c.d_head, o.label);
  s.set_observer(&lab);
  const int n_heads = man.n_heads();
  shard_buffer buf(n_heads);
  std::vector<std::vector<int64_t>> sweep_pos(o.tau_sweep.size(), std::vector<int64_t>(n_heads, 0));  // [n_tau][n_heads]
  std::vector<int64_t> run_labelled(n_heads, 0);
  // This run's positives per source at tau: [future, reconstruct, answer].
  int64_t source_pos[3] = {0, 0, 0}, source_labelled = 0;
  int64_t run_docs = 0, run_tokens = 0;
  const auto start = std::chrono::steady_clock::now();

  auto flush = [&] {
    if (buf.docs.empty()) return;
    const std::string name = shard_name(man.shards.size());
    write_shard(o.out_dir + "/" + name, buf.heads, man.d_head, man.n_docs, static_cast<int64_t>(buf.docs.size()));
    man.shards.push_back(name);
    man.n_docs += static_cast<int64_t>(buf.docs.size());
    man.n_tokens += buf.n_tokens;
    man.docs.insert(man.docs.end(), buf.docs.begin(), buf.docs.end());
    for (int h = 0; h < n_heads; ++h) {
      man.n_pos[h] += buf.n_pos[h];
      man.n_neg[h] += buf.n_neg[h];
      man.n_stored[h] += static_cast<int64_t>(buf.heads[h].size());
    }
    write_manifest(o.out_dir, man);
    buf.reset(n_heads);
  };

  corpus_document doc;
  label_regions regions;
  while (true) {
    const int64_t n_docs = man.n_docs + static_cast<int64_t>(buf.docs.size());
    const int64_t n_tokens = man.n_tokens + buf.n_tokens;
    if ((o.max_docs > 0 && n_docs >= o.max_docs) || (o.max_tokens > 0 && n_tokens >= o.max_tokens)) break;
    if (!reader.next(doc)) break;

    const int window_tokens = static_cast<int>(doc.tokens.size());
    const std::vector<int32_t>& tokens = builder.build(doc.tokens, n_docs, regions);
    const int n_run = static_cast<int>(tokens.size());
    const int T = regions.n_context;
    s.reset();
    lab.begin(n_run, regions);
    for (int i = 0; i < n_run; i += o.n_batch) {
      const int n = std::min(o.n_batch, n_run - i);
      s.step(std::span<const int32_t>(tokens.data() + i, n), logits_mode::none);
    }
    if (!lab.complete()) fail("collect: the labeler missed part of document {}", n_docs);
    emit(lab, mix, n_docs, o, buf);
    {
      const label_range r = mix.range(lab);
      for (int h = 0; h < n_heads; ++h) {
        for (int j = r.first; j < r.end; ++j) {
          source_pos[0] += mix.future && lab.max_future(h, j) >= o.label.tau;
          source_pos[1] += mix.reconstruct && lab.max_copy(h, j) >= o.label.tau;
          source_pos[2] += mix.answer && lab.max_answer(h, j) >= o.label.tau;
        }
      }
      source_labelled += static_cast<int64_t>(r.size()) * n_heads;
    }
    buf.docs.push_back({doc.file, doc.offset, window_tokens});  // resume seeks past the window
    buf.n_tokens += T;
    ++run_docs;
    run_tokens += T;

    if (!o.tau_sweep.empty()) {
      const label_range r = mix.range(lab);
      for (int h = 0; h < n_heads; ++h) {
        for (int j = r.first; j < r.end; ++j)
          for (size_t k = 0; k < o.tau_sweep.size(); ++k) sweep_pos[k][h] += mix.score(lab, h, j) >= o.tau_sweep[k];
        run_labelled[h] += r.size();
      }
    }
    if (static_cast<int>(buf.docs.size()) >= o.shard_docs) flush();

    if (progress) {
      collect_progress p;
      p.n_docs = n_docs + 1;
      p.n_tokens = n_tokens + T;
      p.run_docs = run_docs;
      p.run_tokens = run_tokens;
      p.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      p.tok_s = run_tokens / std::max(p.seconds, 1e-9);
      int64_t left = reader.tokens_left_estimate();
      if (o.max_tokens > 0) left = std::min<int64_t>(left < 0 ? INT64_MAX : left, std::max<int64_t>(0, o.max_tokens - p.n_tokens));
      if (o.max_docs > 0) {
        const int64_t by_docs = (o.max_docs - p.n_docs) * (p.n_tokens / p.n_docs);
        left = std::min<int64_t>(left < 0 ? INT64_MAX : left, std::max<int64_t>(0, by_docs));
      }
      p.eta_s = left < 0 ? -1.0 : left / std::max(p.tok_s, 1e-9);
      int64_t pos = 0, all = 0;
      for (int h = 0; h < n_heads; ++h) {
        pos += man.n_pos[h] + buf.n_pos[h];
        all += man.n_pos[h] + buf.n_pos[h] + man.n_neg[h] + buf.n_neg[h];
      }
      p.positive_rate = all > 0 ? static_cast<double>(pos) / all : 0.0;
      progress(p);
    }
  }
  flush();
  if (man.n_docs == 0) {
    fail("no document of the corpus has the {} tokens a labelled document needs (--window {} + 64)", man.min_doc_tokens,
         o.label.window);
  }

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ojson summary = dataset_summary(o.out_dir, man);
  summary["run"] = {{"docs", run_docs},
                    {"tokens", run_tokens},
                    {"seconds", seconds},
                    {"tok_s", run_tokens / std::max(seconds, 1e-9)},
                    {"resumed_docs", resumed_docs}};
  summary["label"] = man.to_json()["label"];
  summary["negative_keep"] = man.to_json()["negative_keep"];
  summary["label_sources"] = man.label_sources;
  {
    ojson by_source = ojson::object();
    const bool on[3] = {mix.future, mix.reconstruct, mix.answer};
    for (int k = 0; k < 3; ++k) {
      if (on[k]) by_source[label_source_names()[k]] = source_labelled ? double(source_pos[k]) / source_labelled : 0.0;
    }
    summary["run"]["positive_rate_by_source"] = by_source;
  }
  summary["corpus_files"] = corpus.files.size();
  summary["skipped_files"] = corpus.skipped.size();
  if (!o.tau_sweep.empty()) {
    ojson sweep = ojson::object();
    int64_t all = 0;
    for (int64_t n : run_labelled) all += n;
    for (size_t k = 0; k < o.tau_sweep.size(); ++k) {
      int64_t pos = 0;
      for (int64_t n : sweep_pos[k]) pos += n;
      ojson entry = {{"positive_rate", all > 0 ? static_cast<double>(pos) / all : 0.0}};
      entry["head_positive_rate"] = head_rate_stats(sweep_pos[k], run_labelled);
      sweep[fmt::format("{:g}", o.tau_sweep[k])] = entry;
    }
    summary["positive_rate_by_tau"] = sweep;
  }
  return summary;
}

}  // namespace kvgate
