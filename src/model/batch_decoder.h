// Steps of several sessions of one model, run together (serve's slots): the linear layers run
// once for all of their rows, so each weight matrix is read (and, for prefill, dequantized) once
// per step instead of once per session. Attention, the cache, the policy's step hook and the
// observer stay each session's own.
//
// Decode batches (one token per session) give each session bit for bit the logits its own
// session::step would give: the linear layers compute every row as if it were alone
// (linear_rows::independent), so a reply does not depend on which other requests share its
// steps. Prefill batches take the path their caller asks for: sgemm for all their rows at once
// (linear_rows::automatic) or the integer kernels (quantized, serve's default), where each row
// again gets the bits it would get alone.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/forward.h"
#include "model/model.h"

namespace kvgate {

// One session's part of a batched step: its next tokens, and which logits it wants back.
struct batch_segment {
  session* s = nullptr;
  std::span<const int32_t> tokens;
  logits_mode mode = logits_mode::last;
};

class batch_decoder {
 public:
  explicit batch_decoder(const model& m) : model_(m) {}

  // Steps every segment's tokens into its session (distinct sessions of this decoder's model)
  // and returns the logits the segments asked for, in segment order: nothing, the last token's
  // row or every token's rows [.., n_vocab]; valid until the next call. Checks every segment
  // before it touches any cache: throws error when a segment is empty, a session would overflow
  // its context, a token is outside the vocabulary, or a session is repeated or runs another
  // model. Attention (and observers) of single-token segments run on worker threads, one
  // session per thread at a time: sessions of one batch must not share an observer.
  std::span<const float> step(std::span<const batch_segment> segments, linear_rows rows);

  // Decode: one token per session, logits [n, n_vocab] (row b for session b), bit-identical to
  // each session's own step.
  std::span<const float> step(std::span<session* const> sessions, std::span<const int32_t> tokens);

 private:
  const model& model_;
  forward::buffers a_;
  std::vector<int32_t> tokens_;   // [rows] every segment's tokens, in order
  std::vector<int32_t> pos_;      // [rows] each row's position in its session
  std::vector<int> first_;        // [segments + 1] first row of each segment
  std::vector<float> x_out_;      // [rows asked, n_embd] residual rows gathered for the logits
  std::vector<batch_segment> one_token_;
};

}  // namespace kvgate
