// The one exception type kvgate throws for bad input or failed I/O. Executables catch it at the
// top, print its message and exit non-zero; library code never prints.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace kvgate {

struct error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace kvgate
