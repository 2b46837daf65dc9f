// kvgate serve: the streaming text helpers against brute force, then a server started in-process
// on an ephemeral loopback port and talked to with httplib's client: request validation, errors,
// streaming, per-request KV policies, slots, queue, KV memory, prefix reuse, and greedy output
// equal to `kvgate generate --chat`. Every server stops when its test ends.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <httplib.h>
#include <nlohmann/json.hpp>
#include <omp.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "kv/cache.h"
#include "serve/server.h"
#include "serve/text.h"
#include "test_util.h"

namespace kvgate::serve {
namespace {

using nlohmann::json;

// ---- text helpers ---------------------------------------------------------------------------

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

TEST(serve_text, streamed_pieces_never_split_a_utf8_character) {
  const std::string text = "aé€😀b日本語😀";  // 1-, 2-, 3- and 4-byte characters
  // Feed the text one byte at a time, as tokens may cut it, and send whatever is safe.
  for (size_t cut = 1; cut <= 3; ++cut) {
    std::string sent, generated;
    size_t emitted = 0;
    for (size_t i = 0; i < text.size(); i += cut) {
      generated.append(text, i, cut);
      const size_t end = safe_text_end(generated, emitted, {});
      const std::string piece = generated.substr(emitted, end - emitted);
      EXPECT_TRUE(valid_utf8(piece)) << "cut " << cut << " at " << i;
      sent += piece;
      emitted = end;
    }
    sent += generated.substr(emitted);
    EXPECT_EQ(sent, text);
  }
}

TEST(serve_text, stop_strings_are_held_back_and_found_across_pieces) {
  const std::vector<std::string> stop = {"STOP", "\n\n"};
  EXPECT_EQ(safe_text_end("hello ST", 0, stop), 6u);   // "ST" may start STOP
  EXPECT_EQ(safe_text_end("hello\n", 0, stop), 5u);
  EXPECT_EQ(safe_text_end("hello", 0, stop), 5u);
  EXPECT_EQ(safe_text_end("hello ST", 7, stop), 7u);   // never below what was sent
  // Brute force: the earliest occurrence of any stop string.
  const std::string text = "abc\nST\n\nxSTOPy";
  for (size_t from = 0; from <= text.size(); ++from) {
    size_t want = std::string::npos;
    for (const auto& s : stop) {
      for (size_t p = 0; p + s.size() <= text.size(); ++p) {
        if (p + s.size() > from && text.compare(p, s.size(), s) == 0) {
          want = std::min(want, p);
          break;
        }
      }
    }
    EXPECT_EQ(find_stop(text, stop, from), want) << "from " << from;
  }
}

// ---- the server -------------------------------------------------------------------------------

class test_server {
 public:
  explicit test_server(server_options o) {
    o.model_path = test::default_model_path();
    o.host = "127.0.0.1";
    o.port = 0;
    srv_ = std::make_unique<server>(o);
    port_ = srv_->start();
    for (int i = 0; i < 600 && !srv_->ready(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_TRUE(srv_->ready()) << srv_->load_error();
  }
  ~test_server() { srv_->stop(); }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(120);
    return c;
  }
  int port() const { return port_; }

 private:
  std::unique_ptr<server> srv_;
  int port_ = 0;
};

server_options small_options() {
  server_options o;
  o.scheduling.n_parallel = 2;
  o.scheduling.n_queue = 4;
  o.scheduling.n_ctx = 512;
  o.max_body_bytes = 64 * 1024;
  return o;
}

struct reply {
  int status = 0;
  json body;
  std::string raw;
};

reply post(const test_server& s, const std::string& path, const std::string& body, const httplib::Headers& headers = {}) {
  auto c = s.client();
  auto r = c.Post(path, headers, body, "application/json");
  reply out;
  if (!r) return out;
  out.status = r->status;
  out.raw = r->body;
  out.body = json::parse(r->body, nullptr, false);
  return out;
}

std::string error_type(const reply& r) {
  return r.body.is_object() && r.body.contains("error") ? r.body["error"].value("type", "") : "";
}

const char* k_question = "What is the capital of France?";

class serve_test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    omp_set_num_threads(1);
    server_ = new test_server(small_options());
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  static test_server* server_;
};
test_server* serve_test::server_ = nullptr;

TEST_F(serve_test, health_models_tokenize_detokenize) {
  auto c = server_->client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto m = c.Get("/v1/models");
  ASSERT_TRUE(m);
  const json models = json::parse(m->body);
  EXPECT_EQ(models["object"], "list");
  EXPECT_EQ(models["data"][0]["object"], "model");

  const reply t = post(*server_, "/tokenize", R"({"content": "hello world"})");
  ASSERT_EQ(t.status, 200);
  ASSERT_FALSE(t.body["tokens"].empty());
  const reply d = post(*server_, "/detokenize", json{{"tokens", t.body["tokens"]}}.dump());
  EXPECT_EQ(d.body["content"], "hello world");
  EXPECT_EQ(post(*server_, "/detokenize", R"({"tokens": [-1]})").status, 400);
  EXPECT_EQ(post(*server_, "/detokenize", R"({"tokens": [49152]})").status, 400);
  auto nf = c.Get("/nope");
  ASSERT_TRUE(nf);
  EXPECT_EQ(nf->status, 404);
  EXPECT_EQ(json::parse(nf->body)["error"]["type"], "not_found_error");
  // No CORS unless asked.
  EXPECT_FALSE(h->has_header("Access-Control-Allow-Origin"));
}

TEST_F(serve_test, bad_requests_are_400_with_the_error_shape) {
  const char* bad[] = {
      R"({"messages": [{"role": "user", "content": "hi"}],)",             // malformed JSON
      R"([1, 2])",                                                          // not an object
      R"({"messages": "hi"})",                                              // wrong type
      R"({"messages": []})",
      R"({"messages": [{"role": "robot", "content": "hi"}]})",
      R"({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"})",
      R"({"messages": [{"role": "user", "content": "hi"}], "temperature": -1})",
      R"({"messages": [{"role": "user", "content": "hi"}], "temperature": 1e308, "top_p": 2})",
      R"({"messages": [{"role": "user", "content": "hi"}], "top_k": -5})",
      R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3})",
      R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1.5})",
      R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 99999999999999999999})",
      R"({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"})",
      R"({"messages": [{"role": "user", "content": "hi"}], "stop": [1]})",
      R"({"messages": [{"role": "user", "content": "hi"}], "n": 2})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "lru"}})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "h2o"}})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "h2o", "budget": 8, "colour": 1}})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "h2o", "budget": -8}})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "h2o", "budget": "8"}})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "tova", "budget": 8, "threshold": 0.5}})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "learned"}})",  // no --gates
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "h2o", "budget": 8, "budget_pool": "galaxy"}})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "h2o", "threshold": 0.1, "budget_pool": "model"}})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": "h2o"})",
  };
  for (const char* body : bad) {
    const reply r = post(*server_, "/v1/chat/completions", body);
    EXPECT_EQ(r.status, 400) << body;
    EXPECT_EQ(error_type(r), "invalid_request_error") << body << " -> " << r.raw;
    EXPECT_EQ(r.body["error"]["code"], 400) << body;
    EXPECT_TRUE(r.body["error"]["message"].is_string()) << body;
  }
  for (const char* body : {R"({"prompt": [-1]})", R"({"prompt": [49152]})", R"({"prompt": [1, "a"]})", R"({"prompt": 5})"}) {
    EXPECT_EQ(post(*server_, "/v1/completions", body).status, 400) << body;
  }
  // Oversized body: 413.
  const std::string big = json{{"prompt", std::string(100 * 1024, 'a')}}.dump();
  EXPECT_EQ(post(*server_, "/v1/completions", big).status, 413);
}

TEST_F(serve_test, prompt_longer_than_context_is_exceed_context_size_error) {
  std::string text;
  for (int i = 0; i < 600; ++i) text += " word";
  const reply r = post(*server_, "/v1/completions", json{{"prompt", text}}.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(error_type(r), "exceed_context_size_error") << r.raw;
  EXPECT_GE(r.body["error"]["n_prompt_tokens"].get<int>(), 512);
  EXPECT_EQ(r.body["error"]["n_ctx"], 512);
}

TEST_F(serve_test, max_tokens_is_capped_at_the_context_left) {
  std::string text;
  for (int i = 0; i < 500; ++i) text += " a";
  const reply r = post(*server_, "/v1/completions",
                       json{{"prompt", text}, {"max_tokens", 100000}, {"temperature", 0}, {"kv_policy", {{"name", "streaming"}, {"window", 16}}}}.dump());
  ASSERT_EQ(r.status, 200) << r.raw;
  const int n_prompt = r.body["usage"]["prompt_tokens"];
  EXPECT_LE(n_prompt + r.body["usage"]["completion_tokens"].get<int>(), 512);
}

std::string generate_chat(const std::string& policy_flags, int n, const std::string& question = k_question) {
  const test::kvgate_result g = test::run_kvgate("generate --model " + test::default_model_path() +
                                                 " --threads 1 --chat --temp 0 -n " + std::to_string(n) + " --ctx 512 -p \"" +
                                                 question + "\" " + policy_flags);
  EXPECT_EQ(g.status, 0) << g.err;
  std::string out = g.out;
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

TEST_F(serve_test, greedy_chat_equals_generate_chat_for_the_same_policy) {
  struct one {
    json kv_policy;
    std::string flags;
  };
  const one cases[] = {{json(), ""},
                       {{{"name", "h2o"}, {"budget", 8}, {"window", 8}}, "--policy h2o --budget 8 --window 8"},
                       {{{"name", "streaming"}, {"window", 16}, {"sinks", 2}}, "--policy streaming --window 16 --sinks 2"},
                       {{{"name", "snapkv"}, {"budget", 8}, {"window", 8}, {"budget_pool", "model"}},
                        "--policy snapkv --budget 8 --window 8 --budget-pool model"}};
  for (const one& c : cases) {
    json body = {{"messages", {{{"role", "user"}, {"content", k_question}}}}, {"max_tokens", 40}, {"temperature", 0}};
    if (!c.kv_policy.is_null()) body["kv_policy"] = c.kv_policy;
    const reply r = post(*server_, "/v1/chat/completions", body.dump());
    ASSERT_EQ(r.status, 200) << r.raw;
    const std::string want = generate_chat(c.flags, 40);
    EXPECT_EQ(r.body["choices"][0]["message"]["content"], want) << c.flags;
    if (!c.kv_policy.is_null()) {
      EXPECT_EQ(r.body["kv_policy"]["name"], c.kv_policy["name"]);
      if (c.kv_policy.contains("budget_pool")) {
        EXPECT_EQ(r.body["kv_policy"]["budget_pool"], c.kv_policy["budget_pool"]);
      }
      EXPECT_LT(r.body["kv"]["share_kept"].get<double>(), 1.0);  // the policy really evicted
    } else {
      EXPECT_EQ(r.body["kv"]["share_kept"], 1.0);
    }
    EXPECT_GT(r.body["timings"]["predicted_n"].get<int>(), 0);
  }
}

// Reads an SSE stream; every data line but [DONE] must be JSON.
struct sse_stream {
  std::vector<json> events;
  bool done = false;
  int status = 0;
};

sse_stream stream(const test_server& s, const std::string& path, const json& body, size_t stop_after_bytes = 0) {
  auto c = s.client();
  sse_stream out;
  std::string buffer;
  size_t n_bytes = 0;
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buffer.append(data, n);
    n_bytes += n;
    size_t p;
    while ((p = buffer.find("\n\n")) != std::string::npos) {
      const std::string event = buffer.substr(0, p);
      buffer.erase(0, p + 2);
      if (event.rfind("data: ", 0) != 0) continue;  // comments (pings)
      const std::string data = event.substr(6);
      if (data == "[DONE]") {
        out.done = true;
      } else {
        json j = json::parse(data, nullptr, false);
        EXPECT_FALSE(j.is_discarded()) << data;
        out.events.push_back(j);
      }
    }
    return stop_after_bytes == 0 || n_bytes < stop_after_bytes;
  };
  auto r = c.send(req);
  if (r) out.status = r->status;
  return out;
}

TEST_F(serve_test, streaming_matches_the_whole_reply_and_ends_with_usage_and_done) {
  json body = {{"messages", {{{"role", "user"}, {"content", k_question}}}}, {"max_tokens", 30}, {"temperature", 0}};
  const reply whole = post(*server_, "/v1/chat/completions", body.dump());
  ASSERT_EQ(whole.status, 200);
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  const sse_stream s = stream(*server_, "/v1/chat/completions", body);
  EXPECT_EQ(s.status, 200);
  EXPECT_TRUE(s.done);
  ASSERT_GE(s.events.size(), 3u);
  std::string text;
  int n_finish = 0;
  for (size_t i = 0; i + 1 < s.events.size(); ++i) {
    const json& e = s.events[i];
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    const json& ch = e["choices"][0];
    if (ch["delta"].contains("content")) {
      const std::string piece = ch["delta"]["content"];
      EXPECT_TRUE(valid_utf8(piece));
      text += piece;
    }
    if (!ch["finish_reason"].is_null()) ++n_finish;
  }
  EXPECT_EQ(n_finish, 1);
  EXPECT_EQ(text, whole.body["choices"][0]["message"]["content"]);
  const json& usage = s.events.back();
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], whole.body["usage"]["completion_tokens"]);
}

TEST_F(serve_test, stop_strings_cut_the_reply) {
  json body = {{"prompt", "1, 2, 3, 4, 5,"}, {"max_tokens", 20}, {"temperature", 0}};
  const reply full = post(*server_, "/v1/completions", body.dump());
  ASSERT_EQ(full.status, 200);
  const std::string text = full.body["choices"][0]["text"];
  ASSERT_NE(text.find("8"), std::string::npos) << text;
  body["stop"] = {"8"};
  const reply cut = post(*server_, "/v1/completions", body.dump());
  EXPECT_EQ(cut.body["choices"][0]["text"], text.substr(0, text.find("8")));
  EXPECT_EQ(cut.body["choices"][0]["finish_reason"], "stop");
}

TEST_F(serve_test, a_continued_conversation_reuses_the_slot_cache) {
  json body = {{"messages", {{{"role", "user"}, {"content", k_question}}}}, {"max_tokens", 12}, {"temperature", 0},
               {"kv_policy", {{"name", "h2o"}, {"budget", 8}, {"window", 8}}}};
  const reply first = post(*server_, "/v1/chat/completions", body.dump());
  ASSERT_EQ(first.status, 200);
  body["messages"].push_back({{"role", "assistant"}, {"content", first.body["choices"][0]["message"]["content"]}});
  body["messages"].push_back({{"role", "user"}, {"content", "And of Italy?"}});
  const reply second = post(*server_, "/v1/chat/completions", body.dump());
  ASSERT_EQ(second.status, 200);
  EXPECT_GT(second.body["timings"]["cache_n"].get<int>(), first.body["usage"]["prompt_tokens"].get<int>() - 1);
  // Another policy never reuses it.
  body["kv_policy"] = {{"name", "streaming"}, {"window", 24}};
  const reply third = post(*server_, "/v1/chat/completions", body.dump());
  EXPECT_EQ(third.body["timings"]["cache_n"], 0);
}

// Under the full cache a slot whose cache shares only its start with the prompt (here: the same
// question asked again with a different ending) is cut back to the shared tokens, and the reply
// is still the one `kvgate generate --chat` gives.
TEST_F(serve_test, the_full_cache_reuses_a_shared_start_and_replies_as_a_fresh_run) {
  json body = {{"messages", {{{"role", "user"}, {"content", k_question}}}}, {"max_tokens", 12}, {"temperature", 0}};
  const reply first = post(*server_, "/v1/chat/completions", body.dump());
  ASSERT_EQ(first.status, 200) << first.raw;
  const std::string question = std::string(k_question) + " Answer in one word.";
  body["messages"][0]["content"] = question;
  body["max_tokens"] = 24;
  const reply second = post(*server_, "/v1/chat/completions", body.dump());
  ASSERT_EQ(second.status, 200) << second.raw;
  const int n_prompt = second.body["usage"]["prompt_tokens"];
  const int cache_n = second.body["timings"]["cache_n"];
  EXPECT_GE(2 * cache_n, n_prompt);
  EXPECT_LT(cache_n, first.body["usage"]["prompt_tokens"].get<int>());  // it diverged inside the first prompt
  EXPECT_EQ(second.body["choices"][0]["message"]["content"], generate_chat("", 24, question));
  // The same prompt again: all of it is shared, and one token still runs for the first logits.
  const reply third = post(*server_, "/v1/chat/completions", body.dump());
  ASSERT_EQ(third.status, 200) << third.raw;
  EXPECT_EQ(third.body["timings"]["cache_n"].get<int>(), n_prompt - 1);
  EXPECT_EQ(third.body["choices"][0]["message"]["content"], second.body["choices"][0]["message"]["content"]);
}

// A request that shares too little with any idle slot to take it over gets a cold slot, and
// under the full cache that slot starts from a copy of the longest start another slot shares with
// it (here the chat template's system prompt): cache_n counts the copied tokens, and the reply is
// the one `kvgate generate --chat` gives.
TEST_F(serve_test, the_full_cache_copies_a_start_shared_with_another_slot) {
  json body = {{"messages", {{{"role", "user"}, {"content", k_question}}}}, {"max_tokens", 4}, {"temperature", 0}};
  const reply first = post(*server_, "/v1/chat/completions", body.dump());
  ASSERT_EQ(first.status, 200) << first.raw;
  const std::string question =
      "Name three rivers that flow through Germany, and say which of them is the longest and where it rises.";
  body["messages"][0]["content"] = question;
  body["max_tokens"] = 16;
  const reply second = post(*server_, "/v1/chat/completions", body.dump());
  ASSERT_EQ(second.status, 200) << second.raw;
  const int n_prompt = second.body["usage"]["prompt_tokens"];
  const int cache_n = second.body["timings"]["cache_n"];
  EXPECT_GT(cache_n, 8);             // the system prompt and the user turn's start
  EXPECT_LT(2 * cache_n, n_prompt);  // too little to take over a slot
  EXPECT_EQ(second.body["choices"][0]["message"]["content"], generate_chat("", 16, question));
  // Another policy's slots are never copied.
  body["kv_policy"] = {{"name", "h2o"}, {"budget", 8}, {"window", 8}};
  body["messages"][0]["content"] = std::string(question) + " Be brief.";
  const reply third = post(*server_, "/v1/chat/completions", body.dump());
  ASSERT_EQ(third.status, 200) << third.raw;
  EXPECT_EQ(third.body["timings"]["cache_n"], 0);
}

TEST_F(serve_test, chat_page_and_kv_strip) {
  auto page = server_->client().Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("kv_strip"), std::string::npos);
  for (const char* policy : {R"({"name": "full"})", R"({"name": "h2o", "budget": 4, "window": 8})"}) {
    const json body = {{"messages", {{{"role", "user"}, {"content", k_question}}}}, {"max_tokens", 8}, {"temperature", 0},
                       {"kv_strip", true}, {"kv_policy", json::parse(policy)}};
    const reply r = post(*server_, "/v1/chat/completions", body.dump());
    ASSERT_EQ(r.status, 200) << r.raw;
    const json& kv = r.body["kv"];
    const int n_heads = kv["n_heads"];
    ASSERT_EQ(kv["tokens"].size(), kv["kept_heads"].size());
    EXPECT_EQ(static_cast<int>(kv["tokens"].size()), kv["n_past"].get<int>());
    int64_t kept = 0;
    for (const json& k : kv["kept_heads"]) {
      EXPECT_GE(k.get<int>(), 0);
      EXPECT_LE(k.get<int>(), n_heads);
      kept += k.get<int>();
    }
    // The strip sums to the live slots the response reports.
    EXPECT_EQ(kept, kv["slots_kept"].get<int64_t>()) << policy;
    if (json::parse(policy)["name"] == "full") EXPECT_EQ(kept, static_cast<int64_t>(n_heads) * kv["n_past"].get<int>());
    else EXPECT_LT(kept, static_cast<int64_t>(n_heads) * kv["n_past"].get<int>());
  }
}

// A counter or gauge from /metrics, -1 when absent.
double metric_of(const test_server& s, const std::string& name) {
  auto r = s.client().Get("/metrics");
  if (!r) return -1.0;
  const std::string key = "\nkvgate:" + name + " ";
  const size_t p = r->body.find(key);
  return p == std::string::npos ? -1.0 : std::stod(r->body.substr(p + key.size()));
}

TEST_F(serve_test, a_client_that_disconnects_frees_its_slot) {
  auto metric = [&](const std::string& name) { return metric_of(*server_, name); };
  const double before = metric("requests_cancelled_total");
  const double predicted_before = metric("tokens_predicted_total");
  ASSERT_GE(before, 0);
  ASSERT_GE(predicted_before, 0);
  const json body = {{"prompt", "Once upon a time"}, {"max_tokens", 400}, {"temperature", 0}, {"stream", true}};
  stream(*server_, "/v1/completions", body, /*stop_after_bytes=*/600);
  bool freed = false;
  for (int i = 0; i < 200 && !freed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    freed = metric("requests_cancelled_total") > before && metric("requests_processing") == 0;
  }
  EXPECT_TRUE(freed);
  // Cancelled well before its 400 tokens.
  EXPECT_LT(metric("tokens_predicted_total") - predicted_before, 400);
}

TEST_F(serve_test, a_non_streaming_client_that_disconnects_frees_its_slot) {
  auto metric = [&](const std::string& name) { return metric_of(*server_, name); };
  const double before = metric("requests_cancelled_total");
  const double predicted_before = metric("tokens_predicted_total");
  ASSERT_GE(before, 0);
  ASSERT_GE(predicted_before, 0);
  // A raw connection: the request goes out whole, then the client hangs up before any reply.
  const std::string body = json{{"prompt", "Once upon a time"}, {"max_tokens", 400}, {"temperature", 0}}.dump();
  const std::string request = "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                              "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(server_->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  bool started = false;
  for (int i = 0; i < 200 && !started; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    started = metric("requests_processing") > 0;
  }
  ASSERT_TRUE(started);
  ::close(fd);
  bool freed = false;
  for (int i = 0; i < 200 && !freed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    freed = metric("requests_cancelled_total") > before && metric("requests_processing") == 0;
  }
  EXPECT_TRUE(freed);
  EXPECT_LT(metric("tokens_predicted_total") - predicted_before, 400);
}

TEST(serve, api_key_cors_queue_and_kv_memory_limits) {
  omp_set_num_threads(1);
  server_options o = small_options();
  o.api_key = "sesame";
  o.cors_origin = "http://localhost:3000";
  o.scheduling.n_parallel = 1;
  o.scheduling.n_queue = 0;
  // Room for 300 full-cache positions of SmolLM2 (30 layers x 3 KV heads).
  o.scheduling.kv_memory_bytes = 300 * 30 * 3 * kv_cache::bytes_per_slot(64);
  test_server s(o);
  const json chat = {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 4}, {"temperature", 0}};
  EXPECT_EQ(post(s, "/v1/chat/completions", chat.dump()).status, 401);
  EXPECT_EQ(error_type(post(s, "/v1/chat/completions", chat.dump(), {{"Authorization", "Bearer sesamf"}})), "authentication_error");
  const httplib::Headers key = {{"Authorization", "Bearer sesame"}};
  const reply ok = post(s, "/v1/chat/completions", chat.dump(), key);
  EXPECT_EQ(ok.status, 200) << ok.raw;
  auto c = s.client();
  auto h = c.Get("/health");
  EXPECT_EQ(h->status, 200);  // health needs no key
  EXPECT_EQ(h->get_header_value("Access-Control-Allow-Origin"), "http://localhost:3000");

  // A request that could never fit the KV memory: 503 with Retry-After.
  json big = chat;
  big["max_tokens"] = 400;
  auto r = c.Post("/v1/chat/completions", key, big.dump(), "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503);
  EXPECT_TRUE(r->has_header("Retry-After"));
  // ... unless its policy bounds its cache (8 + one prefill chunk of 256 positions per head).
  big["kv_policy"] = {{"name", "streaming"}, {"window", 8}, {"sinks", 0}};
  const reply bounded = post(s, "/v1/chat/completions", big.dump(), key);
  EXPECT_EQ(bounded.status, 200) << bounded.raw;

  // One slot, no queue: a second request while the first streams is 429.
  json slow = {{"prompt", "Once upon a time"}, {"max_tokens", 200}, {"temperature", 0}, {"stream", true}};
  std::thread first([&] {
    httplib::Client c1("127.0.0.1", s.port());
    c1.set_read_timeout(120);
    c1.Post("/v1/completions", key, slow.dump(), "application/json");
  });
  int status = 0;
  for (int i = 0; i < 100; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto m = c.Get("/metrics", key);
    if (m && m->body.find("kvgate:requests_processing 1") != std::string::npos) {
      status = c.Post("/v1/completions", key, R"({"prompt": "x", "max_tokens": 1})", "application/json")->status;
      break;
    }
  }
  EXPECT_EQ(status, 429);
  first.join();
}

}  // namespace
}  // namespace kvgate::serve
