#include "eval/gate_scores.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "common/error.h"
#include "gguf/gguf.h"

namespace kvgate::eval {

namespace {

// Rows per head in one call of gate_bank::score: [H, 512, d_head] keys in, [H, 512, 256] scratch
// twice inside; large enough that the batched products run at full speed.
constexpr int64_t k_block_rows = 512;

float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// 0.01f -> 0.01 rather than 0.009999999776482582 in the report's JSON.
double shortest(float x) { return std::stod(fmt::format("{}", x)); }

}  // namespace

std::vector<std::string> check_gate_matches_dataset(const gate_meta& g, const std::string& gates_path,
                                                    const dataset_manifest& d, const std::string& data_path) {
  std::vector<std::string> wrong;
  if (g.model_name != d.model_name) wrong.push_back(fmt::format("model '{}' vs '{}'", g.model_name, d.model_name));
  if (!g.model_arch.empty() && !d.model_arch.empty() && g.model_arch != d.model_arch) {
    wrong.push_back(fmt::format("architecture {} vs {}", g.model_arch, d.model_arch));
  }
  if (g.n_layer != d.n_layer) wrong.push_back(fmt::format("n_layer {} vs {}", g.n_layer, d.n_layer));
  if (g.n_kv_head != d.n_kv_head) wrong.push_back(fmt::format("n_kv_head {} vs {}", g.n_kv_head, d.n_kv_head));
  if (g.d_head != d.d_head) wrong.push_back(fmt::format("d_head {} vs {}", g.d_head, d.d_head));
  // Keys after rotary embedding carry their position; a gate trained on one kind sees nonsense in
  // the other, so this is a refusal, not a warning.
  if (g.key_kind != d.label.key_kind) wrong.push_back(fmt::format("key kind {} vs {}", g.key_kind, d.label.key_kind));
  if (!wrong.empty()) {
    std::string list;
    for (const std::string& w : wrong) list += (list.empty() ? "" : "; ") + w;
    fail("gate file {} does not match dataset {} (gate vs data): {}. Evaluate gates on data collected from the "
         "model they were trained for.",
         gates_path, data_path, list);
  }
  std::vector<std::string> warnings;
  auto differ = [&](const char* name, auto a, auto b) {
    if (a != b) {
      warnings.push_back(fmt::format("label parameter {} differs: gate trained with {}, data labelled with {} ({})",
                                     name, a, b, gates_path));
    }
  };
  differ("sinks", g.sinks, d.label.sinks);
  differ("window", g.window, d.label.window);
  differ("tau", g.tau, d.label.tau);
  differ("horizon", g.horizon, d.label.horizon);
  differ("max_bucket", g.max_bucket, d.label.max_bucket);
  return warnings;
}

std::vector<float> lifetime_bucket_share(int n_buckets, int window, int horizon) {
  std::vector<float> share(n_buckets);
  for (int b = 0; b < n_buckets; ++b) {
    const double lo = b == 0 ? 0.0 : std::pow(4.0, b);
    double hi = std::pow(4.0, b + 1) - 1;                              // inclusive
    if (b == n_buckets - 1) hi = std::max(lo, double(window) + horizon);  // the capped bucket
    const double above = std::max(0.0, hi - std::max(lo, double(window) + 1) + 1);
    share[b] = static_cast<float>(std::min(1.0, above / (hi - lo + 1)));
  }
  return share;
}

eval_input score_dataset(const dataset& data, const std::string& data_path, std::span<const named_gate> gates) {
  const dataset_manifest& m = data.manifest;
  const int H = m.n_layer * m.n_kv_head, D = m.d_head;
  if (static_cast<int>(data.heads.size()) != H) {
    fail("dataset {}: {} heads stored, manifest says {} x {}", data_path, data.heads.size(), m.n_layer, m.n_kv_head);
  }
  eval_input in;
  in.data_path = data_path;
  in.model_name = m.model_name;
  in.n_layer = m.n_layer;
  in.n_kv_head = m.n_kv_head;
  in.negative_keep = m.negative_keep;
  for (int64_t v : m.n_pos) in.n_pos_all += v;
  for (int64_t v : m.n_neg) in.n_neg_all += v;
  in.label = {{"sinks", m.label.sinks}, {"window", m.label.window}, {"tau", shortest(m.label.tau)},
              {"horizon", m.label.horizon}, {"max_bucket", m.label.max_bucket}, {"key_kind", m.label.key_kind},
              {"sources", m.label_sources}};

  in.heads.resize(H);
  int64_t n_max = 0;
  for (int i = 0; i < H; ++i) {
    const head_examples& e = data.heads[i];
    head_scores& h = in.heads[i];
    h.layer = i / m.n_kv_head;
    h.head = i % m.n_kv_head;
    h.label = e.label;
    h.knorm.resize(e.size());
    h.position.resize(e.size());
    h.gates.assign(gates.size(), std::vector<float>(e.size()));
    if (e.keys.size() != e.size() * D || e.pos.size() != e.size()) {
      fail("dataset {}: head L{}H{} has {} keys and {} positions for {} labels", data_path, h.layer, h.head,
           e.keys.size() / std::max(D, 1), e.pos.size(), e.size());
    }
    n_max = std::max<int64_t>(n_max, e.size());
    // The report's n_pos/n_neg count stored examples; these count every labelled token.
    if (m.n_pos.size() == static_cast<size_t>(H) && m.n_neg.size() == static_cast<size_t>(H)) {
      const int64_t all = m.n_pos[i] + m.n_neg[i];
      h.extra["n_pos_labelled"] = m.n_pos[i];
      h.extra["n_neg_labelled"] = m.n_neg[i];
      h.extra["positive_rate"] = all > 0 ? static_cast<double>(m.n_pos[i]) / all : 0.0;
    }
  }

  for (size_t ig = 0; ig < gates.size(); ++ig) {
    const gate_bank& bank = *gates[ig].bank;
    const int O = bank.n_out();
    const bool lifetime = bank.meta().objective == "lifetime";
    if (bank.n_heads() != H || bank.d_head() != D) fail("gate file {}: dimensions differ from the data", gates[ig].path);
    if (!lifetime && O != 1) fail("gate file {}: binary objective with {} outputs", gates[ig].path, O);
    gate_info info{gates[ig].name, gates[ig].path, bank.meta().objective, "sigmoid(logit)", {}};
    std::vector<float> share;
    if (lifetime) {
      share = lifetime_bucket_share(O, m.label.window, m.label.horizon);
      std::string w;
      for (float s : share) w += fmt::format("{}{:.3g}", w.empty() ? "" : ", ", s);
      info.score = fmt::format("sum over buckets b of softmax(logits)[b] * share_b, share_b = part of bucket b's "
                               "lifetimes past the window {} = [{}]",
                               m.label.window, w);
    }
    info.meta = {{"key_kind", bank.meta().key_kind}, {"threshold", shortest(bank.meta().threshold)},
                 {"window", bank.meta().window}, {"tau", shortest(bank.meta().tau)}, {"horizon", bank.meta().horizon},
                 {"n_out", O}, {"metrics", bank.meta().metrics}};
    in.gates.push_back(std::move(info));

    // Heads hold different numbers of examples; a head that has run out is fed zero rows whose
    // scores are dropped (the batched call needs the same row count for every head).
    std::vector<int64_t> bucket_hits(H, 0);             // lifetime: argmax bucket == stored bucket
    std::vector<float> keys(static_cast<size_t>(H) * k_block_rows * D);    // [H, rows, D]
    std::vector<float> logits(static_cast<size_t>(H) * k_block_rows * O);  // [H, rows, O]
    for (int64_t r0 = 0; r0 < n_max; r0 += k_block_rows) {
      const int64_t rows = std::min(k_block_rows, n_max - r0);
#pragma omp parallel for schedule(static)
      for (int ih = 0; ih < H; ++ih) {
        const head_examples& e = data.heads[ih];
        float* x = keys.data() + static_cast<size_t>(ih) * rows * D;
        const int64_t have = std::clamp<int64_t>(static_cast<int64_t>(e.size()) - r0, 0, rows);
        for (int64_t r = 0; r < have * D; ++r) x[r] = gguf::f16_to_f32(e.keys[r0 * D + r]);
        std::fill(x + have * D, x + rows * D, 0.0f);
      }
      bank.score(keys.data(), rows, logits.data());
#pragma omp parallel for schedule(static)
      for (int ih = 0; ih < H; ++ih) {
        const head_examples& e = data.heads[ih];
        std::vector<float>& out = in.heads[ih].gates[ig];
        const int64_t have = std::clamp<int64_t>(static_cast<int64_t>(e.size()) - r0, 0, rows);
        for (int64_t r = 0; r < have; ++r) {
          const float* z = logits.data() + (static_cast<size_t>(ih) * rows + r) * O;  // [O]
          if (!lifetime) {
            out[r0 + r] = sigmoid(z[0]);
            continue;
          }
          // Softmax over bucket logits, shifted by the max for range.
          const int arg = static_cast<int>(std::max_element(z, z + O) - z);
          double sum = 0.0, p_pos = 0.0;
          for (int o = 0; o < O; ++o) {
            const double p = std::exp(double(z[o]) - z[arg]);
            sum += p;
            p_pos += p * share[o];
          }
          out[r0 + r] = static_cast<float>(p_pos / sum);
          if (!e.bucket.empty() && arg == std::min<int>(e.bucket[r0 + r], O - 1)) ++bucket_hits[ih];
        }
      }
    }
    if (lifetime) {
      for (int ih = 0; ih < H; ++ih) {
        const size_t n = data.heads[ih].size();
        in.heads[ih].extra[gates[ig].name + "_bucket_accuracy"] = n ? double(bucket_hits[ih]) / n : 0.0;
      }
    }
  }

  // Baselines from the stored key and position alone.
#pragma omp parallel for schedule(dynamic, 1)
  for (int ih = 0; ih < H; ++ih) {
    const head_examples& e = data.heads[ih];
    head_scores& h = in.heads[ih];
    for (size_t r = 0; r < e.size(); ++r) {
      double sq = 0.0;
      for (int k = 0; k < D; ++k) {
        const double v = gguf::f16_to_f32(e.keys[r * D + k]);
        sq += v * v;
      }
      h.knorm[r] = static_cast<float>(-std::sqrt(sq));
      h.position[r] = static_cast<float>(-e.pos[r]);
    }
  }
  return in;
}

}  // namespace kvgate::eval
