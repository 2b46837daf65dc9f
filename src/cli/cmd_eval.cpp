// kvgate eval (placeholder until its module lands)
#include "cli/common.h"
#include "common/error.h"

namespace kvgate::cli {

void register_eval(CLI::App& app) {
  auto* sub = app.add_subcommand("eval", "(not implemented yet)");
  sub->allow_extras();
  sub->callback([] { fail("eval: not implemented yet"); });
}

}  // namespace kvgate::cli
