#include "gate/gate_bank.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "gguf/gguf.h"

namespace kvgate {

namespace {

constexpr const char* k_arch = "kvgate-gate";

// Rows per chunk in score(): bounds the scratch to [H, chunk, 256] twice however many keys come.
constexpr int64_t k_score_chunk = 512;

std::string fmt_ne(const std::vector<int64_t>& ne) {
  std::string s = "{";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "}";
}

}  // namespace

gate_bank::gate_bank(gate_meta meta, int n_out) : meta_(std::move(meta)), n_out_(n_out) {
  if (meta_.n_layer <= 0 || meta_.n_kv_head <= 0 || meta_.d_head <= 0 || n_out_ <= 0) {
    fail("gate bank: bad dimensions: {} layers x {} kv heads, d_head {}, n_out {}", meta_.n_layer,
         meta_.n_kv_head, meta_.d_head, n_out_);
  }
  if (meta_.objective != "binary" && meta_.objective != "lifetime") {
    fail("gate bank: unknown objective '{}' (binary or lifetime)", meta_.objective);
  }
  params_.assign(gate_param_count(dims()), 0.0f);
}

float* gate_bank::w1() { return gate_param_views(params_.data(), dims()).w1; }
float* gate_bank::b1() { return gate_param_views(params_.data(), dims()).b1; }
float* gate_bank::w2() { return gate_param_views(params_.data(), dims()).w2; }
float* gate_bank::b2() { return gate_param_views(params_.data(), dims()).b2; }
float* gate_bank::w3() { return gate_param_views(params_.data(), dims()).w3; }
float* gate_bank::b3() { return gate_param_views(params_.data(), dims()).b3; }
const float* gate_bank::w1() const { return const_cast<gate_bank*>(this)->w1(); }
const float* gate_bank::b1() const { return const_cast<gate_bank*>(this)->b1(); }
const float* gate_bank::w2() const { return const_cast<gate_bank*>(this)->w2(); }
const float* gate_bank::b2() const { return const_cast<gate_bank*>(this)->b2(); }
const float* gate_bank::w3() const { return const_cast<gate_bank*>(this)->w3(); }
const float* gate_bank::b3() const { return const_cast<gate_bank*>(this)->b3(); }

void gate_bank::score(const float* keys, int64_t n, float* logits) const {
  if (n <= 0) return;
  const gate_dims d = dims();
  const int H = d.n_heads, I = d.d_in, F = d.n_hidden, O = d.n_out;
  // gate_forward never writes the parameters; the views are non-const only to share one type.
  const auto p = gate_param_views(const_cast<float*>(params_.data()), d);
  thread_local std::vector<float> h1, h2, x_chunk, out_chunk;
  const int64_t chunk = std::min(n, k_score_chunk);
  h1.resize(static_cast<size_t>(H) * chunk * F);
  h2.resize(h1.size());
  blas_single_thread guard;
  if (n == chunk) {
    gate_forward<float>(p, d, keys, static_cast<int>(n), {h1.data(), h2.data(), logits}, 0);
    return;
  }
  // Long inputs: copy each chunk of rows of every head into a contiguous [H, chunk, d] block.
  x_chunk.resize(static_cast<size_t>(H) * chunk * I);
  out_chunk.resize(static_cast<size_t>(H) * chunk * O);
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t m = std::min(chunk, n - r0);
    for (int h = 0; h < H; ++h) {
      std::memcpy(x_chunk.data() + h * m * I, keys + (h * n + r0) * I, sizeof(float) * m * I);
    }
    gate_forward<float>(p, d, x_chunk.data(), static_cast<int>(m),
                        {h1.data(), h2.data(), out_chunk.data()}, 0);
    for (int h = 0; h < H; ++h) {
      std::memcpy(logits + (h * n + r0) * O, out_chunk.data() + h * m * O, sizeof(float) * m * O);
    }
  }
}

void gate_bank::score_head(int head, const float* keys, int64_t n, float* logits) const {
  if (head < 0 || head >= n_heads()) fail("gate bank: head {} out of range [0, {})", head, n_heads());
  const int I = d_head(), F = k_gate_hidden, O = n_out_;
  const gate_params<const float> p = [&] {
    auto v = gate_head_views(gate_param_views(const_cast<float*>(params_.data()), dims()), dims(), head);
    return gate_params<const float>{v.w1, v.b1, v.w2, v.b2, v.w3, v.b3};
  }();
  std::vector<double> h1(F), h2(F);
  for (int64_t r = 0; r < n; ++r) {
    const float* x = keys + r * I;
    for (int f = 0; f < F; ++f) {
      double s = p.b1[f];
      for (int i = 0; i < I; ++i) s += double(x[i]) * p.w1[i * F + f];
      h1[f] = std::max(s, 0.0);
    }
    for (int f = 0; f < F; ++f) {
      double s = p.b2[f];
      for (int i = 0; i < F; ++i) s += h1[i] * p.w2[i * F + f];
      h2[f] = std::max(s, 0.0);
    }
    for (int o = 0; o < O; ++o) {
      double s = p.b3[o];
      for (int i = 0; i < F; ++i) s += h2[i] * p.w3[i * O + o];
      logits[r * O + o] = static_cast<float>(s);
    }
  }
}

void gate_bank::save(const std::string& path) const {
  using gguf::value;
  const gate_meta& m = meta_;
  gguf::writer w;
  w.set("general.architecture", value::of_string(k_arch));
  w.set("general.name", value::of_string("kvgate gates for " + m.model_name));
  w.set("kvgate.version", value::of_u32(k_gate_file_version));
  w.set("kvgate.model_name", value::of_string(m.model_name));
  w.set("kvgate.model_arch", value::of_string(m.model_arch));
  w.set("kvgate.n_layer", value::of_u32(m.n_layer));
  w.set("kvgate.n_kv_head", value::of_u32(m.n_kv_head));
  w.set("kvgate.d_head", value::of_u32(m.d_head));
  w.set("kvgate.n_hidden", value::of_u32(k_gate_hidden));
  w.set("kvgate.n_out", value::of_u32(n_out_));
  w.set("kvgate.objective", value::of_string(m.objective));
  w.set("kvgate.key_kind", value::of_string(m.key_kind));
  w.set("kvgate.sinks", value::of_u32(m.sinks));
  w.set("kvgate.window", value::of_u32(m.window));
  w.set("kvgate.horizon", value::of_u32(m.horizon));
  w.set("kvgate.max_bucket", value::of_u32(m.max_bucket));
  w.set("kvgate.tau", value::of_f32(m.tau));
  w.set("kvgate.threshold", value::of_f32(m.threshold));
  w.set("kvgate.metrics", value::of_string(m.metrics.is_null() ? "{}" : m.metrics.dump()));

  const int64_t H = n_heads(), I = d_head(), F = k_gate_hidden, O = n_out_;
  w.add_tensor_f32("gate.w1", {F, I, H}, {w1(), size_t(H * I * F)});
  w.add_tensor_f32("gate.b1", {F, H}, {b1(), size_t(H * F)});
  w.add_tensor_f32("gate.w2", {F, F, H}, {w2(), size_t(H * F * F)});
  w.add_tensor_f32("gate.b2", {F, H}, {b2(), size_t(H * F)});
  w.add_tensor_f32("gate.w3", {O, F, H}, {w3(), size_t(H * F * O)});
  w.add_tensor_f32("gate.b3", {O, H}, {b3(), size_t(H * O)});
  w.write(path);
}

gate_bank gate_bank::load(const std::string& path) {
  const auto f = gguf::file::open(path);
  const std::string arch = f->get_string("general.architecture", "");
  if (arch != k_arch || !f->find("kvgate.version")) {
    fail("{} is not a kvgate gate file (general.architecture is '{}', expected '{}'{})", path,
         arch, k_arch, f->find("kvgate.version") ? "" : ", no kvgate.version");
  }
  // Every key is required: a file without one was not written by this module.
  auto key = [&](const char* name) -> const gguf::value& {
    if (const gguf::value* v = f->find(name)) return *v;
    fail("{}: gate file lacks metadata key '{}'", path, name);
  };
  auto get_int = [&](const char* name, int64_t lo, int64_t hi) -> int {
    const gguf::value& raw = key(name);
    int64_t v = 0;
    try {
      v = raw.as_i64();
    } catch (const error& e) {
      fail("{}: metadata key '{}': {}", path, name, e.what());
    }
    if (v < lo || v > hi) fail("{}: metadata key '{}' = {} is outside [{}, {}]", path, name, v, lo, hi);
    return static_cast<int>(v);
  };
  auto get_str = [&](const char* name) -> std::string {
    const gguf::value& raw = key(name);
    try {
      return raw.as_string();
    } catch (const error& e) {
      fail("{}: metadata key '{}': {}", path, name, e.what());
    }
  };
  auto get_f32 = [&](const char* name) -> float {
    const gguf::value& raw = key(name);
    try {
      return static_cast<float>(raw.as_f64());
    } catch (const error& e) {
      fail("{}: metadata key '{}': {}", path, name, e.what());
    }
  };

  const int version = get_int("kvgate.version", 0, 1 << 30);
  if (version != k_gate_file_version) {
    fail("{}: gate file version {}, this build reads version {}; retrain with this build", path,
         version, k_gate_file_version);
  }
  gate_meta m;
  m.model_name = get_str("kvgate.model_name");
  m.model_arch = get_str("kvgate.model_arch");
  m.n_layer = get_int("kvgate.n_layer", 1, 4096);
  m.n_kv_head = get_int("kvgate.n_kv_head", 1, 4096);
  m.d_head = get_int("kvgate.d_head", 1, 65536);
  const int n_hidden = get_int("kvgate.n_hidden", 1, 1 << 20);
  if (n_hidden != k_gate_hidden) {
    fail("{}: gates with hidden size {}; this build supports {}", path, n_hidden, k_gate_hidden);
  }
  const int n_out = get_int("kvgate.n_out", 1, 1 << 16);
  m.objective = get_str("kvgate.objective");
  m.key_kind = get_str("kvgate.key_kind");
  m.sinks = get_int("kvgate.sinks", 0, 1 << 30);
  m.window = get_int("kvgate.window", 0, 1 << 30);
  m.horizon = get_int("kvgate.horizon", 0, 1 << 30);
  m.max_bucket = get_int("kvgate.max_bucket", 0, 255);
  m.tau = get_f32("kvgate.tau");
  m.threshold = get_f32("kvgate.threshold");
  const std::string metrics = get_str("kvgate.metrics");
  m.metrics = nlohmann::json::parse(metrics, nullptr, false);
  if (m.metrics.is_discarded()) fail("{}: metadata key 'kvgate.metrics' is not valid JSON", path);
  if (m.objective == "binary" && n_out != 1) {
    fail("{}: binary objective with {} outputs, expected 1", path, n_out);
  }

  // Every tensor's type and shape is checked against the metadata before the bank allocates: the
  // tensors lie inside the file (gguf::file::open checked that), so a small file cannot make the
  // bank allocate more than the file holds.
  const int64_t H = int64_t(m.n_layer) * m.n_kv_head, I = m.d_head, F = k_gate_hidden, O = n_out;
  const std::pair<const char*, std::vector<int64_t>> shapes[] = {
      {"gate.w1", {F, I, H}}, {"gate.b1", {F, H}}, {"gate.w2", {F, F, H}},
      {"gate.b2", {F, H}},    {"gate.w3", {O, F, H}}, {"gate.b3", {O, H}}};
  std::vector<const gguf::tensor_info*> tensors;
  for (const auto& [name, ne] : shapes) {
    const gguf::tensor_info* t = f->find_tensor(name);
    if (!t) fail("{}: gate file lacks tensor '{}'", path, name);
    if (t->type != gguf::tensor_type::f32) {
      fail("{}: tensor '{}' is {}, expected F32", path, name, gguf::traits(t->type).name);
    }
    if (t->ne != ne) {
      fail("{}: tensor '{}' has shape {} but the metadata ({} heads, d_head {}, {} outputs) "
           "implies {}", path, name, fmt_ne(t->ne), H, I, O, fmt_ne(ne));
    }
    tensors.push_back(t);
  }
  gate_bank bank(std::move(m), n_out);
  float* const dst[] = {bank.w1(), bank.b1(), bank.w2(), bank.b2(), bank.w3(), bank.b3()};
  for (size_t i = 0; i < tensors.size(); ++i) std::memcpy(dst[i], tensors[i]->data, tensors[i]->n_bytes);
  return bank;
}

void check_matches(const gate_meta& meta, const std::string& model_name,
                   const std::string& model_arch, int n_layer, int n_kv_head, int d_head) {
  std::vector<std::string> differ;
  if (!meta.model_name.empty() && !model_name.empty() && meta.model_name != model_name) {
    differ.push_back("name");
  }
  if (!meta.model_arch.empty() && !model_arch.empty() && meta.model_arch != model_arch) {
    differ.push_back("architecture");
  }
  if (meta.n_layer != n_layer) differ.push_back("layers");
  if (meta.n_kv_head != n_kv_head) differ.push_back("kv heads");
  if (meta.d_head != d_head) differ.push_back("d_head");
  if (differ.empty()) return;
  std::string what;
  for (size_t i = 0; i < differ.size(); ++i) what += (i ? ", " : "") + differ[i];
  fail("gate file is for '{}' ({}, {} layers x {} kv heads, d_head {}) but the model is '{}' "
       "({}, {} x {}, d_head {}): {} differ{}",
       meta.model_name, meta.model_arch, meta.n_layer, meta.n_kv_head, meta.d_head, model_name,
       model_arch, n_layer, n_kv_head, d_head, what, differ.size() == 1 ? "s" : "");
}

}  // namespace kvgate
