// kvgate info: the model summary as JSON.
#include <map>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "model/model.h"

namespace kvgate::cli {

void register_info(CLI::App& app) {
  auto* sub = app.add_subcommand("info", "print the model summary as JSON");
  auto options = std::make_shared<model_options>();
  add_model_options(*sub, *options);
  sub->callback([options] {
    auto m = model::load(resolve_model_path(*options));
    const model_config& c = m->config();
    std::map<std::string, int> types;
    int64_t n_params = 0;
    for (const gguf::tensor_info& t : m->file().tensors()) {
      ++types[std::string(gguf::traits(t.type).name)];
      n_params += t.n_elements();
    }
    nlohmann::ordered_json j = {
        {"file", m->file().path()},
        {"name", c.name},
        {"architecture", c.arch},
        {"n_layer", c.n_layer},
        {"n_embd", c.n_embd},
        {"n_head", c.n_head},
        {"n_kv_head", c.n_kv_head},
        {"d_head", c.d_head},
        {"n_rot", c.n_rot},
        {"n_ff", c.n_ff},
        {"n_vocab", c.n_vocab},
        {"context_length", c.n_ctx_train},
        {"rope_base", c.rope_base},
        {"rope_style", c.traits.rope == rope_style::neox ? "neox" : "normal"},
        {"rms_eps", c.norm_eps},
        {"tied_embeddings", c.tied_embeddings},
        {"n_kv_heads_total", c.n_heads_total()},
        {"n_params", n_params},
        {"n_tensors", m->file().tensors().size()},
        {"tensor_types", types},
        {"file_bytes", m->file().file_size()},
        {"bos", m->vocab().bos()},
        {"eos", m->vocab().eos()},
    };
    std::printf("%s\n", j.dump(2).c_str());
  });
}

}  // namespace kvgate::cli
