// kvgate collect (placeholder until its module lands)
#include "cli/common.h"
#include "common/error.h"

namespace kvgate::cli {

void register_collect(CLI::App& app) {
  auto* sub = app.add_subcommand("collect", "(not implemented yet)");
  sub->allow_extras();
  sub->callback([] { fail("collect: not implemented yet"); });
}

}  // namespace kvgate::cli
