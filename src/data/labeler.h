// The label builder: an observer that watches one document run with the full cache and builds,
// for every head (il, ih) and every labelled token j, the label of DESIGN.md ("The label"):
//
//   future(j) = { i : j + W < i <= min(T - 1, j + W + horizon) }
//   m(j)      = max over g in G(h), i in future(j) of a[g][i][j]
//   y(j)      = m(j) >= tau
//   lifetime  = (last i > j with a[g][i][j] >= tau, any g in G(h), any i in the document) - j,
//               0 when there is none
//   bucket    = lifetime < 1 ? 0 : min(max_bucket, floor(log4(lifetime)))
//
// Labelled: sinks <= j and future(j) not empty, i.e. sinks <= j < T - 1 - W.
//
// Other label sources (DESIGN.md) watch queries placed after the document in the same run (the
// cache is causal, so what follows the document changes nothing before it). With regions set,
// the document is the context [0, n_context): the future label, the lifetime and the labelled
// keys are those of the context alone, and for every context token j
//   copy(j)   = max over g in G(h), i in [copy_begin, copy_end) of a[g][i][j]      (reconstruct)
//   answer(j) = max over g in G(h), i in [answer_begin, answer_end) of a[g][i][j]  (answer)
// (0 when the region is empty). Queries elsewhere (a repeat instruction) are not read.
//
// The bucket choice: bucket b holds lifetimes [4^b, 4^(b+1)); bucket 0 holds [0, 4), so "never
// significant after j" (lifetime 0) shares it with "significant for at most 3 more steps" - for a
// cache with a window both mean "needed only inside the window". The top bucket holds everything
// from 4^max_bucket on. Lifetime looks at every later query of the document, the window
// included, and is censored at the document's end (a token near the end cannot live long).
//
// Cost: each query row i is read once: one pass over slots j < i for the lifetime (a compare and
// a rarely taken store) and one max over the band j in [i - W - horizon, i - W - 1] for m.
// Memory: O(T x heads): m and last-hit per (head, token), plus each token's key as f16.
// Rows may arrive in any chunking (prefill in steps of n_batch tokens, or decode): the running
// max and last-hit need only each row once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "model/observer.h"

namespace kvgate {

// floor(log4(lifetime)) capped at max_bucket; 0 for lifetime < 1.
int lifetime_bucket(int lifetime, int max_bucket);

// The labelled positions of a document of n_tokens: [first, end); empty when first >= end.
struct label_range {
  int first = 0, end = 0;
  int size() const { return end > first ? end - first : 0; }
};
label_range labelled_range(int n_tokens, const label_params& p);

// Where the queries of the other label sources sit in a labelled run (see above).
struct label_regions {
  int n_context = 0;                     // context tokens (the rest of the run is queries only)
  int copy_begin = 0, copy_end = 0;      // reconstruct: the teacher-forced copy of the context
  int answer_begin = 0, answer_end = 0;  // answer: the queries of the question and the answer
};

class labeler;

// Which sources a collection merges (label_sources.h) and how: a token's score is the max of the
// sources' scores (future: max_future, reconstruct: max_copy, answer: max_answer), its label
// score >= tau. Labelled tokens: future alone, labelled_range of the context; with any other
// source, every context token past the sinks (the others have no window or horizon).
struct label_mix {
  bool future = true, reconstruct = false, answer = false;
  static label_mix of(const std::vector<std::string>& sources);
  label_range range(const labeler& lab) const;
  float score(const labeler& lab, int head, int j) const;
};

class labeler final : public observer {
 public:
  labeler(int n_layer, int n_head, int n_kv_head, int d_head, const label_params& params);

  // Starts a document of n_tokens (the session must start from an empty cache: slot == position).
  void begin(int n_tokens);
  // Starts a run of n_tokens whose context and query regions are given (all inside n_tokens).
  void begin(int n_tokens, const label_regions& regions);
  void on_layer(const layer_observation& obs) override;
  // Every position of the document has been run through every layer.
  bool complete() const;

  int n_tokens() const { return n_tokens_; }
  const label_regions& regions() const { return regions_; }
  int n_heads() const { return n_layer_ * n_kv_head_; }
  int d_head() const { return d_head_; }
  const label_params& params() const { return params_; }

  // Per head (index il * n_kv_head + ih), per position j of the document:
  float max_future(int head, int j) const { return m_[idx(head, j)]; }   // m(j); 0 when future empty
  int last_hit(int head, int j) const { return last_[idx(head, j)]; }    // last i > j with a >= tau, -1 if none
  bool label(int head, int j) const { return m_[idx(head, j)] >= params_.tau; }
  float max_copy(int head, int j) const { return copy_[idx(head, j)]; }      // copy(j)
  float max_answer(int head, int j) const { return answer_[idx(head, j)]; }  // answer(j)
  int lifetime(int head, int j) const { return last_[idx(head, j)] < 0 ? 0 : last_[idx(head, j)] - j; }
  int bucket(int head, int j) const { return lifetime_bucket(lifetime(head, j), params_.max_bucket); }
  // The key of j (pre- or post-RoPE per params.key_kind) as f16: [d_head].
  const uint16_t* key(int head, int j) const { return keys_.data() + idx(head, j) * d_head_; }

 private:
  size_t idx(int head, int j) const { return static_cast<size_t>(head) * n_tokens_ + j; }

  int n_layer_, n_head_, n_kv_head_, d_head_;
  label_params params_;
  bool post_rope_;
  int n_tokens_ = 0;
  label_regions regions_;
  std::vector<float> m_;          // [n_heads, T] running max over the band
  std::vector<float> copy_;       // [n_heads, T] running max over the copy's queries
  std::vector<float> answer_;     // [n_heads, T] running max over the answer's queries
  std::vector<int32_t> last_;     // [n_heads, T] last query position with a >= tau, -1 none
  std::vector<uint16_t> keys_;    // [n_heads, T, d_head] f16
  std::vector<int32_t> n_seen_;   // [n_layer] positions observed so far (rows must come in order)
};

}  // namespace kvgate
