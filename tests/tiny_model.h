// Tiny random-weight GGUF models written by the test suite, and an obvious double-precision
// reference forward pass to check the engine against. The reference is written from the
// architecture description (FACTS.md), sharing nothing with src/model but weight dequantization.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvgate::test {

struct tiny_spec {
  std::string arch = "llama";  // llama | qwen2 | qwen3
  int n_layer = 2;
  int n_embd = 64;
  int n_head = 4;
  int n_kv_head = 2;
  int d_head = 16;
  int n_ff = 96;
  int n_ctx = 256;
  float rope_base = 10000.0f;
  bool tied = true;
  bool quantized = true;  // some matrices in Q8_0 / Q4_1 instead of F32
  uint64_t seed = 1;
  std::string name;       // general.name; empty: "tiny-<arch>"
};

// Vocabulary: the 256 byte tokens of byte-level BPE, "th", <|im_start|>, <|im_end|>.
inline constexpr int k_tiny_vocab = 259;

void write_tiny_model(const std::string& path, const tiny_spec& spec);

// n byte tokens (ids < 256, in every tiny vocabulary), reproducible from the seed.
std::vector<int32_t> random_tokens(int n, uint64_t seed);

// Logits [n_tokens, n_vocab] of the whole sequence from an empty context, in double precision.
// swap_rope_style computes it with the other family's RoPE pairing (to show tests can fail).
std::vector<double> reference_logits(const std::string& path, const std::vector<int32_t>& tokens,
                                     bool swap_rope_style = false);

}  // namespace kvgate::test
