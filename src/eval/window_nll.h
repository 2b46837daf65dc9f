// A window of tokens scored by next-token prediction: run through a session in chunks of n_batch
// tokens with the logits of every position, position p predicting token p + 1. Shared by
// `kvgate perplexity` and the bench's quality runs, so both cut and index windows the same way.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

namespace kvgate {

class session;

// Called once per chunk: logits [n_rows, n_vocab] (row-major, a view valid during the call) of
// positions first .. first + n_rows - 1, row t predicting tokens[first + t + 1]. The window's last
// position predicts nothing and is left out, so the final chunk may have fewer rows than tokens.
using prediction_chunk_fn = std::function<void(int first, std::span<const float> logits, int n_rows)>;

// Steps tokens [n_tokens] through s from its current state in chunks of n_batch (a policy attached
// to s evicts between chunks) and hands each chunk's predicting rows to `chunk`.
void run_window_chunks(session& s, std::span<const int32_t> tokens, int n_batch, const prediction_chunk_fn& chunk);

// The window's next-token negative log-likelihoods (token_nll), added one by one in position
// order to *nll_sum; returns how many were added (n_tokens - 1).
int64_t add_window_nll(session& s, std::span<const int32_t> tokens, int n_batch, double* nll_sum);

}  // namespace kvgate
