// Model hyper-parameters read from GGUF metadata, and the few ways the supported families differ.
#pragma once

#include <string>

#include "gguf/gguf.h"

namespace kvgate {

enum class rope_style {
  normal,  // rotate consecutive pairs (2i, 2i+1): llama (the converter permuted Q/K to match)
  neox,    // rotate (i, i + n_rot/2): qwen2, qwen3
};

// Everything the forward pass needs to know about an architecture beyond its sizes. The
// per-family table lives in config.cpp: adding a family means adding one row there.
struct arch_traits {
  rope_style rope = rope_style::normal;
  bool qkv_bias = false;  // qwen2: attn_{q,k,v}.bias
  bool qk_norm = false;   // qwen3: RMSNorm over each head of q and k before RoPE
};

struct model_config {
  std::string arch;       // general.architecture
  std::string name;       // general.name
  arch_traits traits;
  int n_layer = 0;
  int n_embd = 0;
  int n_head = 0;
  int n_kv_head = 0;
  int d_head = 0;         // key/value width per head
  int n_rot = 0;          // rotated dims per head (<= d_head)
  int n_ff = 0;
  int n_vocab = 0;
  int n_ctx_train = 0;
  float rope_base = 10000.0f;
  float norm_eps = 1e-5f;
  bool tied_embeddings = false;

  int n_group() const { return n_head / n_kv_head; }  // query heads per kv head
  int n_heads_total() const { return n_layer * n_kv_head; }

  // Throws error for an unknown architecture (listing the supported ones) or inconsistent sizes.
  static model_config from_gguf(const gguf::file& file);
};

const arch_traits* find_arch(const std::string& arch);  // nullptr if unsupported
std::string supported_archs();                           // "llama, qwen2, qwen3"

}  // namespace kvgate
