// kvgate train (placeholder until its module lands)
#include "cli/common.h"
#include "common/error.h"

namespace kvgate::cli {

void register_train(CLI::App& app) {
  auto* sub = app.add_subcommand("train", "(not implemented yet)");
  sub->allow_extras();
  sub->callback([] { fail("train: not implemented yet"); });
}

}  // namespace kvgate::cli
