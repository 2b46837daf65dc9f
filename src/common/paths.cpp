#include "common/paths.h"

#include <cstdlib>

namespace kvgate {

std::string kvgate_home() {
  if (const char* env = std::getenv("KVGATE_HOME"); env && *env) return env;
  const char* user_home = std::getenv("HOME");
  return std::string(user_home ? user_home : ".") + "/.cache/kvgate";
}

std::string default_model_path() { return kvgate_home() + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"; }

}  // namespace kvgate
