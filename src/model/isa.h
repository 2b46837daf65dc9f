// The vector instruction set the kernels run, chosen at run time from the CPU's features.
//
// The build sets the floor: x86-64-v3 (AVX2 / FMA / F16C, CMakeLists.txt) or, elsewhere, the
// portable scalar kernels. On a CPU with AVX-512 (F, BW, VL, DQ and VNNI: Ice Lake, Sapphire Rapids,
// Zen 4 and later) the integer matrix kernels and the attention kernel take 512-bit paths, which
// give the same bits as the AVX2 ones (integer sums are exact; every float lane does the same
// operations in the same order). `KVGATE_ISA=avx2` (or `set`) keeps the floor, for comparisons.
#pragma once

#include <string_view>

namespace kvgate::isa {

enum class level : int { portable = 0, avx2 = 1, avx512 = 2 };

// What the build's kernels assume (the lowest level the binary runs on).
level build_floor();
// The best level this CPU and this build support.
level detected();
// What the kernels use now: detected() unless set() chose another.
level active();
// Chooses a level; fails (kvgate::error) when it is above detected() or below the build floor.
void set(level l);
// Applies KVGATE_ISA (portable|avx2|avx512) when set; fails on an unknown or unsupported name.
void set_from_env();

std::string_view name(level l);

// Sets a level for its lifetime, then restores the one before (tests, benchmarks). Not for use
// while kernels run on other threads.
class scoped_level {
 public:
  explicit scoped_level(level l) : saved_(active()) { set(l); }
  ~scoped_level() { set(saved_); }
  scoped_level(const scoped_level&) = delete;
  scoped_level& operator=(const scoped_level&) = delete;

 private:
  level saved_;
};

}  // namespace kvgate::isa
