// The matrix-product kernels (decode integer path, f32 dot path, sgemm path) against a slow
// double-precision loop over the dequantized weight, for every supported type and edge sizes.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>

#include "common/error.h"
#include "model/isa.h"
#include "model/linear.h"

namespace kvgate {
namespace {

using gguf::tensor_type;

struct weight_buffer {
  std::vector<uint8_t> bytes;
  std::vector<uint8_t> packed_bytes;
  linear w;

  // The model's layout for the integer kernels (rows interleaved by 8).
  void pack() {
    packed_bytes = linear_pack(w);
    w.packed = packed_bytes.data();
  }
};

// Random weights of a type; K-quant blocks are random bytes with their f16 scales made small, so
// every bit pattern of the quants and 6-bit scales is exercised.
weight_buffer make_weight(tensor_type type, int64_t n_in, int64_t n_out, std::mt19937_64& rng) {
  weight_buffer b;
  const size_t row = gguf::row_bytes(type, n_in);
  b.bytes.resize(row * n_out);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const bool k_type = type == tensor_type::q4_k || type == tensor_type::q5_k || type == tensor_type::q6_k;
  if (k_type) {
    for (uint8_t& x : b.bytes) x = static_cast<uint8_t>(rng());
    const size_t block = gguf::traits(type).type_size;
    for (size_t off = 0; off < b.bytes.size(); off += block) {
      const uint16_t d = gguf::f32_to_f16(0.01f * u(rng));
      const uint16_t dmin = gguf::f32_to_f16(0.01f * u(rng));
      if (type == tensor_type::q6_k) {
        std::memcpy(&b.bytes[off + block - 2], &d, 2);
      } else {
        std::memcpy(&b.bytes[off], &d, 2);
        std::memcpy(&b.bytes[off + 2], &dmin, 2);
      }
    }
  } else {
    std::vector<float> w(n_in);
    for (int64_t r = 0; r < n_out; ++r) {
      for (float& x : w) x = u(rng);
      gguf::quantize(type, w.data(), b.bytes.data() + r * row, n_in);
    }
  }
  b.w.type = type;
  b.w.data = b.bytes.data();
  b.w.n_in = n_in;
  b.w.n_out = n_out;
  b.w.row_bytes = row;
  return b;
}

bool is_k_type(tensor_type t) { return t == tensor_type::q4_k || t == tensor_type::q5_k || t == tensor_type::q6_k; }

// Whether linear_forward on n_rows rows of w takes an integer path (activations quantized to 8
// bits): the row kernels of Q4_0 / Q4_1 / Q8_0, the packed kernels (which add Q5_0 / Q5_1), and the
// K-quant kernels, below k_sgemm_min_rows rows.
bool takes_integer_path(const linear& w, int64_t n_rows) {
  const tensor_type t = w.type;
  const bool row_kernel = t == tensor_type::q4_0 || t == tensor_type::q4_1 || t == tensor_type::q8_0;
  return n_rows < k_sgemm_min_rows && (row_kernel || w.packed != nullptr || is_k_type(t));
}

class linear_kernels : public ::testing::TestWithParam<tensor_type> {};

TEST_P(linear_kernels, forward_matches_scalar_reference_on_all_paths) {
  const tensor_type type = GetParam();
  const int64_t block = gguf::traits(type).block_size;
  std::mt19937_64 rng(static_cast<uint64_t>(type) + 1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  linear_scratch scratch;
  double worst = 0.0;
  for (int64_t n_in : {32, 64, 96, 256, 512, 576, 1536}) {
    if (n_in % block != 0) continue;
    for (int64_t n_out : {1, 7, 33, 40}) {
     for (bool packed : {false, true}) {
      weight_buffer wb = make_weight(type, n_in, n_out, rng);
      if (packed && !linear_packable(wb.w)) continue;
      if (packed) wb.pack();
      for (int64_t n_rows : {int64_t{1}, int64_t{3}, k_sgemm_min_rows, int64_t{17}}) {
        std::vector<float> x(n_rows * n_in), y(n_rows * n_out);
        for (float& v : x) v = normal(rng);
        linear_forward(wb.w, x.data(), y.data(), n_rows, scratch);
        // The integer paths quantize activations to 8 bits per block of 32 (or 256 for the K
        // types) with step d = max|x| / 127 over the block: each x_j moves by at most d / 2, so
        // |y - ref| <= sum_j |w_j| d(j) / 2 (+ float rounding). The f32 paths only round.
        const bool int_path = takes_integer_path(wb.w, n_rows);
        const int64_t x_block = is_k_type(type) ? 256 : 32;
        std::vector<float> row(n_in);
        for (int64_t o = 0; o < n_out; ++o) {
          gguf::dequantize(type, wb.w.row(o), row.data(), n_in);
          for (int64_t r = 0; r < n_rows; ++r) {
            const float* xr = x.data() + r * n_in;
            const double ref = linear_row_dot_reference(wb.w, o, xr);
            double mag = 0.0, quant_bound = 0.0;
            for (int64_t i0 = 0; i0 < n_in; i0 += x_block) {
              float amax = 0.0f;
              double w_abs = 0.0;
              for (int64_t i = i0; i < i0 + x_block; ++i) {
                mag += std::abs(static_cast<double>(row[i]) * xr[i]);
                amax = std::max(amax, std::abs(xr[i]));
                w_abs += std::abs(row[i]);
              }
              quant_bound += w_abs * amax / 127.0 / 2;
            }
            const double err = std::abs(y[r * n_out + o] - ref);
            worst = std::max(worst, err / std::max(mag, 1e-30));
            const double tol = (int_path ? 1.001 * quant_bound : 0.0) + 1e-5 * mag + 1e-6;
            ASSERT_LE(err, tol) << gguf::traits(type).name << " n_in " << n_in << " n_out "
                                                  << n_out << " n_rows " << n_rows << " o " << o << " r " << r
                                                  << " packed " << packed;
          }
        }
      }
     }
    }
  }
  std::printf("%s: worst |y - ref| / sum|w x| = %.3g\n", std::string(gguf::traits(type).name).c_str(), worst);
}

TEST(linear, forward_multi_equals_one_forward_per_weight) {
  // Q/K/V-like shapes of mixed types (the fused decode path when all have integer kernels, the
  // fallback otherwise), decode and prefill row counts: the same bits as separate calls.
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  linear_scratch scratch;
  // Mixed integer formats (q8 blocks of 32 and K super-blocks of 256) share one call: each weight
  // must still get its own call's bits. Packed where the layout applies (row counts multiple of 8).
  struct weight_set {
    std::vector<tensor_type> types;
    int64_t n_in;
    bool pack;
  };
  for (const weight_set& set :
       {weight_set{{tensor_type::q4_1, tensor_type::q4_0, tensor_type::q8_0}, 192, false},
        weight_set{{tensor_type::q4_1, tensor_type::f16}, 192, false},
        weight_set{{tensor_type::q5_0, tensor_type::q4_k, tensor_type::q8_0, tensor_type::q6_k}, 512, true},
        weight_set{{tensor_type::q5_1, tensor_type::q5_k, tensor_type::q4_1}, 256, true}}) {
    std::vector<weight_buffer> wb;
    const int64_t n_in = set.n_in;
    for (size_t i = 0; i < set.types.size(); ++i) {
      const int64_t n_out = set.pack ? 40 + 16 * static_cast<int64_t>(i) : 40 + 13 * static_cast<int64_t>(i);
      wb.push_back(make_weight(set.types[i], n_in, n_out, rng));
    }
    for (weight_buffer& b : wb) {
      if (set.pack && linear_packable(b.w)) b.pack();
    }
    for (const linear_rows rows_mode : {linear_rows::automatic, linear_rows::independent})
    for (int64_t n_rows : {int64_t{1}, int64_t{2}, int64_t{9}}) {
      std::vector<float> x(n_rows * n_in);
      for (float& v : x) v = normal(rng);
      std::vector<std::vector<float>> y(wb.size()), y_ref(wb.size());
      std::vector<const linear*> ws;
      std::vector<float*> ys;
      for (size_t i = 0; i < wb.size(); ++i) {
        y[i].assign(n_rows * wb[i].w.n_out, -1.0f);
        y_ref[i].resize(y[i].size());
        linear_forward(wb[i].w, x.data(), y_ref[i].data(), n_rows, scratch, rows_mode);
        ws.push_back(&wb[i].w);
        ys.push_back(y[i].data());
      }
      linear_forward_multi(ws, x.data(), ys, n_rows, scratch, rows_mode);
      for (size_t i = 0; i < wb.size(); ++i) {
        EXPECT_EQ(0, std::memcmp(y[i].data(), y_ref[i].data(), y[i].size() * sizeof(float)))
            << gguf::traits(wb[i].w.type).name << " weight " << i << " n_rows " << n_rows;
      }
    }
  }
}

TEST(linear, packed_weights_read_back_and_rows_do_not_depend_on_their_neighbours) {
  // The interleaved layout: every row dequantizes to the original's bits; the packed kernel on
  // n rows at once gives each row the bits it gets alone (independent rows), and agrees with
  // the row-at-a-time integer kernel on the unpacked weight to float rounding (both sum the same
  // integer block products; only the order of the float accumulation differs).
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  linear_scratch scratch;
  for (tensor_type type : {tensor_type::q4_0, tensor_type::q4_1, tensor_type::q8_0, tensor_type::q5_0,
                           tensor_type::q5_1, tensor_type::q4_k, tensor_type::q5_k, tensor_type::q6_k}) {
    SCOPED_TRACE(gguf::traits(type).name);
    const int64_t n_in = is_k_type(type) ? 512 : 576, n_out = 48;
    weight_buffer plain = make_weight(type, n_in, n_out, rng);
    weight_buffer packed = plain;
    packed.w.data = packed.bytes.data();
    // The K types have no packed layout: their row kernels must keep the same contract.
    ASSERT_EQ(linear_packable(packed.w), !is_k_type(type));
    if (is_k_type(type)) packed.packed_bytes = packed.bytes;  // compared below: must differ
    else packed.pack();
    if (!is_k_type(type)) {
      ASSERT_NE(0, std::memcmp(packed.packed_bytes.data(), plain.bytes.data(), plain.bytes.size()));
    }
    std::vector<float> a(n_in), b(n_in);
    for (int64_t o = 0; o < n_out; ++o) {
      gguf::dequantize(type, plain.w.row(o), a.data(), n_in);
      linear_dequantize_row(packed.w, o, b.data());
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), n_in * sizeof(float))) << gguf::traits(type).name << " row " << o;
    }
    const int64_t n_rows = 9;
    std::vector<float> x(n_rows * n_in), y(n_rows * n_out), y_one(n_out), y_plain(n_rows * n_out);
    for (float& v : x) v = normal(rng);
    linear_forward(packed.w, x.data(), y.data(), n_rows, scratch, linear_rows::independent);
    linear_forward(plain.w, x.data(), y_plain.data(), n_rows, scratch, linear_rows::independent);
    for (int64_t r = 0; r < n_rows; ++r) {
      linear_forward(packed.w, x.data() + r * n_in, y_one.data(), 1, scratch);
      ASSERT_EQ(0, std::memcmp(y_one.data(), y.data() + r * n_out, n_out * sizeof(float))) << "row " << r;
      // Unpacked Q5 weights take the float path (no row kernel): nothing to compare bits with.
      if (!takes_integer_path(plain.w, 1)) continue;
      for (int64_t o = 0; o < n_out; ++o) {
        ASSERT_NEAR(y[r * n_out + o], y_plain[r * n_out + o], 1e-4 * (1 + std::abs(y_plain[r * n_out + o])));
      }
    }
  }
}

TEST(linear, quantized_rows_take_the_integer_kernels_at_any_row_count) {
  // Prompt chunks in quantized mode (generate, chat, serve): a weight with an integer kernel gives
  // every row of a 40-row chunk the bits `independent` gives it (so they are not sgemm's bits),
  // alone and through the fused multi-weight launch; a weight without one (f32, f16) takes the
  // automatic (sgemm) path, bit for bit.
  std::mt19937_64 rng(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  linear_scratch scratch;
  const int64_t n_rows = 40, n_out = 48;
  for (tensor_type type : {tensor_type::q4_1, tensor_type::q8_0, tensor_type::q5_0, tensor_type::q4_k,
                           tensor_type::q6_k, tensor_type::f32, tensor_type::f16}) {
    for (bool pack : {false, true}) {
      SCOPED_TRACE(std::string(gguf::traits(type).name) + (pack ? " packed" : ""));
      const int64_t n_in = is_k_type(type) ? 512 : 576;
      weight_buffer wb = make_weight(type, n_in, n_out, rng);
      if (pack && !linear_packable(wb.w)) continue;
      if (pack) wb.pack();
      std::vector<float> x(n_rows * n_in), y(n_rows * n_out), y_ind(n_rows * n_out), y_auto(n_rows * n_out);
      for (float& v : x) v = normal(rng);
      linear_forward(wb.w, x.data(), y.data(), n_rows, scratch, linear_rows::quantized);
      linear_forward(wb.w, x.data(), y_ind.data(), n_rows, scratch, linear_rows::independent);
      linear_forward(wb.w, x.data(), y_auto.data(), n_rows, scratch, linear_rows::automatic);
      const size_t bytes = y.size() * sizeof(float);
      const bool integer = type != tensor_type::f32 && type != tensor_type::f16 &&
                           (pack || is_k_type(type) || type != tensor_type::q5_0);
      if (integer) {
        EXPECT_EQ(0, std::memcmp(y.data(), y_ind.data(), bytes));
        EXPECT_NE(0, std::memcmp(y.data(), y_auto.data(), bytes));
      } else {
        EXPECT_EQ(0, std::memcmp(y.data(), y_auto.data(), bytes));
      }
      // Two weights reading the same input, in one launch.
      std::vector<float> y2(n_rows * n_out), y2_alone(n_rows * n_out);
      const linear* ws[2] = {&wb.w, &wb.w};
      float* ys[2] = {y2.data(), y2_alone.data()};
      linear_forward_multi(ws, x.data(), ys, n_rows, scratch, linear_rows::quantized);
      EXPECT_EQ(0, std::memcmp(y2.data(), y.data(), bytes));
      EXPECT_EQ(0, std::memcmp(y2_alone.data(), y.data(), bytes));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(types, linear_kernels,
                         ::testing::Values(tensor_type::f32, tensor_type::f16, tensor_type::bf16, tensor_type::q8_0,
                                           tensor_type::q4_0, tensor_type::q4_1, tensor_type::q5_0,
                                           tensor_type::q5_1, tensor_type::q4_k,
                                           tensor_type::q5_k, tensor_type::q6_k),
                         [](const auto& info) { return std::string(gguf::traits(info.param).name); });

TEST(linear, avx512_kernels_give_every_row_the_avx2_bits) {
  // The AVX-512 kernels take two groups of 8 rows per register and vpdpbusd for the integer
  // sums; they must give the AVX2 kernels' bits for every packed type, with an odd group count
  // (the last group alone), 1 to 9 activation rows, and Q8_0 weights of -128.
  if (isa::detected() != isa::level::avx512) GTEST_SKIP() << "this CPU has no AVX-512 (F, BW, VL, DQ, VNNI)";
  std::mt19937_64 rng(31);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  linear_scratch scratch;
  for (tensor_type type : {tensor_type::q4_0, tensor_type::q4_1, tensor_type::q8_0, tensor_type::q5_0,
                           tensor_type::q5_1}) {
    for (int64_t n_out : {8, 24, 48}) {
      SCOPED_TRACE(std::string(gguf::traits(type).name) + " n_out " + std::to_string(n_out));
      const int64_t n_in = 576;
      weight_buffer wb = make_weight(type, n_in, n_out, rng);
      if (type == tensor_type::q8_0) {  // every byte value, -128 included, in the quants
        for (size_t off = 0; off < wb.bytes.size(); off += sizeof(uint16_t) + 32) {
          for (int j = 0; j < 32; ++j) wb.bytes[off + 2 + j] = static_cast<uint8_t>(rng());
        }
      }
      wb.pack();
      for (int64_t n_rows : {1, 2, 3, 4, 5, 9}) {
        std::vector<float> x(n_rows * n_in), y2(n_rows * n_out), y512(n_rows * n_out);
        for (float& v : x) v = normal(rng);
        {
          isa::scoped_level avx2(isa::level::avx2);
          linear_forward(wb.w, x.data(), y2.data(), n_rows, scratch, linear_rows::independent);
        }
        linear_forward(wb.w, x.data(), y512.data(), n_rows, scratch, linear_rows::independent);
        ASSERT_EQ(isa::active(), isa::level::avx512);
        ASSERT_EQ(0, std::memcmp(y2.data(), y512.data(), y2.size() * sizeof(float))) << "rows " << n_rows;
        float mag = 0.0f;
        for (float v : y512) mag = std::max(mag, std::abs(v));
        ASSERT_GT(mag, 0.0f);
      }
    }
  }
}

// The integer kernels' activation quantizer (vector path on AVX2 builds) against its scalar
// definition, bit for bit: random blocks, blocks whose step is 1 so that x / d lands exactly on
// the .5 ties (rounded to even), all-zero blocks, and tiny and huge magnitudes.
TEST(linear, activation_quantizer_gives_the_bits_of_its_scalar_definition) {
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x;
  for (int b = 0; b < 64; ++b) {
    const float mag = std::ldexp(1.0f, static_cast<int>(rng() % 60) - 30);
    for (int j = 0; j < 32; ++j) x.push_back(mag * normal(rng));
  }
  for (int b = 0; b < 8; ++b) {  // d = 1: halves are exact ties
    for (int j = 0; j < 32; ++j) x.push_back(j == 5 ? 127.0f : static_cast<float>(static_cast<int>(rng() % 254) - 127) + 0.5f * (j % 2));
  }
  for (int j = 0; j < 32; ++j) x.push_back(0.0f);
  for (int j = 0; j < 32; ++j) x.push_back(j == 31 ? -127.0f : -0.5f - static_cast<float>(j));
  const int64_t n = static_cast<int64_t>(x.size());
  q8_activations got;
  quantize_activations(x.data(), n, got);
  ASSERT_EQ(got.q.size(), x.size());
  int ties = 0;
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* xb = x.data() + b * 32;
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::abs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      const float scaled = xb[j] * id;
      const int q = static_cast<int>(std::nearbyint(scaled));
      ties += scaled - std::floor(scaled) == 0.5f;
      ASSERT_EQ(got.q[b * 32 + j], q) << "block " << b << " element " << j << " x " << xb[j];
      sum += q;
    }
    ASSERT_EQ(std::bit_cast<uint32_t>(got.d[b]), std::bit_cast<uint32_t>(d)) << "block " << b;
    ASSERT_EQ(std::bit_cast<uint32_t>(got.sum[b]), std::bit_cast<uint32_t>(d * sum)) << "block " << b;
  }
  EXPECT_GT(ties, 100);  // the tie blocks did exercise round-half-even
}

TEST(linear, instruction_sets_above_the_cpu_are_refused) {
  EXPECT_GE(static_cast<int>(isa::detected()), static_cast<int>(isa::build_floor()));
  if (isa::detected() != isa::level::avx512) {
    EXPECT_THROW(isa::set(isa::level::avx512), error);
  }
  if (isa::build_floor() == isa::level::avx2) {
    EXPECT_THROW(isa::set(isa::level::portable), error);
  }
  EXPECT_EQ(isa::active(), isa::detected());
}

TEST(linear, f32_row_dot_matches_reference) {
  std::mt19937_64 rng(5);
  weight_buffer wb = make_weight(tensor_type::q4_1, 576, 3, rng);
  std::vector<float> x(576);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.1 * i);
  for (int o = 0; o < 3; ++o) EXPECT_NEAR(linear_row_dot(wb.w, o, x.data()), linear_row_dot_reference(wb.w, o, x.data()), 1e-3);
}

}  // namespace
}  // namespace kvgate
