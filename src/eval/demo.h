// The demonstration page of `kvgate demo`: a prompt's tokens drawn as text, each shaded by how
// many of the model's KV heads still hold it once the answer is generated, with the question,
// the answer and the KV-memory figures above. Pure rendering from plain data (no model, no
// policy types), so it is testable on hand-made inputs; cmd_demo gathers the data from a session.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kvgate::eval {

// KV-memory figures shown above the text (all over every head of every layer).
struct demo_figures {
  std::string policy;            // e.g. "learned (per-head, sinks 4, window 128, threshold 0.5)"
  int64_t prompt_tokens = 0;
  int64_t answer_tokens = 0;
  double kv_share_mean = 1.0;    // policy_stats::kv_share_mean
  double kv_share_peak = 1.0;    // policy_stats::kv_share_peak
  size_t kv_bytes_peak = 0;      // most bytes the cache held
  size_t kv_bytes_full = 0;      // bytes a full cache would hold at the end
  double kept_share_final = 1.0; // live slots / (n_heads * n_past) at the end
  double doc_evicted_share = 0.0;// document tokens no head holds / document tokens
};

struct demo_page {
  std::string question;
  std::string answer;
  demo_figures figures;
  int n_heads = 0;                          // n_layer * n_kv_head
  std::vector<std::string> token_bytes;     // [n_prompt] bytes of each prompt token (may be part of a UTF-8 character)
  std::vector<int> kept_heads;              // [>= n_prompt] heads holding position p at the end, 0..n_heads
  // Zones marked under the text; both empty ranges for a policy that keeps everything.
  int32_t sinks = 0;                        // positions < sinks are sinks
  int32_t window_begin = INT32_MAX;         // positions >= window_begin are in the final window
};

// Consecutive tokens [begin, end) drawn as one span: a token whose bytes end inside a UTF-8
// character is merged with the tokens that complete it, so no span holds half a character.
struct token_group {
  size_t begin = 0, end = 0;
};
std::vector<token_group> group_utf8_tokens(std::span<const std::string> token_bytes);

// s with every invalid or truncated UTF-8 sequence replaced by U+FFFD (a document may hold stray
// bytes; the page must stay valid UTF-8 whatever it holds).
std::string sanitize_utf8(const std::string& s);

// The whole self-contained page (inline CSS, no external assets). Throws error when kept_heads
// is shorter than token_bytes, n_heads < 1 or a count is outside 0..n_heads.
std::string render_demo_html(const demo_page& page);

}  // namespace kvgate::eval
