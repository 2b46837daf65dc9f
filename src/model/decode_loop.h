// The decoding loop that generate, chat, demo and serve share: sample a token from the logits, hand it
// to the caller (to print or collect), step it into the session for the next logits.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model/model.h"
#include "model/sampler.h"

namespace kvgate {

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

// The same loop one token at a time, for callers that step several sequences together (serve):
// decode_next samples from the logits of the last stepped token and says what to do with it.
//   end   nothing produced, the loop is over (result.stop says why);
//   last  *id produced, the loop is over, *id stays pending (result.last_pending);
//   step  *id produced: step it into the session (then clear result.last_pending) and call again.
struct decode_cursor {
  decode_limits limits;
  decode_result result;  // seconds is left to the caller
  bool done = false;
};
enum class decode_event { end, last, step };
decode_event decode_next(decode_cursor& c, sampler& pick, std::span<const float> logits, const tokenizer& vocab,
                         int n_past, int n_ctx, int32_t* id);

}  // namespace kvgate
