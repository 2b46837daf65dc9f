// kill -9 at random moments: `kvgate collect` loses no completed shard, never leaves a manifest
// that lists a damaged one, resumes, and ends with the dataset an uninterrupted run writes (same
// manifest counts, same shard bytes); `kvgate train` replaces its output atomically (the old gate
// file or the whole new one, never a torn file).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "common/files.h"
#include "data/dataset.h"
#include "gate/gate_bank.h"
#include "test_util.h"

extern char** environ;

namespace kvgate {
namespace {

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

// Starts kvgate with args (stdout and stderr to /dev/null); returns its pid.
pid_t spawn_kvgate(const std::vector<std::string>& args) {
  std::vector<std::string> argv_s = {KVGATE_BINARY};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  EXPECT_EQ(rc, 0) << "posix_spawn " << argv[0];
  return pid;
}

// Runs to the end; returns the exit status.
int run_to_end(const std::vector<std::string>& args) {
  const pid_t pid = spawn_kvgate(args);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Sends SIGKILL after delay; returns true when the process was still running (the kill landed).
bool run_and_kill(const std::vector<std::string>& args, std::chrono::microseconds delay) {
  const pid_t pid = spawn_kvgate(args);
  std::this_thread::sleep_for(delay);
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

// Polls ready() every 0.2 ms while the process runs; once it holds, waits delay and sends SIGKILL.
// Returns true when the kill landed on a running process.
template <typename F>
bool run_and_kill_when(const std::vector<std::string>& args, F ready, std::chrono::microseconds delay) {
  const pid_t pid = spawn_kvgate(args);
  int status = 0;
  while (!ready()) {
    if (waitpid(pid, &status, WNOHANG) == pid) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  std::this_thread::sleep_for(delay);
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

uint64_t hash_of(const std::string& path) {
  const std::string bytes = read_file(path);
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// shard file name -> hash of its bytes
std::map<std::string, uint64_t> shard_hashes(const std::string& dir) {
  std::map<std::string, uint64_t> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("shard-", 0) == 0 && name.size() > 4 && name.substr(name.size() - 4) == ".bin") {
      out[name] = hash_of(e.path().string());
    }
  }
  return out;
}

std::string make_corpus(const std::string& dir) {
  fs::create_directories(dir);
  std::mt19937 rng(1);
  const char* words[] = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"};
  for (int f = 0; f < 8; ++f) {
    std::ofstream out(dir + "/d" + std::to_string(f) + ".txt");
    for (int w = 0; w < 400; ++w) out << words[rng() % 10] << (w % 17 == 16 ? ".\n" : " ");
  }
  return dir;
}

std::vector<std::string> collect_args(const std::string& corpus, const std::string& out) {
  return {"collect", "--model", test::data_path("tiny/llama.gguf"), "--threads", "1", "--corpus", corpus, "--out", out,
          "--ctx", "128", "--window", "8", "--horizon", "16", "--sinks", "2", "--batch", "32", "--shard-docs", "1",
          "--seed", "3"};
}

TEST(crash_safety, collect_killed_20_times_loses_nothing_and_resumes_to_the_same_dataset) {
  const std::string dir = test::temp_dir();
  const std::string corpus = make_corpus(dir + "/corpus"), ref = dir + "/ref", out = dir + "/out";

  const auto t0 = clock_type::now();
  ASSERT_EQ(run_to_end(collect_args(corpus, ref)), 0);
  const auto full_us = std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count();
  const dataset reference = dataset::load(ref);
  const std::map<std::string, uint64_t> ref_hashes = shard_hashes(ref);
  ASSERT_GE(ref_hashes.size(), 10u);

  // Each kill comes at a random moment of a random stage: while the model loads (a random delay
  // from the start), or a random 0-20 ms after the run's k-th new shard appeared (k = 1..3), which
  // lands in the middle of a document, a shard write or a manifest update. Load on the machine
  // changes the timing, not the stages.
  std::mt19937 rng(20261201);
  std::uniform_int_distribution<int> stage(0, 3);
  // Delays scale with the uninterrupted run's time, so the kills land on a running collect on a fast
  // or a loaded machine alike.
  std::uniform_int_distribution<int64_t> start_us(0, full_us / 2), after_us(0, std::max<int64_t>(full_us / 40, 1000));
  int landed = 0, restarts = 0;
  std::map<std::string, uint64_t> survived;  // shards complete after an earlier kill
  for (int round = 0; round < 20; ++round) {
    const int k = stage(rng);
    const size_t have = fs::exists(out) ? shard_hashes(out).size() : 0;
    auto ready = [&] {
      if (k == 0) return true;
      size_t n = 0;
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(out, ec)) {
        const std::string name = e.path().filename().string();
        n += name.rfind("shard-", 0) == 0 && name.find(".tmp") == std::string::npos;
      }
      return n >= have + k;
    };
    landed += run_and_kill_when(collect_args(corpus, out), ready,
                                std::chrono::microseconds(k == 0 ? start_us(rng) : after_us(rng)));
    if (!fs::exists(out)) continue;
    // Every shard complete before survives unchanged; every shard the manifest lists loads; each
    // equals the uninterrupted run's.
    const std::map<std::string, uint64_t> now = shard_hashes(out);
    for (const auto& [name, h] : survived) {
      ASSERT_TRUE(now.count(name)) << "round " << round << ": lost " << name;
      EXPECT_EQ(now.at(name), h) << "round " << round << ": " << name << " changed";
    }
    for (const auto& [name, h] : now) {
      ASSERT_TRUE(ref_hashes.count(name)) << name;
      EXPECT_EQ(h, ref_hashes.at(name)) << "round " << round << ": " << name << " differs from the reference";
    }
    if (fs::exists(out + "/manifest.json")) {
      dataset partial;
      ASSERT_NO_THROW(partial = dataset::load(out)) << "round " << round;
      EXPECT_LE(partial.manifest.n_docs, reference.manifest.n_docs);
      for (const std::string& s : partial.manifest.shards) survived[s] = now.at(s);
      if (partial.manifest.n_docs == reference.manifest.n_docs) {  // finished: start over
        fs::remove_all(out);
        survived.clear();
        ++restarts;
      }
    }
  }
  std::printf("  20 kills (uninterrupted run %.2f s): %d landed on a running collect, %d datasets completed "
              "between kills\n",
              full_us / 1e6, landed, restarts);
  EXPECT_GE(landed, 10);

  ASSERT_EQ(run_to_end(collect_args(corpus, out)), 0);
  const dataset resumed = dataset::load(out);
  EXPECT_EQ(resumed.manifest.n_docs, reference.manifest.n_docs);
  EXPECT_EQ(resumed.manifest.n_tokens, reference.manifest.n_tokens);
  EXPECT_EQ(resumed.manifest.n_pos, reference.manifest.n_pos);
  EXPECT_EQ(resumed.manifest.n_neg, reference.manifest.n_neg);
  EXPECT_EQ(resumed.manifest.n_stored, reference.manifest.n_stored);
  EXPECT_EQ(resumed.manifest.shards, reference.manifest.shards);
  EXPECT_EQ(shard_hashes(out), ref_hashes);
}

TEST(crash_safety, train_killed_at_random_moments_leaves_the_old_or_the_new_gate_file) {
  const std::string dir = test::temp_dir();
  const std::string corpus = make_corpus(dir + "/corpus"), data = dir + "/ds", gates = dir + "/gates.gguf";
  ASSERT_EQ(run_to_end(collect_args(corpus, data)), 0);
  const std::vector<std::string> args = {"train", "--data", data, "--out", gates, "--threads", "1", "--epochs", "2",
                                         "--seed", "1"};
  const auto t0 = clock_type::now();
  ASSERT_EQ(run_to_end(args), 0);
  const auto full_us = std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - t0).count();
  const std::vector<float> first = gate_bank::load(gates).params();

  std::mt19937 rng(7);
  std::uniform_int_distribution<int64_t> delay_us(0, full_us * 3 / 4);
  int landed = 0;
  for (int round = 0; round < 8; ++round) {
    landed += run_and_kill(args, std::chrono::microseconds(delay_us(rng)));
    ASSERT_TRUE(fs::exists(gates)) << "round " << round;
    std::vector<float> params;
    ASSERT_NO_THROW(params = gate_bank::load(gates).params()) << "round " << round;
    EXPECT_EQ(params, first) << "round " << round << ": the same seed gives the same gates (old or new file)";
  }
  std::printf("  8 kills of train in [0, %.2f s]: %d landed\n", full_us / 1e6, landed);
  EXPECT_GE(landed, 2);
}

}  // namespace
}  // namespace kvgate
