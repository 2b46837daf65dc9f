// The typed KV storage: each type's rows read back as gguf's dequantization of the stored bytes,
// within the type's rounding of the input; eviction leaves holes that compaction removes; bytes
// are accounted per type.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <map>
#include <random>
#include <vector>

#include "common/error.h"
#include "gguf/gguf.h"
#include "kv/cache.h"
#include "test_util.h"

namespace kvgate {
namespace {

std::vector<float> random_rows(size_t n, uint64_t seed, float spread = 3.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, spread);
  std::vector<float> x(n);
  for (float& v : x) v = nd(rng);
  return x;
}

gguf::tensor_type tensor_type_of(kv_type t) {
  return t == kv_type::f32 ? gguf::tensor_type::f32 : t == kv_type::f16 ? gguf::tensor_type::f16 : gguf::tensor_type::q8_0;
}

TEST(kv_rows, every_type_reads_back_as_gguf_dequantization_within_its_rounding) {
  for (kv_type type : {kv_type::f32, kv_type::f16, kv_type::q8_0}) {
    for (int d : {16, 32, 48, 64, 128}) {
      SCOPED_TRACE(std::string(kv_type_name(type)) + " d=" + std::to_string(d));
      const int n_tok = 5;
      kv_cache cache(1, 2, d, type);
      const auto k = random_rows(static_cast<size_t>(n_tok) * 2 * d, d);
      const auto v = random_rows(static_cast<size_t>(n_tok) * 2 * d, d + 1);
      std::vector<int32_t> pos(n_tok);
      for (int t = 0; t < n_tok; ++t) pos[t] = t;
      cache.append(0, k.data(), v.data(), pos.data(), n_tok);
      const int d_pad = type == kv_type::q8_0 ? (d + 31) / 32 * 32 : d;
      for (int ih = 0; ih < 2; ++ih) {
        const kv_head& h = cache.head(0, ih);
        ASSERT_EQ(h.k.n_rows(), static_cast<size_t>(n_tok));
        EXPECT_EQ(h.k.row_bytes(), gguf::row_bytes(tensor_type_of(type), d_pad));
        std::vector<float> all(static_cast<size_t>(n_tok) * d), ref(d_pad), one(d);
        h.k.to_float(0, n_tok, all.data());
        for (int t = 0; t < n_tok; ++t) {
          gguf::dequantize(tensor_type_of(type), h.k.row(t), ref.data(), d_pad);
          h.k.row_to_float(t, one.data());
          const float* src = k.data() + (static_cast<size_t>(t) * 2 + ih) * d;
          float amax = 0.0f;
          for (int i = 0; i < d; ++i) amax = std::max(amax, std::fabs(src[i]));
          for (int i = 0; i < d; ++i) {
            EXPECT_EQ(one[i], ref[i]);
            EXPECT_EQ(all[static_cast<size_t>(t) * d + i], ref[i]);
            const float tol = type == kv_type::f32 ? 0.0f : type == kv_type::f16 ? std::fabs(src[i]) / 1024 : amax / 127;
            EXPECT_LE(std::fabs(ref[i] - src[i]), tol) << "row " << t << " element " << i;
          }
          for (int i = d; i < d_pad; ++i) EXPECT_EQ(ref[i], 0.0f);  // q8_0 padding
        }
      }
    }
  }
}

TEST(kv_cache, bytes_per_slot_follow_the_type) {
  // 2 rows (k, v) of d elements + position, mask byte and three float extras.
  EXPECT_EQ(kv_cache::bytes_per_slot(64, kv_type::f32), 2u * 256 + 4 + 1 + 12);
  EXPECT_EQ(kv_cache::bytes_per_slot(64, kv_type::f16), 2u * 128 + 4 + 1 + 12);
  EXPECT_EQ(kv_cache::bytes_per_slot(64, kv_type::q8_0), 2u * 68 + 4 + 1 + 12);
  EXPECT_EQ(parse_kv_type("q8_0"), kv_type::q8_0);
  EXPECT_THROW(parse_kv_type("q4_0"), error);
}

TEST(kv_cache, eviction_leaves_holes_until_they_pass_the_fraction_then_compacts) {
  const int d = 32, n = 40;
  kv_cache cache(1, 1, d, kv_type::f16);
  cache.set_compact_fraction(0.25);
  const auto k = random_rows(static_cast<size_t>(n) * d, 1), v = random_rows(static_cast<size_t>(n) * d, 2);
  std::vector<int32_t> pos(n);
  for (int t = 0; t < n; ++t) pos[t] = 100 + t;
  cache.append(0, k.data(), v.data(), pos.data(), n);
  const size_t bytes_full = cache.bytes_total();
  const kv_head& h = cache.head(0, 0);

  std::vector<uint8_t> keep(n, 1);
  for (int j = 3; j < 9; ++j) keep[j] = 0;  // 6 holes: 15% of 40, not compacted
  EXPECT_EQ(cache.evict(0, 0, keep), 6u);
  EXPECT_EQ(h.n_slots(), 40u);
  EXPECT_EQ(h.n_live(), 34u);
  EXPECT_EQ(cache.n_live(0, 0), 34u);
  EXPECT_EQ(cache.bytes_total(), bytes_full - 6 * cache.bytes_per_slot());
  for (int j = 0; j < n; ++j) EXPECT_EQ(h.masked[j], keep[j] ? 0 : 1);
  // Evicting a hole again counts nothing.
  EXPECT_EQ(cache.evict(0, 0, keep), 0u);

  keep.assign(n, 1);
  for (int j = 20; j < 25; ++j) keep[j] = 0;  // 11 holes: 27.5% > 25%: compacted
  EXPECT_EQ(cache.evict(0, 0, keep), 5u);
  ASSERT_EQ(h.n_slots(), 29u);
  EXPECT_EQ(h.n_masked, 0u);
  std::vector<float> row(d), want(d);
  size_t j = 0;
  for (int t = 0; t < n; ++t) {
    if ((t >= 3 && t < 9) || (t >= 20 && t < 25)) continue;
    EXPECT_EQ(h.pos[j], 100 + t);
    h.v.row_to_float(j, row.data());
    gguf::quantize(gguf::tensor_type::f16, v.data() + static_cast<size_t>(t) * d, want.data(), d);  // want: scratch bytes
    std::vector<float> deq(d);
    gguf::dequantize(gguf::tensor_type::f16, want.data(), deq.data(), d);
    for (int i = 0; i < d; ++i) EXPECT_EQ(row[i], deq[i]);
    ++j;
  }
  EXPECT_EQ(cache.bytes_total(), bytes_full - 11 * cache.bytes_per_slot());

  // Mask mode never compacts.
  kv_cache masked(1, 1, d, kv_type::f16);
  masked.set_mask_mode(true);
  masked.append(0, k.data(), v.data(), pos.data(), n);
  keep.assign(n, 0);
  keep[0] = 1;
  EXPECT_EQ(masked.evict(0, 0, keep), 39u);
  EXPECT_EQ(masked.head(0, 0).n_slots(), 40u);
  EXPECT_EQ(masked.n_live(0, 0), 1u);
}

// The CLI flag: each type generates and reports its bytes (f32 rows twice f16's); a bad name is a
// clear error.
// Truncation drops the newest slots (positions >= the cut) of every head, masked ones and
// pre-RoPE key rows included, and leaves the rest as it was: the same rows, masks and counts.
TEST(kv_cache, truncate_drops_the_newest_slots_of_every_head) {
  const int d = 16, n_kv = 2, n_tok = 10;
  kv_cache cache(2, n_kv, d, kv_type::f16);
  cache.set_keep_pre_rope(true);
  const auto k = random_rows(static_cast<size_t>(n_tok) * n_kv * d, 7);
  const auto v = random_rows(static_cast<size_t>(n_tok) * n_kv * d, 8);
  std::vector<int32_t> pos(n_tok);
  for (int t = 0; t < n_tok; ++t) pos[t] = t;
  cache.set_mask_mode(true);
  for (int il = 0; il < 2; ++il) cache.append(il, k.data(), v.data(), pos.data(), n_tok, k.data());
  // Head (0, 0): slots 2 and 8 masked; its pre-RoPE rows released below position 6.
  std::vector<uint8_t> keep(n_tok, 1);
  keep[2] = keep[8] = 0;
  cache.evict(0, 0, keep);
  cache.release_pre_rope(0, 0, 6);
  ASSERT_EQ(cache.n_pre_rope(0, 0), 4u);
  std::vector<float> before(static_cast<size_t>(7) * d);
  cache.head(1, 1).v.to_float(0, 7, before.data());

  cache.truncate(7);
  for (int il = 0; il < 2; ++il) {
    for (int ih = 0; ih < n_kv; ++ih) {
      const kv_head& h = cache.head(il, ih);
      ASSERT_EQ(h.n_slots(), 7u);
      EXPECT_EQ(h.k.n_rows(), 7u);
      EXPECT_EQ(h.v.n_rows(), 7u);
      EXPECT_EQ(h.pos.back(), 6);
      EXPECT_EQ(h.masked.size(), 7u);
      EXPECT_EQ(h.attn_sum.size(), 7u);
      EXPECT_EQ(h.attn_last.size(), 7u);
      EXPECT_EQ(h.score.size(), 7u);
    }
  }
  EXPECT_EQ(cache.head(0, 0).n_masked, 1u);  // slot 8 went with the cut, slot 2 stays masked
  EXPECT_EQ(cache.head(0, 0).n_live(), 6u);
  EXPECT_EQ(cache.n_pre_rope(0, 0), 1u);     // rows of slots 6..9, of which slot 6 remains
  EXPECT_EQ(cache.n_pre_rope(1, 0), 7u);
  std::vector<float> after(before.size());
  cache.head(1, 1).v.to_float(0, 7, after.data());
  EXPECT_EQ(after, before);
  cache.truncate(7);  // nothing at or past 7 is left
  EXPECT_EQ(cache.head(1, 0).n_slots(), 7u);
  cache.truncate(0);
  EXPECT_EQ(cache.n_live_total(), 0u);
  EXPECT_EQ(cache.n_pre_rope(0, 0), 0u);
}

TEST(kv_cache, generate_kv_type_flag_sets_the_storage_and_its_bytes) {
  std::map<std::string, double> bytes;
  for (const char* type : {"f32", "f16", "q8_0"}) {
    const test::kvgate_result r = test::run_kvgate("generate --model " + test::default_model_path() +
                                                   " --prompt 'The capital of France is' -n 4 --temp 0 --kv-type " + type);
    ASSERT_EQ(r.status, 0) << r.err;
    const size_t at = r.err.find("kvgate: {");
    ASSERT_NE(at, std::string::npos) << r.err;
    const auto j = nlohmann::json::parse(r.err.substr(at + 8));
    EXPECT_EQ(j["kv_type"], type);
    bytes[type] = j["kv_bytes"].get<double>();
  }
  const double per_slot_extras = 4 + 1 + 12;  // position, mask byte, three float extras
  const double slots = bytes["f32"] / (2 * 64 * 4 + per_slot_extras);
  EXPECT_DOUBLE_EQ(bytes["f16"], slots * (2 * 64 * 2 + per_slot_extras));
  EXPECT_DOUBLE_EQ(bytes["q8_0"], slots * (2 * 68 + per_slot_extras));
  const test::kvgate_result bad = test::run_kvgate("generate --model " + test::default_model_path() +
                                                   " --prompt hi -n 1 --kv-type q4_0");
  EXPECT_EQ(bad.status, 1);
  EXPECT_NE(bad.err.find("kvgate: error: unknown KV type 'q4_0'"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace kvgate
