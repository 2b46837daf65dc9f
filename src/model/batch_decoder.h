// Decode steps of several sessions of one model, run together (serve's slots): the linear layers
// run once for all of them, so each weight matrix is read from memory once per step instead of
// once per session. Attention, the cache, the policy's step hook and the observer stay each
// session's own. Each session gets bit for bit the logits its own session::step would give: the
// linear layers compute every row as if it were alone (linear_rows::independent), so a reply
// does not depend on which other requests share its steps.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/forward.h"
#include "model/model.h"

namespace kvgate {

class batch_decoder {
 public:
  explicit batch_decoder(const model& m) : model_(m) {}

  // Steps tokens[b] into sessions[b] (one token each; distinct sessions of this decoder's model)
  // and returns logits [n, n_vocab], row b for session b, valid until the next call. Checks
  // every session and token before it touches any cache: throws error when a session is full,
  // a token is outside the vocabulary, or a session is repeated or runs another model. Sessions'
  // attention (and observers) run on worker threads, one session per thread at a time: sessions
  // of one batch must not share an observer.
  std::span<const float> step(std::span<session* const> sessions, std::span<const int32_t> tokens);

 private:
  const model& model_;
  forward::buffers a_;
  std::vector<int32_t> pos_;  // [n] each session's position of its token
};

}  // namespace kvgate
