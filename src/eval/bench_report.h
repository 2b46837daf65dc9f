// The bench's report directory: report.json (every configuration's figures, the matched-budget
// comparison and the per-head vs global comparison), quality.csv, needle.csv, needle_cases.csv,
// gnuplot PNGs of quality against KV kept (one curve per policy and layout) and of needle
// accuracy, and index.html; plus the one-screen text summary.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "eval/bench.h"
#include "eval/retrieval.h"

namespace kvgate::eval {

struct bench_input {
  std::string model_name, model_path, gates_path;
  std::vector<std::string> corpus;
  bench_options options;
  std::vector<bench_text> windows;
  std::vector<needle_case> cases;
  std::vector<bench_row> rows;  // rows[0] is the full cache; empty when only the retrieval suite ran
  std::vector<retrieval_case> retrieval_cases;
  std::vector<retrieval_run> retrieval;  // the full cache first
  double seconds = 0.0;
};

// Per curve, the figures interpolated at options.matched_share of KV kept (share_final), with
// the needle figures of the configuration run there; and, for each point of the global and
// per-layer curves, the per-head share that reaches the same perplexity.
nlohmann::ordered_json bench_summary(const bench_input& in);

// The one-screen text table of the summary.
std::string bench_summary_text(const bench_input& in, const nlohmann::ordered_json& summary);

// Writes the report directory (atomically per file); plots need gnuplot unless plots is false.
void write_bench_report(const bench_input& in, const nlohmann::ordered_json& summary, const std::string& out_dir,
                        bool plots);

}  // namespace kvgate::eval
