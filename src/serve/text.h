// Reply text as it streams: whole UTF-8 characters only, stop strings held back until decided.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kvgate::serve {

// Length of the longest prefix of text[0, end) that does not end inside a UTF-8 character (an
// incomplete lead sequence at the end is held back; invalid bytes pass as they are).
size_t utf8_complete_end(std::string_view text, size_t end);

// Earliest position of any stop string in text that ends past `from` (one that starts before
// `from` is found too), npos if none.
size_t find_stop(std::string_view text, const std::vector<std::string>& stop, size_t from);

// End of the text that can be sent now: before any suffix that is a prefix of a stop string and
// before an incomplete UTF-8 character; never below `from`.
size_t safe_text_end(std::string_view text, size_t from, const std::vector<std::string>& stop);

}  // namespace kvgate::serve
