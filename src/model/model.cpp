#include "model/model.h"

#include <cmath>

#include "common/error.h"

namespace kvgate {

namespace {

std::vector<float> load_vector(const gguf::file& file, const std::string& name, int64_t n) {
  const gguf::tensor_info& t = file.tensor(name);
  if (t.n_elements() != n) fail("{}: tensor {} has {} elements, expected {}", file.path(), name, t.n_elements(), n);
  std::vector<float> out(n);
  gguf::dequantize(t.type, t.data, out.data(), n);
  return out;
}

linear load_matrix(const gguf::file& file, const std::string& name, int64_t n_in, int64_t n_out) {
  const gguf::tensor_info& t = file.tensor(name);
  if (t.ne.size() != 2 || t.ne[0] != n_in || t.ne[1] != n_out) {
    std::string shape;
    for (int64_t d : t.ne) shape += (shape.empty() ? "" : ", ") + std::to_string(d);
    fail("{}: tensor {} has shape [{}], expected [{}, {}]", file.path(), name, shape, n_in, n_out);
  }
  return linear::from_tensor(t);
}

}  // namespace

// The integer decode kernels read an interleaved copy of each packable weight; the file's pages
// of those tensors are then released (they are read again only if something else asks for them),
// so the packed copy replaces the mapped weights in memory instead of adding to them.
void model::pack_weights() {
  auto pack = [&](linear& w) {
    if (!linear_packable(w)) return;
    packed_.push_back(linear_pack(w));
    w.packed = packed_.back().data();
    file_->drop_pages(w.data, w.row_bytes * static_cast<size_t>(w.n_out));
  };
  pack(token_embd_);
  if (config_.tied_embeddings) {
    output_ = token_embd_;
  } else {
    pack(output_);
  }
  for (layer_weights& l : layers_) {
    for (linear* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) pack(*w);
  }
}

std::unique_ptr<model> model::load(const std::string& path) {
  std::unique_ptr<model> m(new model());
  m->file_ = gguf::file::open(path);
  const gguf::file& f = *m->file_;
  m->config_ = model_config::from_gguf(f);
  const model_config& c = m->config_;
  m->tokenizer_ = tokenizer::from_gguf(f);
  if (m->tokenizer_->n_vocab() != c.n_vocab) {
    fail("{}: the vocabulary has {} tokens but token_embd.weight has {} rows", path,
         m->tokenizer_->n_vocab(), c.n_vocab);
  }

  const int64_t n_q = static_cast<int64_t>(c.n_head) * c.d_head;
  const int64_t n_kv = static_cast<int64_t>(c.n_kv_head) * c.d_head;
  m->token_embd_ = load_matrix(f, "token_embd.weight", c.n_embd, c.n_vocab);
  m->output_ = c.tied_embeddings ? m->token_embd_ : load_matrix(f, "output.weight", c.n_embd, c.n_vocab);
  m->output_norm_ = load_vector(f, "output_norm.weight", c.n_embd);
  m->layers_.resize(c.n_layer);
  for (int il = 0; il < c.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    layer_weights& l = m->layers_[il];
    l.attn_norm = load_vector(f, p + "attn_norm.weight", c.n_embd);
    l.wq = load_matrix(f, p + "attn_q.weight", c.n_embd, n_q);
    l.wk = load_matrix(f, p + "attn_k.weight", c.n_embd, n_kv);
    l.wv = load_matrix(f, p + "attn_v.weight", c.n_embd, n_kv);
    l.wo = load_matrix(f, p + "attn_output.weight", n_q, c.n_embd);
    if (c.traits.qkv_bias) {
      l.bq = load_vector(f, p + "attn_q.bias", n_q);
      l.bk = load_vector(f, p + "attn_k.bias", n_kv);
      l.bv = load_vector(f, p + "attn_v.bias", n_kv);
    }
    if (c.traits.qk_norm) {
      l.q_norm = load_vector(f, p + "attn_q_norm.weight", c.d_head);
      l.k_norm = load_vector(f, p + "attn_k_norm.weight", c.d_head);
    }
    l.ffn_norm = load_vector(f, p + "ffn_norm.weight", c.n_embd);
    l.w_gate = load_matrix(f, p + "ffn_gate.weight", c.n_embd, c.n_ff);
    l.w_up = load_matrix(f, p + "ffn_up.weight", c.n_embd, c.n_ff);
    l.w_down = load_matrix(f, p + "ffn_down.weight", c.n_ff, c.n_embd);
  }
  m->pack_weights();
  return m;
}

}  // namespace kvgate
