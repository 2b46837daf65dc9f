// The retrieval suite's part of the bench report: its figures in report.json, retrieval.csv (per
// configuration and task), retrieval_cases.csv (per case: depths, answers, output), the plot of
// accuracy against KV kept (retrieval.png) and its section of index.html and of the summary.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "eval/bench_report.h"

namespace kvgate::eval {

// Per configuration: accuracy per task with its Wilson interval and its ratio to the full
// cache's, the mean over tasks and its ratio, KV kept. Null when the suite did not run.
nlohmann::ordered_json retrieval_summary(const bench_input& in);

// The summary's text table ("" when the suite did not run).
std::string retrieval_summary_text(const bench_input& in);

// Writes retrieval.csv, retrieval_cases.csv and (plots) retrieval.png; returns the index.html
// section ("" when the suite did not run).
std::string write_retrieval_report(const bench_input& in, const std::string& out_dir, bool plots);

}  // namespace kvgate::eval
