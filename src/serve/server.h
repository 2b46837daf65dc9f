// kvgate serve: the OpenAI-compatible HTTP server (cpp-httplib). Routes:
//   POST /v1/chat/completions, /v1/completions (also without /v1)   completions, SSE when stream
//   GET  /health /v1/models /slots /metrics                            never wait on the model
//   POST /tokenize /detokenize
// The model loads in the background after the port is bound (/health answers 503 meanwhile).
// Each request may carry a `kv_policy` object; see request.h. Requests run in the scheduler's
// slots (scheduler.h); an HTTP thread only parses, queues, and writes what its task produces.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "policy/policy.h"
#include "serve/scheduler.h"

namespace httplib {
class Server;
}

namespace kvgate::serve {

struct server_options {
  std::string model_path;
  std::string model_alias;       // id in /v1/models and responses; empty: the model file's name
  std::string gates_path;        // gate bank for kv_policy "learned"; empty: none
  std::string host = "127.0.0.1";
  int port = 8080;               // 0: any free port (start() returns it)
  scheduler_options scheduling;
  std::string api_key;           // empty: no key asked
  std::string cors_origin;       // empty: no CORS headers
  size_t max_body_bytes = 8u << 20;  // larger bodies -> 413
  policy_request default_policy; // the policy of requests without kv_policy
  int n_http_threads = 0;        // 0: slots + queue + 4, so waiting requests hold a thread each
};

class server {
 public:
  explicit server(server_options options);
  ~server();  // stop() and join

  // Binds and starts serving in the background; loads the model on another thread. Returns the
  // bound port. Throws error when the address cannot be bound.
  int start();
  // Blocks until the server stopped (stop(), or a failed model load).
  void wait();
  // Cancels queued and running requests (their streams end with an error event) and stops.
  void stop();

  bool ready() const { return ready_.load(std::memory_order_acquire); }
  std::string load_error() const;

 private:
  void load();
  void routes();

  server_options options_;
  std::unique_ptr<httplib::Server> http_;
  std::unique_ptr<const model> model_;
  std::shared_ptr<const gate_bank> gates_;
  std::unique_ptr<scheduler> scheduler_;
  request_limits limits_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> stopping_{false};
  mutable std::mutex mutex_;
  std::string load_error_;
  int64_t created_ = 0;  // unix time of start
  std::thread http_thread_, load_thread_;
};

}  // namespace kvgate::serve
