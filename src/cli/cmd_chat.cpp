// kvgate chat (stub: being written).
#include "cli/common.h"

namespace kvgate::cli {

void register_chat(CLI::App& app) { app.add_subcommand("chat", "(not yet available)"); }

}  // namespace kvgate::cli
