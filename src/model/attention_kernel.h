// The attention kernel: the query heads of one group (one token) against one KV head's live slots,
// reading each key and value row once for the whole group, in blocks of k_attn_block slots with an
// online softmax. The live slots are given as runs of consecutive physical slots, so holes and
// masked slots cost nothing inside the loops. Work is cut into chunks of k_attn_chunk live slots
// (independent partial results, merged in order), so a long context splits across threads; the
// cut depends only on the live count, so any two caches holding the same live rows in the same
// order (mask mode vs eviction, compacted or not) give the same bits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kv/cache.h"

namespace kvgate {

inline constexpr int k_attn_block = 32;        // slots per online-softmax block
inline constexpr size_t k_attn_chunk = 256;    // live slots per independent partial
inline constexpr int k_attn_max_group = 32;    // query rows per kernel call (more are split)
inline constexpr int k_attn_max_d = 512;       // largest d_head

// Physical slots [begin, end), all live; live_before = live slots in the runs before this one.
struct slot_run {
  uint32_t begin, end;
  uint32_t live_before;
};

// The runs of live slots among the first n_slots slots of h. runs: overwritten.
void live_runs(const kv_head& h, size_t n_slots, std::vector<slot_run>& runs);

// Number of chunks for n_live live slots.
inline size_t attn_n_chunks(size_t n_live) { return (n_live + k_attn_chunk - 1) / k_attn_chunk; }

// Partial attention of n_q queries q [n_q, d] over live slots [live_first, live_end) (counted in
// the order of runs): m [n_q] the largest score, l [n_q] = sum exp(s - m), o [n_q, d] =
// sum exp(s - m) v. A score is dot(q, k) * scale. limit [n_q] (or null: none): query g sees only
// live slots before limit[g] (prefill's causal mask, for a tile of several tokens' queries); a
// query that sees nothing of the chunk gets m = -inf, l = 0, o = 0.
void attend_chunk(const kv_rows& k, const kv_rows& v, std::span<const slot_run> runs, size_t live_first,
                  size_t live_end, const float* q, int n_q, const uint32_t* limit, float scale, float* m,
                  float* l, float* o);

// The kernel's scores pass alone: s[g][j] = dot(q_g, k_idx[j]) * scale for n_q <= k_attn_max_group
// queries q [n_q, d] and nb <= k_attn_block key rows (physical slots idx), the bits attend_chunk
// computes. For the passes beside the kernel (attention weights, recall) that score a tile of
// queries against a list of slots.
void attend_scores(const kv_rows& k, const uint32_t* idx, int nb, const float* q, int n_q, float scale,
                   float (*s)[k_attn_block]);

// Merges n_parts partials in order: m_parts/l_parts [n_parts, n_q], o_parts [n_parts, n_q, d];
// out [n_q, d] = the normalized output; m_out, l_out [n_q] the softmax statistics relative to
// the overall largest score (may be null).
void attend_merge(int n_parts, int n_q, int d, const float* m_parts, const float* l_parts,
                  const float* o_parts, float* out, float* m_out, float* l_out);

// Whole attention of n_q queries over the first n_live live slots (each query only up to its
// limit, when limit is given): chunks, then merge. scratch is resized as needed.
void attend(const kv_rows& k, const kv_rows& v, std::span<const slot_run> runs, size_t n_live,
            const float* q, int n_q, const uint32_t* limit, float scale, float* out, float* m_out,
            float* l_out, std::vector<float>& scratch);

}  // namespace kvgate
