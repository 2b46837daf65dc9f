// kvgate serve: the OpenAI-compatible server (src/serve/). The policy flags set the policy of
// requests that carry no kv_policy; --gates makes kv_policy "learned" available. SIGINT and
// SIGTERM cancel what runs and exit 0.
#include <signal.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

#include "cli/common.h"
#include "cli/policy_options.h"
#include "common/error.h"
#include "serve/server.h"

namespace kvgate::cli {

namespace {
volatile std::sig_atomic_t g_stop_requested = 0;
}  // namespace

void register_serve(CLI::App& app) {
  auto* sub = app.add_subcommand("serve", "OpenAI-compatible HTTP server; each request may choose its KV policy");
  struct opts : model_options {
    serve::server_options server;
    double kv_memory_mb = 0;
    std::string prefill = "int8";
    policy_flags policy;
  };
  auto o = std::make_shared<opts>();
  add_model_options(*sub, *o);
  serve::server_options& so = o->server;
  sub->add_option("--host", so.host, "address to listen on (default 127.0.0.1: this machine only)");
  sub->add_option("--port", so.port, "port (default 8080; 0: any free port, printed)")->check(CLI::Range(0, 65535));
  sub->add_option("--parallel", so.scheduling.n_parallel, "slots: requests run at once (default 1)")->check(CLI::Range(1, 256));
  sub->add_option("--queue", so.scheduling.n_queue, "requests waiting beyond the slots before 429 (default 32)")->check(CLI::Range(0, 4096));
  sub->add_option("--kv-memory", o->kv_memory_mb, "MB of KV cache for all slots together (default 0: unbounded)")
      ->check(CLI::Range(0.0, 1e7));
  sub->add_option("--ctx", so.scheduling.n_ctx, "context of each slot (default: the model's)")->check(CLI::Range(0, 1 << 24));
  sub->add_option("--batch", so.scheduling.n_batch, "prefill chunk size")->check(CLI::Range(1, 1 << 16));
  add_prefill_option(*sub, o->prefill);
  sub->add_option("--api-key", so.api_key, "require 'Authorization: Bearer KEY'");
  sub->add_option("--cors", so.cors_origin, "allow this browser origin (default: no CORS headers)");
  sub->add_option("--alias", so.model_alias, "model id in /v1/models (default: the file's name)");
  sub->add_option("--max-body", so.max_body_bytes, "largest request body in bytes (default 8 MiB)")->check(CLI::Range(1024, 1 << 30));
  add_policy_options(*sub, o->policy, /*add_seed=*/true);

  sub->callback([o] {
    apply_threads(*o);
    serve::server_options so = o->server;
    so.model_path = resolve_model_path(*o);
    so.gates_path = o->policy.gates;
    so.scheduling.kv_memory_bytes = static_cast<size_t>(o->kv_memory_mb * 1024 * 1024);
    so.scheduling.prefill = parse_prefill(o->prefill);
    so.default_policy = policy_request_of(o->policy);  // --budget-pool included

    // A handler that only raises a flag (libraries such as OpenBLAS start threads before we could
    // block signals in them, so any thread may take the signal); a watcher thread acts on it.
    struct sigaction sa {};
    sa.sa_handler = [](int) { g_stop_requested = 1; };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    signal(SIGPIPE, SIG_IGN);

    serve::server srv(so);
    const int port = srv.start();
    std::fprintf(stderr, "kvgate: listening on http://%s:%d (loading the model)\n", so.host.c_str(), port);
    std::atomic<bool> done{false};
    std::thread watcher([&] {
      while (!done) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        if (g_stop_requested) {
          std::fprintf(stderr, "kvgate: stopping\n");
          srv.stop();
          return;
        }
      }
    });
    std::thread ready_note([&] {
      while (!done && !srv.ready()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (srv.ready()) std::fprintf(stderr, "kvgate: model loaded, serving\n");
    });
    srv.wait();
    done = true;
    watcher.join();
    ready_note.join();
    const std::string err = srv.load_error();
    if (!err.empty()) fail("{}", err);
  });
}

}  // namespace kvgate::cli
