// kvgate: one executable, one file per subcommand (cmd_*.cpp). Errors from the library arrive as
// kvgate::error and end the program with their message and exit status 1.
#include <cstdio>
#include <exception>
#include <new>

#include "cli/common.h"
#include "common/error.h"

int main(int argc, char** argv) {
  CLI::App app{"kvgate: LLM inference with a KV cache pruned by learned gates"};
  app.require_subcommand(1);
  kvgate::cli::register_info(app);
  kvgate::cli::register_tokenize(app);
  kvgate::cli::register_generate(app);
  kvgate::cli::register_perplexity(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "kvgate: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kvgate: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
