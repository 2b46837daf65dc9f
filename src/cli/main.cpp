// kvgate: one executable, one file per subcommand (cmd_*.cpp). Errors from the library arrive as
// kvgate::error and end the program with their message and exit status 1.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>

#include "cli/common.h"
#include "common/error.h"
#include "model/isa.h"

int main(int argc, char** argv) {
  // Two runtime libraries read their settings from the environment once, when they load, so we
  // set what is unset and re-run ourselves once:
  // - libgomp's default wait policy spins ~300k times before sleeping; when another process
  //   takes a core, one worker is descheduled and the other spins through its time slice at each
  //   of the ~200 parallel regions per token. Sleeping at once (passive) costs a futex wake per
  //   region instead. A short bounded spin sits between, and is the best compromise of both
  //   cases: decode tok/s of `generate -p 'Once upon a time' -n 128 --ignore-eos`, 2-core AMD
  //   EPYC, idle / beside two niced CPU-bound processes (a fuzzer and a compiler):
  //     passive 48 / 69, spin 300: 63 / 59, spin 1000: 121 / 48, spin 3000: 148 / 27,
  //     spin 10000: 142 / 12, active 120 / 5.
  //   A server shares its cores with its HTTP threads and often its clients: spin 1000 served 8
  //   streaming clients at 97 tok/s beside those two processes where spin 10000 gave 47.
  // - OpenBLAS 0.3.21 (Debian 12) does not know recent Xeons and falls back to its SSE3
  //   "Prescott" sgemm; its AVX-512 or AVX2 kernels prefill 1.8x faster here (95 -> 169 tok/s,
  //   one thread). tests/linear_test checks the sgemm path against a scalar reference.
  if (!std::getenv("KVGATE_REEXEC")) {
    setenv("KVGATE_REEXEC", "1", 1);
    if (!std::getenv("OMP_WAIT_POLICY")) setenv("GOMP_SPINCOUNT", "1000", 0);
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
      setenv("OPENBLAS_CORETYPE", "SkylakeX", 0);
    } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      setenv("OPENBLAS_CORETYPE", "Haswell", 0);
    }
#endif
    execv("/proc/self/exe", argv);  // returns only on failure: carry on with the defaults
  }
  CLI::App app{"kvgate: LLM inference with a KV cache pruned by learned gates"};
  app.require_subcommand(1);
  kvgate::cli::register_info(app);
  kvgate::cli::register_tokenize(app);
  kvgate::cli::register_generate(app);
  kvgate::cli::register_perplexity(app);
  kvgate::cli::register_collect(app);
  kvgate::cli::register_train(app);
  kvgate::cli::register_eval(app);
  kvgate::cli::register_chat(app);
  kvgate::cli::register_demo(app);
  kvgate::cli::register_bench(app);
  kvgate::cli::register_serve(app);
  try {
    kvgate::isa::set_from_env();  // KVGATE_ISA=avx2 keeps the AVX2 kernels on an AVX-512 CPU
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
