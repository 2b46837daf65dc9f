// Byte-level BPE (GPT-2): bytes are first mapped to printable code points, vocabulary entries and
// merges are written in that alphabet, and merging inside one pre-tokenized piece applies the
// lowest-ranked adjacent pair first (leftmost on ties), as llama.cpp and Hugging Face do.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kvgate::bpe {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
// themselves, the other 68 bytes for U+0100.. in byte order (so ' ' is 'Ġ', '\n' is 'Ċ').
uint32_t byte_to_code_point(uint8_t byte);
// The byte a code point stands for, or -1 when it is not in the map.
int code_point_to_byte(uint32_t code_point);
// Raw bytes -> byte-level text (UTF-8).
std::string encode_bytes(std::string_view raw);
// Byte-level text -> raw bytes. Code points outside the map (text that was never byte-level,
// or malformed UTF-8) are copied through unchanged.
std::string decode_text(std::string_view text);

struct string_hash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// The merge table over a vocabulary. Every string that a token or a merge names is a symbol:
// symbol ids below n_vocab are the token ids, the others are merge intermediates that are not
// vocabulary entries (possible in a hand-edited vocabulary, never in a converted one).
class merger {
 public:
  // merges[i] is "left right" with rank i; the first space after the first character separates
  // them (a left side may itself be a space in a non-byte-level vocabulary). Throws error for
  // a merge without that space. A repeated pair keeps its first (lowest) rank; a repeated token
  // text maps to its last id, both as in llama.cpp.
  merger(std::span<const std::string> tokens, std::span<const std::string> merges);

  // Appends the token ids of one pre-tokenized piece of raw bytes. A merged symbol that is not a
  // vocabulary entry falls back to the byte tokens it covers; a byte without a token is dropped
  // (it cannot be represented; llama.cpp drops it too).
  void encode(std::string_view piece, std::vector<int32_t>& out) const;

  // The id of an exact vocabulary entry.
  std::optional<int32_t> find(std::string_view text) const;

 private:
  int32_t intern(std::string_view text);

  struct merge_result {
    int32_t rank;
    int32_t symbol;  // the merged symbol
  };
  static uint64_t pair_key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  int32_t n_vocab_ = 0;
  std::unordered_map<std::string, int32_t, string_hash, std::equal_to<>> symbol_ids_;
  int32_t n_symbols_ = 0;
  int32_t byte_symbol_[256];                           // symbol of each byte's one-code-point text
  std::unordered_map<uint64_t, merge_result> merges_;  // pair_key(left, right) -> result
};

}  // namespace kvgate::bpe
