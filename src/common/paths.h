// Where kvgate keeps what it fetches: $KVGATE_HOME, default ~/.cache/kvgate.
#pragma once

#include <string>

namespace kvgate {

std::string kvgate_home();
// The default model: <home>/models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_model.sh).
std::string default_model_path();

}  // namespace kvgate
