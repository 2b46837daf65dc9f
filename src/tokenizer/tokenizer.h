// Byte-level BPE tokenizer built from a GGUF's `tokenizer.ggml.*` metadata (model "gpt2"), with
// the pre-tokenizers of the supported families ("gpt2", "smollm", "qwen2"; PCRE2 supplies the
// Unicode classes), special tokens, decoding back to bytes, and the ChatML chat template.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/gguf.h"

namespace kvgate {

struct chat_message {
  std::string role;     // "system", "user", "assistant"
  std::string content;
};

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
enum class token_type : int32_t {
  undefined = 0, normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6,
};

// The tokenizer's part of a GGUF's metadata as plain data. from_gguf reads it and calls
// from_metadata; tests build one by hand (tiny vocabularies) or change a field of a real one
// (the same vocabulary under another pre-tokenizer).
struct tokenizer_metadata {
  std::string model;                 // tokenizer.ggml.model; only "gpt2" is implemented
  std::string pre;                   // tokenizer.ggml.pre; "" when absent (then "gpt2")
  std::vector<std::string> tokens;   // [n_vocab] tokenizer.ggml.tokens, byte-level text
  std::vector<int32_t> token_types;  // [n_vocab] token_type values, or empty: all normal
  std::vector<std::string> merges;   // "left right" in rank order (first = merged first)
  int32_t bos = -1;                  // tokenizer.ggml.bos_token_id, -1 when absent
  int32_t eos = -1;                  // tokenizer.ggml.eos_token_id
  int32_t eot = -1;                  // tokenizer.ggml.eot_token_id
  std::string chat_template;         // tokenizer.chat_template (Jinja), "" when absent
};

// Immutable once built: every const method may be called from several threads at once.
class tokenizer {
 public:
  // Throws error when the vocabulary is missing or malformed, or the model / pre-tokenizer kind
  // is not one we implement (the message names it).
  static std::unique_ptr<tokenizer> from_gguf(const gguf::file& file);
  // The metadata from_gguf uses; throws error when a key has the wrong type.
  static tokenizer_metadata read_metadata(const gguf::file& file);
  // Same checks as from_gguf.
  static std::unique_ptr<tokenizer> from_metadata(tokenizer_metadata metadata);
  ~tokenizer();

  // Token ids of text; no BOS is added. With parse_special, text equal to a special (control or
  // user-defined) token's text becomes that token; without it, control-token text is tokenized
  // as plain text. User-defined tokens (added vocabulary such as Qwen's "<tool_call>") are
  // matched either way, as llama.cpp and Hugging Face tokenizers do. Invalid UTF-8 is tokenized
  // byte by byte (one byte token each), never rejected (llama.cpp instead turns each invalid byte
  // into U+FFFD). decode(encode(x)) == x unless x holds a byte the vocabulary has no token for:
  // such bytes are dropped, as llama.cpp and Hugging Face do (SmolLM2 lacks 0x04 0x06 0x13 0x14
  // 0x16 0x1D 0xC0 0xC1 0xF1 0xF2 0xF5..0xFF).
  std::vector<int32_t> encode(std::string_view text, bool parse_special = false) const;

  // The bytes a token stands for (control tokens give their text, e.g. "<|im_end|>").
  // A single token may hold part of a UTF-8 character.
  std::string token_bytes(int32_t id) const;
  std::string decode(std::span<const int32_t> ids) const;

  int32_t n_vocab() const;
  int32_t bos() const;   // -1 when the model has none
  int32_t eos() const;
  bool is_end_of_generation(int32_t id) const;  // EOS, <|im_end|>, <|endoftext|>, EOT ids
  std::optional<int32_t> find_token(std::string_view text) const;  // exact vocabulary entry
  token_type type(int32_t id) const;

  // ChatML: "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then "<|im_start|>assistant\n"
  // when add_assistant_prompt. When the first message is not "system" and the model's template
  // carries a default system prompt (SmolLM2's does), that prompt is inserted first, as the
  // model's own template would.
  std::string apply_chat(std::span<const chat_message> messages, bool add_assistant_prompt) const;
  // The default system prompt found in tokenizer.chat_template, if any.
  const std::optional<std::string>& default_system_prompt() const;

 private:
  tokenizer();
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace kvgate
