#include "tokenizer/pre_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <string>

#include "common/error.h"

namespace kvgate::pre {

namespace {

// The regexes of llama.cpp src/llama-vocab.cpp (llm_tokenizer_bpe). llama.cpp runs hand-written
// equivalents of the gpt2 and qwen2 ones; the goldens check that PCRE2 agrees with them.
constexpr std::string_view k_gpt2 =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr std::string_view k_digit = R"(\p{N})";
// The Qwen2 tokenizer.json has (?i:'s|...); the expanded classes say the same without caseless
// matching of whole words.
constexpr std::string_view k_qwen2 =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N})"
    R"(| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// \s as llama.cpp's tables (and Python's and Rust's regex) define it: the Unicode White_Space
// property. PCRE2's \s also matches U+180E (a format character since Unicode 6.3), which would
// split " \u180e" apart where llama.cpp keeps it together.
constexpr std::string_view k_space_chars = R"(\t\n\x0B\f\r\x20\x85\xA0\x{1680}\x{2000}-\x{200A})"
                                           R"(\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// The pattern with \s and \S spelled out from k_space_chars (\S never occurs inside a class
// in our patterns).
std::string expand_whitespace(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 's') {
        out.append(in_class ? "" : "[").append(k_space_chars).append(in_class ? "" : "]");
      } else if (e == 'S' && !in_class) {
        out.append("[^").append(k_space_chars).append("]");
      } else {
        out.append({c, e});
      }
      continue;
    }
    if (c == '[') in_class = true;
    if (c == ']') in_class = false;
    out += c;
  }
  return out;
}

struct code_deleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct match_data_deleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};

}  // namespace

struct splitter::stage {
  std::unique_ptr<pcre2_code, code_deleter> code;
};

namespace {

std::unique_ptr<pcre2_code, code_deleter> compile(std::string_view written) {
  const std::string pattern = expand_whitespace(written);
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    fail("pre-tokenizer regex does not compile at offset {}: {}", error_offset,
         reinterpret_cast<const char*>(message));
  }
  // JIT is an optimization only: PCRE2 built without it still matches through the interpreter.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return std::unique_ptr<pcre2_code, code_deleter>(code);
}

}  // namespace

splitter::~splitter() = default;

std::unique_ptr<splitter> splitter::create(std::string_view name) {
  std::vector<std::string_view> patterns;
  if (name.empty() || name == "default" || name == "gpt2" || name == "gpt-2") {
    // llama.cpp's "default" is a four-regex chain used for old conversions it warns about; the
    // models we serve name their pre-tokenizer, and GPT-2's regex is the sane fallback.
    patterns = {k_gpt2};
  } else if (name == "smollm") {
    patterns = {k_digit, k_gpt2};
  } else if (name == "qwen2") {
    patterns = {k_qwen2};
  } else {
    fail(
        "unsupported pre-tokenizer '{}' (tokenizer.ggml.pre); kvgate implements gpt2, smollm, "
        "qwen2",
        name);
  }
  std::unique_ptr<splitter> s(new splitter());
  for (std::string_view pattern : patterns) {
    auto st = std::make_unique<stage>();
    st->code = compile(pattern);
    s->stages_.push_back(std::move(st));
  }
  return s;
}

size_t utf8_sequence_length(std::string_view s) {
  if (s.empty()) return 0;
  const auto b0 = static_cast<unsigned char>(s[0]);
  if (b0 < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // UTF-16 surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // past U+10FFFF
  } else {
    return 0;  // continuation byte, overlong C0/C1, or F5..FF
  }
  if (s.size() < n) return 0;
  const auto b1 = static_cast<unsigned char>(s[1]);
  if (b1 < lo || b1 > hi) return 0;
  for (size_t i = 2; i < n; ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) return 0;
  }
  return n;
}

void splitter::split(std::string_view text, std::vector<std::string_view>& out) const {
  size_t valid_begin = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t n = utf8_sequence_length(text.substr(pos));
    if (n > 0) {
      pos += n;
      continue;
    }
    split_valid(text.substr(valid_begin, pos - valid_begin), out);
    out.push_back(text.substr(pos, 1));
    valid_begin = ++pos;
  }
  split_valid(text.substr(valid_begin), out);
}

void splitter::split_valid(std::string_view text, std::vector<std::string_view>& out) const {
  if (text.empty()) return;
  std::vector<std::string_view> pieces{text};
  std::vector<std::string_view> next;
  for (const auto& st : stages_) {
    std::unique_ptr<pcre2_match_data, match_data_deleter> match(
        pcre2_match_data_create_from_pattern(st->code.get(), nullptr));
    next.clear();
    for (std::string_view piece : pieces) {
      // Each piece is its own subject: lookaheads such as (?!\S) see its end, not the text
      // after it, as in llama.cpp.
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
      size_t start = 0;  // first byte not yet emitted
      size_t offset = 0;
      while (offset < piece.size()) {
        // The text was validated above, so PCRE2 need not check it again on every call.
        const int rc = pcre2_match(st->code.get(), subject, piece.size(), offset,
                                   PCRE2_NO_UTF_CHECK, match.get(), nullptr);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) fail("pre-tokenizer regex match failed (PCRE2 error {})", rc);
        const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match.get());
        const size_t m_begin = ovector[0];
        size_t m_end = ovector[1];
        if (m_begin > start) next.push_back(piece.substr(start, m_begin - start));
        if (m_end == m_begin) {
          // None of our regexes matches empty; step over one character should one ever do.
          const size_t n_char = std::max<size_t>(1, utf8_sequence_length(piece.substr(m_begin)));
          m_end = std::min(piece.size(), m_begin + n_char);
        }
        next.push_back(piece.substr(m_begin, m_end - m_begin));
        start = offset = m_end;
      }
      if (start < piece.size()) next.push_back(piece.substr(start));
    }
    pieces.swap(next);
  }
  out.insert(out.end(), pieces.begin(), pieces.end());
}

}  // namespace kvgate::pre
