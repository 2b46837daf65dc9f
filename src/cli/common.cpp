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

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;  // Linux reports kilobytes
}

}  // namespace kvgate::cli
