// Micro-benchmarks of the attention kernel at SmolLM2-135M's head shape (d_head 64, 3 query heads
// per KV head): one decode query group against n live slots, per KV type, single-threaded; bytes
// per second counts the K and V rows read.
#include <benchmark/benchmark.h>

#include <random>

#include "model/attention_kernel.h"

namespace {

using kvgate::kv_type;

// args: n slots, n_q (query heads of the group)
void run(benchmark::State& state, kv_type type) {
  const int d = 64;
  const int n = static_cast<int>(state.range(0)), n_q = static_cast<int>(state.range(1));
  kvgate::kv_cache cache(1, 1, d, type);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> k(static_cast<size_t>(n) * d), v(k.size()), q(static_cast<size_t>(n_q) * d);
  for (float& x : k) x = nd(rng);
  for (float& x : v) x = nd(rng);
  for (float& x : q) x = nd(rng);
  std::vector<int32_t> pos(n);
  for (int j = 0; j < n; ++j) pos[j] = j;
  cache.append(0, k.data(), v.data(), pos.data(), n);
  const kvgate::kv_head& h = cache.head(0, 0);
  std::vector<kvgate::slot_run> runs;
  kvgate::live_runs(h, h.n_slots(), runs);
  std::vector<float> out(q.size()), scratch;
  for (auto _ : state) {
    kvgate::attend(h.k, h.v, runs, h.n_live(), q.data(), n_q, nullptr, 0.125f, out.data(), nullptr, nullptr, scratch);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * 2 * static_cast<int64_t>(h.k.row_bytes()) * n);
  state.counters["slots/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * n, benchmark::Counter::kIsRate);
}

void shapes(benchmark::internal::Benchmark* b) {
  for (int n : {512, 4096, 7600}) b->Args({n, 3});
  b->Args({4096, 1});
  b->Args({4096, 24});  // a prefill tile: 8 tokens x 3 query heads
}

BENCHMARK_CAPTURE(run, f32, kv_type::f32)->Apply(shapes);
BENCHMARK_CAPTURE(run, f16, kv_type::f16)->Apply(shapes);
BENCHMARK_CAPTURE(run, q8_0, kv_type::q8_0)->Apply(shapes);

}  // namespace
