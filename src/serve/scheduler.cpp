#include "serve/scheduler.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>

#include "model/decode_loop.h"
#include "serve/text.h"

namespace kvgate::serve {

namespace {
using steady = std::chrono::steady_clock;
double since(steady::time_point t0, steady::time_point t1) { return std::chrono::duration<double>(t1 - t0).count(); }
// Tokens at the start of a slot's cache that the prompt shares.
size_t shared_start(const std::vector<int32_t>& cached, const std::vector<int32_t>& prompt) {
  return static_cast<size_t>(std::mismatch(cached.begin(), cached.end(), prompt.begin(), prompt.end()).first -
                             cached.begin());
}
}  // namespace

bool task::wait_text(std::string* out, bool* done, int timeout_ms) {
  std::unique_lock lock(mutex);
  cv.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return finished || !text.empty(); });
  out->swap(text);
  text.clear();
  *done = finished;
  return !out->empty() || finished;
}

struct scheduler::slot {
  int id = 0;
  std::unique_ptr<session> s;
  std::unique_ptr<policy_runner> runner;
  std::string policy_key;         // policy of the tokens in the cache
  nlohmann::json policy_json;     // the same, parsed once for /slots
  std::vector<int32_t> cached;    // [n_past] tokens stepped into s
  uint64_t last_used = 0;

  // The active request (t null when idle).
  std::shared_ptr<task> t;
  size_t n_prompt_done = 0;       // prompt tokens in the cache
  int n_reused = 0;               // of which were already there
  size_t reserved = 0;            // KV bytes reserved
  size_t bytes_per_position = 0;  // this policy's bound per position (pre-RoPE keys included)
  std::vector<float> logits;      // [n_vocab] of the last stepped token
  std::unique_ptr<sampler> pick;
  decode_cursor cursor;
  int32_t pending = 0;            // the sampled token the round's batch steps
  std::string generated;          // reply bytes so far
  size_t emitted = 0;             // of which handed to the task
  steady::time_point t_start, t_prompt;
  int64_t n_evicted_before = 0;
};

scheduler::scheduler(const model& m, std::shared_ptr<const gate_bank> gates, scheduler_options options)
    : model_(m), gates_(std::move(gates)), options_(options), decoder_(m) {
  const model_config& c = m.config();
  bytes_per_position_ = static_cast<size_t>(c.n_layer) * c.n_kv_head * kv_cache::bytes_per_slot(c.d_head);
  for (int i = 0; i < options_.n_parallel; ++i) {
    auto sl = std::make_unique<slot>();
    sl->id = i;
    sl->s = std::make_unique<session>(m, session_options{.n_ctx = options_.n_ctx, .n_batch = options_.n_batch, .prefill = options_.prefill});
    slots_.push_back(std::move(sl));
  }
  options_.n_ctx = slots_.empty() ? options_.n_ctx : slots_[0]->s->n_ctx();
  metrics_.kv_capacity = options_.kv_memory_bytes ? options_.kv_memory_bytes
                                                  : bytes_per_position_ * options_.n_ctx * options_.n_parallel;
  thread_ = std::thread([this] { run(); });
}

scheduler::~scheduler() { shutdown(); }

void scheduler::shutdown() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

size_t scheduler::held_bytes(const slot& sl) {
  return sl.s->cache().bytes_total() + (sl.runner ? sl.runner->state_bytes() : 0);
}

size_t scheduler::position_bytes(policy_kind kind) const {
  const model_config& c = model_.config();
  return bytes_per_position_ + static_cast<size_t>(c.n_layer) * c.n_kv_head * scorer_bytes_per_slot(kind);
}

size_t scheduler::reservation(const completion_request& req) const {
  const policy_config& c = req.policy.config;
  size_t n = req.prompt.size() + static_cast<size_t>(req.n_predict);
  if (c.mode == select_mode::budget) {
    n = std::min(n, static_cast<size_t>(c.sinks + c.window + c.budget + options_.n_batch));
  }
  return n * position_bytes(c.kind);
}

void scheduler::submit(const std::shared_ptr<task>& t) {
  const size_t need = reservation(t->req);
  std::lock_guard lock(mutex_);
  if (stopping_) throw api_error(503, "unavailable_error", "the server is shutting down");
  if (options_.kv_memory_bytes && need > options_.kv_memory_bytes) {
    ++metrics_.n_rejected_full;
    throw api_error(503, "unavailable_error",
                    fmt::format("the request may need {} KV bytes, more than --kv-memory ({} bytes); use fewer "
                                "tokens or an evicting kv_policy", need, options_.kv_memory_bytes));
  }
  // The queue holds what waits beyond the free slots.
  if (static_cast<int>(queue_.size()) >= options_.n_queue + options_.n_parallel - n_active_) {
    ++metrics_.n_rejected_full;
    throw api_error(429, "unavailable_error", "too many requests waiting; retry later");
  }
  queue_.push_back(t);
  metrics_.n_deferred = static_cast<int64_t>(queue_.size());
  ++metrics_.n_requests;
  ++metrics_.requests_by_policy[t->req.policy.json["name"].get<std::string>()];
  cv_.notify_all();
}

metrics_snapshot scheduler::metrics() const {
  std::lock_guard lock(mutex_);
  return metrics_;
}

// Admits the queue's head while a slot is free and the pool has room. Returns true if any.
bool scheduler::admit_locked() {
  bool any = false;
  while (!queue_.empty()) {
    std::shared_ptr<task> t = queue_.front();
    if (t->cancelled) {
      queue_.pop_front();
      std::lock_guard tl(t->mutex);
      t->finished = true;
      t->finish_reason = "cancelled";
      t->cv.notify_all();
      ++metrics_.n_cancelled;
      continue;
    }
    const std::vector<int32_t>& prompt = t->req.prompt;
    // The slot whose cache serves the longest prefix of the prompt under the same policy, else
    // the least recently used free slot. A cache that is all a prefix of the prompt (the
    // conversation goes on) serves whole under any policy. Under the full cache, nothing was ever
    // evicted, so a cache that shares only its start with the prompt (another reply regenerated,
    // an edited turn, a shared system prompt) is cut back to the shared tokens (session::truncate),
    // as llama-server keeps a slot's common prefix; only when they are at least half the prompt,
    // so that a slot does not give up its own conversation for a few tokens. At least one prompt
    // token always runs, for the first reply token's logits.
    slot* best = nullptr;
    size_t best_keep = 0;
    for (auto& sp : slots_) {
      slot& sl = *sp;
      if (sl.t) continue;
      size_t keep = 0;
      if (sl.policy_key == t->req.policy.key && !sl.cached.empty()) {
        const size_t common = shared_start(sl.cached, prompt);
        if (common == sl.cached.size() && common < prompt.size()) {
          keep = common;
        } else if (t->req.policy.config.kind == policy_kind::full && 2 * common >= prompt.size()) {
          keep = std::min(common, prompt.size() - 1);
        }
      }
      if (keep > best_keep) {
        best = &sl;
        best_keep = keep;
      } else if (best_keep == 0 && (!best || sl.last_used < best->last_used)) {
        best = &sl;
      }
    }
    const bool reuse = best_keep > 0;
    // A request that no idle slot continues may still share its start with another slot's cache,
    // idle or running (the model's default system prompt starts every chat): under the full
    // cache those slots are copied (session::copy_prefix) instead of computed again, as vLLM and
    // SGLang share cached prefixes between requests. Sessions are only stepped on this thread, so
    // a running slot's cache holds still while it is read.
    slot* donor = nullptr;
    size_t donor_keep = 0;
    if (!reuse && best && t->req.policy.config.kind == policy_kind::full) {
      for (auto& sp : slots_) {
        const slot& sl = *sp;
        if (sp.get() == best || sl.policy_key != t->req.policy.key || sl.cached.empty()) continue;
        const size_t common = shared_start(sl.cached, prompt);
        const size_t keep = std::min({common, prompt.size() - 1, static_cast<size_t>(sl.s->n_past())});
        if (keep > donor_keep) {
          donor = sp.get();
          donor_keep = keep;
        }
      }
    }
    if (!best) break;
    const size_t need = reservation(t->req);
    if (options_.kv_memory_bytes) {
      auto used = [&] {
        size_t u = 0;
        for (auto& sp : slots_) {
          if (sp->t) u += sp->reserved;
          else if (sp.get() != best) u += held_bytes(*sp);
        }
        return u;
      };
      // Drop idle caches, least recently used first, until the request fits.
      while (used() + need > options_.kv_memory_bytes) {
        slot* victim = nullptr;
        for (auto& sp : slots_) {
          if (!sp->t && sp.get() != best && !sp->cached.empty() && (!victim || sp->last_used < victim->last_used)) victim = sp.get();
        }
        if (!victim) break;
        victim->s->reset();
        victim->cached.clear();
      }
      if (used() + need > options_.kv_memory_bytes) break;  // waits for running slots to finish
      if (donor && donor->cached.empty()) donor = nullptr;     // dropped to make room
    }
    queue_.pop_front();
    ++n_active_;
    slot& sl = *best;
    sl.t = t;
    sl.reserved = need;
    sl.bytes_per_position = position_bytes(t->req.policy.config.kind);
    sl.last_used = ++clock_;
    if (reuse) {
      if (best_keep < sl.cached.size()) {
        sl.s->truncate(static_cast<int>(best_keep));
        sl.cached.resize(best_keep);
      }
      sl.n_prompt_done = sl.cached.size();
    } else {
      sl.s->reset();
      sl.cached.clear();
      sl.runner = make_policy(t->req.policy.config, model_.config(), gates_);
      sl.runner->attach(*sl.s);
      sl.policy_key = t->req.policy.key;
      sl.policy_json = sl.policy_key.empty() ? nlohmann::json() : nlohmann::json::parse(sl.policy_key);
      sl.n_prompt_done = 0;
      if (donor) {
        sl.s->copy_prefix(*donor->s, static_cast<int>(donor_keep));
        sl.cached.assign(prompt.begin(), prompt.begin() + static_cast<std::ptrdiff_t>(donor_keep));
        sl.n_prompt_done = donor_keep;
      }
    }
    sl.n_reused = static_cast<int>(sl.n_prompt_done);
    sl.pick = std::make_unique<sampler>(t->req.sampling);
    sl.cursor = decode_cursor{};
    sl.cursor.limits.n_predict = t->req.n_predict;
    sl.generated.clear();
    sl.emitted = 0;
    sl.t_start = steady::now();
    sl.n_evicted_before = sl.runner->stats().n_evicted;
    any = true;
  }
  metrics_.n_deferred = static_cast<int64_t>(queue_.size());
  return any;
}

void scheduler::run() {
  while (true) {
    {
      std::unique_lock lock(mutex_);
      if (stopping_) break;
      admit_locked();
      const bool active = std::any_of(slots_.begin(), slots_.end(), [](auto& sp) { return sp->t != nullptr; });
      if (!active) {
        cv_.wait_for(lock, std::chrono::milliseconds(500));
        continue;
      }
    }
    // The prefilling slots' next chunks run as one batch, then the decoding slots' tokens.
    std::vector<slot*> prefill, decode;
    for (auto& sp : slots_) {
      if (!sp->t) continue;
      if (sp->t->cancelled) {
        finish(*sp, "cancelled");
      } else if (sp->n_prompt_done < sp->t->req.prompt.size()) {
        prefill.push_back(sp.get());
      } else if (advance(*sp)) {
        decode.push_back(sp.get());
      }
    }
    if (!prefill.empty()) {
      prefill_chunks(prefill);
      // Requests that arrived during the prefill start now, not a whole round later.
      std::lock_guard lock(mutex_);
      if (stopping_) continue;
      admit_locked();
    }
    if (!decode.empty()) {
      std::vector<session*> sessions;
      std::vector<int32_t> ids;
      for (slot* sl : decode) {
        sessions.push_back(sl->s.get());
        ids.push_back(sl->pending);
      }
      try {
        const std::span<const float> out = decoder_.step(sessions, ids);
        const size_t n_vocab = model_.config().n_vocab;
        for (size_t b = 0; b < decode.size(); ++b) stepped(*decode[b], out.subspan(b * n_vocab, n_vocab));
      } catch (const std::exception& e) {
        for (slot* sl : decode) finish(*sl, "error", e.what());
      }
    }
    std::lock_guard lock(mutex_);
    size_t bytes = 0, reserved = 0;
    int64_t n_active = 0;
    nlohmann::json slots = nlohmann::json::array();
    for (auto& sp : slots_) {
      const size_t slot_bytes = held_bytes(*sp);
      bytes += slot_bytes;
      if (sp->t) {
        reserved += sp->reserved;
        ++n_active;
      }
      slots.push_back({{"id", sp->id},
                       {"is_processing", sp->t != nullptr},
                       {"n_ctx", sp->s->n_ctx()},
                       {"n_past", sp->s->n_past()},
                       {"kv_bytes", slot_bytes},
                       {"kv_policy", sp->policy_json}});
    }
    metrics_.kv_bytes = bytes;
    metrics_.kv_reserved = reserved;
    metrics_.n_processing = n_active;
    metrics_.slots = std::move(slots);
  }
  // Shutdown: every queued and running task ends as cancelled.
  std::lock_guard lock(mutex_);
  for (auto& sp : slots_) {
    if (sp->t) finish(*sp, "cancelled", {}, /*mutex_held=*/true);
  }
  for (auto& t : queue_) {
    std::lock_guard tl(t->mutex);
    t->finished = true;
    t->finish_reason = "cancelled";
    t->cv.notify_all();
  }
  queue_.clear();
}

// One prefill chunk of each slot, together (one chunk per round, so that a long prompt does not
// stall the other slots).
void scheduler::prefill_chunks(const std::vector<slot*>& slots) {
  std::vector<batch_segment> segments;
  std::vector<slot*> last;  // the slots whose chunk ends their prompt, in segment order
  for (slot* sl : slots) {
    const std::vector<int32_t>& prompt = sl->t->req.prompt;
    const size_t n = std::min(prompt.size() - sl->n_prompt_done, static_cast<size_t>(options_.n_batch));
    const bool ends = sl->n_prompt_done + n == prompt.size();
    segments.push_back({sl->s.get(), std::span<const int32_t>(prompt.data() + sl->n_prompt_done, n),
                        ends ? logits_mode::last : logits_mode::none});
    if (ends) last.push_back(sl);
  }
  try {
    const std::span<const float> out = decoder_.step(segments, options_.prefill);
    const size_t n_vocab = model_.config().n_vocab;
    const auto now = steady::now();
    for (size_t b = 0; b < slots.size(); ++b) {
      slot& sl = *slots[b];
      sl.cached.insert(sl.cached.end(), segments[b].tokens.begin(), segments[b].tokens.end());
      sl.n_prompt_done += segments[b].tokens.size();
      shrink_reservation(sl);
    }
    for (size_t i = 0; i < last.size(); ++i) {
      last[i]->logits.assign(out.begin() + i * n_vocab, out.begin() + (i + 1) * n_vocab);
      last[i]->t_prompt = now;
    }
  } catch (const std::exception& e) {
    for (slot* sl : slots) finish(*sl, "error", e.what());
  }
}

bool scheduler::advance(slot& sl) {
  task& t = *sl.t;
  session& s = *sl.s;
  try {
    int32_t id = 0;
    const decode_event e = decode_next(sl.cursor, *sl.pick, sl.logits, model_.vocab(), s.n_past(), s.n_ctx(), &id);
    if (e != decode_event::end) sl.generated += model_.vocab().token_bytes(id);
    // A stop string ends the reply; the text before it is the reply.
    const size_t stop_at = find_stop(sl.generated, t.req.stop, sl.emitted);
    if (stop_at != std::string::npos) {
      sl.generated.resize(stop_at);
      emit(sl, true);
      finish(sl, "stop");
      return false;
    }
    if (e == decode_event::step) {
      sl.pending = id;
      return true;
    }
    emit(sl, true);
    finish(sl, sl.cursor.result.stop == "eos" ? "stop" : "length");
  } catch (const std::exception& e) {
    finish(sl, "error", e.what());
  }
  return false;
}

void scheduler::stepped(slot& sl, std::span<const float> logits) {
  sl.logits.assign(logits.begin(), logits.end());
  sl.cached.push_back(sl.pending);
  sl.cursor.result.last_pending = false;
  emit(sl, false);
  shrink_reservation(sl);
}

// A threshold-mode or full reservation shrinks to what is held plus what may still come.
void scheduler::shrink_reservation(slot& sl) {
  const task& t = *sl.t;
  if (!options_.kv_memory_bytes || t.req.policy.config.mode == select_mode::budget) return;
  const int64_t to_predict = std::max<int64_t>(0, int64_t{t.req.n_predict} - static_cast<int64_t>(sl.cursor.result.ids.size()));
  const size_t to_come = (t.req.prompt.size() - sl.n_prompt_done) + static_cast<size_t>(to_predict);
  const size_t bound = held_bytes(sl) + to_come * sl.bytes_per_position;
  sl.reserved = std::min(sl.reserved, bound);
}

// Hands the reply text that is safe to show to the task: whole UTF-8 characters, and nothing
// that might be the start of a stop string (unless final).
void scheduler::emit(slot& sl, bool final) {
  size_t end = sl.generated.size();
  if (!final) end = safe_text_end(sl.generated, sl.emitted, sl.t->req.stop);
  if (end <= sl.emitted) return;
  std::lock_guard lock(sl.t->mutex);
  sl.t->text.append(sl.generated, sl.emitted, end - sl.emitted);
  sl.emitted = end;
  sl.t->cv.notify_all();
}

void scheduler::finish(slot& sl, const std::string& reason, const std::string& error, bool mutex_held) {
  task& t = *sl.t;
  const auto now = steady::now();
  const int n_prompt = static_cast<int>(t.req.prompt.size());
  const int n_prompt_run = n_prompt - sl.n_reused;
  const bool prompt_done = sl.n_prompt_done == t.req.prompt.size();
  const double prompt_s = prompt_done ? since(sl.t_start, sl.t_prompt) : since(sl.t_start, now);
  const int n_predicted = static_cast<int>(sl.cursor.result.ids.size());
  const double predicted_s = prompt_done ? since(sl.t_prompt, now) : 0.0;
  const kv_cache& cache = sl.s->cache();
  const model_config& mc = model_.config();
  const size_t n_full = static_cast<size_t>(mc.n_layer) * mc.n_kv_head * std::max(1, sl.s->n_past());

  nlohmann::ordered_json f;
  f["usage"] = {{"prompt_tokens", n_prompt}, {"completion_tokens", n_predicted}, {"total_tokens", n_prompt + n_predicted},
                {"prompt_tokens_details", {{"cached_tokens", sl.n_reused}}}};
  f["timings"] = {{"cache_n", sl.n_reused},
                  {"prompt_n", n_prompt_run},
                  {"prompt_ms", prompt_s * 1e3},
                  {"prompt_per_token_ms", n_prompt_run ? prompt_s * 1e3 / n_prompt_run : 0.0},
                  {"prompt_per_second", prompt_s > 0 ? n_prompt_run / prompt_s : 0.0},
                  {"predicted_n", n_predicted},
                  {"predicted_ms", predicted_s * 1e3},
                  {"predicted_per_token_ms", n_predicted ? predicted_s * 1e3 / n_predicted : 0.0},
                  {"predicted_per_second", predicted_s > 0 ? n_predicted / predicted_s : 0.0}};
  f["kv"] = {{"slots_kept", cache.n_live_total()},
             {"slots_full", n_full},
             {"share_kept", static_cast<double>(cache.n_live_total()) / n_full},
             {"bytes", held_bytes(sl)},
             {"bytes_full", n_full * kv_cache::bytes_per_slot(mc.d_head)},
             {"n_past", sl.s->n_past()},
             {"evicted", sl.runner->stats().n_evicted - sl.n_evicted_before}};
  if (t.req.kv_strip) {
    // The conversation's tokens in this slot and, for each, how many heads still hold it.
    std::vector<int> kept(sl.cached.size(), 0);
    for (int il = 0; il < mc.n_layer; ++il) {
      for (int ih = 0; ih < mc.n_kv_head; ++ih) {
        const kv_head& h = cache.head(il, ih);
        for (size_t j = 0; j < h.n_slots(); ++j) {
          const bool live = h.masked.empty() || !h.masked[j];
          if (live && h.pos[j] >= 0 && static_cast<size_t>(h.pos[j]) < kept.size()) ++kept[h.pos[j]];
        }
      }
    }
    std::vector<std::string> pieces;
    pieces.reserve(sl.cached.size());
    for (int32_t id : sl.cached) pieces.push_back(model_.vocab().token_bytes(id));
    f["kv"]["n_heads"] = mc.n_layer * mc.n_kv_head;
    f["kv"]["tokens"] = pieces;
    f["kv"]["kept_heads"] = kept;
  }
  f["slot_id"] = sl.id;
  f["kv_policy"] = t.req.policy.json;

  // The slot counts as free before the client hears the end, so its next request finds it free.
  {
    std::unique_lock lock(mutex_, std::defer_lock);
    if (!mutex_held) lock.lock();
    --n_active_;
    if (reason == "cancelled") ++metrics_.n_cancelled;
    metrics_.prompt_tokens += n_prompt_run;
    metrics_.cached_tokens += sl.n_reused;
    metrics_.prompt_seconds += prompt_s;
    metrics_.predicted_tokens += n_predicted;
    metrics_.predicted_seconds += predicted_s;
  }
  {
    std::lock_guard lock(t.mutex);
    t.finished = true;
    t.finish_reason = reason;
    t.error = error;
    t.figures = std::move(f);
    t.cv.notify_all();
  }
  if (reason == "error") {
    // A failed step leaves the cache unknown: start the slot over next time.
    sl.s->reset();
    sl.cached.clear();
  }
  sl.t.reset();
  sl.pick.reset();
  sl.last_used = ++clock_;
}

}  // namespace kvgate::serve
