// One libFuzzer harness: KVGATE_FUZZ_HARNESS names the entry in fuzz_targets.h (set by CMake).
#include <cstddef>
#include <cstdint>

#include "fuzz/fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const kvgate::fuzz::entry entry = kvgate::fuzz::find_entry(KVGATE_FUZZ_HARNESS);
  entry(data, size);
  return 0;
}
