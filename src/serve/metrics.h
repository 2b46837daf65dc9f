// /metrics: the scheduler's counters as Prometheus text (prefix kvgate:, llama-server's names
// where it has one, plus the KV figures llama.cpp dropped and the per-policy request counts).
#pragma once

#include <string>

#include "serve/scheduler.h"

namespace kvgate::serve {

std::string prometheus_text(const metrics_snapshot& m);

}  // namespace kvgate::serve
