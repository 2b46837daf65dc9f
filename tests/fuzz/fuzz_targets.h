// The fuzzed entry points, shared by the libFuzzer harnesses (tests/fuzz/fuzz_main.cpp, built with
// clang and -DKVGATE_FUZZ=ON by scripts/fuzz.sh) and the regression test of the normal suite
// (tests/fuzz_test.cpp, which feeds every file under tests/fuzz/regressions/<harness>/ to the same
// function). Each takes arbitrary bytes: a kvgate::error is the expected refusal of bad input and
// is swallowed; anything else (a crash, a sanitizer report, another exception type, a broken
// round trip) is a bug.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kvgate::fuzz {

// The bytes as a GGUF file: the reader, then (when it opens) model::load and gate_bank::load on it.
void gguf_input(const uint8_t* data, size_t size);
// The first byte picks the mode, the rest is the input: encode arbitrary bytes with or without
// special tokens (and check decode(encode(x)) gives x back, less the bytes the vocabulary lacks),
// or decode arbitrary int32 ids. Uses the default model's tokenizer.
void tokenizer_input(const uint8_t* data, size_t size);
// Finds the default system prompt in the bytes taken as a Jinja template, and formats the bytes
// split into messages as ChatML through the default model's tokenizer, then encodes the result.
void chat_input(const uint8_t* data, size_t size);
// First byte even: the rest as manifest.json; odd: the rest as a shard file.
void dataset_input(const uint8_t* data, size_t size);
// The server's request parsing (src/serve/request.h) and reply-text streaming (src/serve/text.h).
// The first byte picks the mode, the context size and whether the server has gates (bits 0-2, 3-5
// and 6; see serve_input); the rest is a request body for /v1/chat/completions, /v1/completions,
// /tokenize or /detokenize (checked as the server uses it), or, in the text mode, a reply and stop
// strings split at NUL bytes, streamed in pieces as the scheduler streams it.
void serve_input(const uint8_t* data, size_t size);

// The harnesses by name ("gguf", "tokenizer", "chat", "dataset", "serve"); nullptr for another name.
using entry = void (*)(const uint8_t*, size_t);
entry find_entry(const std::string& name);

}  // namespace kvgate::fuzz
