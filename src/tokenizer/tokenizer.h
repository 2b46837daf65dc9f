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

class tokenizer {
 public:
  // Throws error when the vocabulary is missing or malformed, or the model / pre-tokenizer kind
  // is not one we implement (the message names it).
  static std::unique_ptr<tokenizer> from_gguf(const gguf::file& file);
  ~tokenizer();

  // Token ids of text; no BOS is added. With parse_special, text equal to a special (control or
  // user-defined) token's text becomes that token; without it, such text is tokenized as plain
  // text. Invalid UTF-8 is tokenized byte by byte, never rejected.
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

  // ChatML: "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then "<|im_start|>assistant\n"
  // when add_assistant_prompt. When the first message is not "system" and the model's template
  // carries a default system prompt (SmolLM2's does), that prompt is inserted first, as the
  // model's own template would.
  std::string apply_chat(std::span<const chat_message> messages, bool add_assistant_prompt) const;

 private:
  tokenizer();
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace kvgate
