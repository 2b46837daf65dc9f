#include "fuzz/fuzz_targets.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>
#include <limits>

#include "common/error.h"
#include "common/paths.h"
#include "data/dataset.h"
#include "gate/gate_bank.h"
#include "gguf/gguf.h"
#include "model/config.h"
#include "model/model.h"
#include "serve/request.h"
#include "serve/text.h"
#include "tokenizer/chat.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer.h"

namespace kvgate::fuzz {

namespace {

// A bug the fuzzer must report: print and abort (libFuzzer saves the input).
[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "fuzz: %s\n", what);
  std::abort();
}

// The readers take paths: each input goes into one in-memory file (memfd) reached through
// /proc/self/fd, rewritten per input; no disk traffic.
class memory_file {
 public:
  memory_file() : fd_(memfd_create("kvgate-fuzz", 0)) {
    if (fd_ < 0) broken("memfd_create failed");
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  const std::string& write(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0 || (size && pwrite(fd_, data, size, 0) != static_cast<ssize_t>(size))) {
      broken("memfd write failed");
    }
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

memory_file& scratch() {
  static memory_file f;
  return f;
}

const tokenizer& default_tokenizer() {
  static const std::unique_ptr<tokenizer> tok = [] {
    const char* env = std::getenv("KVGATE_FUZZ_MODEL");
    const std::string path = env ? env : default_model_path();
    return tokenizer::from_gguf(*gguf::file::open(path));
  }();
  return *tok;
}

// Bytes of 0..255 that no token stands for alone (encode drops them, see tokenizer.h).
const std::vector<bool>& dropped_bytes() {
  static const std::vector<bool> dropped = [] {
    std::vector<bool> d(256);
    for (int b = 0; b < 256; ++b) d[b] = default_tokenizer().encode(std::string(1, char(b)), false).empty();
    return d;
  }();
  return dropped;
}

}  // namespace

void gguf_input(const uint8_t* data, size_t size) {
  const std::string& path = scratch().write(data, size);
  std::unique_ptr<gguf::file> f;
  try {
    f = gguf::file::open(path);
  } catch (const error&) {
    return;
  }
  // Everything the reader accepted must be readable: metadata, and the first block of each tensor.
  for (const auto& [key, v] : f->metadata()) {
    if (v.type() == gguf::value_type::array && v.as_array().size() > 0 && v.elem_type() != v.as_array()[0].type()) {
      broken("array element type differs from the declared one");
    }
  }
  for (const gguf::tensor_info& t : f->tensors()) {
    const gguf::type_traits& tr = gguf::traits(t.type);
    if (t.n_elements() < tr.block_size) continue;
    std::vector<float> row(static_cast<size_t>(tr.block_size));
    gguf::dequantize(t.type, t.data, row.data(), tr.block_size);
  }
  try {
    model_config::from_gguf(*f);
  } catch (const error&) {
  }
  try {
    model::load(path);
  } catch (const error&) {
  }
  try {
    gate_bank::load(path);
  } catch (const error&) {
  }
}

void tokenizer_input(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const tokenizer& tok = default_tokenizer();
  const uint8_t mode = data[0] % 3;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  if (mode == 2) {  // arbitrary ids: a refusal for ids outside the vocabulary, never a crash
    std::vector<int32_t> ids((size - 1) / 4);
    if (!ids.empty()) std::memcpy(ids.data(), data + 1, ids.size() * 4);
    for (int32_t& id : ids) id = (data[0] & 0x80) ? id : static_cast<int32_t>(static_cast<uint32_t>(id) % 50000);
    try {
      tok.decode(ids);
    } catch (const error&) {
    }
    for (int32_t id : ids) {
      try {
        tok.token_bytes(id);
        tok.type(id);
      } catch (const error&) {
      }
    }
    return;
  }
  const bool special = mode == 1;
  const std::vector<int32_t> ids = tok.encode(text, special);
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.n_vocab()) broken("encode gave an id outside the vocabulary");
  }
  const std::string back = tok.decode(ids);
  if (!special) {  // decode(encode(x)) == x less the bytes no token stands for
    std::string expected;
    for (char c : text)
      if (!dropped_bytes()[static_cast<uint8_t>(c)]) expected += c;
    if (back != expected) broken("decode(encode(x)) is not x");
  } else if (back.size() > text.size()) {
    broken("decode(encode(x, special)) is longer than x");
  }
}

void chat_input(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)chat::find_default_system_prompt(text);
  // Messages: the input split at NUL bytes into role, content, role, content...
  std::vector<chat_message> messages;
  size_t begin = 0;
  std::vector<std::string_view> parts;
  for (size_t i = 0; i <= size; ++i) {
    if (i == size || data[i] == 0) {
      parts.push_back(text.substr(begin, i - begin));
      begin = i + 1;
    }
  }
  for (size_t i = 0; i + 1 < parts.size(); i += 2) messages.push_back({std::string(parts[i]), std::string(parts[i + 1])});
  const tokenizer& tok = default_tokenizer();
  const bool add_assistant = size > 0 && (data[0] & 1);
  std::string formatted;
  try {
    formatted = tok.apply_chat(messages, add_assistant);
  } catch (const error&) {
    return;
  }
  const std::vector<int32_t> ids = tok.encode(formatted, true);
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.n_vocab()) broken("encode gave an id outside the vocabulary");
  }
  const std::optional<std::string> prompt = chat::find_default_system_prompt(text);
  (void)chat::format_chatml(messages, !add_assistant, prompt);
}

void dataset_input(const uint8_t* data, size_t size) {
  if (size == 0) return;
  if (data[0] % 2 == 0) {
    const nlohmann::json j = nlohmann::json::parse(data + 1, data + size, nullptr, false);
    if (j.is_discarded()) return;
    try {
      const dataset_manifest m = dataset_manifest::from_json(j, "manifest.json");
      (void)m.to_json();
      (void)m.positive_rate();
    } catch (const error&) {
    }
    return;
  }
  const std::string& path = scratch().write(data + 1, size - 1);
  try {
    const shard_header h = read_shard_header(path);
    std::vector<head_examples> heads(static_cast<size_t>(h.n_heads));
    const shard_header again = read_shard(path, heads);
    if (again.file_bytes != h.file_bytes) broken("the two shard readers disagree");
    for (int ih = 0; ih < h.n_heads; ++ih) {
      if (heads[ih].size() != h.n[ih] || heads[ih].keys.size() != h.n[ih] * h.d_head) broken("shard head sizes");
    }
  } catch (const error&) {
  }
}

namespace {

// Whole valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF), scanned forward
// with the tokenizer's validator: a reference independent of serve/text.h, which the streaming
// uses to decide where it may cut.
bool valid_utf8(std::string_view s) {
  for (size_t i = 0, len; i < s.size(); i += len) {
    len = pre::utf8_sequence_length(s.substr(i));
    if (len == 0) return false;
  }
  return true;
}

// A reply streamed as the scheduler streams it (scheduler::step and emit): pieces appended, the
// first stop string found ends the reply, and between pieces only the text safe_text_end allows is
// shown. Returns the shown text; *stopped tells whether a stop string ended it.
std::string stream_reply(std::string_view text, const std::vector<size_t>& piece_ends, const std::vector<std::string>& stop,
                         bool* stopped) {
  std::string generated, shown;
  size_t emitted = 0;
  const bool check_utf8 = valid_utf8(text);
  *stopped = false;
  for (size_t end : piece_ends) {
    generated.assign(text.substr(0, end));
    const size_t stop_at = serve::find_stop(generated, stop, emitted);
    if (stop_at != std::string::npos) {
      if (stop_at < emitted) broken("a stop string began inside text already shown");
      shown.append(generated, emitted, stop_at - emitted);
      *stopped = true;
      return shown;
    }
    const size_t safe = serve::safe_text_end(generated, emitted, stop);
    if (safe < emitted || safe > generated.size()) broken("safe_text_end outside [emitted, size]");
    if (safe > emitted) {
      shown.append(generated, emitted, safe - emitted);
      emitted = safe;
      if (check_utf8 && !valid_utf8(shown)) broken("streamed text of a valid UTF-8 reply ends inside a character");
    }
  }
  shown.append(generated, emitted, generated.size() - emitted);  // the final emit
  return shown;
}

void check_stream(std::string_view rest) {
  // reply NUL stop NUL stop ... ; the reply's first byte gives the piece length pattern.
  std::vector<std::string_view> parts;
  size_t begin = 0;
  for (size_t i = 0; i <= rest.size(); ++i) {
    if (i == rest.size() || rest[i] == '\0') {
      parts.push_back(rest.substr(begin, i - begin));
      begin = i + 1;
    }
  }
  const std::string_view text = parts[0];
  std::vector<std::string> stop;  // as the request allows: at most 16, each 1 to 256 bytes
  for (size_t i = 1; i < parts.size() && stop.size() < 16; ++i)
    if (!parts[i].empty() && parts[i].size() <= 256) stop.emplace_back(parts[i]);

  // Brute force: the earliest start of any stop string in the whole text.
  size_t first = std::string::npos;
  for (const std::string& s : stop)
    for (size_t p = 0; p + s.size() <= text.size() && p < first; ++p)
      if (text.compare(p, s.size(), s) == 0) first = std::min(first, p);

  // Whole text in one piece: the reply is the text before the earliest stop string.
  bool stopped = false;
  const std::string whole = stream_reply(text, {text.size()}, stop, &stopped);
  if (whole != text.substr(0, std::min(first, text.size())) || stopped != (first != std::string::npos)) {
    broken("a reply in one piece is not the text before its first stop string");
  }
  // In pieces of 1 to 4 bytes (a token's bytes): a prefix of the text holding no stop string, cut
  // right before one when stopped, the whole text otherwise.
  std::vector<size_t> ends;
  for (size_t end = 0, k = 0; end < text.size(); ++k) {
    end = std::min(text.size(), end + 1 + (static_cast<unsigned char>(text[k % text.size()]) % 4));
    ends.push_back(end);
  }
  const std::string shown = stream_reply(text, ends, stop, &stopped);
  if (text.substr(0, shown.size()) != shown) broken("streamed reply is not a prefix of the text");
  for (const std::string& s : stop)
    if (shown.find(s) != std::string::npos) broken("streamed reply holds a stop string");
  if (stopped) {
    bool at_stop = false;
    for (const std::string& s : stop) at_stop |= text.compare(shown.size(), s.size(), s) == 0;
    if (!at_stop) broken("streamed reply stopped where no stop string begins");
  } else if (shown != text) {
    broken("streamed reply without a stop string lost text");
  }
}

const gate_meta& fuzz_gates() {
  static const gate_meta meta = [] {
    gate_meta m;
    m.model_name = "fuzz";
    m.model_arch = "llama";
    m.n_layer = 1;
    m.n_kv_head = 1;
    m.d_head = 64;
    m.threshold = 0.25f;
    return m;
  }();
  return meta;
}

void check_ids(const std::vector<int32_t>& ids, int32_t n_vocab, const char* what) {
  for (int32_t id : ids)
    if (id < 0 || id >= n_vocab) broken(what);
}

}  // namespace

void serve_input(const uint8_t* data, size_t size) {
  if (size == 0) return;
  const tokenizer& tok = default_tokenizer();
  // Bits 0-2: the mode (chat, completion, tokenize, detokenize, text; 5-7 as 0-2), bits 3-5: the
  // context size, bit 6: the server has gates.
  const uint8_t mode = (data[0] & 7) % 5;
  const std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  if (mode == 4) {
    check_stream(body);
    return;
  }
  static constexpr int ctx_sizes[8] = {4096, 2048, 512, 128, 16, 2, 1, 32768};
  serve::request_limits limits;
  limits.n_ctx = ctx_sizes[(data[0] >> 3) & 7];
  limits.n_vocab = tok.n_vocab();
  limits.gates = (data[0] & 0x40) ? &fuzz_gates() : nullptr;
  try {
    const nlohmann::json j = serve::parse_body(body);
    if (mode == 2) {
      check_ids(serve::parse_tokenize(j, tok), tok.n_vocab(), "/tokenize gave an id outside the vocabulary");
    } else if (mode == 3) {
      const std::vector<int32_t> ids = serve::parse_detokenize(j, limits.n_vocab);
      check_ids(ids, tok.n_vocab(), "/detokenize let an id outside the vocabulary through");
      (void)tok.decode(ids);  // what the server answers with
    } else {
      const serve::completion_request r = serve::parse_completion(j, mode == 0, tok, limits);
      const int64_t n_prompt = static_cast<int64_t>(r.prompt.size());
      if (n_prompt == 0 || n_prompt >= limits.n_ctx) broken("a prompt that leaves no room passed");
      check_ids(r.prompt, tok.n_vocab(), "a prompt id outside the vocabulary passed");
      // max_tokens 0 is allowed (the prompt is processed, nothing generated).
      if (r.n_predict < 0 || n_prompt + r.n_predict > limits.n_ctx) broken("n_predict outside [0, context left]");
      if (r.stop.size() > 16) broken("more than 16 stop strings");
      for (const std::string& s : r.stop)
        if (s.empty() || s.size() > 256) broken("a stop string outside 1 to 256 bytes");
      const sampler_params& sp = r.sampling;
      if (!(sp.temperature >= 0 && sp.temperature <= 100) || !(sp.top_p >= 0 && sp.top_p <= 1) || sp.top_k < 0 ||
          sp.top_k > tok.n_vocab()) {
        broken("sampling parameters outside their ranges");
      }
      if (r.policy.key != r.policy.json.dump()) broken("the policy key is not its JSON");
      // The echoed policy, sent back as kv_policy, is the same policy (ranges checked against a
      // context large enough for the defaults).
      serve::request_limits wide = limits;
      wide.n_ctx = std::numeric_limits<int>::max();
      const nlohmann::json echo = nlohmann::json::parse(r.policy.key);
      if (serve::parse_kv_policy(&echo, wide).key != r.policy.key) broken("the echoed kv_policy parses to another policy");
    }
  } catch (const serve::api_error& e) {
    if (e.status < 400 || e.status > 499) broken("a request's own mistake answered outside 4xx");
    (void)serve::dump_json(serve::error_body(e));
  } catch (const error&) {
  }
}

entry find_entry(const std::string& name) {
  if (name == "gguf") return gguf_input;
  if (name == "tokenizer") return tokenizer_input;
  if (name == "chat") return chat_input;
  if (name == "dataset") return dataset_input;
  if (name == "serve") return serve_input;
  return nullptr;
}

}  // namespace kvgate::fuzz
