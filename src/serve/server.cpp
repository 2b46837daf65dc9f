#include "serve/server.h"

#include <httplib.h>

#include <fmt/format.h>

#include <netdb.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <random>

#include "common/error.h"
#include "serve/metrics.h"
#include "serve/page.h"

namespace kvgate::serve {

using nlohmann::json;
using nlohmann::ordered_json;

namespace {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string random_id(const char* prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}", prefix, rng());
}

// The socket of the connection a request came on, watched for the client leaving. cpp-httplib
// 0.11 (Debian 12's) tells a handler nothing about its connection (later versions added
// Request::is_connection_closed), and a non-streaming reply writes nothing until it is whole,
// so a client that gave up would hold its slot to the last token. The handler's thread owns
// the connection while the handler runs, so the socket found by the request's addresses (a
// TCP connection is one remote and one local address) stays this connection's until it returns.
class peer_watch {
 public:
  explicit peer_watch(const httplib::Request& req) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
      int fd = -1;
      try {
        fd = std::stoi(e.path().filename().string());
      } catch (const std::exception&) {
        continue;
      }
      if (matches(fd, req)) {
        fd_ = fd;
        break;
      }
    }
  }
  // True once the client has closed its side (or reset the connection); pipelined bytes or no
  // news mean it is still there. False when the socket was not found.
  bool gone() const {
    if (fd_ < 0) return false;
    char c;
    const ssize_t n = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
  }

 private:
  static bool same(const sockaddr_storage& a, socklen_t len, const std::string& host, int port) {
    char h[NI_MAXHOST], p[NI_MAXSERV];
    if (getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, h, sizeof h, p, sizeof p,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
      return false;
    }
    return host == h && port == std::atoi(p);
  }
  static bool matches(int fd, const httplib::Request& req) {
    int type = 0;
    socklen_t tl = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM) return false;
    sockaddr_storage peer{}, local{};
    socklen_t pl = sizeof peer, ll = sizeof local;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) return false;
    if (!same(peer, pl, req.remote_addr, req.remote_port)) return false;
    if (req.local_port <= 0) return true;
    return getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) == 0 &&
           same(local, ll, req.local_addr, req.local_port);
  }
  int fd_ = -1;
};

// Equal strings take the same time whatever their bytes; only the length of the given key shows.
bool equal_constant_time(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? a[i] : 0;
    const unsigned char y = i < b.size() ? b[i] : 0;
    diff |= x ^ y;
  }
  return diff == 0;
}

void send_json(httplib::Response& res, const json& body, int status = 200) {
  res.status = status;
  res.set_content(dump_json(body), "application/json; charset=utf-8");
}

void send_error(httplib::Response& res, const api_error& e) {
  if (e.status == 503) res.set_header("Retry-After", "1");
  send_json(res, error_body(e), e.status);
}

std::string sse(const json& j) { return "data: " + dump_json(j) + "\n\n"; }

// The response objects of one completion, chat or plain, whole or as chunks.
struct shaper {
  bool chat;
  std::string id, model;
  int64_t created;

  ordered_json head(const char* object) const {
    return {{"id", id}, {"object", object}, {"created", created}, {"model", model}, {"system_fingerprint", "kvgate"}};
  }
  ordered_json choice(const std::string& text, const json& finish_reason, bool delta, bool first) const {
    ordered_json c = {{"index", 0}};
    if (chat) {
      ordered_json m = {};
      if (!delta || first) m["role"] = "assistant";
      if (!delta || !text.empty() || first) m["content"] = text;
      c[delta ? "delta" : "message"] = m.is_null() ? ordered_json::object() : m;
    } else {
      c["text"] = text;
      c["logprobs"] = nullptr;
    }
    c["finish_reason"] = finish_reason;
    return c;
  }
  ordered_json chunk(const std::string& text, const json& finish_reason, bool first = false) const {
    ordered_json j = head(chat ? "chat.completion.chunk" : "text_completion");
    j["choices"] = ordered_json::array({choice(text, finish_reason, true, first)});
    return j;
  }
  ordered_json whole(const std::string& text, const std::string& finish_reason, const ordered_json& figures) const {
    ordered_json j = head(chat ? "chat.completion" : "text_completion");
    j["choices"] = ordered_json::array({choice(text, finish_reason, false, false)});
    for (auto it = figures.begin(); it != figures.end(); ++it) j[it.key()] = it.value();
    return j;
  }
};

}  // namespace

server::server(server_options options) : options_(std::move(options)) {
  if (options_.model_alias.empty()) options_.model_alias = std::filesystem::path(options_.model_path).stem().string();
}

server::~server() {
  stop();
  if (http_thread_.joinable()) http_thread_.join();
  if (load_thread_.joinable()) load_thread_.join();
}

std::string server::load_error() const {
  std::lock_guard lock(mutex_);
  return load_error_;
}

int server::start() {
  http_ = std::make_unique<httplib::Server>();
  const scheduler_options& so = options_.scheduling;
  const int n_threads = options_.n_http_threads > 0 ? options_.n_http_threads : so.n_parallel + so.n_queue + 4;
  http_->new_task_queue = [n_threads] { return new httplib::ThreadPool(static_cast<size_t>(n_threads)); };
  http_->set_payload_max_length(options_.max_body_bytes);
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which lets a second server (ours or
  // anyone's under the same user) bind the same port and take half the connections.
  http_->set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const void*>(&yes), sizeof(yes));
  });
  http_->set_read_timeout(30);
  http_->set_write_timeout(30);
  created_ = unix_now();
  routes();
  const int port = options_.port == 0 ? http_->bind_to_any_port(options_.host) : (http_->bind_to_port(options_.host, options_.port) ? options_.port : -1);
  if (port < 0) fail("cannot listen on {}:{} (in use, or not an address of this machine)", options_.host, options_.port);
  http_thread_ = std::thread([this] { http_->listen_after_bind(); });
  // httplib's stop() does nothing until the listener runs: a load that fails at once (a corrupt
  // model) or an early SIGTERM would otherwise leave the listener up and the process hanging.
  for (int i = 0; i < 5000 && !http_->is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  load_thread_ = std::thread([this] { load(); });
  return port;
}

void server::load() {
  try {
    auto m = model::load(options_.model_path);
    const model_config& c = m->config();
    if (!options_.gates_path.empty()) {
      gates_ = std::make_shared<const gate_bank>(gate_bank::load(options_.gates_path));
      check_matches(gates_->meta(), c.name, c.arch, c.n_layer, c.n_kv_head, c.d_head);
    }
    limits_.n_vocab = m->vocab().n_vocab();
    limits_.gates = gates_ ? &gates_->meta() : nullptr;
    limits_.default_policy = options_.default_policy;
    if (options_.default_policy.policy != "full" || options_.default_policy.has_gates) {
      // The server's own flags must make a valid policy: fail at start, not per request.
      resolve_policy(options_.default_policy, limits_.gates);
    }
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    scheduler_ = std::make_unique<scheduler>(*m, gates_, options_.scheduling);
    limits_.n_ctx = scheduler_->n_ctx();
    model_ = std::move(m);
    ready_.store(true, std::memory_order_release);
  } catch (const std::exception& e) {
    {
      std::lock_guard lock(mutex_);
      load_error_ = e.what();
    }
    stop();
  }
}

void server::wait() {
  if (http_thread_.joinable()) http_thread_.join();
}

void server::stop() {
  {
    // A load in progress is not interrupted; it sees stopping_ before it starts the scheduler.
    std::lock_guard lock(mutex_);
    if (stopping_.exchange(true)) return;
  }
  if (scheduler_) scheduler_->shutdown();
  if (http_) http_->stop();
}

void server::routes() {
  httplib::Server& h = *http_;

  h.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!options_.cors_origin.empty()) {
      res.set_header("Access-Control-Allow-Origin", options_.cors_origin);
      res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
      res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
      if (req.method == "OPTIONS") {
        res.status = 204;
        return httplib::Server::HandlerResponse::Handled;
      }
    }
    if (options_.api_key.empty() || req.path == "/health" || (req.method == "GET" && req.path == "/")) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    std::string given = req.get_header_value("Authorization");
    const std::string bearer = "Bearer ";
    if (given.compare(0, bearer.size(), bearer) == 0) given = given.substr(bearer.size());
    else given = req.get_header_value("X-Api-Key");
    if (!equal_constant_time(given, options_.api_key)) {
      send_error(res, api_error(401, "authentication_error", "invalid API key"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  h.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404) send_error(res, api_error(404, "not_found_error", "no such endpoint"));
    else if (res.status == 413) send_error(res, api_error(413, "invalid_request_error", "the request body is too large"));
    else if (res.status >= 400 && res.status < 500) send_error(res, api_error(res.status, "invalid_request_error", "bad request"));
  });
  h.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const api_error& e) {
      send_error(res, e);
    } catch (const std::exception& e) {
      send_error(res, api_error(500, "server_error", e.what()));
    } catch (...) {
      send_error(res, api_error(500, "server_error", "unknown error"));
    }
  });

  auto require_ready = [this] {
    if (!ready()) throw api_error(503, "unavailable_error", stopping_ ? "the server is shutting down" : "loading model");
  };

  h.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(chat_page_html(), "text/html; charset=utf-8");
  });

  h.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (!ready()) {
      send_error(res, api_error(503, "unavailable_error", "loading model"));
      return;
    }
    send_json(res, {{"status", "ok"}});
  });

  auto models = [this, require_ready](const httplib::Request&, httplib::Response& res) {
    require_ready();
    const model_config& c = model_->config();
    json m = {{"id", options_.model_alias}, {"object", "model"}, {"created", created_}, {"owned_by", "kvgate"},
              {"meta", {{"n_vocab", limits_.n_vocab}, {"n_ctx", limits_.n_ctx}, {"n_ctx_train", c.n_ctx_train},
                        {"n_layer", c.n_layer}, {"n_kv_head", c.n_kv_head}, {"gates", !options_.gates_path.empty()}}}};
    send_json(res, {{"object", "list"}, {"data", json::array({m})}});
  };
  h.Get("/v1/models", models);
  h.Get("/models", models);

  h.Post("/tokenize", [this, require_ready](const httplib::Request& req, httplib::Response& res) {
    require_ready();
    send_json(res, {{"tokens", parse_tokenize(parse_body(req.body), model_->vocab())}});
  });
  h.Post("/detokenize", [this, require_ready](const httplib::Request& req, httplib::Response& res) {
    require_ready();
    const std::vector<int32_t> ids = parse_detokenize(parse_body(req.body), limits_.n_vocab);
    send_json(res, {{"content", model_->vocab().decode(ids)}});
  });
  h.Get("/slots", [this, require_ready](const httplib::Request&, httplib::Response& res) {
    require_ready();
    send_json(res, scheduler_->metrics().slots);
  });
  h.Get("/metrics", [this, require_ready](const httplib::Request&, httplib::Response& res) {
    require_ready();
    res.set_content(prometheus_text(scheduler_->metrics()), "text/plain; version=0.0.4");
  });

  auto completion = [this, require_ready](bool chat) {
    return [this, require_ready, chat](const httplib::Request& req, httplib::Response& res) {
      require_ready();
      auto t = std::make_shared<task>();
      t->req = parse_completion(parse_body(req.body), chat, model_->vocab(), limits_);
      scheduler_->submit(t);
      const shaper shape{chat, random_id(chat ? "chatcmpl-" : "cmpl-"), options_.model_alias, unix_now()};

      if (!t->req.stream) {
        // Looked up once the task is queued: a whole reply takes seconds, the lookup microseconds.
        const peer_watch peer(req);
        std::string text, piece;
        bool done = false, left = false;
        while (!done) {
          if (t->wait_text(&piece, &done, 250)) text += piece;
          if (!done && !left && peer.gone()) {
            left = true;
            t->cancelled = true;  // the client is gone: its slot is freed at the next step
          }
        }
        if (left) return;  // nobody to answer
        if (t->finish_reason == "error") throw api_error(500, "server_error", t->error);
        if (t->finish_reason == "cancelled") throw api_error(503, "unavailable_error", "the request was cancelled (the server is shutting down)");
        send_json(res, shape.whole(text, t->finish_reason, t->figures));
        return;
      }

      res.set_header("Cache-Control", "no-cache");
      res.set_header("X-Accel-Buffering", "no");
      auto first = std::make_shared<bool>(true);
      res.set_chunked_content_provider(
          "text/event-stream",
          [t, shape, first](size_t, httplib::DataSink& sink) {
            auto write = [&](const std::string& s) {
              if (!sink.write(s.data(), s.size())) {
                t->cancelled = true;  // the client is gone: its slot is freed at the next step
                return false;
              }
              return true;
            };
            if (*first) {
              *first = false;
              if (shape.chat && !write(sse(shape.chunk("", nullptr, true)))) return false;
            }
            std::string piece;
            bool done = false;
            if (!t->wait_text(&piece, &done, 1000)) {
              return write(": ping\n\n");  // keeps proxies open and finds a client that left
            }
            if (!piece.empty() && !write(sse(shape.chunk(piece, nullptr)))) return false;
            if (!done) return true;
            if (t->finish_reason == "error" || t->finish_reason == "cancelled") {
              const api_error e = t->finish_reason == "error" ? api_error(500, "server_error", t->error)
                                                              : api_error(503, "unavailable_error", "the request was cancelled");
              write(sse(error_body(e)));
              sink.done();
              return true;
            }
            ordered_json last = shape.chunk("", t->finish_reason);
            for (const char* key : {"timings", "kv", "kv_policy", "slot_id"}) last[key] = t->figures[key];
            if (!write(sse(last))) return false;
            if (t->req.include_usage) {
              ordered_json u = shape.head(shape.chat ? "chat.completion.chunk" : "text_completion");
              u["choices"] = json::array();
              u["usage"] = t->figures["usage"];
              if (!write(sse(u))) return false;
            }
            if (!write("data: [DONE]\n\n")) return false;
            sink.done();
            return true;
          },
          [t](bool success) {
            if (!success) t->cancelled = true;
          });
    };
  };
  for (const char* prefix : {"/v1", ""}) {
    h.Post(std::string(prefix) + "/chat/completions", completion(true));
    h.Post(std::string(prefix) + "/completions", completion(false));
  }
}

}  // namespace kvgate::serve
