#include "model/config.h"

#include <array>
#include <utility>

namespace kvgate {

namespace {

// Largest vocabulary accepted (token ids are int32 everywhere; real models have < 300k tokens).
constexpr int64_t k_max_vocab = int64_t(1) << 24;

// The whole difference between the families, in one place (FACTS.md, "Architectures").
const std::array<std::pair<const char*, arch_traits>, 3> k_archs = {{
    {"llama", {rope_style::normal, false, false}},
    {"qwen2", {rope_style::neox, true, false}},
    {"qwen3", {rope_style::neox, false, true}},
}};

int get_int(const gguf::file& file, const std::string& key, int64_t lo, int64_t hi) {
  const gguf::value& v = file.get(key);
  int64_t x = 0;
  try {
    x = v.as_i64();
  } catch (const error&) {
    fail("{}: metadata {} is not an integer", file.path(), key);
  }
  if (x < lo || x > hi) fail("{}: metadata {} = {} is outside [{}, {}]", file.path(), key, x, lo, hi);
  return static_cast<int>(x);
}

}  // namespace

const arch_traits* find_arch(const std::string& arch) {
  for (const auto& [name, traits] : k_archs)
    if (arch == name) return &traits;
  return nullptr;
}

std::string supported_archs() {
  std::string out;
  for (const auto& [name, traits] : k_archs) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

model_config model_config::from_gguf(const gguf::file& file) {
  model_config c;
  c.arch = file.get_string("general.architecture", "");
  if (c.arch.empty()) fail("{}: no general.architecture in metadata", file.path());
  const arch_traits* traits = find_arch(c.arch);
  if (!traits) {
    fail("{}: unsupported architecture '{}' (supported: {})", file.path(), c.arch, supported_archs());
  }
  c.traits = *traits;
  c.name = file.get_string("general.name", c.arch);
  const std::string p = c.arch + ".";
  c.n_layer = get_int(file, p + "block_count", 1, 1024);
  c.n_embd = get_int(file, p + "embedding_length", 1, 1 << 16);
  c.n_head = get_int(file, p + "attention.head_count", 1, 1024);
  c.n_kv_head = file.find(p + "attention.head_count_kv")
                    ? get_int(file, p + "attention.head_count_kv", 1, c.n_head)
                    : c.n_head;
  if (c.n_head % c.n_kv_head != 0) {
    fail("{}: {} query heads are not a multiple of {} kv heads", file.path(), c.n_head, c.n_kv_head);
  }
  c.d_head = file.find(p + "attention.key_length") ? get_int(file, p + "attention.key_length", 1, 4096)
                                                     : c.n_embd / c.n_head;
  if (file.find(p + "attention.value_length") &&
      get_int(file, p + "attention.value_length", 1, 4096) != c.d_head) {
    fail("{}: key and value head widths differ; not supported", file.path());
  }
  if (c.d_head < 2) fail("{}: head width {} (embedding_length / head_count) is too small", file.path(), c.d_head);
  if (c.d_head % 2 != 0) fail("{}: head width {} is odd", file.path(), c.d_head);
  c.n_rot = file.find(p + "rope.dimension_count") ? get_int(file, p + "rope.dimension_count", 2, c.d_head)
                                                    : c.d_head;
  if (c.n_rot % 2 != 0) fail("{}: rope.dimension_count {} is odd", file.path(), c.n_rot);
  c.n_ff = get_int(file, p + "feed_forward_length", 1, 1 << 20);
  c.n_ctx_train = file.find(p + "context_length") ? get_int(file, p + "context_length", 1, 1 << 24) : 2048;
  c.rope_base = static_cast<float>(file.get_f64(p + "rope.freq_base", 10000.0));
  c.norm_eps = static_cast<float>(file.get_f64(p + "attention.layer_norm_rms_epsilon", 1e-5));
  if (!(c.norm_eps > 0.0f) || !(c.rope_base > 0.0f)) {
    fail("{}: rms epsilon and rope base must be positive", file.path());
  }

  const gguf::tensor_info& embd = file.tensor("token_embd.weight");
  if (embd.ne.size() != 2 || embd.ne[0] != c.n_embd) {
    fail("{}: token_embd.weight must be [{}, n_vocab]", file.path(), c.n_embd);
  }
  // ne[1] is bounded by the file's size only; everything after indexes the vocabulary with int.
  if (embd.ne[1] < 1 || embd.ne[1] > k_max_vocab) {
    fail("{}: token_embd.weight has {} rows (n_vocab); expected 1 to {}", file.path(), embd.ne[1], k_max_vocab);
  }
  c.n_vocab = static_cast<int>(embd.ne[1]);
  c.tied_embeddings = file.find_tensor("output.weight") == nullptr;
  return c;
}

}  // namespace kvgate
