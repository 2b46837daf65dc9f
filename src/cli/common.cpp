#include "cli/common.h"

#include <sys/resource.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/paths.h"
#include "model/linear.h"

namespace kvgate::cli {

void add_model_options(CLI::App& app, model_options& options) {
  app.add_option("--model,-m", options.model_path, "GGUF model file (default: SmolLM2-135M-Instruct Q4_1)");
  app.add_option("--threads,-t", options.threads, "compute threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
}

std::string resolve_model_path(const model_options& options) {
  if (!options.model_path.empty()) {
    if (!std::filesystem::exists(options.model_path)) fail("model file not found: {}", options.model_path);
    return options.model_path;
  }
  std::string path = default_model_path();
  if (!std::filesystem::exists(path)) {
    fail("default model not found at {}; run scripts/fetch_model.sh or pass --model PATH", path);
  }
  return path;
}

void apply_threads(const model_options& options) { set_compute_threads(options.threads); }

void add_kv_type_option(CLI::App& app, std::string& kv_type) {
  app.add_option("--kv-type", kv_type, "element type of the KV cache: f32, f16 or q8_0")->capture_default_str();
}

void add_prefill_option(CLI::App& app, std::string& prefill) {
  app.add_option("--prefill", prefill,
                 "prompt math: int8 (activations quantized to 8 bits and integer kernels, as decode and llama.cpp; "
                 "faster) or f32 (dequantized weights, exact to float rounding, as perplexity and bench)")
      ->check(CLI::IsMember({"int8", "f32"}))
      ->capture_default_str();
}

linear_rows parse_prefill(const std::string& prefill) {
  if (prefill == "int8") return linear_rows::quantized;
  if (prefill == "f32") return linear_rows::automatic;
  fail("unknown --prefill '{}' (int8 or f32)", prefill);
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;  // Linux reports kilobytes
}

}  // namespace kvgate::cli
