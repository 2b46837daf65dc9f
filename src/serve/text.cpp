#include "serve/text.h"

#include <algorithm>

namespace kvgate::serve {

size_t utf8_complete_end(std::string_view text, size_t end) {
  // Look back at most 3 bytes for a lead byte whose sequence runs past end.
  for (size_t back = 1; back <= 4 && back <= end; ++back) {
    const auto c = static_cast<unsigned char>(text[end - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte
    size_t len = 1;
    if ((c & 0xE0) == 0xC0) len = 2;
    else if ((c & 0xF0) == 0xE0) len = 3;
    else if ((c & 0xF8) == 0xF0) len = 4;
    return len > back ? end - back : end;
  }
  return end;
}

size_t find_stop(std::string_view text, const std::vector<std::string>& stop, size_t from) {
  size_t best = std::string_view::npos;
  for (const std::string& s : stop) {
    const size_t start = from >= s.size() ? from - s.size() + 1 : 0;
    const size_t p = text.find(s, start);
    if (p != std::string_view::npos) best = std::min(best, p);
  }
  return best;
}

size_t safe_text_end(std::string_view text, size_t from, const std::vector<std::string>& stop) {
  size_t end = text.size();
  for (const std::string& s : stop) {
    // The longest suffix of text that is a proper prefix of s.
    for (size_t n = std::min(s.size() - 1, text.size()); n > 0; --n) {
      if (text.substr(text.size() - n) == std::string_view(s).substr(0, n)) {
        end = std::min(end, text.size() - n);
        break;
      }
    }
  }
  end = utf8_complete_end(text, end);
  return std::max(end, from);
}

}  // namespace kvgate::serve
