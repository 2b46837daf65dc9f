#include "test_util.h"

#include "common/paths.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <fstream>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <vector>

namespace kvgate::test {

std::string default_model_path() {
  std::string path = kvgate::default_model_path();
  if (!std::filesystem::exists(path)) {
    ADD_FAILURE() << "default model missing at " << path << ": run scripts/fetch_model.sh";
  }
  return path;
}

std::string data_path(const std::string& name) { return std::string(KVGATE_TEST_DATA) + "/" + name; }

namespace {

// Removes every directory temp_dir() made when the test program exits.
struct temp_dirs {
  std::vector<std::filesystem::path> made;
  ~temp_dirs() {
    std::error_code ec;
    for (const auto& dir : made) std::filesystem::remove_all(dir, ec);
  }
};
temp_dirs g_temp_dirs;

}  // namespace

std::string temp_dir() {
  static std::atomic<int> counter{0};
  auto dir = std::filesystem::temp_directory_path() /
             ("kvgate_test_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  g_temp_dirs.made.push_back(dir);
  return dir.string();
}

int run_command(const std::string& command, std::string* out) {
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return -1;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) {
    if (out) out->append(buf.data(), n);
  }
  int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

kvgate_result run_kvgate(const std::string& args, const std::string& input) {
  const std::string dir = temp_dir();
  std::ofstream(dir + "/stdin", std::ios::binary) << input;
  kvgate_result r;
  r.status = run_command(std::string(KVGATE_BINARY) + " " + args + " <" + dir + "/stdin 2>" + dir + "/stderr", &r.out);
  std::ifstream in(dir + "/stderr", std::ios::binary);
  r.err.assign(std::istreambuf_iterator<char>(in), {});
  return r;
}

}  // namespace kvgate::test
