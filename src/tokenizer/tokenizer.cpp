#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cstdint>

#include "common/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/chat.h"
#include "tokenizer/pre_tokenizer.h"

namespace kvgate {

struct tokenizer::impl {
  std::vector<std::string> text;     // [n_vocab] as in the vocabulary (byte-level for BPE)
  std::vector<std::string> bytes;    // [n_vocab] what each token stands for
  std::vector<token_type> types;     // [n_vocab]
  std::vector<int32_t> special_ids;  // matched before pre-tokenization, longest text first
  std::vector<int32_t> end_ids;      // end-of-generation ids, sorted
  std::unique_ptr<pre::splitter> splitter;
  std::unique_ptr<bpe::merger> merger;
  int32_t bos = -1;
  int32_t eos = -1;
  std::optional<std::string> default_system_prompt;
};

namespace {

bool is_special(token_type t) {
  return t == token_type::control || t == token_type::user_defined || t == token_type::unknown;
}

// What a token stands for. Control, user-defined and unused tokens are literal text (llama.cpp
// token_to_piece); byte tokens "<0xXX>" are their byte; the rest are byte-level BPE text.
std::string token_bytes_of(const std::string& text, token_type type) {
  switch (type) {
    case token_type::control:
    case token_type::user_defined:
    case token_type::unknown:
    case token_type::unused:
      return text;
    case token_type::byte:
      if (text.size() == 6 && text.starts_with("<0x") && text.back() == '>' &&
          std::isxdigit(static_cast<unsigned char>(text[3])) &&
          std::isxdigit(static_cast<unsigned char>(text[4]))) {
        return std::string(1, static_cast<char>(std::stoi(text.substr(3, 2), nullptr, 16)));
      }
      return bpe::decode_text(text);
    default:
      return bpe::decode_text(text);
  }
}

}  // namespace

tokenizer::tokenizer() : impl_(std::make_unique<impl>()) {}
tokenizer::~tokenizer() = default;

std::unique_ptr<tokenizer> tokenizer::from_metadata(tokenizer_metadata m) {
  if (m.model.empty()) fail("no tokenizer in the model (tokenizer.ggml.model is missing)");
  if (m.model != "gpt2") {
    fail("tokenizer model '{}'{} is not supported: kvgate implements byte-level BPE ('gpt2') only",
         m.model, m.model == "llama" ? " (SentencePiece)" : "");
  }
  const size_t n_vocab = m.tokens.size();
  if (n_vocab == 0) fail("empty vocabulary (tokenizer.ggml.tokens)");
  if (n_vocab > INT32_MAX) fail("vocabulary of {} tokens is too large", n_vocab);
  if (!m.token_types.empty() && m.token_types.size() != n_vocab) {
    fail("tokenizer.ggml.token_type has {} entries for {} tokens", m.token_types.size(), n_vocab);
  }
  if (m.merges.empty()) fail("BPE vocabulary without merges (tokenizer.ggml.merges)");
  for (auto [name, id] : {std::pair{"bos", m.bos}, {"eos", m.eos}, {"eot", m.eot}}) {
    if (id < -1 || id >= static_cast<int64_t>(n_vocab)) {
      fail("{} token id {} is outside the vocabulary of {} tokens", name, id, n_vocab);
    }
  }

  std::unique_ptr<tokenizer> t(new tokenizer());
  impl& d = *t->impl_;
  d.splitter = pre::splitter::create(m.pre);
  d.merger = std::make_unique<bpe::merger>(m.tokens, m.merges);
  d.types.resize(n_vocab, token_type::normal);
  for (size_t i = 0; i < m.token_types.size(); ++i) {
    const int32_t v = m.token_types[i];
    d.types[i] = v >= 0 && v <= 6 ? static_cast<token_type>(v) : token_type::undefined;
  }
  d.bytes.reserve(n_vocab);
  for (size_t i = 0; i < n_vocab; ++i) d.bytes.push_back(token_bytes_of(m.tokens[i], d.types[i]));

  for (int32_t id = 0; id < static_cast<int32_t>(n_vocab); ++id) {
    if (is_special(d.types[id]) && !m.tokens[id].empty()) d.special_ids.push_back(id);
  }
  // Longest first, so that a special token containing a shorter one wins (llama.cpp order).
  std::stable_sort(d.special_ids.begin(), d.special_ids.end(),
                   [&](int32_t a, int32_t b) { return m.tokens[a].size() > m.tokens[b].size(); });

  d.bos = m.bos;
  d.eos = m.eos;
  for (int32_t id : {m.eos, m.eot}) {
    if (id >= 0) d.end_ids.push_back(id);
  }
  for (std::string_view name : {"<|im_end|>", "<|endoftext|>", "<|eot_id|>"}) {
    if (auto id = d.merger->find(name)) d.end_ids.push_back(*id);
  }
  std::sort(d.end_ids.begin(), d.end_ids.end());
  d.end_ids.erase(std::unique(d.end_ids.begin(), d.end_ids.end()), d.end_ids.end());

  d.default_system_prompt = chat::find_default_system_prompt(m.chat_template);
  d.text = std::move(m.tokens);
  return t;
}

std::vector<int32_t> tokenizer::encode(std::string_view text, bool parse_special) const {
  const impl& d = *impl_;
  // The text as fragments: special tokens already found, and raw text between them.
  struct fragment {
    int32_t token;  // -1 for raw text
    size_t begin;
    size_t size;
  };
  std::vector<fragment> fragments;
  if (!text.empty()) fragments.push_back({-1, 0, text.size()});
  std::vector<fragment> next;
  // Each special token in turn splits every raw fragment (llama.cpp tokenizer_st_partition):
  // longer tokens are found everywhere before shorter ones are looked for.
  for (int32_t id : d.special_ids) {
    if (!parse_special && d.types[id] != token_type::user_defined) continue;
    const std::string& s = d.text[id];
    next.clear();
    for (const fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      const std::string_view raw = text.substr(f.begin, f.size);
      size_t pos = 0;
      for (size_t hit; (hit = raw.find(s, pos)) != std::string_view::npos; pos = hit + s.size()) {
        if (hit > pos) next.push_back({-1, f.begin + pos, hit - pos});
        next.push_back({id, 0, 0});
      }
      if (pos < raw.size()) next.push_back({-1, f.begin + pos, raw.size() - pos});
    }
    fragments.swap(next);
  }

  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  std::vector<std::string_view> pieces;
  for (const fragment& f : fragments) {
    if (f.token >= 0) {
      ids.push_back(f.token);
      continue;
    }
    pieces.clear();
    d.splitter->split(text.substr(f.begin, f.size), pieces);
    for (std::string_view piece : pieces) d.merger->encode(piece, ids);
  }
  return ids;
}

std::string tokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= n_vocab()) fail("token id {} is outside the vocabulary of {}", id, n_vocab());
  return impl_->bytes[id];
}

std::string tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= n_vocab())
      fail("token id {} is outside the vocabulary of {}", id, n_vocab());
    out += impl_->bytes[id];
  }
  return out;
}

int32_t tokenizer::n_vocab() const { return static_cast<int32_t>(impl_->text.size()); }
int32_t tokenizer::bos() const { return impl_->bos; }
int32_t tokenizer::eos() const { return impl_->eos; }

bool tokenizer::is_end_of_generation(int32_t id) const {
  return std::binary_search(impl_->end_ids.begin(), impl_->end_ids.end(), id);
}

std::optional<int32_t> tokenizer::find_token(std::string_view text) const {
  return impl_->merger->find(text);
}

token_type tokenizer::type(int32_t id) const {
  if (id < 0 || id >= n_vocab()) fail("token id {} is outside the vocabulary of {}", id, n_vocab());
  return impl_->types[id];
}

std::string tokenizer::apply_chat(std::span<const chat_message> messages,
                                  bool add_assistant_prompt) const {
  return chat::format_chatml(messages, add_assistant_prompt, impl_->default_system_prompt);
}

const std::optional<std::string>& tokenizer::default_system_prompt() const {
  return impl_->default_system_prompt;
}

}  // namespace kvgate
