#include "common/files.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"

#include <unistd.h>

namespace kvgate {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read file: {}", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) fail("cannot create {}", tmp);
    f << bytes;
    f.flush();
    if (!f) fail("cannot write {}", tmp);
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    fail("cannot rename {} to {}: {}", tmp, path, ec.message());
  }
}

}  // namespace kvgate
