// Dequantization throughput: what prefill pays to expand a weight matrix to f32.
// bytes/s counts the quantized bytes read; items/s the f32 elements written.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "gguf/gguf.h"

namespace {

using kvgate::gguf::tensor_type;

constexpr int64_t n_elements = int64_t{1} << 22;  // 4M weights: 576 x 7282, bigger than L2

// Random blocks of `type`: quantized from normal data where we have a quantizer, else random
// bytes with the f16 scales set to sane values (the speed does not depend on the values).
std::vector<uint8_t> make_blocks(tensor_type type) {
  const auto& t = kvgate::gguf::traits(type);
  std::vector<uint8_t> q(kvgate::gguf::row_bytes(type, n_elements));
  std::mt19937 rng(1);
  if (type == tensor_type::q4_k || type == tensor_type::q6_k || type == tensor_type::q5_k) {
    for (auto& b : q) b = static_cast<uint8_t>(rng());
    const uint16_t d = kvgate::gguf::f32_to_f16(0.01f);
    for (size_t at = 0; at < q.size(); at += t.type_size) {
      if (type == tensor_type::q6_k) {
        std::memcpy(&q[at + 208], &d, 2);
      } else {
        std::memcpy(&q[at], &d, 2);
        std::memcpy(&q[at + 2], &d, 2);
      }
    }
  } else {
    std::normal_distribution<float> normal;
    std::vector<float> x(n_elements);
    for (float& v : x) v = normal(rng);
    kvgate::gguf::quantize(type, x.data(), q.data(), n_elements);
  }
  return q;
}

void bm_dequantize(benchmark::State& state, tensor_type type) {
  const std::vector<uint8_t> q = make_blocks(type);
  std::vector<float> y(n_elements);  // [n_elements]
  for (auto _ : state) {
    kvgate::gguf::dequantize(type, q.data(), y.data(), n_elements);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(q.size()));
  state.SetItemsProcessed(state.iterations() * n_elements);
}

BENCHMARK_CAPTURE(bm_dequantize, q4_1, tensor_type::q4_1)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(bm_dequantize, q8_0, tensor_type::q8_0)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(bm_dequantize, q4_k, tensor_type::q4_k)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(bm_dequantize, q5_k, tensor_type::q5_k)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(bm_dequantize, q6_k, tensor_type::q6_k)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(bm_dequantize, f16, tensor_type::f16)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(bm_dequantize, bf16, tensor_type::bf16)->Unit(benchmark::kMicrosecond);

}  // namespace
