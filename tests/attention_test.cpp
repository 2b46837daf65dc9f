// The attention kernel against a slow scalar double-precision softmax over the same stored rows
// (dequantized by gguf, not by the kernel's loaders): odd slot counts, holes at the start, middle
// and end, every KV type, query groups of 1 to 8, chunk boundaries; and the property mask mode
// relies on: the same live rows give the same bits however holes are laid out.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "gguf/gguf.h"
#include "kv/cache.h"
#include "model/attention_kernel.h"
#include "model/isa.h"

namespace kvgate {
namespace {

gguf::tensor_type tensor_type_of(kv_type t) {
  return t == kv_type::f32 ? gguf::tensor_type::f32 : t == kv_type::f16 ? gguf::tensor_type::f16 : gguf::tensor_type::q8_0;
}

std::vector<double> stored_row(const kv_rows& r, size_t j) {
  const int d_pad = r.type() == kv_type::q8_0 ? (r.d() + 31) / 32 * 32 : r.d();
  std::vector<float> f(d_pad);
  gguf::dequantize(tensor_type_of(r.type()), r.row(j), f.data(), d_pad);
  return std::vector<double>(f.begin(), f.begin() + r.d());
}

// out [n_q, d]: softmax(q k^T * scale) v over the live slots among the first n_visible.
std::vector<double> reference(const kv_head& h, size_t n_visible, const std::vector<float>& q, int n_q,
                              int d, double scale) {
  std::vector<double> out(static_cast<size_t>(n_q) * d, 0.0);
  for (int g = 0; g < n_q; ++g) {
    std::vector<double> s;
    std::vector<size_t> live;
    for (size_t j = 0; j < n_visible; ++j) {
      if (h.masked[j]) continue;
      const auto k = stored_row(h.k, j);
      double dot = 0.0;
      for (int i = 0; i < d; ++i) dot += static_cast<double>(q[static_cast<size_t>(g) * d + i]) * k[i];
      s.push_back(dot * scale);
      live.push_back(j);
    }
    double mx = -INFINITY, sum = 0.0;
    for (double x : s) mx = std::max(mx, x);
    for (double& x : s) sum += (x = std::exp(x - mx));
    for (size_t r = 0; r < live.size(); ++r) {
      const auto v = stored_row(h.v, live[r]);
      for (int i = 0; i < d; ++i) out[static_cast<size_t>(g) * d + i] += s[r] / sum * v[i];
    }
  }
  return out;
}

// One head of n slots with random rows; holes where hole(j).
template <typename F>
void fill(kv_cache& cache, const std::vector<float>& k, const std::vector<float>& v, int n, F&& hole) {
  std::vector<int32_t> pos(n);
  for (int j = 0; j < n; ++j) pos[j] = j;
  cache.append(0, k.data(), v.data(), pos.data(), n);
  std::vector<uint8_t> keep(n);
  for (int j = 0; j < n; ++j) keep[j] = !hole(j);
  cache.evict(0, 0, keep);
}

TEST(attention_kernel, matches_double_reference_for_every_type_group_and_hole_pattern) {
  std::mt19937_64 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  int n_checked = 0;
  for (kv_type type : {kv_type::f32, kv_type::f16, kv_type::q8_0}) {
    for (int d : {16, 20, 64, 80}) {  // 20: the portable path (d not a multiple of 8)
      for (int n : {1, 7, 31, 33, 255, 257, 601}) {
        for (int pattern = 0; pattern < 4; ++pattern) {
          for (int n_q : {1, 2, 3, 4, 5, 8, 24, 33}) {
            if (d != 64 && n_q > 5) continue;
            SCOPED_TRACE(std::string(kv_type_name(type)) + " d=" + std::to_string(d) + " n=" + std::to_string(n) +
                         " pattern=" + std::to_string(pattern) + " n_q=" + std::to_string(n_q));
            std::vector<float> k(static_cast<size_t>(n) * d), v(k.size()), q(static_cast<size_t>(n_q) * d);
            for (float& x : k) x = nd(rng) * 1.5f;
            for (float& x : v) x = nd(rng);
            for (float& x : q) x = nd(rng) * 1.5f;
            kv_cache cache(1, 1, d, type);
            cache.set_mask_mode(true);  // holes stay where they are
            const uint64_t salt = rng();
            fill(cache, k, v, n, [&](int j) {
              if (j == n - 1) return false;  // the query's own token is always live
              switch (pattern) {
                case 0: return false;                                        // no holes
                case 1: return (j * 2654435761u + salt) % 3 == 0;            // scattered
                case 2: return j < n / 2;                                    // a leading block
                default: return j % 40 >= 5 && j % 40 < 30;                 // long gaps
              }
            });
            const kv_head& h = cache.head(0, 0);
            std::vector<slot_run> runs;
            live_runs(h, h.n_slots(), runs);
            size_t n_live = 0;
            for (const slot_run& r : runs) n_live += r.end - r.begin;
            ASSERT_EQ(n_live, h.n_live());
            const double scale = 1.0 / std::sqrt(static_cast<double>(d));
            std::vector<float> out(q.size()), m(n_q), l(n_q), scratch;
            attend(h.k, h.v, runs, n_live, q.data(), n_q, nullptr, static_cast<float>(scale), out.data(), m.data(), l.data(), scratch);
            const auto ref = reference(h, h.n_slots(), q, n_q, d, scale);
            double worst = 0.0;
            for (size_t i = 0; i < out.size(); ++i) worst = std::max(worst, std::fabs(out[i] - ref[i]));
            EXPECT_LT(worst, 2e-5) << "max |kernel - reference| = " << worst;
            ++n_checked;

            // A visible prefix: the first live slots only (prefill's causal limit).
            if (n > 2 && pattern != 2) {
              const size_t n_vis_live = n_live / 2 + 1;
              size_t n_visible = 0, seen = 0;
              while (seen < n_vis_live) seen += !h.masked[n_visible++];
              attend(h.k, h.v, runs, n_vis_live, q.data(), n_q, nullptr, static_cast<float>(scale), out.data(), m.data(), l.data(), scratch);
              const auto ref2 = reference(h, n_visible, q, n_q, d, scale);
              for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], ref2[i], 2e-5);
            }

            // A limit per query (a prefill tile: every query stops at its own token), some
            // seeing only the first live slot, so later chunks hold nothing for them.
            std::vector<uint32_t> limit(n_q);
            for (int g = 0; g < n_q; ++g) limit[g] = g == 0 ? 1 : 1 + static_cast<uint32_t>((g * 7919u + salt) % n_live);
            limit[n_q - 1] = static_cast<uint32_t>(n_live);
            attend(h.k, h.v, runs, n_live, q.data(), n_q, limit.data(), static_cast<float>(scale), out.data(), m.data(), l.data(), scratch);
            for (int g = 0; g < n_q; ++g) {
              size_t n_visible = 0, seen = 0;
              while (seen < limit[g]) seen += !h.masked[n_visible++];
              const std::vector<float> qg(q.begin() + static_cast<size_t>(g) * d, q.begin() + static_cast<size_t>(g + 1) * d);
              const auto ref3 = reference(h, n_visible, qg, 1, d, scale);
              for (int i = 0; i < d; ++i) ASSERT_NEAR(out[static_cast<size_t>(g) * d + i], ref3[i], 2e-5) << "query " << g << " limit " << limit[g];
            }
          }
        }
      }
    }
  }
  EXPECT_GT(n_checked, 500);
}

TEST(attention_kernel, a_tiles_queries_get_the_bits_of_the_same_queries_in_groups_of_three) {
  // Prefill tiles (many queries) take other paths than decode (one group): q8_0 blocks are
  // converted to f32 once per block. A query's result must not depend on the path.
  std::mt19937_64 rng(13);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (kv_type type : {kv_type::f32, kv_type::f16, kv_type::q8_0}) {
    const int d = 64, n = 301, n_q = 24;
    std::vector<float> k(static_cast<size_t>(n) * d), v(k.size()), q(static_cast<size_t>(n_q) * d);
    for (float& x : k) x = nd(rng);
    for (float& x : v) x = nd(rng);
    for (float& x : q) x = nd(rng);
    kv_cache cache(1, 1, d, type);
    cache.set_mask_mode(true);
    fill(cache, k, v, n, [](int j) { return j % 5 == 2; });
    const kv_head& h = cache.head(0, 0);
    std::vector<slot_run> runs;
    live_runs(h, h.n_slots(), runs);
    std::vector<float> tile(q.size()), groups(q.size()), scratch;
    attend(h.k, h.v, runs, h.n_live(), q.data(), n_q, nullptr, 0.125f, tile.data(), nullptr, nullptr, scratch);
    for (int g = 0; g < n_q; g += 3) {
      attend(h.k, h.v, runs, h.n_live(), q.data() + static_cast<size_t>(g) * d, 3, nullptr, 0.125f,
             groups.data() + static_cast<size_t>(g) * d, nullptr, nullptr, scratch);
    }
    EXPECT_EQ(0, std::memcmp(tile.data(), groups.data(), tile.size() * sizeof(float))) << kv_type_name(type);
  }
}

TEST(attention_kernel, same_live_rows_give_same_bits_whatever_the_holes) {
  // Mask mode relies on this: masked slots, holes and compacted slots must all vanish exactly.
  std::mt19937_64 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (kv_type type : {kv_type::f32, kv_type::f16, kv_type::q8_0}) {
    const int d = 64, n = 700, n_q = 3;
    std::vector<float> k(static_cast<size_t>(n) * d), v(k.size()), q(static_cast<size_t>(n_q) * d);
    for (float& x : k) x = nd(rng);
    for (float& x : v) x = nd(rng);
    for (float& x : q) x = nd(rng);
    auto hole = [](int j) { return j % 7 == 3 || (j > 100 && j < 180); };
    kv_cache holes(1, 1, d, type), compact(1, 1, d, type);
    holes.set_mask_mode(true);
    fill(holes, k, v, n, hole);
    fill(compact, k, v, n, hole);
    compact.compact(0, 0);
    ASSERT_LT(compact.head(0, 0).n_slots(), static_cast<size_t>(n));
    ASSERT_EQ(compact.head(0, 0).n_slots(), holes.head(0, 0).n_live());
    std::vector<float> a(q.size()), b(q.size()), scratch;
    std::vector<slot_run> ra, rb;
    live_runs(holes.head(0, 0), n, ra);
    live_runs(compact.head(0, 0), compact.head(0, 0).n_slots(), rb);
    EXPECT_GT(ra.size(), 10u);
    EXPECT_EQ(rb.size(), 1u);
    const size_t n_live = compact.head(0, 0).n_slots();
    attend(holes.head(0, 0).k, holes.head(0, 0).v, ra, n_live, q.data(), n_q, nullptr, 0.125f, a.data(), nullptr, nullptr, scratch);
    attend(compact.head(0, 0).k, compact.head(0, 0).v, rb, n_live, q.data(), n_q, nullptr, 0.125f, b.data(), nullptr, nullptr, scratch);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << kv_type_name(type);
  }
}

TEST(attention_kernel, avx512_passes_give_the_avx2_bits) {
  // The AVX-512 passes (8 slots per score step, 64-column value tiles) must give every query
  // the AVX2 kernel's bits: outputs, softmax statistics and the scores pass alone, for every KV
  // type, d_head with and without a 16-column tail, odd slot counts, holes, per-query limits
  // and tiles larger than a register group.
  if (isa::detected() != isa::level::avx512) GTEST_SKIP() << "this CPU has no AVX-512 (F, BW, VL, DQ, VNNI)";
  std::mt19937_64 rng(17);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  int n_compared = 0;
  for (kv_type type : {kv_type::f32, kv_type::f16, kv_type::q8_0}) {
    for (int d : {16, 24, 64, 72, 128}) {
      for (int n : {1, 7, 33, 257, 601}) {
        for (int n_q : {1, 3, 4, 5, 9, 24}) {
          SCOPED_TRACE(std::string(kv_type_name(type)) + " d=" + std::to_string(d) + " n=" + std::to_string(n) +
                       " n_q=" + std::to_string(n_q));
          std::vector<float> k(static_cast<size_t>(n) * d), v(k.size()), q(static_cast<size_t>(n_q) * d);
          for (float& x : k) x = nd(rng) * 1.5f;
          for (float& x : v) x = nd(rng);
          for (float& x : q) x = nd(rng) * 1.5f;
          kv_cache cache(1, 1, d, type);
          cache.set_mask_mode(true);
          fill(cache, k, v, n, [&](int j) { return j != n - 1 && j % 11 == 4; });
          const kv_head& h = cache.head(0, 0);
          std::vector<slot_run> runs;
          live_runs(h, h.n_slots(), runs);
          const size_t n_live = h.n_live();
          std::vector<uint32_t> limit(n_q);
          for (int g = 0; g < n_q; ++g) limit[g] = 1 + static_cast<uint32_t>((g * 7919u) % n_live);
          const float scale = 1.0f / std::sqrt(static_cast<float>(d));
          const uint32_t* limits[2] = {nullptr, limit.data()};
          for (const uint32_t* lim : limits) {
            std::vector<float> out[2], m[2], l[2], scratch;
            for (int wide = 0; wide < 2; ++wide) {
              isa::scoped_level level(wide ? isa::level::avx512 : isa::level::avx2);
              out[wide].resize(q.size());
              m[wide].resize(n_q);
              l[wide].resize(n_q);
              attend(h.k, h.v, runs, n_live, q.data(), n_q, lim, scale, out[wide].data(), m[wide].data(),
                     l[wide].data(), scratch);
            }
            ASSERT_EQ(0, std::memcmp(out[0].data(), out[1].data(), q.size() * sizeof(float))) << (lim ? "limits" : "");
            ASSERT_EQ(0, std::memcmp(m[0].data(), m[1].data(), n_q * sizeof(float)));
            ASSERT_EQ(0, std::memcmp(l[0].data(), l[1].data(), n_q * sizeof(float)));
            ++n_compared;
          }
          if (n_q <= k_attn_max_group) {
            const int nb = std::min<int>(k_attn_block, static_cast<int>(n_live));
            std::vector<uint32_t> idx;
            for (const slot_run& r : runs) {
              for (uint32_t j = r.begin; j < r.end && static_cast<int>(idx.size()) < nb; ++j) idx.push_back(j);
            }
            float s[2][k_attn_max_group][k_attn_block];
            for (int wide = 0; wide < 2; ++wide) {
              isa::scoped_level level(wide ? isa::level::avx512 : isa::level::avx2);
              attend_scores(h.k, idx.data(), nb, q.data(), n_q, scale, s[wide]);
            }
            for (int g = 0; g < n_q; ++g) ASSERT_EQ(0, std::memcmp(s[0][g], s[1][g], nb * sizeof(float))) << "scores, query " << g;
          }
        }
      }
    }
  }
  EXPECT_GT(n_compared, 800);
}

}  // namespace
}  // namespace kvgate
