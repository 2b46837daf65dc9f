// Slots, the waiting queue and the KV memory pool; one scheduler thread runs every active slot.
//
// A slot owns a session (its KV cache) and the policy runner of its request. Each round the
// scheduler admits waiting requests into free slots (FIFO) while the KV pool has room, then gives
// every active slot one step: a prefill chunk, or one decoded token. The prefilling slots' chunks
// run as one batch, then the decoding slots' tokens as another (model/batch_decoder.h): the
// weights are read once per batch for all of them, and a decoding slot gets the bits it would
// get alone. A finished slot keeps its
// cache: a later request whose prompt starts with the slot's tokens under the same policy only
// prefills the rest (the conversation continues). HTTP threads never touch a slot: they talk to
// the scheduler through a task (its events under the task's mutex) and read the metrics, which
// are updated once per round under a short lock, so /health and /metrics never wait on the model.
//
// KV memory: every active slot reserves an upper bound of the bytes its cache can reach (all its
// positions for `full` or threshold mode; sinks + window + budget + one chunk per head for budget
// mode); a threshold-mode reservation shrinks, after each step, to the bytes held plus the
// positions still to come. Idle slots' caches count too and are dropped (LRU) when a request
// needs the room. The sum never passes --kv-memory; a request that could never fit gets 503.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gate/gate_bank.h"
#include "model/batch_decoder.h"
#include "model/model.h"
#include "serve/request.h"

namespace kvgate::serve {

// One request's life between an HTTP thread and the scheduler.
struct task {
  completion_request req;
  std::atomic<bool> cancelled{false};  // set by the HTTP thread (client gone) or at shutdown

  std::mutex mutex;
  std::condition_variable cv;
  // Guarded by mutex:
  std::string text;         // reply text not yet taken by the HTTP thread (whole UTF-8 characters)
  bool finished = false;
  std::string finish_reason;  // stop | length | cancelled | error
  std::string error;          // message when finish_reason is error
  nlohmann::ordered_json figures;  // usage, timings, kv, slot: filled when finished

  // Takes the text produced so far; blocks until there is some, the task finished, or timeout.
  // Returns false while nothing happened.
  bool wait_text(std::string* out, bool* done, int timeout_ms);
};

struct scheduler_options {
  int n_parallel = 1;
  int n_queue = 32;           // waiting requests beyond the slots; more -> 429
  int n_ctx = 0;              // positions per slot
  int n_batch = 256;          // prefill chunk
  linear_rows prefill = linear_rows::quantized;  // prompt math (--prefill int8; f32: automatic)
  size_t kv_memory_bytes = 0; // 0: unbounded
};

struct metrics_snapshot {
  int64_t n_processing = 0, n_deferred = 0;
  int64_t prompt_tokens = 0, predicted_tokens = 0, cached_tokens = 0;
  double prompt_seconds = 0.0, predicted_seconds = 0.0;
  int64_t n_requests = 0, n_rejected_full = 0, n_cancelled = 0;
  size_t kv_bytes = 0;          // bytes held by all slots' caches (idle ones included)
  size_t kv_reserved = 0;       // reserved by the active slots
  size_t kv_capacity = 0;       // --kv-memory, else every slot's full cache at n_ctx
  std::map<std::string, int64_t> requests_by_policy;
  nlohmann::json slots;         // [n_parallel] state of each slot
};

class scheduler {
 public:
  scheduler(const model& m, std::shared_ptr<const gate_bank> gates, scheduler_options options);
  ~scheduler();  // cancels what runs, joins the thread

  // Queues a task. Throws api_error 429 when the queue is full, 503 (Retry-After) when its KV
  // reservation alone exceeds the pool.
  void submit(const std::shared_ptr<task>& t);
  // Cancels every queued and running task and stops the thread.
  void shutdown();

  metrics_snapshot metrics() const;
  int n_ctx() const { return options_.n_ctx; }  // positions of one slot
  // Bytes a task reserves when admitted (see the header comment).
  size_t reservation(const completion_request& req) const;
  // One position in every head under a policy: the cache's slot and its scorer's (snapkv).
  size_t position_bytes(policy_kind kind) const;

 private:
  struct slot;
  // KV bytes a slot holds: its cache and what its policy's scorer keeps beside it.
  static size_t held_bytes(const slot& sl);
  void run();
  bool admit_locked();
  void prefill_chunks(const std::vector<slot*>& slots);  // the next prompt chunk of each, as one batch
  // Samples a decoding slot's next token: true when that token must be stepped (then it is the
  // slot's pending id), false when the slot has finished.
  bool advance(slot& sl);
  void stepped(slot& sl, std::span<const float> logits);  // after the pending token was stepped
  void shrink_reservation(slot& sl);
  void finish(slot& sl, const std::string& reason, const std::string& error = {}, bool mutex_held = false);
  void emit(slot& sl, bool final);

  const model& model_;
  std::shared_ptr<const gate_bank> gates_;
  scheduler_options options_;
  size_t bytes_per_position_;  // one position in every head of a full cache

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<task>> queue_;
  bool stopping_ = false;
  int n_active_ = 0;           // slots running a task (guarded by mutex_)
  metrics_snapshot metrics_;   // guarded by mutex_
  std::vector<std::unique_ptr<slot>> slots_;  // touched by the scheduler thread only
  batch_decoder decoder_;      // the decoding slots' tokens of a round, together
  uint64_t clock_ = 0;         // LRU ticks
  std::thread thread_;
};

}  // namespace kvgate::serve
