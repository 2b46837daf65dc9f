// The matrix-product kernels (decode integer path, f32 dot path, sgemm path) against a slow
// double-precision loop over the dequantized weight, for every supported type and edge sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

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
        // The integer path quantizes activations to 8 bits: error up to |w|.|x| / 127 per
        // product; the f32 paths only round.
        const bool int_path = n_rows < k_sgemm_min_rows &&
                              (type == tensor_type::q4_0 || type == tensor_type::q4_1 || type == tensor_type::q8_0);
        const double rel_tol = int_path ? 1.0 / 127 : 1e-5;
        std::vector<float> row(n_in);
        for (int64_t o = 0; o < n_out; ++o) {
          gguf::dequantize(type, wb.w.row(o), row.data(), n_in);
          for (int64_t r = 0; r < n_rows; ++r) {
            const float* xr = x.data() + r * n_in;
            const double ref = linear_row_dot_reference(wb.w, o, xr);
            double mag = 0.0;
            for (int64_t i = 0; i < n_in; ++i) mag += std::abs(static_cast<double>(row[i]) * xr[i]);
            const double err = std::abs(y[r * n_out + o] - ref);
            worst = std::max(worst, err / std::max(mag, 1e-30));
            ASSERT_LE(err, rel_tol * mag + 1e-6) << gguf::traits(type).name << " n_in " << n_in << " n_out "
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
  for (auto types : {std::vector<tensor_type>{tensor_type::q4_1, tensor_type::q4_0, tensor_type::q8_0},
                     std::vector<tensor_type>{tensor_type::q4_1, tensor_type::f16}}) {
    std::vector<weight_buffer> wb;
    const int64_t n_in = 192;
    for (size_t i = 0; i < types.size(); ++i) wb.push_back(make_weight(types[i], n_in, 40 + 13 * static_cast<int64_t>(i), rng));
    for (int64_t n_rows : {int64_t{1}, int64_t{2}, int64_t{9}}) {
      std::vector<float> x(n_rows * n_in);
      for (float& v : x) v = normal(rng);
      std::vector<std::vector<float>> y(wb.size()), y_ref(wb.size());
      std::vector<const linear*> ws;
      std::vector<float*> ys;
      for (size_t i = 0; i < wb.size(); ++i) {
        y[i].assign(n_rows * wb[i].w.n_out, -1.0f);
        y_ref[i].resize(y[i].size());
        linear_forward(wb[i].w, x.data(), y_ref[i].data(), n_rows, scratch);
        ws.push_back(&wb[i].w);
        ys.push_back(y[i].data());
      }
      linear_forward_multi(ws, x.data(), ys, n_rows, scratch);
      for (size_t i = 0; i < wb.size(); ++i) {
        EXPECT_EQ(0, std::memcmp(y[i].data(), y_ref[i].data(), y[i].size() * sizeof(float)))
            << "weight " << i << " n_rows " << n_rows;
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
  for (tensor_type type : {tensor_type::q4_0, tensor_type::q4_1, tensor_type::q8_0}) {
    const int64_t n_in = 576, n_out = 48;
    weight_buffer plain = make_weight(type, n_in, n_out, rng);
    weight_buffer packed = plain;
    packed.w.data = packed.bytes.data();
    packed.pack();
    ASSERT_NE(0, std::memcmp(packed.packed_bytes.data(), plain.bytes.data(), plain.bytes.size()));
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
      for (int64_t o = 0; o < n_out; ++o) {
        ASSERT_NEAR(y[r * n_out + o], y_plain[r * n_out + o], 1e-4 * (1 + std::abs(y_plain[r * n_out + o])));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(types, linear_kernels,
                         ::testing::Values(tensor_type::f32, tensor_type::f16, tensor_type::bf16, tensor_type::q8_0,
                                           tensor_type::q4_0, tensor_type::q4_1, tensor_type::q4_k,
                                           tensor_type::q5_k, tensor_type::q6_k),
                         [](const auto& info) { return std::string(gguf::traits(info.param).name); });

TEST(linear, f32_row_dot_matches_reference) {
  std::mt19937_64 rng(5);
  weight_buffer wb = make_weight(tensor_type::q4_1, 576, 3, rng);
  std::vector<float> x(576);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.1 * i);
  for (int o = 0; o < 3; ++o) EXPECT_NEAR(linear_row_dot(wb.w, o, x.data()), linear_row_dot_reference(wb.w, o, x.data()), 1e-3);
}

}  // namespace
}  // namespace kvgate
