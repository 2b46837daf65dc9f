// kvgate bench (stub: being written).
#include "cli/common.h"

namespace kvgate::cli {

void register_bench(CLI::App& app) { app.add_subcommand("bench", "(not yet available)"); }

}  // namespace kvgate::cli
