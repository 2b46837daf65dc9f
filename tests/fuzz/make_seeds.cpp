// Writes the seed corpora of the fuzz harnesses from the project's own files and writers:
// kvgate_fuzz_seeds <dir>  ->  <dir>/<harness>/<name>. Run by scripts/fuzz.sh.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/files.h"
#include "common/paths.h"
#include "data/dataset.h"
#include "gate/gate_bank.h"
#include "gguf/gguf.h"
#include "tiny_model.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using namespace kvgate;

namespace {

std::string g_out;

void seed(const std::string& harness, const std::string& name, const std::string& bytes) {
  fs::create_directories(g_out + "/" + harness);
  write_file_atomically(g_out + "/" + harness + "/" + name, bytes);
}

std::string file_text(const std::string& path) { return read_file(path); }

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: kvgate_fuzz_seeds <dir>\n");
    return 2;
  }
  g_out = argv[1];
  const std::string root = KVGATE_SOURCE_DIR;
  const std::string tmp = g_out + "/tmp";
  fs::create_directories(tmp);

  // gguf: small models of each family, a gate bank, the quantization golden file.
  for (const char* arch : {"llama", "qwen2", "qwen3"}) {
    test::tiny_spec spec;
    spec.arch = arch;
    spec.n_layer = 1;
    spec.n_embd = 32;
    spec.n_head = 2;
    spec.n_kv_head = 1;
    spec.d_head = 16;
    spec.n_ff = 32;
    test::write_tiny_model(tmp + "/m.gguf", spec);
    seed("gguf", std::string("model_") + arch, file_text(tmp + "/m.gguf"));
  }
  gate_meta meta;
  meta.model_name = "tiny";
  meta.model_arch = "llama";
  meta.n_layer = 1;
  meta.n_kv_head = 1;
  meta.d_head = 2;
  gate_bank bank(meta, 1);
  bank.save(tmp + "/g.gguf");
  seed("gguf", "gates", file_text(tmp + "/g.gguf"));
  seed("gguf", "quant_golden", file_text(root + "/tests/data/gguf/quant_golden.gguf"));

  // tokenizer and chat: the golden tokenizer texts, README paragraphs, the model's chat template.
  const auto golden = nlohmann::json::parse(file_text(root + "/tests/data/tokenizer/golden.json"));
  int n = 0;
  for (const auto& [pre, cases] : golden["pre_tokenizers"].items()) {
    for (const auto& c : cases) {
      std::string text;
      if (c.contains("text")) {
        text = c["text"];
      } else {  // invalid UTF-8 cases are stored as hex
        const std::string hex = c["hex"];
        for (size_t i = 0; i + 1 < hex.size(); i += 2) text += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
      }
      seed("tokenizer", "text_" + std::to_string(n++), std::string(1, c["special"].get<bool>() ? 1 : 0) + text);
      std::string ids(1, '\2');
      for (int id : c["ids"]) ids.append(reinterpret_cast<const char*>(&id), 4);
      seed("tokenizer", "ids_" + std::to_string(n++), ids);
    }
  }
  const std::string readme = file_text(root + "/README.md");
  for (size_t i = 0; i < readme.size() && i < 8 * 2048; i += 2048) {
    seed("tokenizer", "readme_" + std::to_string(i), std::string(1, '\0') + readme.substr(i, 2048));
  }
  n = 0;
  for (const auto& c : golden["chat"]) {
    std::string s;
    for (const auto& m : c["messages"]) s += m["role"].get<std::string>() + '\0' + m["content"].get<std::string>() + '\0';
    seed("chat", "golden_" + std::to_string(n++), s);
  }
  const auto model = gguf::file::open(default_model_path());
  seed("chat", "template", model->get_string("tokenizer.chat_template", ""));

  // dataset: a manifest and a shard written by the dataset module itself.
  std::vector<head_examples> heads(2);
  for (int ih = 0; ih < 2; ++ih) {
    for (int r = 0; r < 3; ++r) {
      for (int k = 0; k < 4; ++k) heads[ih].keys.push_back(gguf::f32_to_f16(0.25f * (r + k + ih)));
      heads[ih].label.push_back(r == 1);
      heads[ih].bucket.push_back(r);
      heads[ih].pos.push_back(10 + r);
      heads[ih].doc.push_back(0);
    }
  }
  write_shard(tmp + "/shard.bin", heads, 4, 0, 1);
  seed("dataset", "shard", std::string(1, '\1') + file_text(tmp + "/shard.bin"));
  dataset_manifest m;
  m.model_name = "tiny";
  m.model_arch = "llama";
  m.n_layer = 1;
  m.n_kv_head = 2;
  m.d_head = 4;
  m.n_pos = {1, 1};
  m.n_neg = {2, 2};
  m.n_stored = {3, 3};
  m.n_docs = 1;
  m.docs = {{0, 0, 40}};
  m.shards = {"shard-00000.bin"};
  seed("dataset", "manifest", std::string(1, '\0') + m.to_json().dump(1));
  fs::remove_all(tmp);
  return 0;
}
