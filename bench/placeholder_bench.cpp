#include <benchmark/benchmark.h>
static void noop(benchmark::State& state) { for (auto _ : state) benchmark::DoNotOptimize(0); }
BENCHMARK(noop);
