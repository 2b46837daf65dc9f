// kvgate tokenize: token ids of a text as a JSON array (no BOS).
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "common/error.h"
#include "common/files.h"
#include "model/model.h"

namespace kvgate::cli {

void register_tokenize(CLI::App& app) {
  auto* sub = app.add_subcommand("tokenize", "print the token ids of a text as a JSON array");
  struct opts : model_options {
    std::string text, file;
    bool special = false;
  };
  auto o = std::make_shared<opts>();
  add_model_options(*sub, *o);
  auto* text = sub->add_option("--text", o->text, "text to tokenize");
  auto* file = sub->add_option("--file", o->file, "file whose contents to tokenize");
  text->excludes(file);
  sub->add_flag("--special", o->special, "text that spells a special token becomes that token");
  sub->callback([o, text, file] {
    if (text->count() == 0 && file->count() == 0) fail("tokenize needs --text or --file");
    const std::string input = file->count() ? read_file(o->file) : o->text;
    auto m = model::load(resolve_model_path(*o));
    nlohmann::json ids = m->vocab().encode(input, o->special);
    std::printf("%s\n", ids.dump().c_str());
  });
}

}  // namespace kvgate::cli
