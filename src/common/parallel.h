// Exceptions inside OpenMP regions. An exception that leaves an OpenMP structured block calls
// std::terminate, so a std::bad_alloc (or any kvgate::error) thrown by one iteration would kill
// the process without a message. Loops whose bodies allocate or may throw run each body through
// a trap, and rethrow the first exception after the region:
//
//   parallel_trap trap;
//   #pragma omp parallel for
//   for (int i = 0; i < n; ++i) trap.run([&] { body(i); });
//   trap.rethrow();
//
// Iterations after a failure still run (OpenMP has no portable break) but each returns at once.
#pragma once

#include <atomic>
#include <exception>
#include <mutex>

namespace kvgate {

class parallel_trap {
 public:
  template <typename F>
  void run(F&& body) noexcept {
    if (failed_.load(std::memory_order_relaxed)) return;
    try {
      body();
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!first_) first_ = std::current_exception();
      failed_.store(true, std::memory_order_relaxed);
    }
  }
  // Rethrows the first exception caught by run(), if any (call after the region).
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::atomic<bool> failed_{false};
  std::mutex mutex_;
  std::exception_ptr first_;
};

}  // namespace kvgate
