// kvgate train: a dataset directory (kvgate collect) -> a gate bank (.gguf) and a loss CSV.
// The validation split holds out whole groups of examples, never single tokens: whole corpus
// files when the manifest records at least two, else whole documents, else (one document only)
// the document's last positions. Groups are shuffled with --seed and held out while they fit in
// --val-fraction of the examples.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "common/error.h"
#include "common/files.h"
#include "data/dataset.h"
#include "gate/gate_bank.h"
#include "gate/trainer.h"

namespace kvgate::cli {

namespace {

struct split {
  std::string by;                                    // "file" | "document" | "position"
  std::vector<std::vector<int64_t>> train, val;      // [H][rows]
  int64_t n_groups = 0, n_val_groups = 0;
};

split make_split(const dataset& data, double fraction, uint64_t seed) {
  const dataset_manifest& m = data.manifest;
  const int H = static_cast<int>(data.heads.size());
  split s;
  s.train.resize(H);
  s.val.resize(H);

  // Examples per document over all heads.
  std::map<int64_t, int64_t> doc_examples;
  for (const head_examples& e : data.heads) {
    for (int32_t d : e.doc) ++doc_examples[d];
  }
  std::map<int64_t, int64_t> file_examples;
  const bool docs_known = static_cast<int64_t>(m.docs.size()) == m.n_docs && m.n_docs > 0;
  if (docs_known) {
    for (const auto& [doc, n] : doc_examples) {
      if (doc < 0 || doc >= m.n_docs) fail("dataset: document index {} outside [0, {})", doc, m.n_docs);
      file_examples[m.docs[doc].file] += n;
    }
  }
  std::map<int64_t, int64_t> group_examples;
  std::function<int64_t(int32_t)> group_of;
  if (file_examples.size() >= 2) {
    s.by = "file";
    group_examples = file_examples;
    group_of = [&m](int32_t doc) { return static_cast<int64_t>(m.docs[doc].file); };
  } else if (doc_examples.size() >= 2) {
    s.by = "document";
    group_examples = doc_examples;
    group_of = [](int32_t doc) { return static_cast<int64_t>(doc); };
  } else {
    s.by = "position";
  }

  if (s.by == "position") {
    // One document: hold out its last positions (the same cut for every head).
    std::vector<int32_t> pos;
    for (const head_examples& e : data.heads) pos.insert(pos.end(), e.pos.begin(), e.pos.end());
    if (pos.empty()) fail("dataset holds no examples");
    std::sort(pos.begin(), pos.end());
    const int32_t cut = pos[std::min(pos.size() - 1, static_cast<size_t>((1.0 - fraction) * pos.size()))];
    for (int h = 0; h < H; ++h) {
      for (size_t i = 0; i < data.heads[h].size(); ++i) {
        (data.heads[h].pos[i] >= cut ? s.val : s.train)[h].push_back(static_cast<int64_t>(i));
      }
    }
    s.n_groups = 1;
    return s;
  }

  std::vector<int64_t> groups;
  int64_t total = 0;
  for (const auto& [g, n] : group_examples) {
    groups.push_back(g);
    total += n;
  }
  // Fisher-Yates with mt19937_64, whose output the standard fixes: the same split everywhere.
  std::mt19937_64 gen(seed);
  for (size_t i = groups.size() - 1; i > 0; --i) std::swap(groups[i], groups[gen() % (i + 1)]);
  // Greedy fill in shuffled order: a group joins the held-out set when it does not overshoot the
  // target, so one big file cannot take most of the data; at least the smallest group is held out.
  std::map<int64_t, bool> held_out;
  const double target = fraction * static_cast<double>(total);
  int64_t n_val = 0;
  for (int64_t g : groups) {
    if (static_cast<double>(n_val + group_examples[g]) <= target) {
      held_out[g] = true;
      n_val += group_examples[g];
    }
  }
  if (held_out.empty()) {
    held_out[*std::min_element(groups.begin(), groups.end(), [&](int64_t a, int64_t b) {
      return group_examples[a] < group_examples[b];
    })] = true;
  }
  s.n_groups = static_cast<int64_t>(groups.size());
  s.n_val_groups = static_cast<int64_t>(held_out.size());
  for (int h = 0; h < H; ++h) {
    const head_examples& e = data.heads[h];
    for (size_t i = 0; i < e.size(); ++i) {
      (held_out.count(group_of(e.doc[i])) ? s.val : s.train)[h].push_back(static_cast<int64_t>(i));
    }
  }
  return s;
}

// gates.gguf -> gates.loss.csv (cmd_eval looks there, and at gates.gguf.loss.csv).
std::string default_loss_csv(const std::string& out) {
  std::filesystem::path p(out);
  if (p.extension() == ".gguf") return p.replace_extension(".loss.csv").string();
  return out + ".loss.csv";
}

double median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

void register_train(CLI::App& app) {
  auto* sub = app.add_subcommand("train", "train every head's gate on a dataset (kvgate collect)");
  struct opts {
    std::string data, out, objective = "binary", loss_csv, target = "binary";
    gate_train_options train;
    double val_fraction = 0.2;
    int threads = 0;
  };
  auto o = std::make_shared<opts>();
  sub->add_option("--data", o->data, "dataset directory")->required();
  sub->add_option("--out,-o", o->out, "gate bank to write (.gguf)")->required();
  sub->add_option("--objective", o->objective, "binary (attended after the window) or lifetime (bucket)")
      ->check(CLI::IsMember({"binary", "lifetime"}));
  sub->add_option("--target", o->target,
                  "binary objective's target: binary (the 0/1 label) or soft (BCE on the soft score the label "
                  "sources stored)")
      ->check(CLI::IsMember({"binary", "soft"}));
  sub->add_option("--epochs", o->train.max_epochs, "maximum epochs")->check(CLI::Range(1, 100000));
  sub->add_option("--batch", o->train.batch, "examples per head per step")->check(CLI::Range(2, 1 << 16));
  sub->add_option("--lr", o->train.lr, "Adam learning rate")->check(CLI::PositiveNumber);
  sub->add_option("--weight-decay", o->train.weight_decay, "decoupled weight decay on the weights")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--patience", o->train.patience, "epochs without validation improvement before a head stops")
      ->check(CLI::Range(1, 100000));
  sub->add_option("--steps-per-epoch", o->train.steps_per_epoch,
                  "steps between validations (default: mean training examples per head / batch)")
      ->check(CLI::Range(0, 1 << 30));
  sub->add_option("--val-fraction", o->val_fraction, "share of examples held out (whole files or documents)")
      ->check(CLI::Range(0.01, 0.9));
  sub->add_flag("!--no-calibrate", o->train.calibrate,
                "keep raw logits (default: Platt-scale each binary head on its validation split)");
  sub->add_option("--seed", o->train.seed, "seed of the split, the initialization and the batches");
  sub->add_option("--threads,-t", o->threads, "compute threads (default: all cores)")->check(CLI::Range(0, 1024));
  sub->add_option("--loss-csv", o->loss_csv, "loss table (default: the --out path with .loss.csv)");

  sub->callback([o] {
    stopwatch clock;
    apply_threads(model_options{"", o->threads});
    const std::string loss_csv = o->loss_csv.empty() ? default_loss_csv(o->out) : o->loss_csv;
    const dataset data = dataset::load(o->data);
    const dataset_manifest& m = data.manifest;
    const int H = m.n_layer * m.n_kv_head, d = m.d_head;
    if (H <= 0 || d <= 0 || static_cast<int>(data.heads.size()) != H) {
      fail("{}: manifest says {} x {} heads, d_head {}, the shards hold {} heads", o->data, m.n_layer,
           m.n_kv_head, d, data.heads.size());
    }
    int64_t n_examples = 0;
    for (int h = 0; h < H; ++h) {
      const head_examples& e = data.heads[h];
      if (e.keys.size() != e.size() * d || e.bucket.size() != e.size() || e.doc.size() != e.size() ||
          e.pos.size() != e.size()) {
        fail("{}: head {} has arrays of inconsistent lengths", o->data, h);
      }
      n_examples += static_cast<int64_t>(e.size());
    }
    std::fprintf(stderr, "train: %s: %lld examples over %d heads (%d layers x %d kv heads, d_head %d), loaded in %.1f s\n",
                 o->data.c_str(), static_cast<long long>(n_examples), H, m.n_layer, m.n_kv_head, d, clock.seconds());

    const split sp = make_split(data, o->val_fraction, o->train.seed);
    std::vector<gate_examples> train(H), val(H);
    int64_t n_train = 0, n_val = 0;
    for (int h = 0; h < H; ++h) {
      const head_examples& e = data.heads[h];
      gate_examples base;
      base.keys_f16 = e.keys.data();
      base.label = e.label.data();
      base.bucket = e.bucket.data();
      base.score = e.score.size() == e.size() ? e.score.data() : nullptr;
      base.n = static_cast<int64_t>(e.size());
      train[h] = val[h] = base;
      train[h].rows = sp.train[h].data();
      train[h].n_rows = static_cast<int64_t>(sp.train[h].size());
      val[h].rows = sp.val[h].data();
      val[h].n_rows = static_cast<int64_t>(sp.val[h].size());
      if (train[h].n_rows == 0) fail("head {} (layer {}, kv head {}) has no training examples", h, h / m.n_kv_head, h % m.n_kv_head);
      n_train += train[h].n_rows;
      n_val += val[h].n_rows;
    }
    const std::string held_out = sp.by == "position"
        ? "one document: its last positions held out"
        : fmt::format("{} of {} {}s held out", sp.n_val_groups, sp.n_groups, sp.by);
    std::fprintf(stderr, "train: validation split by %s (%s): %lld training / %lld validation examples\n",
                 sp.by.c_str(), held_out.c_str(), static_cast<long long>(n_train), static_cast<long long>(n_val));

    gate_meta meta;
    meta.model_name = m.model_name;
    meta.model_arch = m.model_arch;
    meta.n_layer = m.n_layer;
    meta.n_kv_head = m.n_kv_head;
    meta.d_head = d;
    meta.objective = o->objective;
    meta.key_kind = m.label.key_kind;
    meta.sinks = m.label.sinks;
    meta.window = m.label.window;
    meta.horizon = m.label.horizon;
    meta.max_bucket = m.label.max_bucket;
    meta.tau = m.label.tau;
    meta.threshold = 0.5f;
    const bool lifetime = o->objective == "lifetime";
    gate_bank bank(meta, lifetime ? m.label.max_bucket + 1 : 1);

    gate_train_options to = o->train;
    to.threads = o->threads;
    if (o->target == "soft" && o->objective != "binary") fail("--target soft needs --objective binary");
    to.soft_target = o->target == "soft";
    const gate_train_result r = train_gates(bank, train, val, to, [](const gate_epoch_report& e) {
      double tr = 0, va = 0;
      int n_va = 0;
      std::vector<double> aucs;
      for (size_t h = 0; h < e.train_loss.size(); ++h) {
        tr += e.train_loss[h] / e.train_loss.size();
        if (!std::isnan(e.val_loss[h])) va += e.val_loss[h], ++n_va;
        if (!std::isnan(e.val_auc[h])) aucs.push_back(e.val_auc[h]);
      }
      const double eta = (e.max_epochs - e.epoch) * e.epoch_seconds;
      std::fprintf(stderr, "train: epoch %d/%d: loss train %.4f val %.4f, val AUC median %.4f | %d improved, "
                   "%d active | %.0f examples/s, %.1f s/epoch, ETA <= %.0f s\n",
                   e.epoch, e.max_epochs, tr, n_va ? va / n_va : std::nan(""), median(aucs), e.n_improved,
                   e.n_active, e.examples_per_s, e.epoch_seconds, eta);
    });

    // Metrics into the gate file; the loss table beside it.
    nlohmann::ordered_json heads = nlohmann::ordered_json::array();
    std::vector<double> aucs, losses;
    for (int h = 0; h < H; ++h) {
      const gate_head_result& hr = r.heads[h];
      nlohmann::ordered_json j = {{"layer", h / m.n_kv_head}, {"head", h % m.n_kv_head},
                                  {"best_epoch", hr.best_epoch}, {"val_loss", hr.val_loss},
                                  {"val_auc", hr.val_auc}, {"n_train", hr.n_train},
                                  {"n_train_pos", hr.n_train_pos}, {"n_val", hr.n_val},
                                  {"n_val_pos", hr.n_val_pos}};
      if (lifetime) j["val_accuracy"] = hr.val_accuracy;
      // Only a fitted scaling: a pooled budget refuses gates whose heads lack one.
      else if (hr.calibrated) j["calibration"] = {hr.calib_scale, hr.calib_bias};
      heads.push_back(j);
      if (!std::isnan(hr.val_auc)) aucs.push_back(hr.val_auc);
      if (!std::isnan(hr.val_loss)) losses.push_back(hr.val_loss);
    }
    const double mean_loss = losses.empty() ? std::nan("") : std::accumulate(losses.begin(), losses.end(), 0.0) / losses.size();
    nlohmann::ordered_json summary = {
        {"objective", o->objective},
        {"target", o->target},
        {"label_sources", m.label_sources},
        {"median_val_auc", median(aucs)},
        {"min_val_auc", aucs.empty() ? std::nan("") : *std::min_element(aucs.begin(), aucs.end())},
        {"mean_val_auc", aucs.empty() ? std::nan("") : std::accumulate(aucs.begin(), aucs.end(), 0.0) / aucs.size()},
        {"mean_val_loss", mean_loss},
        {"val_loss_kind", lifetime ? "softmax cross-entropy, mean over buckets present"
                                   : "BCE, mean of the positives' and the negatives' mean (balanced)"},
        {"epochs", static_cast<int>(r.epochs.size())},
        {"stopped_early", r.stopped_early},
        {"steps", r.n_steps},
        {"seconds", r.seconds},
        {"examples_per_s", r.examples_per_s},
        {"n_train", n_train},
        {"n_val", n_val},
    };
    nlohmann::ordered_json metrics = {
        {"summary", summary},
        {"training", {{"dataset", o->data}, {"split_by", sp.by}, {"val_fraction", o->val_fraction},
                      {"n_groups", sp.n_groups}, {"n_val_groups", sp.n_val_groups},
                      {"max_epochs", to.max_epochs}, {"batch", to.batch}, {"lr", to.lr},
                      {"weight_decay", to.weight_decay}, {"patience", to.patience},
                      {"seed", to.seed}, {"sampling", lifetime ? "equal share per bucket present" : "50/50 per head"},
                      {"loss_csv", std::filesystem::path(loss_csv).filename().string()}}},
        {"heads", heads},
    };
    bank.set_metrics(nlohmann::json::parse(metrics.dump()));
    bank.save(o->out);

    std::string csv = "epoch,layer,head,train_loss,val_loss,val_auc\n";
    for (const gate_epoch_report& e : r.epochs) {
      for (int h = 0; h < H; ++h) {
        csv += fmt::format("{},{},{},{:.6g},{:.6g},{:.6g}\n", e.epoch, h / m.n_kv_head, h % m.n_kv_head,
                           e.train_loss[h], e.val_loss[h], e.val_auc[h]);
      }
    }
    write_file_atomically(loss_csv, csv);

    nlohmann::ordered_json line = summary;
    line["out"] = o->out;
    line["loss_csv"] = loss_csv;
    line["n_heads"] = H;
    line["split_by"] = sp.by;
    line["total_seconds"] = clock.seconds();
    std::printf("%s\n", line.dump().c_str());
  });
}

}  // namespace kvgate::cli
