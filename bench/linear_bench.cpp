// Micro-benchmarks of the matrix-product kernels at SmolLM2-135M's shapes: the decode path (one
// row, integer dot products) and the prefill path (dequantize + sgemm). KVGATE_ISA=avx2 runs
// every benchmark of kvgate_bench on the AVX2 kernels of an AVX-512 CPU; each linear benchmark's
// label names the instruction set it ran.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>

#include "model/isa.h"
#include "model/linear.h"

namespace {

const bool isa_from_env = [] {
  try {
    kvgate::isa::set_from_env();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvgate_bench: %s\n", e.what());
    std::exit(1);
  }
  return true;
}();

using kvgate::gguf::tensor_type;

struct bench_weight {
  std::vector<uint8_t> bytes;
  kvgate::linear w;
};

bench_weight make(tensor_type type, int64_t n_in, int64_t n_out) {
  bench_weight b;
  const size_t row = kvgate::gguf::row_bytes(type, n_in);
  b.bytes.resize(row * n_out);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(n_in);
  const bool k_type = type == tensor_type::q4_k || type == tensor_type::q5_k || type == tensor_type::q6_k;
  if (k_type) {
    // no K quantizer: random blocks with small f16 scales (the kernels' work does not depend on values)
    for (uint8_t& v : b.bytes) v = static_cast<uint8_t>(rng());
    const size_t block = kvgate::gguf::traits(type).type_size;
    const uint16_t d = kvgate::gguf::f32_to_f16(0.01f);
    for (size_t off = 0; off < b.bytes.size(); off += block) {
      std::memcpy(&b.bytes[off + (type == tensor_type::q6_k ? block - 2 : 0)], &d, 2);
    }
  } else {
    for (int64_t r = 0; r < n_out; ++r) {
      for (float& v : x) v = u(rng);
      kvgate::gguf::quantize(type, x.data(), b.bytes.data() + r * row, n_in);
    }
  }
  b.w = {type, b.bytes.data(), n_in, n_out, row};
  return b;
}

// args: n_in, n_out, n_rows
void run(benchmark::State& state, tensor_type type,
         kvgate::linear_rows rows = kvgate::linear_rows::automatic, bool pack = false) {
  const int64_t n_in = state.range(0), n_out = state.range(1), n_rows = state.range(2);
  kvgate::set_compute_threads(1);
  bench_weight b = make(type, n_in, n_out);
  std::vector<uint8_t> packed;
  if (pack) {
    packed = kvgate::linear_pack(b.w);
    b.w.packed = packed.data();
  }
  std::vector<float> x(n_rows * n_in, 0.5f), y(n_rows * n_out);
  kvgate::linear_scratch scratch;
  state.SetLabel(std::string(kvgate::isa::name(kvgate::isa::active())));
  for (auto _ : state) {
    kvgate::linear_forward(b.w, x.data(), y.data(), n_rows, scratch, rows);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["MAC/s"] = benchmark::Counter(static_cast<double>(n_in * n_out * n_rows) * state.iterations(),
                                               benchmark::Counter::kIsRate);
  // weight bytes read per second: compares types per byte (a K-quant or Q5 model against Q4_1)
  state.counters["B/s"] = benchmark::Counter(static_cast<double>(b.w.row_bytes * n_out) * state.iterations(),
                                             benchmark::Counter::kIsRate);
}

void BM_linear_q4_1(benchmark::State& state) { run(state, tensor_type::q4_1); }
void BM_linear_q8_0(benchmark::State& state) { run(state, tensor_type::q8_0); }
// The integer path at any row count (linear_rows::independent).
void BM_linear_q4_1_int(benchmark::State& state) {
  run(state, tensor_type::q4_1, kvgate::linear_rows::independent);
}

// The same with the weight interleaved by 8 rows, as the model loads it.
void BM_linear_q4_1_packed(benchmark::State& state) {
  run(state, tensor_type::q4_1, kvgate::linear_rows::independent, true);
}
void BM_linear_q8_0_packed(benchmark::State& state) {
  run(state, tensor_type::q8_0, kvgate::linear_rows::independent, true);
}
void BM_linear_q5_0_packed(benchmark::State& state) {
  run(state, tensor_type::q5_0, kvgate::linear_rows::independent, true);
}
// K types (row kernels of model/kquant_dot.h; no packed layout)
void BM_linear_q4_k(benchmark::State& state) { run(state, tensor_type::q4_k, kvgate::linear_rows::independent); }
void BM_linear_q6_k(benchmark::State& state) { run(state, tensor_type::q6_k, kvgate::linear_rows::independent); }

// ffn_up of SmolLM2 (576 -> 1536) and the tied output head (576 -> 49152)
BENCHMARK(BM_linear_q4_1)->Args({576, 1536, 1})->Args({576, 1536, 64})->Args({1536, 576, 1});
// Where the sgemm path (dequantize the weight, f32 product) starts to beat integer dot products.
BENCHMARK(BM_linear_q4_1)->ArgsProduct({{1536}, {576}, {8, 16, 32, 64, 128, 256, 512}});
BENCHMARK(BM_linear_q4_1_int)->ArgsProduct({{1536}, {576}, {1, 4, 8, 16, 32, 64, 128}});
BENCHMARK(BM_linear_q4_1_packed)->ArgsProduct({{1536}, {576}, {1, 4, 8, 16, 32, 64, 128, 256, 512}});
BENCHMARK(BM_linear_q8_0)->Args({576, 49152, 1})->Args({576, 4096, 64});
BENCHMARK(BM_linear_q8_0_packed)->ArgsProduct({{576}, {4096}, {1, 8}});
// What a Q4_K_M file of SmolLM2 holds: Q5_0 for the 576-wide inputs, Q4_K / Q6_K for ffn_down.
BENCHMARK(BM_linear_q5_0_packed)->ArgsProduct({{576}, {1536}, {1, 4}});
BENCHMARK(BM_linear_q4_k)->ArgsProduct({{1536}, {576}, {1, 4}});
BENCHMARK(BM_linear_q6_k)->ArgsProduct({{1536}, {576}, {1, 4}});

}  // namespace
