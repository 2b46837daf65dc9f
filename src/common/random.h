// splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014): the
// one mixer every module uses for reproducible pseudo-random choices. It is fully specified, so a
// seed gives the same run with any standard library (std:: distributions and std::shuffle are
// implementation-defined).
#pragma once

#include <cstdint>

namespace kvgate {

inline constexpr uint64_t k_splitmix64_gamma = 0x9e3779b97f4a7c15ull;

// The mixed value of x: a well-spread 64-bit hash of x (x + gamma through the finalizer).
constexpr uint64_t splitmix64(uint64_t x) {
  x += k_splitmix64_gamma;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The generator: each call returns splitmix64(state) and advances state by gamma.
constexpr uint64_t splitmix64_next(uint64_t& state) {
  const uint64_t z = splitmix64(state);
  state += k_splitmix64_gamma;
  return z;
}

}  // namespace kvgate
