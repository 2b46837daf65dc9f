// Reading the tokenizer's metadata from a GGUF (kept apart from the tokenizer itself, which
// needs only plain vectors).
#include <cstdint>

#include "common/error.h"
#include "tokenizer/tokenizer.h"

namespace kvgate {

namespace {

// -1 when absent or outside the vocabulary: converters write placeholders such as 0xFFFFFFFF
// for "none", and llama.cpp ignores such ids (with a warning) rather than refuse the model.
int32_t optional_id(const gguf::file& file, std::string_view key, size_t n_vocab) {
  const gguf::value* v = file.find(key);
  if (!v) return -1;
  const uint64_t id = v->type() == gguf::value_type::i8 || v->type() == gguf::value_type::i16 ||
                              v->type() == gguf::value_type::i32 ||
                              v->type() == gguf::value_type::i64
                          ? static_cast<uint64_t>(v->as_i64())
                          : v->as_u64();
  return id < n_vocab ? static_cast<int32_t>(id) : -1;
}

std::vector<std::string> string_array(const gguf::file& file, std::string_view key) {
  std::vector<std::string> out;
  const gguf::value* v = file.find(key);
  if (!v) return out;
  const auto& elements = v->as_array();
  out.reserve(elements.size());
  for (const gguf::value& e : elements) out.push_back(e.as_string());
  return out;
}

}  // namespace

tokenizer_metadata tokenizer::read_metadata(const gguf::file& file) {
  tokenizer_metadata m;
  std::string_view key;
  try {
    key = "tokenizer.ggml.model";
    if (const gguf::value* v = file.find(key)) m.model = v->as_string();
    key = "tokenizer.ggml.pre";
    if (const gguf::value* v = file.find(key)) m.pre = v->as_string();
    key = "tokenizer.ggml.tokens";
    m.tokens = string_array(file, key);
    key = "tokenizer.ggml.token_type";
    if (const gguf::value* v = file.find(key)) {
      const auto& elements = v->as_array();
      m.token_types.reserve(elements.size());
      for (const gguf::value& e : elements)
        m.token_types.push_back(static_cast<int32_t>(e.as_i64()));
    }
    key = "tokenizer.ggml.merges";
    m.merges = string_array(file, key);
    key = "tokenizer.ggml.bos_token_id";
    m.bos = optional_id(file, key, m.tokens.size());
    key = "tokenizer.ggml.eos_token_id";
    m.eos = optional_id(file, key, m.tokens.size());
    key = "tokenizer.ggml.eot_token_id";
    m.eot = optional_id(file, key, m.tokens.size());
    key = "tokenizer.chat_template";
    if (const gguf::value* v = file.find(key)) m.chat_template = v->as_string();
  } catch (const error& e) {
    fail("bad tokenizer metadata {}: {}", key, e.what());
  }
  return m;
}

std::unique_ptr<tokenizer> tokenizer::from_gguf(const gguf::file& file) {
  try {
    return from_metadata(read_metadata(file));
  } catch (const error& e) {
    fail("{}: {}", file.path(), e.what());
  }
}

}  // namespace kvgate
