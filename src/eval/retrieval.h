// The retrieval suite (RULER-style, generated offline): facts hidden at chosen depths of a long
// held-out haystack, then asked for in the chat template and answered by greedy generation; a
// case is correct when the output contains every expected answer (case-insensitive string match,
// RULER's scoring; for the tasks with several answers all of them must appear).
//   niah_single        one key with one value, asked
//   niah_multikey      four labelled keys, one asked
//   niah_multivalue    one key with three values, all asked
//   variable_tracking  a chain of 3-4 assignments "VAR X = 12345 ... VAR Y = VAR X", asked which
//                      variables hold the value
// Values are numbers of 5-7 digits drawn from the seed; the depth of the asked needle (of the
// chain's first link, of the first value) cycles through 0.1, 0.2, ..., 0.9 of the haystack.
// The wordings here are for evaluation only: training data (collect --labels answer) uses others.
// Everything is deterministic in (corpus, model, ctx, cases, seed).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "eval/bench.h"

namespace kvgate::eval {

// The suite's task names, in report order.
const std::vector<std::string>& retrieval_task_names();
// Throws error naming the unknown task and listing the known ones.
void check_retrieval_tasks(const std::vector<std::string>& tasks);

struct retrieval_case {
  std::string task;
  std::vector<std::string> answers;      // every one must appear in the output
  std::vector<std::string> needles;      // the statements inserted, in haystack order
  double depth = 0.0;                    // the case's depth (asked key, first value, chain's start)
  std::vector<double> depths_asked;      // [needles] depth asked for (0 = start, 1 = end)
  std::vector<double> depths;            // [needles] where each went: the line start at or before
                                         // its asked depth, as a share of the haystack without needles
  std::string haystack;                  // the filler with the needles inserted
  std::string source;                    // haystack file
  std::string prompt_text;               // chat template up to the answer prefix
  std::vector<int32_t> prompt;           // its tokens
  int question_start = 0;                // first prompt token of the question (after the haystack)
  // Prompt tokens [first, second) of each needle that holds an answer (the asked key's needle,
  // every value, every link of the chain): what the policy must keep for the answer to survive.
  std::vector<std::pair<int, int>> asked_spans;
  int max_new_tokens = 0;                // greedy tokens generated at most
};

// n_cases cases of each task over the held-out files (each at least ctx tokens long), prompts of
// at most ctx - max_new_tokens tokens. Throws error for an unknown task, a ctx too small for a
// task's needles, question and answer plus a haystack, or a corpus without a long-enough file.
std::vector<retrieval_case> retrieval_cases(const std::vector<std::string>& corpus, const model& m,
                                            const std::vector<std::string>& tasks, int ctx, int n_cases,
                                            uint64_t seed);

// Case-insensitive: does output contain every answer?
bool retrieval_correct(const std::string& output, const std::vector<std::string>& answers);

struct retrieval_task_result {
  std::string task;
  int n_cases = 0, n_correct = 0;
  double accuracy = 0.0, ci_low = 0.0, ci_high = 1.0;  // Wilson 95% interval
  double needle_kept = 0.0;                            // mean over its cases
};

struct retrieval_result {
  std::vector<retrieval_task_result> tasks;  // in the order the cases name them
  double accuracy_mean = 0.0;                // mean of the tasks' accuracies
  double share_final = 1.0;                  // mean over cases of the KV share after the prompt
  std::vector<std::string> outputs;          // [cases] generated text
  std::vector<uint8_t> correct;              // [cases]
  // [cases] share of the asked needles' (layer, KV head, token) slots still live when generation
  // starts: tells an answer lost because the policy evicted it from one the model got wrong.
  std::vector<double> needle_kept;
};

// Runs every case with the policy (hard eviction) and greedy decoding.
retrieval_result run_retrieval(const model& m, std::shared_ptr<const gate_bank> gates, const bench_config& config,
                               const std::vector<retrieval_case>& cases, int batch, linear_rows prefill,
                               const bench_progress& progress);

// One configuration's run, as the report keeps it.
struct retrieval_run {
  bench_config config;
  retrieval_result result;
};

}  // namespace kvgate::eval
