#include "tokenizer/bpe.h"

#include <algorithm>
#include <array>

#include "common/error.h"
#include "tokenizer/pre_tokenizer.h"

namespace kvgate::bpe {

namespace {

bool is_printable_latin1(int b) {
  return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct byte_map {
  std::array<uint32_t, 256> to_code_point;
  std::array<int16_t, 512> to_byte;  // every mapped code point is below 0x100 + 68

  byte_map() {
    to_byte.fill(-1);
    uint32_t n_shifted = 0;
    for (int b = 0; b < 256; ++b) {
      const uint32_t cp = is_printable_latin1(b) ? b : 0x100 + n_shifted++;
      to_code_point[b] = cp;
      to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const byte_map& the_byte_map() {
  static const byte_map map;
  return map;
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Decodes the valid UTF-8 sequence of n bytes at s.
uint32_t decode_utf8(const unsigned char* s, size_t n) {
  if (n == 1) return s[0];
  uint32_t cp = s[0] & (0x7F >> n);
  for (size_t i = 1; i < n; ++i) cp = (cp << 6) | (s[i] & 0x3F);
  return cp;
}

}  // namespace

uint32_t byte_to_code_point(uint8_t byte) { return the_byte_map().to_code_point[byte]; }

int code_point_to_byte(uint32_t code_point) {
  return code_point < 512 ? the_byte_map().to_byte[code_point] : -1;
}

std::string encode_bytes(std::string_view raw) {
  std::string out;
  out.reserve(raw.size() * 2);
  for (char c : raw) append_utf8(byte_to_code_point(static_cast<uint8_t>(c)), out);
  return out;
}

std::string decode_text(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t n = pre::utf8_sequence_length(text.substr(pos));
    if (n == 0) {
      out += text[pos++];
      continue;
    }
    const uint32_t cp = decode_utf8(reinterpret_cast<const unsigned char*>(text.data() + pos), n);
    const int b = code_point_to_byte(cp);
    if (b >= 0) {
      out += static_cast<char>(b);
    } else {
      out.append(text.substr(pos, n));
    }
    pos += n;
  }
  return out;
}

merger::merger(std::span<const std::string> tokens, std::span<const std::string> merges) {
  n_vocab_ = static_cast<int32_t>(tokens.size());
  symbol_ids_.reserve(tokens.size() + merges.size() / 8);
  for (int32_t id = 0; id < n_vocab_; ++id) symbol_ids_[tokens[id]] = id;
  n_symbols_ = n_vocab_;

  for (int b = 0; b < 256; ++b) {
    std::string text;
    append_utf8(byte_to_code_point(static_cast<uint8_t>(b)), text);
    byte_symbol_[b] = intern(text);
  }

  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const std::string& merge = merges[rank];
    const size_t space = merge.size() > 1 ? merge.find(' ', 1) : std::string::npos;
    if (space == std::string::npos) {
      fail("malformed BPE merge {} (tokenizer.ggml.merges): '{}' has no 'left right' form", rank,
           merge);
    }
    const std::string_view left = std::string_view(merge).substr(0, space);
    const std::string_view right = std::string_view(merge).substr(space + 1);
    const int32_t left_id = intern(left);
    const int32_t right_id = intern(right);
    std::string merged;
    merged.reserve(left.size() + right.size());
    merged.append(left).append(right);
    const int32_t merged_id = intern(merged);
    merges_.try_emplace(pair_key(left_id, right_id),
                        merge_result{static_cast<int32_t>(rank), merged_id});
  }
}

int32_t merger::intern(std::string_view text) {
  auto it = symbol_ids_.find(text);
  if (it != symbol_ids_.end()) return it->second;
  symbol_ids_.emplace(std::string(text), n_symbols_);
  return n_symbols_++;
}

std::optional<int32_t> merger::find(std::string_view text) const {
  auto it = symbol_ids_.find(text);
  if (it == symbol_ids_.end() || it->second >= n_vocab_) return std::nullopt;
  return it->second;
}

void merger::encode(std::string_view piece, std::vector<int32_t>& out) const {
  struct symbol {
    int32_t id;
    int32_t prev;      // index of the previous live symbol, -1 at the start
    int32_t next;      // index of the next live symbol, -1 at the end
    uint32_t begin;    // bytes [begin, begin + n_bytes) of the piece
    uint32_t n_bytes;  // 0 once merged into its left neighbour
  };
  struct candidate {
    int32_t rank;
    int32_t left;  // symbol index
    int32_t left_id;
    int32_t right_id;
    int32_t merged_id;
  };
  // A heap ordered so that its top is the lowest rank, then the leftmost pair.
  const auto later = [](const candidate& a, const candidate& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };

  // Scratch reused across pieces; one set per thread keeps encode() const and thread-safe.
  thread_local std::vector<symbol> symbols;
  thread_local std::vector<candidate> heap;
  symbols.clear();
  heap.clear();

  const int32_t n = static_cast<int32_t>(piece.size());
  for (int32_t i = 0; i < n; ++i) {
    symbols.push_back({byte_symbol_[static_cast<uint8_t>(piece[i])], i - 1, i + 1 < n ? i + 1 : -1,
                       static_cast<uint32_t>(i), 1});
  }
  const auto try_push = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    auto it = merges_.find(pair_key(symbols[left].id, symbols[right].id));
    if (it == merges_.end()) return;
    heap.push_back({it->second.rank, left, symbols[left].id, symbols[right].id, it->second.symbol});
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (int32_t i = 0; i + 1 < n; ++i) try_push(i);

  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const candidate c = heap.back();
    heap.pop_back();
    symbol& left = symbols[c.left];
    // Stale entries: either side has merged with something else since this pair was queued.
    if (left.n_bytes == 0 || left.id != c.left_id || left.next < 0) continue;
    symbol& right = symbols[left.next];
    if (right.id != c.right_id) continue;

    left.id = c.merged_id;
    left.n_bytes += right.n_bytes;
    right.n_bytes = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = c.left;
    if (left.prev >= 0) try_push(left.prev);
    try_push(c.left);
  }

  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = symbols[i].next) {
    const symbol& s = symbols[i];
    if (s.id < n_vocab_) {
      out.push_back(s.id);
      continue;
    }
    for (uint32_t k = s.begin; k < s.begin + s.n_bytes; ++k) {
      const int32_t byte_id = byte_symbol_[static_cast<uint8_t>(piece[k])];
      if (byte_id < n_vocab_) out.push_back(byte_id);
    }
  }
}

}  // namespace kvgate::bpe
