#include "serve/metrics.h"

#include <fmt/format.h>

namespace kvgate::serve {

namespace {

void add(std::string& out, const char* name, const char* type, const char* help, double value) {
  out += fmt::format("# HELP kvgate:{} {}\n# TYPE kvgate:{} {}\nkvgate:{} {}\n", name, help, name, type, name, value);
}

}  // namespace

std::string prometheus_text(const metrics_snapshot& m) {
  std::string out;
  add(out, "prompt_tokens_total", "counter", "Prompt tokens processed (cached ones excluded).", m.prompt_tokens);
  add(out, "prompt_seconds_total", "counter", "Prompt processing time.", m.prompt_seconds);
  add(out, "prompt_tokens_cached_total", "counter", "Prompt tokens reused from a slot's cache.", m.cached_tokens);
  add(out, "tokens_predicted_total", "counter", "Generated tokens.", m.predicted_tokens);
  add(out, "tokens_predicted_seconds_total", "counter", "Generation time.", m.predicted_seconds);
  add(out, "requests_processing", "gauge", "Requests in a slot.", m.n_processing);
  add(out, "requests_deferred", "gauge", "Requests waiting for a slot or KV memory.", m.n_deferred);
  add(out, "requests_total", "counter", "Completion requests accepted.", m.n_requests);
  add(out, "requests_rejected_total", "counter", "Completion requests refused with 429 or 503.", m.n_rejected_full);
  add(out, "requests_cancelled_total", "counter", "Requests cancelled (client gone, shutdown).", m.n_cancelled);
  add(out, "kv_cache_bytes", "gauge", "KV bytes held by all slots.", static_cast<double>(m.kv_bytes));
  add(out, "kv_cache_reserved_bytes", "gauge", "KV bytes reserved by the running requests.", static_cast<double>(m.kv_reserved));
  add(out, "kv_cache_capacity_bytes", "gauge", "KV memory bound (--kv-memory, else every slot's full cache).",
      static_cast<double>(m.kv_capacity));
  add(out, "kv_cache_usage_ratio", "gauge", "kv_cache_bytes / kv_cache_capacity_bytes.",
      m.kv_capacity ? static_cast<double>(m.kv_bytes) / m.kv_capacity : 0.0);
  out += "# HELP kvgate:requests_by_policy_total Completion requests accepted, by kv_policy name.\n"
         "# TYPE kvgate:requests_by_policy_total counter\n";
  for (const auto& [name, n] : m.requests_by_policy) {
    out += fmt::format("kvgate:requests_by_policy_total{{policy=\"{}\"}} {}\n", name, n);
  }
  return out;
}

}  // namespace kvgate::serve
