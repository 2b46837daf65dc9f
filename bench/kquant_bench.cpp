// Decode matrix-vector products per weight byte, single-threaded, at SmolLM2-135M's ffn_down shape
// (n_in 1536, n_out 576): the K-quant integer kernels (src/model/kquant_dot.h) against the Q4_1
// integer kernel of linear_forward, and against linear_forward's dequantize-then-dot path that
// K-quant weights take today. bytes_per_second counts weight bytes read (each iteration reads the
// whole matrix once, for any number of input vectors); activation quantization is inside the loop
// for every variant, as in decode.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>

#include "model/kquant_dot.h"
#include "model/linear.h"

namespace {

using kvgate::gguf::tensor_type;

// Random K-quant bytes with small finite f16 scales; other types through the reference quantizer.
std::vector<uint8_t> make_matrix(tensor_type type, int64_t n_in, int64_t n_out) {
  const size_t row = kvgate::gguf::row_bytes(type, n_in);
  std::vector<uint8_t> bytes(row * n_out);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  if (kvgate::has_kquant_kernel(type)) {
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
    const size_t block = kvgate::gguf::traits(type).type_size;
    for (size_t off = 0; off < bytes.size(); off += block) {
      const uint16_t d = kvgate::gguf::f32_to_f16(0.01f * u(rng));
      std::memcpy(&bytes[type == tensor_type::q6_k ? off + 208 : off], &d, 2);
      if (type != tensor_type::q6_k) std::memcpy(&bytes[off + 2], &d, 2);
    }
  } else {
    std::vector<float> w(n_in);
    for (int64_t r = 0; r < n_out; ++r) {
      for (float& v : w) v = u(rng);
      kvgate::gguf::quantize(type, w.data(), bytes.data() + r * row, n_in);
    }
  }
  return bytes;
}

std::vector<float> make_input(int64_t n) {
  std::mt19937 rng(2);
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::vector<float> x(n);
  for (float& v : x) v = g(rng);
  return x;
}

// args: n_in, n_out, n_vectors. linear_forward's per-row path (integer kernel for Q4_1,
// dequantize + f32 dot for K types).
void run_linear(benchmark::State& state, tensor_type type) {
  const int64_t n_in = state.range(0), n_out = state.range(1), n_vec = state.range(2);
  kvgate::set_compute_threads(1);
  std::vector<uint8_t> bytes = make_matrix(type, n_in, n_out);
  const size_t row = kvgate::gguf::row_bytes(type, n_in);
  const kvgate::linear w{type, bytes.data(), n_in, n_out, row};
  const std::vector<float> x = make_input(n_in * n_vec);
  std::vector<float> y(n_out * n_vec);
  kvgate::linear_scratch scratch;
  for (auto _ : state) {
    kvgate::linear_forward(w, x.data(), y.data(), n_vec, scratch, kvgate::linear_rows::independent);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes.size()) * state.iterations());
}

// The K-quant kernels: quantize each input once, then every row against all of them.
void run_kquant(benchmark::State& state, tensor_type type) {
  const int64_t n_in = state.range(0), n_out = state.range(1), n_vec = state.range(2);
  std::vector<uint8_t> bytes = make_matrix(type, n_in, n_out);
  const size_t row = kvgate::gguf::row_bytes(type, n_in);
  const std::vector<float> x = make_input(n_in * n_vec);
  std::vector<kvgate::q8k_activations> xq(n_vec);
  std::vector<float> y(n_out * n_vec);
  for (auto _ : state) {
    for (int64_t r = 0; r < n_vec; ++r) kvgate::quantize_q8k(x.data() + r * n_in, n_in, xq[r]);
    for (int64_t o = 0; o < n_out; ++o) {
      kvgate::kquant_dot_rows(type, bytes.data() + o * row, xq.data(), static_cast<int>(n_vec), y.data() + o, n_out);
    }
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes.size()) * state.iterations());
}

void BM_decode_q4_1_int(benchmark::State& state) { run_linear(state, tensor_type::q4_1); }
void BM_decode_q4_k_int(benchmark::State& state) { run_kquant(state, tensor_type::q4_k); }
void BM_decode_q5_k_int(benchmark::State& state) { run_kquant(state, tensor_type::q5_k); }
void BM_decode_q6_k_int(benchmark::State& state) { run_kquant(state, tensor_type::q6_k); }
void BM_decode_q4_k_dequant(benchmark::State& state) { run_linear(state, tensor_type::q4_k); }

BENCHMARK(BM_decode_q4_1_int)->Args({1536, 576, 1})->Args({1536, 576, 4});
BENCHMARK(BM_decode_q4_k_int)->Args({1536, 576, 1})->Args({1536, 576, 4});
BENCHMARK(BM_decode_q5_k_int)->Args({1536, 576, 1});
BENCHMARK(BM_decode_q6_k_int)->Args({1536, 576, 1});
BENCHMARK(BM_decode_q4_k_dequant)->Args({1536, 576, 1});

}  // namespace
