#include "tokenizer/chat.h"

#include <utility>
#include <vector>

namespace kvgate::chat {

namespace {

constexpr std::string_view k_system_open = "<|im_start|>system\n";
constexpr std::string_view k_close = "<|im_end|>";

// Reads the Jinja string literal whose opening quote is at text[pos]; returns its value with the
// escapes Jinja (Python) understands that templates use, and moves pos past the closing quote.
std::string read_literal(std::string_view text, size_t& pos) {
  const char quote = text[pos++];
  std::string value;
  while (pos < text.size() && text[pos] != quote) {
    char c = text[pos++];
    if (c == '\\' && pos < text.size()) {
      const char e = text[pos++];
      switch (e) {
        case 'n':
          c = '\n';
          break;
        case 't':
          c = '\t';
          break;
        case 'r':
          c = '\r';
          break;
        default:
          c = e;
          break;  // \\, \', \"
      }
    }
    value += c;
  }
  ++pos;  // closing quote (or past the end of an unterminated literal)
  return value;
}

// The template's literal output pieces, in order: raw text between tags and string literals in
// expression / statement tags. Comments ({# #}) are skipped.
std::vector<std::string> literal_pieces(std::string_view jinja) {
  std::vector<std::string> pieces;
  std::string raw;
  size_t pos = 0;
  while (pos < jinja.size()) {
    const char c = jinja[pos];
    const char kind = pos + 1 < jinja.size() ? jinja[pos + 1] : '\0';
    if (c != '{' || (kind != '{' && kind != '%' && kind != '#')) {
      raw += c;
      ++pos;
      continue;
    }
    if (!raw.empty()) pieces.push_back(std::exchange(raw, {}));
    const std::string_view closer = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    pos += 2;
    while (pos < jinja.size() && jinja.substr(pos, 2) != closer) {
      if (kind != '#' && (jinja[pos] == '\'' || jinja[pos] == '"')) {
        pieces.push_back(read_literal(jinja, pos));
      } else {
        ++pos;
      }
    }
    pos += 2;
  }
  if (!raw.empty()) pieces.push_back(std::move(raw));
  return pieces;
}

}  // namespace

std::optional<std::string> find_default_system_prompt(std::string_view jinja) {
  for (const std::string& piece : literal_pieces(jinja)) {
    const size_t open = piece.find(k_system_open);
    if (open == std::string::npos) continue;
    const size_t begin = open + k_system_open.size();
    const size_t close = piece.find(k_close, begin);
    if (close == std::string::npos) continue;
    return piece.substr(begin, close - begin);
  }
  return std::nullopt;
}

std::string format_chatml(std::span<const chat_message> messages, bool add_assistant_prompt,
                          const std::optional<std::string>& default_system_prompt) {
  std::string out;
  const auto append = [&out](std::string_view role, std::string_view content) {
    out.append("<|im_start|>").append(role).append("\n").append(content).append("<|im_end|>\n");
  };
  if (!messages.empty() && messages.front().role != "system" && default_system_prompt) {
    append("system", *default_system_prompt);
  }
  for (const chat_message& m : messages) append(m.role, m.content);
  if (add_assistant_prompt) out.append("<|im_start|>assistant\n");
  return out;
}

}  // namespace kvgate::chat
