#include "eval/bench_report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <set>

#include <fmt/format.h>

#include "common/error.h"
#include "common/files.h"
#include "eval/plot_util.h"
#include "eval/retrieval_report.h"

namespace kvgate::eval {

namespace {

using nlohmann::ordered_json;

const double k_nan = std::numeric_limits<double>::quiet_NaN();

double ppl_increase_pct(const bench_input& in, const quality_result& q) {
  return 100.0 * (q.ppl / in.rows[0].quality.ppl - 1.0);
}

// JSON has no NaN: a figure that could not be measured is null.
ordered_json num(double v) { return std::isfinite(v) ? ordered_json(v) : ordered_json(nullptr); }

// Curves in the order they were configured, each with its rows sorted by KV kept.
std::vector<std::pair<std::string, std::vector<const bench_row*>>> curves_of(const bench_input& in) {
  std::vector<std::pair<std::string, std::vector<const bench_row*>>> curves;
  for (const bench_row& r : in.rows) {
    auto it = std::find_if(curves.begin(), curves.end(), [&](const auto& c) { return c.first == r.config.curve; });
    if (it == curves.end()) {
      curves.emplace_back(r.config.curve, std::vector<const bench_row*>{});
      it = curves.end() - 1;
    }
    it->second.push_back(&r);
  }
  for (auto& [name, rows] : curves) {
    std::stable_sort(rows.begin(), rows.end(), [](const bench_row* a, const bench_row* b) {
      return a->quality.share_final < b->quality.share_final;
    });
  }
  return curves;
}

template <typename F>
std::vector<std::pair<double, double>> points(const std::vector<const bench_row*>& rows, F y) {
  std::vector<std::pair<double, double>> p;
  for (const bench_row* r : rows) p.emplace_back(r->quality.share_final, y(*r));
  return p;
}

std::string knob_text(const bench_config& c) {
  if (c.knob_name == "budget") return fmt::format("B={}", static_cast<int>(c.knob));
  if (c.knob_name == "threshold") return fmt::format("t={:g}", c.knob);
  return "-";
}

ordered_json row_json(const bench_input& in, const bench_row& r) {
  const quality_result& q = r.quality;
  const policy_config& p = r.config.policy;
  ordered_json j = {{"curve", r.config.curve},
                    {"policy", policy_name(p.kind)},
                    {"layout", layout_name(p.layout)},
                    {"sinks", p.sinks},
                    {"window", p.window},
                    {"knob", r.config.knob_name},
                    {"value", r.config.knob}};
  j["quality"] = {{"ppl", q.ppl},
                  {"ppl_increase_pct", ppl_increase_pct(in, q)},
                  {"nll", q.nll},
                  {"kl", q.kl},
                  {"top1_agree", q.top1_agree},
                  {"attention_recall", q.recall},
                  {"attention_recall_by_layer", q.recall_layer},
                  {"kv_share_final", q.share_final},
                  {"kv_share_mean", q.share_mean},
                  {"kv_share_peak", q.share_peak},
                  {"kv_bytes_final", q.bytes_final},
                  {"kv_bytes_peak", q.bytes_peak},
                  {"gate_s", q.gate_s},
                  {"seconds", q.seconds},
                  {"n_tokens", q.n_tokens}};
  if (r.has_needle) {
    const needle_result& n = r.needle;
    j["needle"] = {{"n_cases", n.n_cases},
                   {"n_correct", n.n_correct},
                   {"accuracy", n.accuracy},
                   {"ci95", {n.ci_low, n.ci_high}},
                   {"answer_nll", n.answer_nll},
                   {"kv_share_final", n.share_final},
                   {"prefill_tok_s", n.prefill_tok_s}};
  }
  return j;
}

}  // namespace

ordered_json bench_summary(const bench_input& in) {
  const double s = in.options.matched_share;
  ordered_json matched = ordered_json::array();
  for (const auto& [name, rows] : curves_of(in)) {
    ordered_json m = {{"curve", name}};
    if (name == "full") {
      const quality_result& q = rows[0]->quality;
      m["kv_share"] = 1.0;
      m["ppl"] = q.ppl;
      m["ppl_increase_pct"] = 0.0;
      m["kl"] = 0.0;
      m["attention_recall"] = 1.0;
      m["top1_agree"] = 1.0;
    } else {
      m["kv_share"] = s;
      m["ppl"] = num(interpolate(points(rows, [](const bench_row& r) { return r.quality.ppl; }), s));
      m["ppl_increase_pct"] =
          num(interpolate(points(rows, [&](const bench_row& r) { return ppl_increase_pct(in, r.quality); }), s));
      m["kl"] = num(interpolate(points(rows, [](const bench_row& r) { return r.quality.kl; }), s));
      m["attention_recall"] = num(interpolate(points(rows, [](const bench_row& r) { return r.quality.recall; }), s));
      m["top1_agree"] = num(interpolate(points(rows, [](const bench_row& r) { return r.quality.top1_agree; }), s));
      m["kv_share_range"] = {rows.front()->quality.share_final, rows.back()->quality.share_final};
    }
    for (const bench_row* r : rows) {
      if (!r->has_needle) continue;
      m["needle"] = {{"config", knob_text(r->config)},
                     {"kv_share_final", r->needle.share_final},
                     {"n_cases", r->needle.n_cases},
                     {"n_correct", r->needle.n_correct},
                     {"accuracy", r->needle.accuracy},
                     {"ci95", {r->needle.ci_low, r->needle.ci_high}},
                     {"answer_nll", r->needle.answer_nll},
                     {"prefill_tok_s", r->needle.prefill_tok_s}};
    }
    matched.push_back(m);
  }

  // Per-head against the layouts that share tokens: the per-head share reaching the same ppl.
  ordered_json layouts = ordered_json::array();
  const auto curves = curves_of(in);
  auto find = [&](const std::string& name) -> const std::vector<const bench_row*>* {
    for (const auto& c : curves)
      if (c.first == name) return &c.second;
    return nullptr;
  };
  if (const auto* per_head = find("learned")) {
    std::vector<std::pair<double, double>> inverse;  // (ppl, share) sorted by ppl
    for (const bench_row* r : *per_head) inverse.emplace_back(r->quality.ppl, r->quality.share_final);
    std::sort(inverse.begin(), inverse.end());
    for (const char* other : {"learned-per-layer", "learned-global"}) {
      const auto* rows = find(other);
      if (!rows) continue;
      for (const bench_row* r : *rows) {
        const double share_per_head = interpolate(inverse, r->quality.ppl);
        layouts.push_back({{"curve", other},
                           {"threshold", r->config.knob},
                           {"ppl", r->quality.ppl},
                           {"kv_share", r->quality.share_final},
                           {"per_head_kv_share_same_ppl", num(share_per_head)},
                           {"ratio", num(share_per_head / r->quality.share_final)}});
      }
    }
  }
  return {{"matched_share", s}, {"matched", matched}, {"per_head_vs_shared_layouts", layouts}};
}

std::string bench_summary_text(const bench_input& in, const ordered_json& summary) {
  if (in.rows.empty()) return retrieval_summary_text(in) + fmt::format("\n{:.0f} s\n", in.seconds);
  auto f = [](const ordered_json& v, const char* format) {
    return v.is_number() ? fmt::format(fmt::runtime(format), v.get<double>()) : std::string("n/a");
  };
  std::string t = fmt::format(
      "kvgate bench: {} on {} windows of {} tokens from the held-out corpus{}; figures at {:.0f}% of the KV "
      "cache kept (measured share of head x token slots after the last step, interpolated along each curve)\n\n",
      in.model_name, in.windows.size(), in.options.ctx,
      in.options.prefill == linear_rows::quantized ? ", int8 prefill" : "", 100 * summary["matched_share"].get<double>());
  // The needle columns only where a needle pass ran (the main job leaves it to the retrieval suite).
  bool any_needle = false;
  for (const ordered_json& m : summary["matched"]) any_needle = any_needle || m.contains("needle");
  const auto row_text = [&](const std::string& curve, const std::string& ppl, const std::string& inc, const std::string& kl,
                            const std::string& recall, const std::string& top1, const std::string& needle,
                            const std::string& nll) {
    return any_needle ? fmt::format("{:<20} {:>8} {:>9} {:>8} {:>8} {:>7}   {:<22} {:>10}\n", curve, ppl, inc, kl, recall,
                                    top1, needle, nll)
                      : fmt::format("{:<20} {:>8} {:>9} {:>8} {:>8} {:>7}\n", curve, ppl, inc, kl, recall, top1);
  };
  t += row_text("policy", "ppl", "ppl +%", "KL", "recall", "top-1", "needle (95% CI)", "answer NLL");
  for (const ordered_json& m : summary["matched"]) {
    std::string needle = "-", nll = "-";
    if (m.contains("needle")) {
      const ordered_json& n = m["needle"];
      needle = fmt::format("{}/{} [{:.2f},{:.2f}]", n["n_correct"].get<int>(), n["n_cases"].get<int>(),
                           n["ci95"][0].get<double>(), n["ci95"][1].get<double>());
      nll = fmt::format("{:.2f}", n["answer_nll"].get<double>());
    }
    t += row_text(m["curve"].get<std::string>(), f(m["ppl"], "{:.3f}"), f(m["ppl_increase_pct"], "{:+.2f}"),
                  f(m["kl"], "{:.4f}"), f(m["attention_recall"], "{:.4f}"), f(m["top1_agree"], "{:.3f}"), needle, nll);
  }
  const ordered_json& layouts = summary["per_head_vs_shared_layouts"];
  if (!layouts.empty()) {
    t += "\nper-head vs shared layouts (learned gates): the per-head share reaching the same perplexity\n";
    for (const ordered_json& l : layouts) {
      t += fmt::format("  {:<18} t={:<7g} ppl {:.3f} at KV {:.3f}  ->  per-head {} ({})\n", l["curve"].get<std::string>(),
                       l["threshold"].get<double>(), l["ppl"].get<double>(), l["kv_share"].get<double>(),
                       f(l["per_head_kv_share_same_ppl"], "{:.3f}"), f(l["ratio"], "{:.2f}x the share"));
    }
  }
  if (!in.retrieval.empty()) t += "\n" + retrieval_summary_text(in);
  t += fmt::format("\n{} configurations in {:.0f} s; n/a = the curve does not reach that share.\n", in.rows.size(),
                   in.seconds);
  return t;
}

namespace {

// Gnuplot data: one block per curve (index i), columns share, ppl +%, KL, recall, top-1.
// Returns false (and draws nothing) when there is no curve besides the full cache.
bool plot_quality(const bench_input& in, const std::string& dir) {
  const auto curves = curves_of(in);
  if (curves.size() < 2) return false;
  std::string dat;
  for (const auto& [name, rows] : curves) {
    dat += "# " + gnuplot_data_label(name) + "\n";
    for (const bench_row* r : rows) {
      dat += fmt::format("{:.6g} {:.6g} {:.6g} {:.6g} {:.6g}\n", r->quality.share_final,
                         ppl_increase_pct(in, r->quality), r->quality.kl, r->quality.recall, r->quality.top1_agree);
    }
    dat += "\n\n";
  }
  write_file_atomically(dir + "/quality.dat", dat);
  std::string gp = terminal_line(1500, 520);
  gp += "set output '../quality_vs_kv.png'\n";
  gp += fmt::format("set multiplot layout 1,3 title {} font ',12'\n",
                    gnuplot_quote(fmt::format("{}: quality against KV kept ({} windows x {} tokens, held-out corpus); "
                                              "dashed line = {:.0f}% kept",
                                              in.model_name, in.windows.size(), in.options.ctx,
                                              100 * in.options.matched_share)));
  gp += "set grid\nset key top right font ',8'\nset xlabel 'KV kept (share of head x token slots, after the last step)'\n";
  gp += fmt::format("set arrow 1 from {0},graph 0 to {0},graph 1 nohead dt 2 lc rgb '#888888'\n",
                    in.options.matched_share);
  gp += "set xrange [0:1.02]\n";
  const std::pair<int, const char*> panels[] = {{2, "perplexity increase over the full cache (%)"},
                                                {3, "mean KL(full || policy), nats/token"},
                                                {4, "attention-mass recall"}};
  // One colour per curve in every panel; the learned curves drawn thicker. The full cache is the
  // reference (0 increase, 0 KL, recall 1), so it is not a curve.
  static const char* const k_colours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
                                          "#7f7f7f", "#bcbd22", "#17becf", "#d62728", "#000000", "#aec7e8"};
  for (const auto& [column, title] : panels) {
    // A log scale shows curves that differ by orders of magnitude, but drops values <= 0 (a
    // policy can beat the full cache by a hair on perplexity): then the axis stays linear.
    bool positive = true;
    for (const auto& [name, rows] : curves)
      for (const bench_row* r : rows)
        if (name != "full" && (column == 2 ? ppl_increase_pct(in, r->quality) : r->quality.kl) <= 0) positive = false;
    gp += fmt::format("set title {0}\nset ylabel {0}\n", gnuplot_quote(title));
    gp += column == 4 ? "set key bottom right\n" : (positive ? "set logscale y\nset key top right\n" : "set key top right\n");
    gp += "plot ";
    bool first = true;
    for (size_t i = 0; i < curves.size(); ++i) {
      if (curves[i].first == "full") continue;
      const bool learned = curves[i].first.rfind("learned", 0) == 0;
      gp += fmt::format("{}'quality.dat' index {} using 1:{} with linespoints lw {} pt 7 ps 0.8 lc rgb '{}' title {}",
                        first ? "" : ", ", i, column, learned ? 2.5 : 1.2, k_colours[i % std::size(k_colours)],
                        gnuplot_quote(curves[i].first));
      first = false;
    }
    gp += "\nunset logscale y\n";
  }
  gp += "unset multiplot\n";
  write_file_atomically(dir + "/quality_vs_kv.gp", gp);
  run_gnuplot(dir, "quality_vs_kv");
  return true;
}

bool plot_needle(const bench_input& in, const std::string& dir) {
  std::string dat;
  int n = 0;
  for (const bench_row& r : in.rows) {
    if (!r.has_needle) continue;
    const std::string knob = r.config.knob_name == "-" ? "" : " " + knob_text(r.config);
    dat += fmt::format("{} {} {:.6g} {:.6g} {:.6g} {:.6g}\n", n++,
                       gnuplot_data_label(fmt::format("{}{} (KV {:.2f})", r.config.curve, knob, r.needle.share_final)), r.needle.accuracy, r.needle.ci_low, r.needle.ci_high, r.needle.answer_nll);
  }
  if (n == 0) return false;
  write_file_atomically(dir + "/needle.dat", dat);
  std::string gp = terminal_line(std::max(1000, 120 * n + 200), 560);
  gp += "set output '../needle.png'\n";
  gp += fmt::format("set multiplot layout 1,2 title {} font ',12'\n",
                    gnuplot_quote(fmt::format("Needle retrieval: {} cases of ~{} tokens, 3 keys each; policies at "
                                              "~{:.0f}% KV kept",
                                              in.cases.size(),
                                              in.options.needle_ctx > 0 ? in.options.needle_ctx : in.options.ctx,
                                              100 * in.options.matched_share)));
  gp += "set grid y\nset style fill solid 0.6\nset boxwidth 0.6\nset xtics rotate by -35 font ',8'\nset bmargin 9\n"
        "unset key\n";
  gp += "set title 'exact match of the greedy answer (bars: 95% Wilson interval)'\nset yrange [0:1.05]\n";
  gp += "plot 'needle.dat' using 1:3:xtic(2) with boxes lc rgb '#4c72b0', '' using 1:3:4:5 with yerrorbars lc rgb "
        "'black' pt 0\n";
  gp += "set title 'mean NLL of the answer tokens (nats, lower is better)'\nset autoscale y\nset yrange [0:*]\n";
  gp += "plot 'needle.dat' using 1:6:xtic(2) with boxes lc rgb '#dd8452'\n";
  gp += "unset multiplot\n";
  write_file_atomically(dir + "/needle.gp", gp);
  run_gnuplot(dir, "needle");
  return true;
}

std::string csv_quality(const bench_input& in) {
  std::string s =
      "curve,policy,layout,knob,value,kv_share_final,kv_share_mean,kv_share_peak,kv_bytes_final,kv_bytes_peak,ppl,"
      "ppl_increase_pct,kl,top1_agree,attention_recall,gate_s,seconds\n";
  for (const bench_row& r : in.rows) {
    const quality_result& q = r.quality;
    s += fmt::format("{},{},{},{},{:g},{:.6f},{:.6f},{:.6f},{:.0f},{},{:.6f},{:.4f},{:.6f},{:.6f},{:.6f},{:.4f},{:.2f}\n",
                     r.config.curve, policy_name(r.config.policy.kind), layout_name(r.config.policy.layout),
                     r.config.knob_name, r.config.knob, q.share_final, q.share_mean, q.share_peak, q.bytes_final,
                     q.bytes_peak, q.ppl, ppl_increase_pct(in, q), q.kl, q.top1_agree, q.recall, q.gate_s, q.seconds);
  }
  return s;
}

std::string csv_needle(const bench_input& in, bool per_case) {
  std::string s = per_case ? "curve,knob,value,case,label,depth,source,answer,correct,answer_nll\n"
                           : "curve,knob,value,n_cases,n_correct,accuracy,ci_low,ci_high,answer_nll,kv_share_final,"
                             "prefill_tok_s\n";
  for (const bench_row& r : in.rows) {
    if (!r.has_needle) continue;
    const needle_result& n = r.needle;
    if (!per_case) {
      s += fmt::format("{},{},{:g},{},{},{:.4f},{:.4f},{:.4f},{:.4f},{:.4f},{:.1f}\n", r.config.curve, r.config.knob_name,
                       r.config.knob, n.n_cases, n.n_correct, n.accuracy, n.ci_low, n.ci_high, n.answer_nll,
                       n.share_final, n.prefill_tok_s);
      continue;
    }
    for (size_t i = 0; i < in.cases.size() && i < n.correct.size(); ++i) {
      const needle_case& c = in.cases[i];
      s += fmt::format("{},{},{:g},{},{},{:.3f},{},{},{},{:.4f}\n", r.config.curve, r.config.knob_name, r.config.knob, i,
                       c.label, c.depth, std::filesystem::path(c.source).filename().string(),
                       c.answer.substr(c.answer.find_first_not_of(' ')), static_cast<int>(n.correct[i]), n.nll[i]);
    }
  }
  return s;
}

std::string index_html(const bench_input& in, const ordered_json& summary, bool quality_png, bool needle_png,
                       const std::string& retrieval_section) {
  std::string h =
      "<!doctype html>\n<html><head><meta charset='utf-8'><title>kvgate bench</title>\n"
      "<style>body{font-family:sans-serif;max-width:1500px;margin:1em auto;padding:0 1em}"
      "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
      "th{background:#f0f0f0}td:first-child{text-align:left}img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}"
      "tr.learned td{background:#eef6ee}pre{background:#f8f8f8;padding:0.5em}</style></head><body>\n";
  h += fmt::format("<h1>KV-cache policies: quality against memory</h1>\n<p>Model <code>{}</code>; gates <code>{}</code>; "
                   "held-out corpus <code>{}</code>. Quality: {} windows of {} tokens, prefill chunks of {} with the "
                   "policy evicting between chunks, sinks {} and window {} for every policy. Needle: {} cases.</p>\n",
                   html_escape(in.model_name), html_escape(in.gates_path.empty() ? "(none)" : in.gates_path),
                   html_escape(fmt::format("{}", fmt::join(in.corpus, ", "))), in.windows.size(), in.options.ctx,
                   in.options.batch, in.options.sinks, in.options.window, in.cases.size());
  h += "<h2>At a matched KV budget</h2>\n<pre>" + html_escape(bench_summary_text(in, summary)) + "</pre>\n";
  if (quality_png) h += "<h2>Quality against KV kept</h2>\n<a href='quality_vs_kv.png'><img src='quality_vs_kv.png'></a>\n";
  if (needle_png) h += "<h2>Needle retrieval</h2>\n<a href='needle.png'><img src='needle.png'></a>\n";
  h += retrieval_section;
  h += "<h2>Every configuration</h2>\n<table><tr><th>curve</th><th>knob</th><th>KV kept (final)</th><th>KV mean</th>"
       "<th>KV peak</th><th>bytes peak</th><th>ppl</th><th>ppl +%</th><th>KL</th><th>top-1</th><th>recall</th>"
       "<th>needle</th></tr>\n";
  for (const bench_row& r : in.rows) {
    const quality_result& q = r.quality;
    const std::string needle =
        r.has_needle ? fmt::format("{}/{} [{:.2f}, {:.2f}]", r.needle.n_correct, r.needle.n_cases, r.needle.ci_low,
                                   r.needle.ci_high)
                     : "";
    h += fmt::format("<tr{}><td>{}</td><td>{}</td><td>{:.3f}</td><td>{:.3f}</td><td>{:.3f}</td><td>{:.1f} MB</td>"
                     "<td>{:.3f}</td><td>{:+.2f}</td><td>{:.4f}</td><td>{:.3f}</td><td>{:.4f}</td><td>{}</td></tr>\n",
                     r.config.curve.rfind("learned", 0) == 0 ? " class='learned'" : "", html_escape(r.config.curve),
                     knob_text(r.config), q.share_final, q.share_mean, q.share_peak, q.bytes_peak / 1e6, q.ppl,
                     ppl_increase_pct(in, q), q.kl, q.top1_agree, q.recall, needle);
  }
  h += "</table>\n<p>KV kept (final): live (head, token) slots over those of a full cache, after each window's last "
       "step, mean over windows. KV mean: the same share averaged over every step. KV peak: the most held inside a "
       "step (a prefill chunk is appended before the policy evicts). Recall: share of the attention mass each query "
       "would give all earlier tokens that falls on the kept ones (mask mode). Files: report.json, quality.csv, "
       "needle.csv, needle_cases.csv.</p>\n</body></html>\n";
  return h;
}

}  // namespace

void write_bench_report(const bench_input& in, const ordered_json& summary, const std::string& out_dir, bool plots) {
  std::filesystem::create_directories(out_dir + "/plots");
  ordered_json j = {{"model", in.model_name},
                    {"model_path", in.model_path},
                    {"gates", in.gates_path},
                    {"corpus", in.corpus},
                    {"options",
                     {{"ctx", in.options.ctx},
                      {"batch", in.options.batch},
                      {"prefill", in.options.prefill == linear_rows::quantized ? "int8" : "f32"},
                      {"windows", in.windows.size()},
                      {"sinks", in.options.sinks},
                      {"window", in.options.window},
                      {"window_share", in.options.window_share},
                      {"shares", in.options.shares},
                      {"matched_share", in.options.matched_share},
                      {"needle_cases", in.cases.size()},
                      {"needle_ctx", in.options.needle_ctx > 0 ? in.options.needle_ctx : in.options.ctx},
                      {"seed", in.options.seed}}}};
  ordered_json sources = ordered_json::array();
  for (const bench_text& w : in.windows) sources.push_back(w.source);
  j["quality_windows"] = sources;
  j["summary"] = summary;
  ordered_json rows = ordered_json::array();
  for (const bench_row& r : in.rows) rows.push_back(row_json(in, r));
  j["rows"] = rows;
  j["retrieval"] = retrieval_summary(in);
  j["seconds"] = in.seconds;
  write_file_atomically(out_dir + "/report.json", j.dump(2) + "\n");
  write_file_atomically(out_dir + "/quality.csv", csv_quality(in));
  write_file_atomically(out_dir + "/needle.csv", csv_needle(in, false));
  write_file_atomically(out_dir + "/needle_cases.csv", csv_needle(in, true));
  write_file_atomically(out_dir + "/summary.txt", bench_summary_text(in, summary));
  const bool quality_png = plots && plot_quality(in, out_dir + "/plots");
  const bool needle_png = plots && plot_needle(in, out_dir + "/plots");
  const std::string retrieval_section = write_retrieval_report(in, out_dir, plots);
  write_file_atomically(out_dir + "/index.html", index_html(in, summary, quality_png, needle_png, retrieval_section));
}

}  // namespace kvgate::eval
