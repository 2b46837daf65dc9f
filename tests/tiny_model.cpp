#include "tiny_model.h"

#include <cmath>
#include <map>
#include <random>

#include "gguf/gguf.h"

namespace kvgate::test {

namespace {

using gguf::tensor_type;
using gguf::value;
using gguf::value_type;

// GPT-2's byte -> printable code point map, as UTF-8 strings: the token text of each byte.
std::vector<std::string> byte_tokens() {
  std::vector<int> printable;
  for (int b = '!'; b <= '~'; ++b) printable.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) printable.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) printable.push_back(b);
  std::vector<int> cp(256, -1);
  for (int b : printable) cp[b] = b;
  int next = 256;
  for (int b = 0; b < 256; ++b)
    if (cp[b] < 0) cp[b] = next++;
  std::vector<std::string> out;
  for (int b = 0; b < 256; ++b) {
    const int c = cp[b];
    std::string s;
    if (c < 0x80) {
      s += static_cast<char>(c);
    } else {
      s += static_cast<char>(0xC0 | (c >> 6));
      s += static_cast<char>(0x80 | (c & 0x3F));
    }
    out.push_back(s);
  }
  return out;
}

class tiny_writer {
 public:
  explicit tiny_writer(uint64_t seed) : rng_(seed) {}

  void matrix(const std::string& name, int64_t n_in, int64_t n_out, tensor_type type, float scale) {
    std::vector<float> w(n_in * n_out);
    for (float& x : w) x = dist_(rng_) * scale;
    if (type == tensor_type::f32) {
      out.add_tensor_f32(name, {n_in, n_out}, w);
      return;
    }
    std::vector<uint8_t> bytes(gguf::row_bytes(type, n_in) * n_out);
    for (int64_t r = 0; r < n_out; ++r) {
      gguf::quantize(type, w.data() + r * n_in, bytes.data() + r * gguf::row_bytes(type, n_in), n_in);
    }
    out.add_tensor(name, {n_in, n_out}, type, bytes);
  }

  void vec(const std::string& name, int64_t n, float center, float spread) {
    std::vector<float> v(n);
    for (float& x : v) x = center + dist_(rng_) * spread;
    out.add_tensor_f32(name, {n}, v);
  }

  gguf::writer out;

 private:
  std::mt19937_64 rng_;
  std::uniform_real_distribution<float> dist_{-1.0f, 1.0f};
};

}  // namespace

void write_tiny_model(const std::string& path, const tiny_spec& s) {
  tiny_writer w(s.seed);
  const std::string p = s.arch + ".";
  w.out.set("general.architecture", value::of_string(s.arch));
  w.out.set("general.name", value::of_string(s.name.empty() ? "tiny-" + s.arch : s.name));
  w.out.set(p + "block_count", value::of_u32(s.n_layer));
  w.out.set(p + "context_length", value::of_u32(s.n_ctx));
  w.out.set(p + "embedding_length", value::of_u32(s.n_embd));
  w.out.set(p + "feed_forward_length", value::of_u32(s.n_ff));
  w.out.set(p + "attention.head_count", value::of_u32(s.n_head));
  w.out.set(p + "attention.head_count_kv", value::of_u32(s.n_kv_head));
  w.out.set(p + "attention.key_length", value::of_u32(s.d_head));
  w.out.set(p + "attention.value_length", value::of_u32(s.d_head));
  w.out.set(p + "rope.freq_base", value::of_f32(s.rope_base));
  w.out.set(p + "attention.layer_norm_rms_epsilon", value::of_f32(1e-6f));

  std::vector<value> tokens, types;
  for (const std::string& t : byte_tokens()) {
    tokens.push_back(value::of_string(t));
    types.push_back(value::of_i32(1));
  }
  tokens.push_back(value::of_string("th"));  // one merge, "t h", so the BPE has something to do
  types.push_back(value::of_i32(1));
  for (const char* special : {"<|im_start|>", "<|im_end|>"}) {
    tokens.push_back(value::of_string(special));
    types.push_back(value::of_i32(3));
  }
  w.out.set("tokenizer.ggml.model", value::of_string("gpt2"));
  w.out.set("tokenizer.ggml.pre", value::of_string("gpt2"));
  w.out.set("tokenizer.ggml.tokens", value::of_array(value_type::string, tokens));
  w.out.set("tokenizer.ggml.token_type", value::of_array(value_type::i32, types));
  w.out.set("tokenizer.ggml.merges", value::of_array(value_type::string, {value::of_string("t h")}));
  w.out.set("tokenizer.ggml.bos_token_id", value::of_u32(257));
  w.out.set("tokenizer.ggml.eos_token_id", value::of_u32(258));

  const int64_t n_q = static_cast<int64_t>(s.n_head) * s.d_head;
  const int64_t n_kv = static_cast<int64_t>(s.n_kv_head) * s.d_head;
  const tensor_type q8 = s.quantized ? tensor_type::q8_0 : tensor_type::f32;
  const tensor_type q4 = s.quantized ? tensor_type::q4_1 : tensor_type::f32;
  const float in_scale = 1.0f / std::sqrt(static_cast<float>(s.n_embd));
  w.matrix("token_embd.weight", s.n_embd, k_tiny_vocab, q8, 1.0f);
  if (!s.tied) w.matrix("output.weight", s.n_embd, k_tiny_vocab, q4, in_scale);
  w.vec("output_norm.weight", s.n_embd, 1.0f, 0.2f);
  for (int il = 0; il < s.n_layer; ++il) {
    const std::string b = "blk." + std::to_string(il) + ".";
    w.vec(b + "attn_norm.weight", s.n_embd, 1.0f, 0.2f);
    w.matrix(b + "attn_q.weight", s.n_embd, n_q, q4, 2.0f * in_scale);
    w.matrix(b + "attn_k.weight", s.n_embd, n_kv, q8, 2.0f * in_scale);
    w.matrix(b + "attn_v.weight", s.n_embd, n_kv, tensor_type::f32, in_scale);
    w.matrix(b + "attn_output.weight", n_q, s.n_embd, q8, 1.0f / std::sqrt(static_cast<float>(n_q)));
    if (s.arch == "qwen2") {
      w.vec(b + "attn_q.bias", n_q, 0.0f, 0.3f);
      w.vec(b + "attn_k.bias", n_kv, 0.0f, 0.3f);
      w.vec(b + "attn_v.bias", n_kv, 0.0f, 0.3f);
    }
    if (s.arch == "qwen3") {
      w.vec(b + "attn_q_norm.weight", s.d_head, 1.0f, 0.3f);
      w.vec(b + "attn_k_norm.weight", s.d_head, 1.0f, 0.3f);
    }
    w.vec(b + "ffn_norm.weight", s.n_embd, 1.0f, 0.2f);
    w.matrix(b + "ffn_gate.weight", s.n_embd, s.n_ff, q4, in_scale);
    w.matrix(b + "ffn_up.weight", s.n_embd, s.n_ff, q8, in_scale);
    w.matrix(b + "ffn_down.weight", s.n_ff, s.n_embd, q4, 1.0f / std::sqrt(static_cast<float>(s.n_ff)));
  }
  w.out.write(path);
}

namespace {

using vec = std::vector<double>;

struct ref_model {
  std::unique_ptr<gguf::file> f;
  std::string arch;
  int n_layer, n_embd, n_head, n_kv, d, n_ff, n_vocab;
  double base, eps;
  bool neox = false;

  vec load(const std::string& name) const {
    const gguf::tensor_info& t = f->tensor(name);
    std::vector<float> tmp(t.n_elements());
    gguf::dequantize(t.type, t.data, tmp.data(), t.n_elements());
    return vec(tmp.begin(), tmp.end());
  }
  // y = W x with W stored as rows of n_in.
  vec matvec(const std::string& name, const vec& x) const {
    const vec w = load(name);
    const size_t n_in = x.size(), n_out = w.size() / n_in;
    vec y(n_out, 0.0);
    for (size_t o = 0; o < n_out; ++o)
      for (size_t i = 0; i < n_in; ++i) y[o] += w[o * n_in + i] * x[i];
    return y;
  }
  vec rms(const vec& x, const vec& w) const {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double k = 1.0 / std::sqrt(ss / x.size() + eps);
    vec out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * k * w[i];
    return out;
  }
  // One head vector, rotated by position p.
  void rotate(double* v, int p) const {
    for (int i = 0; i < d / 2; ++i) {
      const double theta = p * std::pow(base, -2.0 * i / d);
      const int a = neox ? i : 2 * i, b = neox ? i + d / 2 : 2 * i + 1;
      const double x0 = v[a], x1 = v[b];
      v[a] = x0 * std::cos(theta) - x1 * std::sin(theta);
      v[b] = x0 * std::sin(theta) + x1 * std::cos(theta);
    }
  }
};

}  // namespace

std::vector<double> reference_logits(const std::string& path, const std::vector<int32_t>& tokens,
                                     bool swap_rope_style) {
  ref_model m;
  m.f = gguf::file::open(path);
  m.arch = m.f->get_string("general.architecture", "");
  const std::string p = m.arch + ".";
  m.n_layer = static_cast<int>(m.f->get_u64(p + "block_count", 0));
  m.n_embd = static_cast<int>(m.f->get_u64(p + "embedding_length", 0));
  m.n_head = static_cast<int>(m.f->get_u64(p + "attention.head_count", 0));
  m.n_kv = static_cast<int>(m.f->get_u64(p + "attention.head_count_kv", 0));
  m.d = static_cast<int>(m.f->get_u64(p + "attention.key_length", m.n_embd / m.n_head));
  m.n_ff = static_cast<int>(m.f->get_u64(p + "feed_forward_length", 0));
  m.base = m.f->get_f64(p + "rope.freq_base", 10000.0);
  m.eps = m.f->get_f64(p + "attention.layer_norm_rms_epsilon", 1e-5);
  m.neox = (m.arch != "llama") != swap_rope_style;
  const vec embd = m.load("token_embd.weight");
  m.n_vocab = static_cast<int>(embd.size() / m.n_embd);
  const int n = static_cast<int>(tokens.size());

  std::vector<vec> x(n);
  for (int t = 0; t < n; ++t) x[t] = vec(embd.begin() + tokens[t] * m.n_embd, embd.begin() + (tokens[t] + 1) * m.n_embd);
  for (int il = 0; il < m.n_layer; ++il) {
    const std::string b = "blk." + std::to_string(il) + ".";
    const vec attn_norm = m.load(b + "attn_norm.weight");
    std::vector<vec> q(n), k(n), v(n);
    for (int t = 0; t < n; ++t) {
      const vec h = m.rms(x[t], attn_norm);
      q[t] = m.matvec(b + "attn_q.weight", h);
      k[t] = m.matvec(b + "attn_k.weight", h);
      v[t] = m.matvec(b + "attn_v.weight", h);
      if (m.f->find_tensor(b + "attn_q.bias")) {
        const vec bq = m.load(b + "attn_q.bias"), bk = m.load(b + "attn_k.bias"), bv = m.load(b + "attn_v.bias");
        for (size_t i = 0; i < q[t].size(); ++i) q[t][i] += bq[i];
        for (size_t i = 0; i < k[t].size(); ++i) k[t][i] += bk[i], v[t][i] += bv[i];
      }
      if (m.f->find_tensor(b + "attn_q_norm.weight")) {
        const vec qn = m.load(b + "attn_q_norm.weight"), kn = m.load(b + "attn_k_norm.weight");
        for (int h2 = 0; h2 < m.n_head; ++h2) {
          vec part(q[t].begin() + h2 * m.d, q[t].begin() + (h2 + 1) * m.d);
          part = m.rms(part, qn);
          std::copy(part.begin(), part.end(), q[t].begin() + h2 * m.d);
        }
        for (int h2 = 0; h2 < m.n_kv; ++h2) {
          vec part(k[t].begin() + h2 * m.d, k[t].begin() + (h2 + 1) * m.d);
          part = m.rms(part, kn);
          std::copy(part.begin(), part.end(), k[t].begin() + h2 * m.d);
        }
      }
      for (int h2 = 0; h2 < m.n_head; ++h2) m.rotate(q[t].data() + h2 * m.d, t);
      for (int h2 = 0; h2 < m.n_kv; ++h2) m.rotate(k[t].data() + h2 * m.d, t);
    }
    const int group = m.n_head / m.n_kv;
    for (int t = 0; t < n; ++t) {
      vec out(static_cast<size_t>(m.n_head) * m.d, 0.0);
      for (int g = 0; g < m.n_head; ++g) {
        const int kvh = g / group;
        vec s(t + 1);
        double mx = -1e300;
        for (int j = 0; j <= t; ++j) {
          double dot = 0;
          for (int i = 0; i < m.d; ++i) dot += q[t][g * m.d + i] * k[j][kvh * m.d + i];
          s[j] = dot / std::sqrt(static_cast<double>(m.d));
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int j = 0; j <= t; ++j)
          for (int i = 0; i < m.d; ++i) out[g * m.d + i] += s[j] / sum * v[j][kvh * m.d + i];
      }
      const vec o = m.matvec(b + "attn_output.weight", out);
      for (int i = 0; i < m.n_embd; ++i) x[t][i] += o[i];
    }
    const vec ffn_norm = m.load(b + "ffn_norm.weight");
    for (int t = 0; t < n; ++t) {
      const vec h = m.rms(x[t], ffn_norm);
      vec g = m.matvec(b + "ffn_gate.weight", h);
      const vec u = m.matvec(b + "ffn_up.weight", h);
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const vec dn = m.matvec(b + "ffn_down.weight", g);
      for (int i = 0; i < m.n_embd; ++i) x[t][i] += dn[i];
    }
  }
  const vec out_norm = m.load("output_norm.weight");
  const std::string out_name = m.f->find_tensor("output.weight") ? "output.weight" : "token_embd.weight";
  std::vector<double> logits;
  for (int t = 0; t < n; ++t) {
    const vec l = m.matvec(out_name, m.rms(x[t], out_norm));
    logits.insert(logits.end(), l.begin(), l.end());
  }
  return logits;
}

std::vector<int32_t> random_tokens(int n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& id : t) id = static_cast<int32_t>(rng() % 256);
  return t;
}

}  // namespace kvgate::test
