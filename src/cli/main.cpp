// kvgate: one executable, one file per subcommand (cmd_*.cpp). Errors from the library arrive as
// kvgate::error and end the program with their message and exit status 1.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>

#include "cli/common.h"
#include "common/error.h"

int main(int argc, char** argv) {
  // libgomp reads OMP_WAIT_POLICY once, when it loads. Its default (spin ~300k times before
  // sleeping) collapses when another process takes a core: one worker is descheduled and the
  // other spins through its time slice at each of the ~250 parallel regions per token (measured
  // on 2 cores under load: 7.5 tok/s active vs 55 tok/s passive). So unless the user chose a
  // policy, re-run ourselves once with the passive one.
  if (!std::getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: carry on with the default
  }
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
