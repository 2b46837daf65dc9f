// Pre-tokenization: cutting text into the pieces that BPE merges within (never across), by the
// regexes of llama.cpp's llama-vocab.cpp, matched with PCRE2 (UTF + UCP for \p{L}, \p{N}).
// Known difference: PCRE2's Unicode tables are its release's (10.42: Unicode 14); a character
// assigned later (U+1E030, CJK extension H...) is no letter to us but is one to llama.cpp, so
// pieces around it can differ. Tested equal on everything else (tests/data/tokenizer).
#pragma once

#include <memory>
#include <string_view>
#include <vector>

namespace kvgate::pre {

// A chain of regexes. Each stage splits every piece of the previous stage; the matches and the
// text between them are both kept as pieces (llama.cpp's unicode_regex_split, Hugging Face's
// Split with "Isolated" behavior), so the pieces always cover the text exactly.
class splitter {
 public:
  // name: "gpt2" (also "gpt-2", "default" and "" for an absent key), "smollm", "qwen2".
  // Throws error naming an unknown pre-tokenizer.
  static std::unique_ptr<splitter> create(std::string_view name);
  ~splitter();
  splitter(const splitter&) = delete;
  splitter& operator=(const splitter&) = delete;

  // Appends the pieces of text to out, in order; they are views into text. Bytes that are not
  // valid UTF-8 (strictly: no overlongs, surrogates or code points past U+10FFFF) become
  // one-byte pieces of their own and the regexes run on the valid stretches between them.
  void split(std::string_view text, std::vector<std::string_view>& out) const;

 private:
  struct stage;
  splitter() = default;
  void split_valid(std::string_view text, std::vector<std::string_view>& out) const;
  std::vector<std::unique_ptr<stage>> stages_;
};

// Length of the valid UTF-8 sequence starting at s[0], or 0 when s[0] does not start one.
size_t utf8_sequence_length(std::string_view s);

}  // namespace kvgate::pre
