#include "eval/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include <fmt/format.h>

#include "common/error.h"
#include "common/parallel.h"
#include "eval/plot_util.h"
#include "eval/plots.h"

namespace kvgate::eval {

namespace {

using nlohmann::json;

bool has_both_classes(const head_report& h) { return h.n_pos > 0 && h.n_neg > 0; }

// Median/min/mean/max over the heads that have both classes (AUC and ECE are undefined otherwise).
struct head_stats {
  double median = 0, min = 0, mean = 0, max = 0;
  int n = 0;
};

template <typename F>
head_stats stats_over(const std::vector<head_report>& heads, F value) {
  std::vector<double> v;
  for (const head_report& h : heads) {
    if (has_both_classes(h)) v.push_back(value(h));
  }
  head_stats s;
  if (v.empty()) return s;
  s.n = static_cast<int>(v.size());
  s.median = median(v);
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  for (double x : v) s.mean += x / v.size();
  return s;
}

json number_or_null(const head_report& h, double value) { return has_both_classes(h) ? json(value) : json(nullptr); }

json confusion_json(const confusion_matrix& c) {
  return {{"threshold", c.threshold}, {"tp", c.tp}, {"fp", c.fp}, {"tn", c.tn}, {"fn", c.fn},
          {"precision", c.precision()}, {"recall", c.recall()}, {"f1", c.f1()},
          {"keep_share", c.positive_share()}};
}

void validate(const eval_input& in) {
  if (in.gates.empty()) fail("eval: no gate scores to report");
  if (in.heads.empty()) fail("eval: the dataset has no heads");
  for (const head_scores& h : in.heads) {
    const size_t n = h.label.size();
    if (h.gates.size() != in.gates.size()) {
      fail("eval: head L{}H{} has {} gate score sets, expected {}", h.layer, h.head, h.gates.size(), in.gates.size());
    }
    bool ok = h.knorm.size() == n && h.position.size() == n;
    for (const auto& g : h.gates) ok = ok && g.size() == n;
    if (!ok) fail("eval: head L{}H{}: score and label counts differ", h.layer, h.head);
  }
}

head_report compute_head(const head_scores& in, float negative_keep, const std::vector<double>& thresholds,
                         const report_options& opt) {
  head_report h;
  h.layer = in.layer;
  h.head = in.head;
  h.extra = in.extra;
  for (uint8_t l : in.label) (l ? h.n_pos : h.n_neg) += 1;
  const std::vector<float> natural = natural_weights(in.label, negative_keep);  // [n]
  const std::vector<float> balanced = balanced_weights(in.label);               // [n]
  for (const std::vector<float>& probs : in.gates) {
    gate_head_metrics g;
    const roc_curve curve = roc(probs, in.label);  // AUC is the same under either class weighting
    g.auc = curve.auc;
    g.roc = thin_roc(curve.points, opt.roc_points);
    g.cal_balanced = calibrate(probs, in.label, balanced, opt.n_bins);
    g.cal_natural = calibrate(probs, in.label, natural, opt.n_bins);
    for (double t : thresholds) {
      g.confusion_natural.push_back(confusion_at(probs, in.label, static_cast<float>(t), natural));
      g.confusion_stored.push_back(confusion_at(probs, in.label, static_cast<float>(t)));
      g.confusion_natural.back().threshold = g.confusion_stored.back().threshold = t;
    }
    h.gates.push_back(std::move(g));
  }
  const roc_curve knorm = roc(in.knorm, in.label);
  h.knorm_auc = knorm.auc;
  h.knorm_roc = thin_roc(knorm.points, opt.roc_points);
  h.position_auc = auc(in.position, in.label);
  return h;
}

json build_json(const eval_report& r, const eval_input& in) {
  json gates = json::array();
  for (const gate_info& g : in.gates) {
    gates.push_back({{"name", g.name}, {"path", g.path}, {"objective", g.objective}, {"score", g.score},
                     {"meta", g.meta}});
  }

  json heads = json::array();
  for (const head_report& h : r.heads) {
    const gate_head_metrics& g = h.gates[0];
    json e = {{"layer", h.layer}, {"head", h.head},
              {"auc", number_or_null(h, g.auc)}, {"knorm_auc", number_or_null(h, h.knorm_auc)},
              {"position_auc", number_or_null(h, h.position_auc)},
              {"ece", number_or_null(h, g.cal_balanced.ece)}, {"ece_natural", number_or_null(h, g.cal_natural.ece)},
              {"n_pos", h.n_pos}, {"n_neg", h.n_neg}};
    json conf = json::array();
    for (const confusion_matrix& c : g.confusion_natural) conf.push_back(confusion_json(c));
    e["confusion"] = std::move(conf);
    for (size_t ig = 1; ig < h.gates.size(); ++ig) {
      const std::string& name = in.gates[ig].name;
      e[name + "_auc"] = number_or_null(h, h.gates[ig].auc);
      e[name + "_ece"] = number_or_null(h, h.gates[ig].cal_balanced.ece);
      e[name + "_ece_natural"] = number_or_null(h, h.gates[ig].cal_natural.ece);
    }
    for (const auto& [k, v] : h.extra.items()) e[k] = v;
    heads.push_back(std::move(e));
  }

  auto gate_summary = [&](size_t ig) {
    const head_stats a = stats_over(r.heads, [&](const head_report& h) { return h.gates[ig].auc; });
    const head_stats eb = stats_over(r.heads, [&](const head_report& h) { return h.gates[ig].cal_balanced.ece; });
    const head_stats en = stats_over(r.heads, [&](const head_report& h) { return h.gates[ig].cal_natural.ece; });
    int beats = 0;
    for (const head_report& h : r.heads) beats += has_both_classes(h) && h.gates[ig].auc > h.knorm_auc ? 1 : 0;
    json conf = json::array();
    for (size_t it = 0; it < r.thresholds.size(); ++it) {
      confusion_matrix total;
      total.threshold = r.thresholds[it];
      for (const head_report& h : r.heads) total += h.gates[ig].confusion_natural[it];
      conf.push_back(confusion_json(total));
    }
    return json{{"name", in.gates[ig].name}, {"median_auc", a.median}, {"min_auc", a.min}, {"mean_auc", a.mean},
                {"max_auc", a.max}, {"ece", eb.median}, {"ece_mean", eb.mean}, {"ece_max", eb.max},
                {"ece_natural", en.median}, {"ece_natural_mean", en.mean}, {"heads_beating_knorm", beats},
                {"confusion", conf}};
  };

  const head_stats kn = stats_over(r.heads, [](const head_report& h) { return h.knorm_auc; });
  const head_stats po = stats_over(r.heads, [](const head_report& h) { return h.position_auc; });
  const head_stats po_best = stats_over(r.heads, [](const head_report& h) {
    return std::max(h.position_auc, 1.0 - h.position_auc);
  });
  int64_t stored_pos = 0, stored_neg = 0;
  for (const head_report& h : r.heads) stored_pos += h.n_pos, stored_neg += h.n_neg;
  const int64_t all = in.n_pos_all + in.n_neg_all;
  // Without the manifest's counts, the natural rate is estimated from the stored examples.
  const double natural_rate = all > 0 ? static_cast<double>(in.n_pos_all) / all
                                      : stored_pos / (stored_pos + stored_neg / in.negative_keep + 1e-300);

  json summary = gate_summary(0);
  summary.erase("name");
  summary["ece_class_ratio"] = "balanced";
  summary["positive_rate"] = natural_rate;
  summary["positive_rate_stored"] = static_cast<double>(stored_pos) / std::max<int64_t>(1, stored_pos + stored_neg);
  summary["knorm_median_auc"] = kn.median;
  summary["knorm_min_auc"] = kn.min;
  summary["knorm_mean_auc"] = kn.mean;
  summary["position_median_auc"] = po.median;
  summary["position_mean_auc"] = po.mean;
  summary["position_median_auc_best_sign"] = po_best.median;
  summary["n_heads"] = static_cast<int>(r.heads.size());
  summary["n_heads_scored"] = kn.n;
  summary["n_pos"] = stored_pos;
  summary["n_neg"] = stored_neg;
  json compare = json::array();
  for (size_t ig = 1; ig < in.gates.size(); ++ig) compare.push_back(gate_summary(ig));
  summary["compare"] = std::move(compare);

  return {
      {"version", 1},
      {"model", in.model_name},
      {"data", in.data_path},
      {"label", in.label},
      {"negative_keep", in.negative_keep},
      {"gates", gates},
      {"baselines",
       {{"knorm", "-||k||: the smaller the key, the more likely kept (scored from the stored key alone)"},
        {"position", "-position in the document: earlier tokens are kept; later tokens compete with more keys "
                     "in every softmax and have a shorter future inside the document, so they are less "
                     "often positive. position_median_auc_best_sign is max(AUC, 1-AUC) per head"}}},
      {"class_ratio",
       {{"natural", "negatives weighted 1/negative_keep: the ratio of all labelled tokens"},
        {"balanced", "both classes the same total weight: the ratio the trainer's 50/50 batches see"},
        {"auc", "AUC is the same on both"},
        {"confusion", "weighted to the natural ratio"}}},
      {"thresholds", r.thresholds},
      {"warnings", in.warnings},
      {"summary", summary},
      {"heads", heads},
  };
}

std::string g6(double v) { return fmt::format("{:.6g}", v); }
std::string g10(double v) { return fmt::format("{:.10g}", v); }  // weighted counts: keep every digit

void write_csvs(const eval_report& r, const eval_input& in, const std::string& dir) {
  {
    auto out = open_out(dir + "/heads.csv");
    out << "layer,head,n_pos,n_neg,auc,knorm_auc,position_auc,auc_minus_knorm,ece,ece_natural";
    for (double t : r.thresholds) out << fmt::format(",precision@{0},recall@{0},f1@{0},keep_share@{0}", t);
    for (size_t ig = 1; ig < in.gates.size(); ++ig) {
      out << fmt::format(",{0}_auc,{0}_ece,{0}_ece_natural", in.gates[ig].name);
    }
    out << "\n";
    for (const head_report& h : r.heads) {
      const gate_head_metrics& g = h.gates[0];
      out << fmt::format("{},{},{},{},{},{},{},{},{},{}", h.layer, h.head, h.n_pos, h.n_neg, g6(g.auc),
                         g6(h.knorm_auc), g6(h.position_auc), g6(g.auc - h.knorm_auc), g6(g.cal_balanced.ece),
                         g6(g.cal_natural.ece));
      for (const confusion_matrix& c : g.confusion_natural) {
        out << fmt::format(",{},{},{},{}", g6(c.precision()), g6(c.recall()), g6(c.f1()), g6(c.positive_share()));
      }
      for (size_t ig = 1; ig < h.gates.size(); ++ig) {
        out << fmt::format(",{},{},{}", g6(h.gates[ig].auc), g6(h.gates[ig].cal_balanced.ece),
                           g6(h.gates[ig].cal_natural.ece));
      }
      out << "\n";
    }
  }
  {
    auto out = open_out(dir + "/roc.csv");
    out << "scorer,layer,head,fpr,tpr,threshold\n";
    auto rows = [&](const std::string& scorer, const head_report& h, const std::vector<roc_point>& pts) {
      for (const roc_point& p : pts) {
        out << fmt::format("{},{},{},{},{},{}\n", scorer, h.layer, h.head, g6(p.fpr), g6(p.tpr), g6(p.threshold));
      }
    };
    for (const head_report& h : r.heads) {
      for (size_t ig = 0; ig < h.gates.size(); ++ig) rows(in.gates[ig].name, h, h.gates[ig].roc);
      rows("knorm", h, h.knorm_roc);
    }
  }
  {
    auto out = open_out(dir + "/calibration.csv");
    out << "gate,layer,head,ratio,bin,lo,hi,count,weight,mean_pred,observed\n";
    for (const head_report& h : r.heads) {
      for (size_t ig = 0; ig < h.gates.size(); ++ig) {
        for (const auto& [ratio, cal] : {std::pair{"balanced", &h.gates[ig].cal_balanced},
                                         std::pair{"natural", &h.gates[ig].cal_natural}}) {
          for (size_t b = 0; b < cal->bins.size(); ++b) {
            const calibration_bin& bin = cal->bins[b];
            out << fmt::format("{},{},{},{},{},{},{},{},{},{},{}\n", in.gates[ig].name, h.layer, h.head, ratio, b,
                               g6(bin.lo), g6(bin.hi), bin.count, g10(bin.weight), g6(bin.mean_pred),
                               g6(bin.observed));
          }
        }
      }
    }
  }
  {
    // Per head, both the natural-ratio weights and the raw counts of stored examples; the sums
    // over heads are in confusion_total.csv.
    auto out = open_out(dir + "/confusion.csv");
    auto total = open_out(dir + "/confusion_total.csv");
    const char* header = "gate,layer,head,threshold,ratio,tp,fp,tn,fn,precision,recall,f1,keep_share\n";
    out << header;
    total << "gate,threshold,ratio,tp,fp,tn,fn,precision,recall,f1,keep_share\n";
    auto row = [](const confusion_matrix& c) {
      return fmt::format("{},{},{},{},{},{},{},{}", g10(c.tp), g10(c.fp), g10(c.tn), g10(c.fn), g6(c.precision()),
                         g6(c.recall()), g6(c.f1()), g6(c.positive_share()));
    };
    for (size_t ig = 0; ig < in.gates.size(); ++ig) {
      for (size_t it = 0; it < r.thresholds.size(); ++it) {
        confusion_matrix sum_nat, sum_raw;
        sum_nat.threshold = sum_raw.threshold = r.thresholds[it];
        for (const head_report& h : r.heads) {
          const confusion_matrix& nat = h.gates[ig].confusion_natural[it];
          const confusion_matrix& raw = h.gates[ig].confusion_stored[it];
          out << fmt::format("{},{},{},{},natural,{}\n", in.gates[ig].name, h.layer, h.head, nat.threshold, row(nat));
          out << fmt::format("{},{},{},{},stored,{}\n", in.gates[ig].name, h.layer, h.head, raw.threshold, row(raw));
          sum_nat += nat;
          sum_raw += raw;
        }
        total << fmt::format("{},{},natural,{}\n", in.gates[ig].name, sum_nat.threshold, row(sum_nat));
        total << fmt::format("{},{},stored,{}\n", in.gates[ig].name, sum_raw.threshold, row(sum_raw));
      }
    }
  }
}

}  // namespace

eval_report compute_report(const eval_input& in, const report_options& opt) {
  validate(in);
  if (!(in.negative_keep > 0.0f && in.negative_keep <= 1.0f)) fail("eval: negative_keep {} not in (0, 1]", in.negative_keep);
  if (opt.n_bins < 1 || opt.roc_points < 2) fail("eval: {} calibration bins, {} ROC points", opt.n_bins, opt.roc_points);
  eval_report r;
  std::vector<float> given = opt.thresholds;
  given.push_back(0.5f);
  given.push_back(0.1f);
  for (float t : given) {
    if (!(t >= 0.0f && t <= 1.0f)) fail("eval: threshold {} not in [0, 1]", t);
    // 0.3f is 0.30000001192...; the tables show the 0.3 that was typed.
    r.thresholds.push_back(std::stod(fmt::format("{}", t)));
  }
  std::sort(r.thresholds.begin(), r.thresholds.end(), std::greater<>());
  r.thresholds.erase(std::unique(r.thresholds.begin(), r.thresholds.end()), r.thresholds.end());

  // Inputs were validated above, so nothing in the loop throws except out of memory.
  r.heads.resize(in.heads.size());
  const int n = static_cast<int>(in.heads.size());
  parallel_trap trap;  // out of memory inside the region: an error after it, not std::terminate
#pragma omp parallel for schedule(dynamic, 1)
  for (int i = 0; i < n; ++i) trap.run([&] { r.heads[i] = compute_head(in.heads[i], in.negative_keep, r.thresholds, opt); });
  trap.rethrow();

  r.json = build_json(r, in);
  return r;
}

void write_report(const eval_report& r, const eval_input& in, const report_options& opt, const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("cannot create report directory {}: {}", dir, ec.message());
  open_out(dir + "/report.json") << r.json.dump(2) << "\n";
  write_csvs(r, in, dir);
  if (opt.plots) {
    write_plots(r, in, opt, dir);
    write_index_html(r, in, opt, dir);
  }
}

std::string summary_text(const eval_report& r, const std::string& dir) {
  const json& s = r.json.at("summary");
  const json& gates = r.json.at("gates");
  std::string out = fmt::format("kvgate eval: {} on {} ({} heads, {} with both classes)\n",
                                r.json.value("model", std::string()), r.json.value("data", std::string()),
                                s.at("n_heads").get<int>(), s.at("n_heads_scored").get<int>());
  auto gate_line = [&](const json& g, const json& info) {
    return fmt::format("  {:<9} AUC median {:.3f}  min {:.3f}  mean {:.3f}  beats key-norm on {}/{} heads  "
                       "ECE {:.3f} balanced, {:.3f} natural   [{}: {}]\n",
                       info.at("name").get<std::string>(), g.at("median_auc").get<double>(),
                       g.at("min_auc").get<double>(), g.at("mean_auc").get<double>(),
                       g.at("heads_beating_knorm").get<int>(), s.at("n_heads_scored").get<int>(),
                       g.at("ece").get<double>(), g.at("ece_natural").get<double>(),
                       info.at("objective").get<std::string>(), info.at("path").get<std::string>());
  };
  out += gate_line(s, gates[0]);
  for (size_t i = 0; i < s.at("compare").size(); ++i) out += gate_line(s["compare"][i], gates[i + 1]);
  out += fmt::format("  baselines: key-norm (-||k||) median AUC {:.3f}, position (-pos) median AUC {:.3f} "
                     "(best sign {:.3f})\n",
                     s.at("knorm_median_auc").get<double>(), s.at("position_median_auc").get<double>(),
                     s.at("position_median_auc_best_sign").get<double>());
  out += fmt::format("  positive rate {:.2f}% of labelled tokens (stored examples: {:.1f}%, negatives kept {:.3g})\n",
                     100 * s.at("positive_rate").get<double>(), 100 * s.at("positive_rate_stored").get<double>(),
                     r.json.at("negative_keep").get<double>());
  for (const json& c : s.at("confusion")) {
    out += fmt::format("  threshold {:<5.3g} precision {:.3f}  recall {:.3f}  F1 {:.3f}  keeps {:.1f}% of tokens "
                       "(natural ratio, all heads)\n",
                       c.at("threshold").get<double>(), c.at("precision").get<double>(),
                       c.at("recall").get<double>(), c.at("f1").get<double>(), 100 * c.at("keep_share").get<double>());
  }
  // The five weakest heads: where a per-layer look starts.
  std::vector<const head_report*> order;
  for (const head_report& h : r.heads) {
    if (has_both_classes(h)) order.push_back(&h);
  }
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->gates[0].auc < b->gates[0].auc; });
  out += "  weakest heads:";
  for (size_t i = 0; i < std::min<size_t>(5, order.size()); ++i) {
    out += fmt::format(" L{}H{} {:.3f} (key-norm {:.3f});", order[i]->layer, order[i]->head, order[i]->gates[0].auc,
                       order[i]->knorm_auc);
  }
  out += "\n";
  for (const json& w : r.json.at("warnings")) out += "  warning: " + w.get<std::string>() + "\n";
  out += fmt::format("  report: {}/report.json{}\n", dir,
                     std::filesystem::exists(dir + "/index.html") ? ", " + dir + "/index.html" : "");
  return out;
}

}  // namespace kvgate::eval
