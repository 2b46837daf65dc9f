// Micro-benchmarks of the gate bank at SmolLM2-135M's shape (90 heads, d_head 64): batched
// scoring of n candidate keys per head (decode gathers candidates into blocks of ~16), and one
// training step of the trainer (forward, loss, backward, Adam over [90, batch, 64] inputs).
// Run with OPENBLAS_CORETYPE set as the kvgate binary sets it (see src/cli/main.cpp), e.g.
// OPENBLAS_CORETYPE=SkylakeX OMP_WAIT_POLICY=passive build/kvgate_bench --benchmark_filter=gate
#include <benchmark/benchmark.h>
#include <omp.h>

#include <random>
#include <vector>

#include "gate/gate_bank.h"
#include "gate/gate_mlp.h"

namespace {

using namespace kvgate;

gate_meta smollm_meta() {
  gate_meta m;
  m.model_name = "bench";
  m.n_layer = 30;
  m.n_kv_head = 3;
  m.d_head = 64;
  return m;
}

std::vector<float> random_vector(size_t n, uint32_t seed, float scale) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = normal(gen);
  return v;
}

// args: n keys per head, threads
void gate_score(benchmark::State& state) {
  const int64_t n = state.range(0);
  omp_set_num_threads(static_cast<int>(state.range(1)));
  gate_bank bank(smollm_meta(), 1);
  bank.params() = random_vector(bank.params().size(), 1, 0.05f);
  const int H = bank.n_heads(), d = bank.d_head();
  const std::vector<float> keys = random_vector(size_t(H) * n * d, 2, 1.0f);
  std::vector<float> logits(size_t(H) * n);
  for (auto _ : state) {
    bank.score(keys.data(), n, logits.data());
    benchmark::DoNotOptimize(logits.data());
  }
  state.counters["keys/s"] = benchmark::Counter(double(H) * n, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(gate_score)->ArgsProduct({{1, 16, 64}, {1, 2}})->UseRealTime();

// args: batch per head, threads. Counts training examples (all heads) per second.
void gate_train_step(benchmark::State& state) {
  const int B = static_cast<int>(state.range(0)), n_threads = static_cast<int>(state.range(1));
  omp_set_num_threads(n_threads);
  const gate_dims dims{90, 64, k_gate_hidden, 1};
  const int H = dims.n_heads, F = dims.n_hidden;
  std::vector<float> params = random_vector(gate_param_count(dims), 3, 0.05f);
  std::vector<float> grads(params.size()), m(params.size(), 0.0f), v(params.size(), 0.0f);
  const auto p = gate_param_views(params.data(), dims);
  const auto g = gate_param_views(grads.data(), dims);
  const std::vector<float> x = random_vector(size_t(H) * B * dims.d_in, 4, 1.0f);
  std::vector<uint8_t> y(size_t(H) * B);
  for (size_t i = 0; i < y.size(); ++i) y[i] = i % 2;
  std::vector<float> h1(size_t(H) * B * F), h2(h1.size()), d_h1(h1.size()), d_h2(h1.size()),
      z(size_t(H) * B), d_z(z.size()), loss(H);
  blas_single_thread guard;
  int64_t t = 0;
  for (auto _ : state) {
    std::fill(grads.begin(), grads.end(), 0.0f);
    gate_forward<float>(p, dims, x.data(), B, {h1.data(), h2.data(), z.data()}, n_threads);
    bce_forward<float>(loss.data(), z.data(), y.data(), H, B);
    bce_backward<float>(d_z.data(), z.data(), y.data(), H, B);
    gate_backward<float>(p, g, dims, x.data(), B, {h1.data(), h2.data(), z.data()}, d_z.data(),
                         d_h1.data(), d_h2.data(), n_threads);
    adam_update(params.data(), grads.data(), m.data(), v.data(), int64_t(params.size()), 1e-4f,
                0.9f, 0.999f, 1e-8f, 0.0f, ++t);
  }
  state.counters["examples/s"] =
      benchmark::Counter(double(H) * B, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(gate_train_step)->ArgsProduct({{128, 256}, {1, 2}})->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
