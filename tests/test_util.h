// Shared helpers for the test suite: where the default model and the committed golden data are.
#pragma once

#include <string>

namespace kvgate::test {

// The default model (SmolLM2-135M-Instruct Q4_1) in $KVGATE_HOME/models or
// ~/.cache/kvgate/models. Integration tests fail (not skip) when it is missing: CI installs it
// with scripts/fetch_model.sh.
std::string default_model_path();

// tests/data/<name>
std::string data_path(const std::string& name);

// A fresh empty directory under the system temp dir, unique to this process and call; removed
// when the test program exits.
std::string temp_dir();

// Runs a shell command, returns its exit status and collects stdout (stderr to a file if wanted).
int run_command(const std::string& command, std::string* out);

struct kvgate_result {
  int status = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs the kvgate executable with args and input as its whole stdin; captures stdout and stderr.
kvgate_result run_kvgate(const std::string& args, const std::string& input = "");

}  // namespace kvgate::test
