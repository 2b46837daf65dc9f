// kvgate demo (stub: being written).
#include "cli/common.h"

namespace kvgate::cli {

void register_demo(CLI::App& app) { app.add_subcommand("demo", "(not yet available)"); }

}  // namespace kvgate::cli
