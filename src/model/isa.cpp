#include "model/isa.h"

#include <cstdlib>
#include <string>

#include "common/error.h"
#include "model/simd.h"

namespace kvgate::isa {

namespace {

level probe() {
  level l = build_floor();
#if defined(KVGATE_AVX2) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vnni")) {
    l = level::avx512;
  }
#endif
  return l;
}

// Function-local, so a static initializer elsewhere (a benchmark's) sees them initialized.
level& active_level() {
  static level l = detected();
  return l;
}

}  // namespace

level build_floor() {
#ifdef KVGATE_AVX2
  return level::avx2;
#else
  return level::portable;
#endif
}

level detected() {
  static const level l = probe();
  return l;
}
level active() { return active_level(); }

void set(level l) {
  if (static_cast<int>(l) > static_cast<int>(detected())) {
    fail("instruction set {} is not available on this CPU (best: {})", name(l), name(detected()));
  }
  if (static_cast<int>(l) < static_cast<int>(build_floor())) {
    fail("instruction set {} is below this build's floor {} (configure with -DKVGATE_X86_V3=OFF)", name(l),
         name(build_floor()));
  }
  active_level() = l;
}

void set_from_env() {
  const char* v = std::getenv("KVGATE_ISA");
  if (!v || !*v) return;
  const std::string s(v);
  for (level l : {level::portable, level::avx2, level::avx512}) {
    if (s == name(l)) return set(l);
  }
  fail("KVGATE_ISA={}: unknown instruction set (portable, avx2, avx512)", s);
}

std::string_view name(level l) {
  switch (l) {
    case level::portable: return "portable";
    case level::avx2: return "avx2";
    case level::avx512: return "avx512";
  }
  return "?";
}

}  // namespace kvgate::isa
