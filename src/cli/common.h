// Shared pieces of the kvgate subcommands: default model location, thread setup, timing, memory.
#pragma once

#include <CLI/CLI.hpp>

#include <chrono>
#include <string>

#include "model/linear.h"

namespace kvgate::cli {

// Options every model-running subcommand takes.
struct model_options {
  std::string model_path;  // empty: the default model
  int threads = 0;         // 0: all cores
};

void add_model_options(CLI::App& app, model_options& options);

// The model to open: the --model given, else the default; throws error with a hint when missing.
std::string resolve_model_path(const model_options& options);
// Applies --threads to OpenMP and BLAS.
void apply_threads(const model_options& options);

// --kv-type (f32 | f16 | q8_0, default f16) into kv_type.
void add_kv_type_option(CLI::App& app, std::string& kv_type);
// --prefill (int8 | f32; the default is prefill's value) into prefill: how prompt chunks go through the linear
// layers (linear_rows::quantized or automatic).
void add_prefill_option(CLI::App& app, std::string& prefill);
linear_rows parse_prefill(const std::string& prefill);

double peak_rss_mb();

class stopwatch {
 public:
  stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

// Each subcommand adds itself to the app; its callback runs when it is chosen and reports
// failures by throwing kvgate::error.
void register_info(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_generate(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_collect(CLI::App& app);
void register_train(CLI::App& app);
void register_eval(CLI::App& app);
void register_chat(CLI::App& app);
void register_demo(CLI::App& app);
void register_bench(CLI::App& app);
void register_serve(CLI::App& app);

}  // namespace kvgate::cli
