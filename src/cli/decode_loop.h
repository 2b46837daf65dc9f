// The decoding loop that generate, chat and demo share: sample a token from the logits, hand it
// to the caller (to print or collect), step it into the session for the next logits.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/sampler.h"

namespace kvgate::cli {

struct decode_limits {
  int n_predict = 0;       // most tokens produced
  bool stop_at_eos = true; // an end-of-generation token ends the loop (it is not produced)
  // A token is stepped only if `reserve` positions stay free after it; otherwise the loop ends
  // with "context" and the token stays pending. generate: 0. chat: the next reply token and the
  // end of turn, so that whatever the loop leaves pending still fits with the end of turn.
  int reserve = 0;
};

struct decode_result {
  std::vector<int32_t> ids;  // [produced] the tokens produced, in order
  // The last produced token has not been stepped into the session (the loop ended right after
  // producing it: -n reached, or the context full). Every earlier token has been.
  bool last_pending = false;
  std::string stop;          // "length" | "eos" | "context"
  double seconds = 0.0;
};

// logits: [n_vocab] of the last stepped token; holds the newest logits afterwards. on_token is
// called once per produced token, before it is stepped.
decode_result decode_loop(session& s, sampler& pick, std::vector<float>& logits, const decode_limits& limits,
                          const std::function<void(int32_t id)>& on_token);

}  // namespace kvgate::cli
