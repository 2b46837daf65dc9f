// Writes the seed corpora of the fuzz harnesses from the project's own files and writers:
// kvgate_fuzz_seeds <dir>  ->  <dir>/<harness>/<name>. Run by scripts/fuzz.sh.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

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
  // serve: request bodies as clients send them (the OpenAI client, llama-server's, the chat page),
  // each under a few context sizes and with and without gates, and streamed replies with stops.
  // First byte: mode | context index << 3 | gates << 6 (tests/fuzz/fuzz_targets.cpp).
  const auto serve_seed = [&](const std::string& name, int mode, int ctx, bool gates, const std::string& body) {
    seed("serve", name, std::string(1, static_cast<char>(mode | ctx << 3 | (gates ? 0x40 : 0))) + body);
  };
  const std::vector<std::string> chats = {
      R"({"model": "kvgate", "messages": [{"role": "user", "content": "What is a KV cache?"}]})",
      R"({"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"},)"
      R"( {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name three fruits."}],)"
      R"( "max_tokens": 64, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 42, "stop": ["\n\n", "User:"]})",
      R"({"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be brief. "}, {"type": "text", "text": "Use French."}]},)"
      R"( {"role": "user", "content": "Bonjour \u00e9t\u00e9 \ud83d\ude00"}], "stream": true, "stream_options": {"include_usage": true}})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "h2o", "budget": 256, "window": 128, "sinks": 4}})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "learned", "threshold": 0.5, "layout": "per-layer"}, "kv_strip": true})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "random", "budget": 32, "seed": 7}, "n": 1, "max_completion_tokens": 8})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "streaming", "window": 16, "sinks": 0}, "n_predict": -1})",
      R"({"messages": [{"role": "user", "content": "hi"}], "kv_policy": {"name": "tova", "budget": 8, "threshold": null}, "stop": "\n"})",
  };
  const std::vector<std::string> completions = {
      R"({"model": "kvgate", "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0})",
      R"({"prompt": ["Once upon a time"], "max_tokens": 32, "stream": true, "kv_policy": {"name": "knorm", "budget": 64}})",
      R"({"prompt": [1, 2, 3, 4, 5, 100, 1000, 49151], "n_predict": 4, "kv_policy": {"name": "window", "window": 8}})",
      R"({"prompt": "x", "seed": -1, "top_k": 0, "top_p": 1.0, "kv_policy": {"name": "full"}})",
  };
  for (size_t i = 0; i < chats.size(); ++i) {
    serve_seed("chat_" + std::to_string(i), 0, 0, false, chats[i]);
    serve_seed("chat_gates_" + std::to_string(i), 0, 1, true, chats[i]);
  }
  for (size_t i = 0; i < completions.size(); ++i) {
    serve_seed("completion_" + std::to_string(i), 1, 0, false, completions[i]);
    serve_seed("completion_small_" + std::to_string(i), 1, 3, true, completions[i]);
  }
  serve_seed("tokenize", 2, 0, false, R"({"content": "Hello <|im_start|>world", "add_special": true, "parse_special": true})");
  serve_seed("tokenize_plain", 2, 0, false, R"({"content": "caf\u00e9 \ud83d\ude00\n\tdone", "parse_special": false})");
  serve_seed("detokenize", 3, 0, false, R"({"tokens": [1, 2, 3, 0, 49151, 28120]})");
  serve_seed("text_stop", 4, 0, false, std::string("Hello world.\n\nUser: more") + '\0' + "\n\n" + '\0' + "User:");
  serve_seed("text_utf8", 4, 0, false, std::string("caf\xc3\xa9 \xf0\x9f\x98\x80 end</s>tail") + '\0' + "</s>" + '\0' + "\xf0\x9f\x98\x81");
  serve_seed("text_overlap", 4, 0, false, std::string("abcabcabd") + '\0' + "abcabd" + '\0' + "bd");
  fs::remove_all(tmp);
  return 0;
}
