#include "serve/request.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <random>

#include "common/error.h"
#include "tokenizer/tokenizer.h"

namespace kvgate::serve {

using nlohmann::json;

void bad_request(const std::string& message) { throw api_error(400, "invalid_request_error", message); }

json error_body(const api_error& e) {
  json err = {{"code", e.status}, {"message", e.what()}, {"type", e.type}};
  for (auto it = e.extra.begin(); it != e.extra.end(); ++it) err[it.key()] = it.value();
  return {{"error", err}};
}

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json parse_body(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) bad_request("the body is not valid JSON");
  if (!j.is_object()) bad_request("the body must be a JSON object");
  return j;
}

namespace {

const json* find(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

int64_t as_int(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  // JSON integers only; 1.0 is a float and refused, as are values past int64.
  if (!v.is_number_integer()) bad_request(fmt::format("'{}' must be an integer", name));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) {
    bad_request(fmt::format("'{}' must be in [{}, {}]", name, lo, hi));
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) bad_request(fmt::format("'{}' must be in [{}, {}]", name, lo, hi));
  return x;
}

double as_number(const json& v, const std::string& name, double lo, double hi) {
  if (!v.is_number()) bad_request(fmt::format("'{}' must be a number", name));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) bad_request(fmt::format("'{}' must be a finite number in [{}, {}]", name, lo, hi));
  return x;
}

bool as_bool(const json& v, const std::string& name) {
  if (!v.is_boolean()) bad_request(fmt::format("'{}' must be true or false", name));
  return v.get<bool>();
}

const std::string& as_string(const json& v, const std::string& name) {
  if (!v.is_string()) bad_request(fmt::format("'{}' must be a string", name));
  return v.get_ref<const std::string&>();
}

std::vector<int32_t> as_token_ids(const json& v, const std::string& name, int32_t n_vocab) {
  if (!v.is_array()) bad_request(fmt::format("'{}' must be an array of token ids", name));
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (const json& t : v) ids.push_back(static_cast<int32_t>(as_int(t, name + "[]", 0, n_vocab - 1)));
  return ids;
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts.
std::string message_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) bad_request("'messages[].content' must be a string or an array of text parts");
  std::string text;
  for (const json& part : v) {
    if (!part.is_object()) bad_request("'messages[].content[]' must be an object");
    const json* type = find(part, "type");
    if (!type || as_string(*type, "messages[].content[].type") != "text") {
      bad_request("only text content parts are supported ('type': 'text')");
    }
    const json* t = find(part, "text");
    if (!t) bad_request("'messages[].content[].text' is missing");
    text += as_string(*t, "messages[].content[].text");
  }
  return text;
}

}  // namespace

request_policy parse_kv_policy(const json* kv, const request_limits& limits) {
  policy_request req = limits.default_policy;
  if (kv) {
    if (!kv->is_object()) bad_request("'kv_policy' must be an object such as {\"name\": \"h2o\", \"budget\": 256}");
    const json* name = find(*kv, "name");
    if (!name) bad_request(fmt::format("'kv_policy.name' is missing ({})", policy_names()));
    // A request's policy starts from the policy's own defaults, not from the server's knobs.
    req = policy_request{};
    req.policy = as_string(*name, "kv_policy.name");
    for (auto it = kv->begin(); it != kv->end(); ++it) {
      const std::string& k = it.key();
      const json& v = it.value();
      const std::string field = "kv_policy." + k;
      if (k == "name") continue;
      if (v.is_null()) continue;
      if (k == "sinks") {
        req.sinks = static_cast<int>(as_int(v, field, 0, limits.n_ctx));
      } else if (k == "window") {
        req.window = static_cast<int>(as_int(v, field, 1, limits.n_ctx));
      } else if (k == "budget") {
        req.budget = static_cast<int>(as_int(v, field, 0, limits.n_ctx));
      } else if (k == "threshold") {
        req.threshold = static_cast<float>(as_number(v, field, -1e6, 1e6));
      } else if (k == "layout") {
        req.layout = as_string(v, field);
      } else if (k == "budget_pool") {
        req.pool = as_string(v, field);
      } else if (k == "seed") {
        req.seed = static_cast<uint64_t>(as_int(v, field, 0, std::numeric_limits<int64_t>::max()));
      } else {
        bad_request(fmt::format("unknown knob '{}' in kv_policy (name, sinks, window, threshold, budget, budget_pool, layout, seed)", field));
      }
    }
  }
  req.has_gates = req.policy == "learned" && limits.gates;
  if (req.policy == "learned" && !limits.gates) bad_request("kv_policy 'learned' needs the server started with --gates FILE");
  request_policy p;
  try {
    p.config = resolve_policy(req, limits.gates);
  } catch (const error& e) {
    bad_request(fmt::format("kv_policy: {}", e.what()));
  }
  const policy_config& c = p.config;
  p.json["name"] = policy_name(c.kind);
  if (c.mode != select_mode::keep_all) {
    p.json["layout"] = layout_name(c.layout);
    p.json["sinks"] = c.sinks;
    p.json["window"] = c.window;
    if (c.mode == select_mode::budget) {
      p.json["budget"] = c.budget;
      if (c.pool != budget_pool::head) p.json["budget_pool"] = budget_pool_name(c.pool);
    } else {
      p.json["threshold"] = c.threshold;
    }
    if (c.kind == policy_kind::random) p.json["seed"] = c.seed;
  }
  p.key = p.json.dump();
  return p;
}

completion_request parse_completion(const json& body, bool chat, const tokenizer& vocab, const request_limits& limits) {
  completion_request r;
  r.chat = chat;
  const int32_t n_vocab = limits.n_vocab;
  if (chat) {
    const json* messages = find(body, "messages");
    if (!messages) bad_request("'messages' is missing");
    if (!messages->is_array() || messages->empty()) bad_request("'messages' must be a non-empty array");
    std::vector<chat_message> list;
    for (const json& m : *messages) {
      if (!m.is_object()) bad_request("'messages[]' must be objects with 'role' and 'content'");
      const json* role = find(m, "role");
      if (!role) bad_request("'messages[].role' is missing");
      const std::string& rs = as_string(*role, "messages[].role");
      if (rs != "system" && rs != "user" && rs != "assistant" && rs != "developer") {
        bad_request(fmt::format("'messages[].role' '{}' is not one of system, developer, user, assistant", rs));
      }
      const json* content = find(m, "content");
      list.push_back({rs == "developer" ? "system" : rs, content ? message_content(*content) : std::string()});
    }
    r.prompt = vocab.encode(vocab.apply_chat(list, true), true);
  } else {
    const json* prompt = find(body, "prompt");
    if (!prompt) bad_request("'prompt' is missing");
    if (prompt->is_string()) {
      r.prompt = vocab.encode(prompt->get<std::string>(), false);
    } else if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
      r.prompt = vocab.encode((*prompt)[0].get<std::string>(), false);
    } else if (prompt->is_array()) {
      r.prompt = as_token_ids(*prompt, "prompt", n_vocab);
    } else {
      bad_request("'prompt' must be a string or an array of token ids");
    }
  }
  if (r.prompt.empty()) bad_request("the prompt is empty");
  const int64_t n_prompt = static_cast<int64_t>(r.prompt.size());
  if (n_prompt >= limits.n_ctx) {
    throw api_error(400, "exceed_context_size_error",
                    fmt::format("the request exceeds the available context size: {} prompt tokens, context {} "
                                "(one generated token must fit)", n_prompt, limits.n_ctx),
                    {{"n_prompt_tokens", n_prompt}, {"n_ctx", limits.n_ctx}});
  }

  if (const json* n = find(body, "n")) {
    if (as_int(*n, "n", 1, 1) != 1) bad_request("'n' must be 1");
  }
  const int64_t room = limits.n_ctx - n_prompt;
  int64_t n_predict = room;
  for (const char* key : {"max_tokens", "max_completion_tokens", "n_predict"}) {
    if (const json* v = find(body, key)) {
      // n_predict -1 (llama-server): until the context is full.
      const int64_t x = as_int(*v, key, std::string(key) == "n_predict" ? -1 : 0, std::numeric_limits<int32_t>::max());
      if (x >= 0) n_predict = std::min(n_predict, x);
    }
  }
  r.n_predict = static_cast<int>(n_predict);

  r.sampling.temperature = 0.8f;  // llama-server's defaults; top_k and top_p as sampler_params
  if (const json* v = find(body, "temperature")) r.sampling.temperature = static_cast<float>(as_number(*v, "temperature", 0.0, 100.0));
  if (const json* v = find(body, "top_p")) r.sampling.top_p = static_cast<float>(as_number(*v, "top_p", 0.0, 1.0));
  if (const json* v = find(body, "top_k")) r.sampling.top_k = static_cast<int>(as_int(*v, "top_k", 0, n_vocab));
  int64_t seed = -1;
  if (const json* v = find(body, "seed")) seed = as_int(*v, "seed", -1, std::numeric_limits<int64_t>::max());
  r.sampling.seed = seed >= 0 ? static_cast<uint64_t>(seed) : std::random_device{}();

  if (const json* v = find(body, "stop")) {
    if (v->is_string()) {
      r.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (v->size() > 16) bad_request("'stop' holds at most 16 strings");
      for (const json& s : *v) r.stop.push_back(as_string(s, "stop[]"));
    } else {
      bad_request("'stop' must be a string or an array of strings");
    }
    for (const std::string& s : r.stop) {
      if (s.empty() || s.size() > 256) bad_request("each 'stop' string must hold 1 to 256 bytes");
    }
  }
  if (const json* v = find(body, "stream")) r.stream = as_bool(*v, "stream");
  if (const json* v = find(body, "stream_options")) {
    if (!v->is_object()) bad_request("'stream_options' must be an object");
    if (const json* u = find(*v, "include_usage")) r.include_usage = as_bool(*u, "stream_options.include_usage");
  }
  if (const json* v = find(body, "kv_strip")) r.kv_strip = as_bool(*v, "kv_strip");
  r.policy = parse_kv_policy(find(body, "kv_policy"), limits);
  // The random policy follows the request's seed unless kv_policy gives its own.
  return r;
}

std::vector<int32_t> parse_tokenize(const json& body, const tokenizer& vocab) {
  const json* content = find(body, "content");
  if (!content) bad_request("'content' is missing");
  const std::string& text = as_string(*content, "content");
  bool add_special = false, parse_special = true;
  if (const json* v = find(body, "add_special")) add_special = as_bool(*v, "add_special");
  if (const json* v = find(body, "parse_special")) parse_special = as_bool(*v, "parse_special");
  std::vector<int32_t> ids;
  if (add_special && vocab.bos() >= 0) ids.push_back(vocab.bos());
  const std::vector<int32_t> body_ids = vocab.encode(text, parse_special);
  ids.insert(ids.end(), body_ids.begin(), body_ids.end());
  return ids;
}

std::vector<int32_t> parse_detokenize(const json& body, int32_t n_vocab) {
  const json* tokens = find(body, "tokens");
  if (!tokens) bad_request("'tokens' is missing");
  return as_token_ids(*tokens, "tokens", n_vocab);
}

}  // namespace kvgate::serve
