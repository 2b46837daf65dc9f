// Batched decode (model/batch_decoder.h) on the default model: one step of n sessions, each
// holding a context of 256 tokens and more, against n sessions stepped one after another. tokens/s counts
// the n tokens of a step; the weights are read once per batched step. batched_threads: the same
// step on 2 threads (batched runs on one).
#include <benchmark/benchmark.h>

#include <memory>
#include <vector>

#include "common/paths.h"
#include "model/batch_decoder.h"
#include "model/linear.h"

namespace {

const kvgate::model& default_model() {
  static std::unique_ptr<kvgate::model> m = kvgate::model::load(kvgate::default_model_path());
  return *m;
}

// The first n of a pool of sessions prefilled once (repetitions and runs reuse them; each step
// adds a position, far from the context's end).
std::vector<kvgate::session*> sessions_with_context(const kvgate::model& m, int n) {
  static std::vector<std::unique_ptr<kvgate::session>> pool;
  std::vector<int32_t> prompt(256);
  for (int i = static_cast<int>(pool.size()); i < n; ++i) {
    for (size_t t = 0; t < prompt.size(); ++t) prompt[t] = static_cast<int32_t>((t * 7919 + i * 131) % 40000 + 100);
    pool.push_back(std::make_unique<kvgate::session>(m, kvgate::session_options{.n_ctx = 1 << 15}));
    pool.back()->prefill(prompt);
  }
  std::vector<kvgate::session*> ss;
  for (int i = 0; i < n; ++i) ss.push_back(pool[i].get());
  return ss;
}

// One batched step of state.range(0) sessions on n_threads threads, timed.
void run_batched(benchmark::State& state, int n_threads) {
  const kvgate::model& m = default_model();
  const int n = static_cast<int>(state.range(0));
  const std::vector<kvgate::session*> ptrs = sessions_with_context(m, n);
  std::vector<int32_t> ids(n, 42);
  kvgate::batch_decoder dec(m);
  kvgate::set_compute_threads(n_threads);
  for (auto _ : state) benchmark::DoNotOptimize(dec.step(ptrs, ids).data());
  kvgate::set_compute_threads(1);
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * n, benchmark::Counter::kIsRate);
}

// arg: sessions in the batch
void batched(benchmark::State& state) { run_batched(state, 1); }

void one_by_one(benchmark::State& state) {
  const kvgate::model& m = default_model();
  const int n = static_cast<int>(state.range(0));
  const std::vector<kvgate::session*> ss = sessions_with_context(m, n);
  const int32_t id = 42;
  for (auto _ : state) {
    for (kvgate::session* s : ss) benchmark::DoNotOptimize(s->step(std::span<const int32_t>(&id, 1), kvgate::logits_mode::last).data());
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * n, benchmark::Counter::kIsRate);
}

// arg: sessions in the batch; 2 threads
void batched_threads(benchmark::State& state) { run_batched(state, 2); }

BENCHMARK(batched)->Arg(1)->Arg(2)->Arg(4)->Arg(8)->Arg(16)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(batched_threads)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond)->MinTime(2.0);
BENCHMARK(one_by_one)->Arg(1)->Arg(8)->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace
