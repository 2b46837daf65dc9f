#include "common/files.h"

#include <fstream>
#include <sstream>

#include "common/error.h"

namespace kvgate {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read file: {}", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace kvgate
