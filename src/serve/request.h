// Requests of the OpenAI-compatible API, parsed and checked before anything runs: every field's
// type and range, the prompt's tokens, the per-request KV policy. A bad request becomes an
// api_error carrying the HTTP status and llama-server's error type; nothing past parsing sees one.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/sampler.h"
#include "policy/policy.h"

namespace kvgate {
class tokenizer;
}

namespace kvgate::serve {

// An error answered as {"error": {"code": status, "message", "type", ...extra}}.
struct api_error : std::runtime_error {
  int status;
  std::string type;      // invalid_request_error, authentication_error, not_found_error, ...
  nlohmann::json extra;  // more fields of the error object (n_prompt_tokens, n_ctx)
  api_error(int status_, std::string type_, const std::string& message, nlohmann::json extra_ = nlohmann::json::object())
      : std::runtime_error(message), status(status_), type(std::move(type_)), extra(std::move(extra_)) {}
};

[[noreturn]] void bad_request(const std::string& message);
// The error's JSON body.
nlohmann::json error_body(const api_error& e);
// JSON text with invalid UTF-8 replaced (a reply may end inside a character when cut by length).
std::string dump_json(const nlohmann::json& j);

// Parses a request body: an object, else 400.
nlohmann::json parse_body(const std::string& body);

// What the server lets a request ask for beyond its own fields.
struct request_limits {
  int n_ctx = 0;            // positions of one slot
  int32_t n_vocab = 0;
  const gate_meta* gates = nullptr;  // the server's gate bank, null without --gates
  policy_request default_policy;     // the server's policy flags
};

// A resolved per-request KV policy: the config and its canonical JSON (echoed in the response,
// /slots, and used as part of the prefix-reuse key).
struct request_policy {
  policy_config config;
  nlohmann::ordered_json json;
  std::string key;  // json.dump()
};

// kv_policy object -> policy; absent: the server's default. Unknown names or knobs, wrong types,
// a combination resolve_policy refuses -> 400.
request_policy parse_kv_policy(const nlohmann::json* kv_policy, const request_limits& limits);

struct completion_request {
  bool chat = false;
  std::vector<int32_t> prompt;      // [n_prompt] tokens, chat template applied for chat
  int n_predict = 0;                // max_tokens, capped at the context left after the prompt
  sampler_params sampling;
  std::vector<std::string> stop;    // stop strings (not part of the reply)
  bool stream = false;
  bool include_usage = false;       // stream_options.include_usage
  bool kv_strip = false;            // kv_strip: add each cached token and the heads holding it (chat page)
  request_policy policy;
};

// Body of /v1/chat/completions (chat) or /v1/completions. A prompt that leaves no room for one
// generated token -> 400 exceed_context_size_error with n_prompt_tokens and n_ctx.
completion_request parse_completion(const nlohmann::json& body, bool chat, const tokenizer& vocab,
                                    const request_limits& limits);

// /tokenize {content, add_special, parse_special} -> tokens; /detokenize {tokens} -> ids checked
// against the vocabulary.
std::vector<int32_t> parse_tokenize(const nlohmann::json& body, const tokenizer& vocab);
std::vector<int32_t> parse_detokenize(const nlohmann::json& body, int32_t n_vocab);

}  // namespace kvgate::serve
