// The K-quant integer kernels (src/model/kquant_dot.h) against two independent references:
//  (a) a double-precision dot of gguf::dequantize(row) with the unquantized activations, within
//      the error the 8-bit activation quantization can make (|x - dx qx| <= dx / 2 per element);
//  (b) the exact integer algorithm restated here in int64 / double from the block layouts (each
//      element's integer quant, scale and min read one at a time), within the rounding of the
//      kernels' float steps: |kernel - exact| <= (n_blocks + 16) * 2^-24 * sum |terms|, where
//      sum |terms| = sum_b |dx_b| (|d_b| sum |sc q qx| + |dmin_b| sum |m qx|). That bound holds
//      for the AVX2 path and the scalar path alike, so the two differ by at most twice it (they
//      compute the same integers and sum the floats in a different order).
// Multi-vector calls must be bit-identical to one-vector calls.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "model/kquant_dot.h"
#include "test_util.h"

namespace kvgate {
namespace {

using gguf::tensor_type;

constexpr int64_t qk = 256;
constexpr double u32 = 1.0 / (1 << 24);  // unit roundoff of float

size_t block_bytes(tensor_type t) { return gguf::traits(t).type_size; }

float f16_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return gguf::f16_to_f32(h);
}

// Random blocks: every byte random, then the f16 scale(s) replaced by finite values.
std::vector<uint8_t> random_rows(tensor_type type, int64_t n_in, int64_t n_rows, std::mt19937_64& rng) {
  std::vector<uint8_t> bytes(gguf::row_bytes(type, n_in) * n_rows);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const size_t block = block_bytes(type);
  for (size_t off = 0; off < bytes.size(); off += block) {
    const uint16_t d = gguf::f32_to_f16(0.02f * u(rng));
    const uint16_t dmin = gguf::f32_to_f16(0.02f * u(rng));
    if (type == tensor_type::q6_k) {
      std::memcpy(&bytes[off + 208], &d, 2);
    } else {
      std::memcpy(&bytes[off], &d, 2);
      std::memcpy(&bytes[off + 2], &dmin, 2);
    }
  }
  return bytes;
}

// Activations with a different magnitude per super-block; one block of zeros when there are >= 2.
std::vector<float> random_activations(int64_t n, std::mt19937_64& rng) {
  std::normal_distribution<float> g(0.0f, 1.0f);
  std::uniform_real_distribution<float> e(-2.0f, 1.0f);
  std::vector<float> x(n);
  for (int64_t b = 0; b < n / qk; ++b) {
    const float scale = std::pow(10.0f, e(rng));
    for (int64_t j = 0; j < qk; ++j) x[b * qk + j] = (n >= 2 * qk && b == 1) ? 0.0f : scale * g(rng);
  }
  return x;
}

// ggml's get_scale_min_k4, one byte at a time, as the format describes it.
void scale_min_bytewise(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// One super-block as integers: w_e = d * a[e] - dmin * c[e] (Q6_K: dmin = 0, a = sc * (q - 32)).
struct int_block {
  double d = 0, dmin = 0;
  int64_t a[qk];
  int64_t c[qk];
};

int_block decode_block(tensor_type type, const uint8_t* blk) {
  int_block out;
  for (int e = 0; e < qk; ++e) {
    if (type == tensor_type::q6_k) {
      const int n = e / 128, k = (e % 128) / 32, l = e % 32;
      const uint8_t ql = blk[64 * n + l + 32 * (k & 1)];
      const int q = (k < 2 ? ql & 0x0f : ql >> 4) | (((blk[128 + 32 * n + l] >> (2 * k)) & 3) << 4);
      const int sc = static_cast<int8_t>(blk[192 + 8 * n + l / 16 + 2 * k]);
      out.a[e] = sc * (q - 32);
      out.c[e] = 0;
    } else {
      const bool q5 = type == tensor_type::q5_k;
      const int k = e / 64, hi = (e % 64) / 32, l = e % 32;
      const uint8_t byte = blk[(q5 ? 48 : 16) + 32 * k + l];
      int q = hi ? byte >> 4 : byte & 0x0f;
      if (q5) q |= ((blk[16 + l] >> (2 * k + hi)) & 1) << 4;
      int sc, m;
      scale_min_bytewise(e / 32, blk + 4, sc, m);
      out.a[e] = sc * q;
      out.c[e] = m;
    }
  }
  if (type == tensor_type::q6_k) {
    out.d = f16_at(blk + 208);
  } else {
    out.d = f16_at(blk);
    out.dmin = f16_at(blk + 2);
  }
  return out;
}

struct exact_dot {
  double value = 0;    // the exact result of the integer algorithm (to double rounding)
  double abs_sum = 0;  // sum |terms|, scales the float rounding bound
};

exact_dot integer_reference(tensor_type type, const uint8_t* row, const q8k_activations& x) {
  exact_dot r;
  for (int64_t b = 0; b < x.n / qk; ++b) {
    const int_block w = decode_block(type, row + b * block_bytes(type));
    int64_t sa = 0, sc = 0, abs_a = 0, abs_c = 0;
    for (int e = 0; e < qk; ++e) {
      const int64_t q = x.q[b * qk + e];
      sa += w.a[e] * q;
      sc += w.c[e] * q;
      abs_a += std::llabs(w.a[e] * q);
      abs_c += std::llabs(w.c[e] * q);
    }
    const double dx = x.d[b];
    r.value += dx * (w.d * static_cast<double>(sa) - w.dmin * static_cast<double>(sc));
    r.abs_sum += std::fabs(dx) * (std::fabs(w.d) * abs_a + std::fabs(w.dmin) * abs_c);
  }
  return r;
}

double rounding_bound(const exact_dot& r, int64_t n) { return (n / qk + 16) * u32 * r.abs_sum; }

using rows_fn = void (*)(const uint8_t*, const q8k_activations*, int, float*, int64_t);

rows_fn fast_rows(tensor_type t) {
  return t == tensor_type::q4_k ? dot_q4_k_rows : t == tensor_type::q5_k ? dot_q5_k_rows : dot_q6_k_rows;
}
rows_fn scalar_rows(tensor_type t) {
  return t == tensor_type::q4_k   ? kquant_scalar::dot_q4_k_rows
         : t == tensor_type::q5_k ? kquant_scalar::dot_q5_k_rows
                                  : kquant_scalar::dot_q6_k_rows;
}

class kquant_kernels : public ::testing::TestWithParam<tensor_type> {};

TEST_P(kquant_kernels, block_decoding_here_matches_gguf_dequantize) {
  // The test's own reading of the layout agrees with the (golden-tested) dequantizer, so (b)
  // below checks the kernels against the format, not against themselves.
  const tensor_type type = GetParam();
  std::mt19937_64 rng(7);
  const std::vector<uint8_t> bytes = random_rows(type, 4 * qk, 1, rng);
  std::vector<float> w(4 * qk);
  gguf::dequantize(type, bytes.data(), w.data(), 4 * qk);
  for (int64_t b = 0; b < 4; ++b) {
    const int_block ib = decode_block(type, bytes.data() + b * block_bytes(type));
    for (int e = 0; e < qk; ++e) {
      const double expect = ib.d * ib.a[e] - ib.dmin * ib.c[e];
      // two float roundings (scale product, then the product / difference)
      const double tol = 4 * u32 * (std::fabs(ib.d * ib.a[e]) + std::fabs(ib.dmin * ib.c[e]));
      ASSERT_NEAR(w[b * qk + e], expect, tol) << "block " << b << " element " << e;
    }
  }
}

TEST_P(kquant_kernels, dot_matches_exact_integer_algorithm_and_float_reference) {
  const tensor_type type = GetParam();
  std::mt19937_64 rng(11 + static_cast<int>(type));
  for (int64_t n_in : {256, 512, 1536}) {
    const int64_t n_rows = 6;
    const std::vector<uint8_t> bytes = random_rows(type, n_in, n_rows, rng);
    const size_t row_size = gguf::row_bytes(type, n_in);
    for (int trial = 0; trial < 3; ++trial) {
      const std::vector<float> x = random_activations(n_in, rng);
      q8k_activations xq;
      quantize_q8k(x.data(), n_in, xq);
      std::vector<float> w(n_in);
      for (int64_t i = 0; i < n_rows; ++i) {
        const uint8_t* row = bytes.data() + i * row_size;
        const float fast = kquant_dot(type, row, xq);
        float scalar = 0.0f;
        scalar_rows(type)(row, &xq, 1, &scalar, 1);

        // (b) exact integer algorithm
        const exact_dot ref = integer_reference(type, row, xq);
        const double bound = rounding_bound(ref, n_in);
        EXPECT_NEAR(fast, ref.value, bound) << "n_in " << n_in << " row " << i;
        EXPECT_NEAR(scalar, ref.value, bound) << "n_in " << n_in << " row " << i;
        EXPECT_NEAR(fast, scalar, 2 * bound) << "n_in " << n_in << " row " << i;

        // (a) against the dequantized row and the unquantized activations
        gguf::dequantize(type, row, w.data(), n_in);
        double exact = 0, quant_err = 0, abs_wx = 0;
        for (int64_t j = 0; j < n_in; ++j) {
          exact += static_cast<double>(w[j]) * x[j];
          quant_err += std::fabs(w[j]) * 0.5 * xq.d[j / qk];
          abs_wx += std::fabs(static_cast<double>(w[j]) * x[j]);
        }
        // dx/2 per element, widened by float rounding in x / dx and in the dequantized w
        const double tol = quant_err * (1 + 1e-5) + 4 * u32 * abs_wx + bound;
        EXPECT_NEAR(fast, exact, tol) << "n_in " << n_in << " row " << i;
        EXPECT_NEAR(scalar, exact, tol) << "n_in " << n_in << " row " << i;
      }
    }
  }
}

TEST_P(kquant_kernels, multi_vector_results_bit_identical_to_single_vector) {
  const tensor_type type = GetParam();
  std::mt19937_64 rng(3);
  const int64_t n_in = 512;
  const std::vector<uint8_t> bytes = random_rows(type, n_in, 1, rng);
  std::vector<q8k_activations> xs(7);
  for (auto& xq : xs) quantize_q8k(random_activations(n_in, rng).data(), n_in, xq);
  for (rows_fn fn : {fast_rows(type), scalar_rows(type)}) {
    std::vector<float> single(xs.size());
    for (size_t r = 0; r < xs.size(); ++r) fn(bytes.data(), &xs[r], 1, &single[r], 1);
    for (int n_x = 0; n_x <= 7; ++n_x) {
      const int64_t stride = 3;
      std::vector<float> out(7 * stride, -1.0f);
      fn(bytes.data(), xs.data(), n_x, out.data(), stride);
      for (int r = 0; r < 7; ++r) {
        const float expect = r < n_x ? single[r] : -1.0f;  // nothing written past n_x
        EXPECT_EQ(std::memcmp(&out[r * stride], &expect, 4), 0) << "n_x " << n_x << " r " << r;
        EXPECT_EQ(out[r * stride + 1], -1.0f);
      }
    }
  }
  // the dispatching and one-vector entry points are the same kernel
  float y;
  kquant_dot_rows(type, bytes.data(), &xs[0], 1, &y, 1);
  const float z = kquant_dot(type, bytes.data(), xs[0]);
  EXPECT_EQ(std::memcmp(&y, &z, 4), 0);
}

TEST_P(kquant_kernels, extreme_quants_do_not_saturate) {
  // Largest quants and scales against activations of +-127 everywhere: the int16 pair sums and
  // int32 accumulators must not overflow.
  const tensor_type type = GetParam();
  const int64_t n_in = 512;
  std::vector<uint8_t> bytes(gguf::row_bytes(type, n_in), 0xff);
  const uint16_t one = gguf::f32_to_f16(1.0f);
  for (size_t off = 0; off < bytes.size(); off += block_bytes(type)) {
    if (type == tensor_type::q6_k) {
      for (int j = 0; j < 16; ++j) bytes[off + 192 + j] = 0x80;  // scale -128, q = 63
      std::memcpy(&bytes[off + 208], &one, 2);
    } else {
      std::memcpy(&bytes[off], &one, 2);
      std::memcpy(&bytes[off + 2], &one, 2);
    }
  }
  for (float sign : {1.0f, -1.0f}) {
    std::vector<float> x(n_in, sign);
    q8k_activations xq;
    quantize_q8k(x.data(), n_in, xq);
    const exact_dot ref = integer_reference(type, bytes.data(), xq);
    const double bound = rounding_bound(ref, n_in);
    EXPECT_NEAR(kquant_dot(type, bytes.data(), xq), ref.value, bound);
    float scalar;
    scalar_rows(type)(bytes.data(), &xq, 1, &scalar, 1);
    EXPECT_NEAR(scalar, ref.value, bound);
  }
}

TEST_P(kquant_kernels, tolerance_detects_a_wrong_scale) {
  // The bounds above are tight enough to catch a format error: one scale off by 8 moves the
  // result far outside them.
  const tensor_type type = GetParam();
  std::mt19937_64 rng(5);
  const int64_t n_in = 512;
  std::vector<uint8_t> bytes = random_rows(type, n_in, 1, rng);
  q8k_activations xq;
  quantize_q8k(random_activations(n_in, rng).data(), n_in, xq);
  const exact_dot ref = integer_reference(type, bytes.data(), xq);
  const size_t scale_byte = type == tensor_type::q6_k ? 192 + 3 : 4 + 2;
  bytes[scale_byte] ^= 0x08;
  EXPECT_GT(std::fabs(kquant_dot(type, bytes.data(), xq) - ref.value), 10 * rounding_bound(ref, n_in));
}

INSTANTIATE_TEST_SUITE_P(types, kquant_kernels,
                         ::testing::Values(tensor_type::q4_k, tensor_type::q5_k, tensor_type::q6_k),
                         [](const auto& info) { return std::string(gguf::traits(info.param).name); });

TEST(kquant, k_tensors_of_the_tiny_models_match_both_references) {
  // Real encoder output (tools/make_tiny_models.py: Q4_K, Q5_K, Q6_K ffn_down with n_in 256), not
  // random bytes: realistic scales and mins.
  std::mt19937_64 rng(9);
  int n_tensors = 0;
  for (const char* model : {"tiny/llama.gguf", "tiny/qwen2.gguf", "tiny/qwen3.gguf"}) {
    const auto f = gguf::file::open(test::data_path(model));
    for (const gguf::tensor_info& t : f->tensors()) {
      if (!has_kquant_kernel(t.type)) continue;
      ++n_tensors;
      const int64_t n_in = t.ne[0];
      const size_t row_size = gguf::row_bytes(t.type, n_in);
      const std::vector<float> x = random_activations(n_in, rng);
      q8k_activations xq;
      quantize_q8k(x.data(), n_in, xq);
      std::vector<float> w(n_in);
      for (int64_t i = 0; i < t.n_rows(); ++i) {
        const uint8_t* row = t.data + i * row_size;
        const float fast = kquant_dot(t.type, row, xq);
        const exact_dot ref = integer_reference(t.type, row, xq);
        ASSERT_NEAR(fast, ref.value, rounding_bound(ref, n_in)) << t.name << " row " << i;
        gguf::dequantize(t.type, row, w.data(), n_in);
        double exact = 0, quant_err = 0, abs_wx = 0;
        for (int64_t j = 0; j < n_in; ++j) {
          exact += static_cast<double>(w[j]) * x[j];
          quant_err += std::fabs(w[j]) * 0.5 * xq.d[j / qk];
          abs_wx += std::fabs(static_cast<double>(w[j]) * x[j]);
        }
        ASSERT_NEAR(fast, exact, quant_err * (1 + 1e-5) + 4 * u32 * abs_wx + rounding_bound(ref, n_in))
            << t.name << " row " << i;
      }
    }
  }
  EXPECT_GE(n_tensors, 3);  // each K type appears in some tiny model
}

TEST(kquant, unpack_k4_scale_min_matches_bytewise_definition) {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 20000; ++trial) {
    uint8_t q[12];
    for (uint8_t& b : q) b = static_cast<uint8_t>(rng());
    const gguf::k4_scale_min s = gguf::unpack_k4_scale_min(q);
    for (int j = 0; j < 8; ++j) {
      int sc, m;
      scale_min_bytewise(j, q, sc, m);
      ASSERT_EQ(s.sc[j], sc) << "j " << j;
      ASSERT_EQ(s.m[j], m) << "j " << j;
    }
  }
}

TEST(kquant, quantize_q8k_round_trips_within_half_a_step_and_sums_per_16) {
  std::mt19937_64 rng(2);
  const int64_t n = 768;
  const std::vector<float> x = random_activations(n, rng);
  q8k_activations xq;
  quantize_q8k(x.data(), n, xq);
  ASSERT_EQ(xq.n, n);
  ASSERT_EQ(xq.d.size(), 3u);
  ASSERT_EQ(xq.bsums.size(), 48u);
  for (int64_t b = 0; b < 3; ++b) {
    float amax = 0;
    for (int64_t j = 0; j < qk; ++j) amax = std::max(amax, std::fabs(x[b * qk + j]));
    EXPECT_FLOAT_EQ(xq.d[b], amax / 127.0f);
    for (int64_t j = 0; j < qk; ++j) {
      EXPECT_LE(std::abs(xq.q[b * qk + j]), 127);
      EXPECT_LE(std::fabs(x[b * qk + j] - xq.d[b] * xq.q[b * qk + j]), 0.5 * xq.d[b] * (1 + 1e-5) + 1e-30);
    }
  }
  for (int64_t k = 0; k < n / 16; ++k) {
    int s = 0;
    for (int j = 0; j < 16; ++j) s += xq.q[16 * k + j];
    EXPECT_EQ(xq.bsums[k], s);
  }
  EXPECT_EQ(xq.d[1], 0.0f);  // the zero block
  EXPECT_THROW(quantize_q8k(x.data(), 300, xq), error);
  EXPECT_FALSE(has_kquant_kernel(tensor_type::q4_1));
  EXPECT_TRUE(has_kquant_kernel(tensor_type::q5_k));
}

}  // namespace
}  // namespace kvgate
