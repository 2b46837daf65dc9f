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

#include "common/error.h"
#include "common/paths.h"
#include "data/dataset.h"
#include "gate/gate_bank.h"
#include "gguf/gguf.h"
#include "model/config.h"
#include "model/model.h"
#include "tokenizer/chat.h"
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

entry find_entry(const std::string& name) {
  if (name == "gguf") return gguf_input;
  if (name == "tokenizer") return tokenizer_input;
  if (name == "chat") return chat_input;
  if (name == "dataset") return dataset_input;
  return nullptr;
}

}  // namespace kvgate::fuzz
