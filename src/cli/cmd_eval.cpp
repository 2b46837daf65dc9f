// kvgate eval: scores a held-out dataset with a gate bank (and optionally more banks to compare,
// e.g. the lifetime objective beside the binary one) and writes the report directory: report.json,
// CSV tables, gnuplot PNGs and index.html. Prints a one-screen summary.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "cli/common.h"
#include "common/error.h"
#include "data/dataset.h"
#include "eval/gate_scores.h"
#include "eval/plots.h"
#include "eval/report.h"
#include "gate/gate_bank.h"

namespace kvgate::cli {

namespace {

// The trainer writes its loss table next to the gate file; accept both "gates.gguf.loss.csv" and
// "gates.loss.csv".
std::string default_loss_csv(const std::string& gates_path) {
  namespace fs = std::filesystem;
  for (const std::string& candidate :
       {gates_path + ".loss.csv", fs::path(gates_path).replace_extension(".loss.csv").string()}) {
    if (fs::exists(candidate)) return candidate;
  }
  return "";
}

// "lifetime.gguf" -> "lifetime": the column prefix of a compared gate bank.
std::string gate_name(const std::string& path, size_t index, const std::vector<std::string>& taken) {
  std::string stem = std::filesystem::path(path).stem().string();
  std::string name;
  for (char c : stem) name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  if (name.empty() || name == "knorm" || name == "position" ||
      std::find(taken.begin(), taken.end(), name) != taken.end()) {
    name = "gate" + std::to_string(index);
  }
  return name;
}

}  // namespace

void register_eval(CLI::App& app) {
  auto* sub = app.add_subcommand("eval", "evaluate a gate bank on a held-out dataset: ROC/AUC, calibration, "
                                         "confusion matrices, baselines; writes a report directory");
  struct opts {
    std::string gates, data, out, loss_csv;
    std::vector<std::string> compare;
    std::vector<float> thresholds;
    int threads = 0, bins = 10;
    bool no_plots = false;
  };
  auto o = std::make_shared<opts>();
  sub->add_option("--gates,-g", o->gates, "gate bank (.gguf) to evaluate")->required();
  sub->add_option("--data,-d", o->data, "held-out dataset directory (kvgate collect)")->required();
  sub->add_option("--out,-o", o->out, "report directory to write")->required();
  sub->add_option("--compare", o->compare, "more gate banks reported side by side (e.g. the lifetime objective)");
  sub->add_option("--threshold", o->thresholds, "more thresholds for confusion matrices (0.5 and 0.1 always)")
      ->check(CLI::Range(0.0, 1.0));
  sub->add_option("--threads,-t", o->threads, "compute threads (default: all cores)")->check(CLI::Range(0, 1024));
  sub->add_option("--loss-csv", o->loss_csv, "trainer's loss CSV (default: <gates>.loss.csv when it exists)");
  sub->add_option("--bins", o->bins, "calibration bins")->check(CLI::Range(2, 1000));
  sub->add_flag("--no-plots", o->no_plots, "write report.json and the CSV tables only (no gnuplot)");

  sub->callback([o] {
    model_options threads;
    threads.threads = o->threads;
    apply_threads(threads);
    if (!o->no_plots) eval::require_gnuplot();  // before minutes of scoring, not after
    stopwatch clock;
    dataset data = dataset::load(o->data);
    std::vector<std::string> paths = {o->gates};
    paths.insert(paths.end(), o->compare.begin(), o->compare.end());
    std::vector<gate_bank> banks;
    std::vector<std::string> warnings, names;
    for (size_t i = 0; i < paths.size(); ++i) {
      banks.push_back(gate_bank::load(paths[i]));
      const auto w = eval::check_gate_matches_dataset(banks.back().meta(), paths[i], data.manifest, o->data);
      warnings.insert(warnings.end(), w.begin(), w.end());
      names.push_back(i == 0 ? std::string("gate") : gate_name(paths[i], i, names));
    }
    std::vector<eval::named_gate> gates;
    for (size_t i = 0; i < paths.size(); ++i) gates.push_back({names[i], paths[i], &banks[i]});

    eval::eval_input input = eval::score_dataset(data, o->data, gates);
    input.warnings = std::move(warnings);
    data = {};  // the keys are no longer needed
    const double t_score = clock.seconds();

    eval::report_options options;
    options.thresholds = o->thresholds;
    options.n_bins = o->bins;
    options.plots = !o->no_plots;
    options.loss_csv = o->loss_csv.empty() ? default_loss_csv(o->gates) : o->loss_csv;
    if (!o->loss_csv.empty() && !std::filesystem::exists(o->loss_csv)) fail("loss CSV not found: {}", o->loss_csv);

    const eval::eval_report report = eval::compute_report(input, options);
    eval::write_report(report, input, options, o->out);
    // AUC against the held-out dataset's own label sources (collect --labels): one eval per
    // source dataset gives the AUC per source.
    std::printf("label sources of %s: %s\n", o->data.c_str(), input.label["sources"].dump().c_str());
    std::printf("%s", eval::summary_text(report, o->out).c_str());
    std::fprintf(stderr, "eval: scored in %.1f s, report in %.1f s\n", t_score, clock.seconds() - t_score);
  });
}

}  // namespace kvgate::cli
