#include "eval/retrieval_report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <fmt/format.h>

#include "common/files.h"
#include "eval/plot_util.h"

namespace kvgate::eval {

namespace {

using nlohmann::ordered_json;

const retrieval_run* full_run(const bench_input& in) {
  for (const retrieval_run& r : in.retrieval)
    if (r.config.policy.kind == policy_kind::full) return &r;
  return nullptr;
}

double task_accuracy(const retrieval_result& r, const std::string& task) {
  for (const retrieval_task_result& t : r.tasks)
    if (t.task == task) return t.accuracy;
  return std::nan("");
}

ordered_json ratio(double a, double b) {
  return b > 0 && std::isfinite(a) ? ordered_json(a / b) : ordered_json(nullptr);
}

// A CSV field: quoted, quotes doubled, line ends kept inside the quotes.
std::string csv_field(const std::string& s) {
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

}  // namespace

ordered_json retrieval_summary(const bench_input& in) {
  if (in.retrieval.empty()) return nullptr;
  const retrieval_run* full = full_run(in);
  ordered_json runs = ordered_json::array();
  for (const retrieval_run& run : in.retrieval) {
    const retrieval_result& r = run.result;
    ordered_json tasks = ordered_json::array();
    for (const retrieval_task_result& t : r.tasks) {
      tasks.push_back({{"task", t.task},
                       {"n_cases", t.n_cases},
                       {"n_correct", t.n_correct},
                       {"accuracy", t.accuracy},
                       {"ci95", {t.ci_low, t.ci_high}},
                       {"needle_kept", t.needle_kept},
                       {"ratio_to_full", full ? ratio(t.accuracy, task_accuracy(full->result, t.task)) : nullptr}});
    }
    runs.push_back({{"curve", run.config.curve},
                    {"policy", policy_name(run.config.policy.kind)},
                    {"layout", layout_name(run.config.policy.layout)},
                    {"knob", run.config.knob_name},
                    {"value", run.config.knob},
                    {"kv_share_final", r.share_final},
                    {"accuracy_mean", r.accuracy_mean},
                    {"ratio_to_full", full ? ratio(r.accuracy_mean, full->result.accuracy_mean) : nullptr},
                    {"tasks", tasks}});
  }
  const int ctx = in.options.retrieval_ctx > 0 ? in.options.retrieval_ctx : in.options.ctx;
  return {{"ctx", ctx},
          {"cases_per_task", in.options.retrieval_cases},
          {"tasks", in.options.retrieval_tasks},
          {"runs", runs}};
}

std::string retrieval_summary_text(const bench_input& in) {
  if (in.retrieval.empty()) return "";
  const ordered_json s = retrieval_summary(in);
  const std::vector<std::string>& tasks = in.options.retrieval_tasks;
  std::string t = fmt::format(
      "retrieval suite: {} case{} per task, prompts of ~{} tokens, greedy answers; accuracy [95% CI] and its ratio "
      "to the full cache's\n",
      s["cases_per_task"].get<int>(), s["cases_per_task"].get<int>() == 1 ? "" : "s", s["ctx"].get<int>());
  t += fmt::format("{:<20} {:>8} {:>6}", "policy", "knob", "KV");
  for (const std::string& task : tasks) t += fmt::format("  {:<24}", task);
  t += fmt::format("  {:>6} {:>6}\n", "mean", "ratio");
  for (const ordered_json& run : s["runs"]) {
    const std::string knob = run["knob"] == "budget" ? fmt::format("B={}", run["value"].get<int>())
                             : run["knob"] == "threshold" ? fmt::format("t={:g}", run["value"].get<double>())
                                                          : std::string("-");
    t += fmt::format("{:<20} {:>8} {:>6.3f}", run["curve"].get<std::string>(), knob,
                     run["kv_share_final"].get<double>());
    for (const std::string& task : tasks) {
      std::string cell = "-";
      for (const ordered_json& tr : run["tasks"]) {
        if (tr["task"] != task) continue;
        cell = fmt::format("{:.2f} [{:.2f},{:.2f}] {}", tr["accuracy"].get<double>(), tr["ci95"][0].get<double>(),
                           tr["ci95"][1].get<double>(),
                           tr["ratio_to_full"].is_number() ? fmt::format("{:.2f}", tr["ratio_to_full"].get<double>())
                                                           : std::string("n/a"));
      }
      t += fmt::format("  {:<24}", cell);
    }
    t += fmt::format("  {:>6.3f} {:>6}\n", run["accuracy_mean"].get<double>(),
                     run["ratio_to_full"].is_number() ? fmt::format("{:.2f}", run["ratio_to_full"].get<double>())
                                                      : std::string("n/a"));
  }
  return t;
}

namespace {

// Gnuplot data: one block per curve (runs sorted by KV kept), columns share, mean accuracy, then
// one accuracy per task.
bool plot_retrieval(const bench_input& in, const std::string& dir) {
  const std::vector<std::string>& tasks = in.options.retrieval_tasks;
  std::vector<std::pair<std::string, std::vector<const retrieval_run*>>> curves;
  for (const retrieval_run& r : in.retrieval) {
    auto it = std::find_if(curves.begin(), curves.end(), [&](const auto& c) { return c.first == r.config.curve; });
    if (it == curves.end()) {
      curves.emplace_back(r.config.curve, std::vector<const retrieval_run*>{});
      it = curves.end() - 1;
    }
    it->second.push_back(&r);
  }
  std::string dat;
  for (auto& [name, runs] : curves) {
    std::stable_sort(runs.begin(), runs.end(),
                     [](const auto* a, const auto* b) { return a->result.share_final < b->result.share_final; });
    dat += "# " + name + "\n";
    for (const retrieval_run* r : runs) {
      dat += fmt::format("{:.6g} {:.6g}", r->result.share_final, r->result.accuracy_mean);
      for (const std::string& task : tasks) {
        const double a = task_accuracy(r->result, task);
        dat += std::isfinite(a) ? fmt::format(" {:.6g}", a) : std::string(" NaN");
      }
      dat += "\n";
    }
    dat += "\n\n";
  }
  write_file_atomically(dir + "/retrieval.dat", dat);
  const int n_panels = 1 + static_cast<int>(tasks.size());
  std::string gp = terminal_line(std::max(900, 420 * n_panels), 480);
  gp += "set output '../retrieval.png'\n";
  gp += fmt::format("set multiplot layout 1,{} title \"Retrieval suite: accuracy against KV kept ({} cases per task, "
                    "greedy answers)\" font ',12'\n",
                    n_panels, in.options.retrieval_cases);
  gp += "set grid\nset key bottom right font ',8'\nset xlabel 'KV kept (after the prompt)'\nset xrange [0:1.02]\n"
        "set yrange [0:1.05]\n";
  static const char* const k_colours[] = {"#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
                                          "#7f7f7f", "#bcbd22", "#17becf", "#d62728", "#aec7e8"};
  for (int panel = 0; panel < n_panels; ++panel) {
    const std::string title = panel == 0 ? "mean over tasks" : tasks[panel - 1];
    gp += fmt::format("set title '{}'\nset ylabel 'accuracy'\nplot ", title);
    for (size_t i = 0; i < curves.size(); ++i) {
      const bool learned = curves[i].first.rfind("learned", 0) == 0;
      gp += fmt::format("{}'retrieval.dat' index {} using 1:{} with linespoints lw {} pt 7 ps 1 lc rgb '{}' title '{}'",
                        i ? ", " : "", i, panel + 2, learned ? 2.5 : 1.2, k_colours[i % std::size(k_colours)],
                        curves[i].first);
    }
    gp += "\n";
  }
  gp += "unset multiplot\n";
  write_file_atomically(dir + "/retrieval.gp", gp);
  run_gnuplot(dir, "retrieval");
  return true;
}

}  // namespace

std::string write_retrieval_report(const bench_input& in, const std::string& out_dir, bool plots) {
  if (in.retrieval.empty()) return "";
  std::string csv = "curve,knob,value,task,n_cases,n_correct,accuracy,ci_low,ci_high,kv_share_final,needle_kept\n";
  std::string cases_csv = "curve,knob,value,case,task,source,depths,answers,correct,needle_kept,output\n";
  for (const retrieval_run& run : in.retrieval) {
    const bench_config& c = run.config;
    for (const retrieval_task_result& t : run.result.tasks) {
      csv += fmt::format("{},{},{:g},{},{},{},{:.4f},{:.4f},{:.4f},{:.4f},{:.4f}\n", c.curve, c.knob_name, c.knob,
                         t.task, t.n_cases, t.n_correct, t.accuracy, t.ci_low, t.ci_high, run.result.share_final,
                         t.needle_kept);
    }
    for (size_t i = 0; i < in.retrieval_cases.size() && i < run.result.outputs.size(); ++i) {
      const retrieval_case& rc = in.retrieval_cases[i];
      std::string depths;
      for (double d : rc.depths) depths += fmt::format("{}{:.3f}", depths.empty() ? "" : " ", d);
      cases_csv += fmt::format("{},{},{:g},{},{},{},{},{},{},{:.4f},{}\n", c.curve, c.knob_name, c.knob, i, rc.task,
                               std::filesystem::path(rc.source).filename().string(), depths,
                               csv_field(fmt::format("{}", fmt::join(rc.answers, " "))),
                               static_cast<int>(run.result.correct[i]), run.result.needle_kept[i],
                               csv_field(run.result.outputs[i]));
    }
  }
  write_file_atomically(out_dir + "/retrieval.csv", csv);
  write_file_atomically(out_dir + "/retrieval_cases.csv", cases_csv);
  const bool png = plots && plot_retrieval(in, out_dir + "/plots");
  std::string h = "<h2>Retrieval suite</h2>\n<pre>" + html_escape(retrieval_summary_text(in)) + "</pre>\n";
  if (png) h += "<a href='retrieval.png'><img src='retrieval.png'></a>\n";
  h += "<p>Each case hides facts in held-out text and asks for them in the chat template; the greedy answer is "
       "correct when it contains every expected string. Files: retrieval.csv, retrieval_cases.csv.</p>\n";
  return h;
}

}  // namespace kvgate::eval
