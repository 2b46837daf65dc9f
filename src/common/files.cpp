#include "common/files.h"

#include <filesystem>
#include <fstream>

#include "common/error.h"

#include <unistd.h>

namespace kvgate {

std::string read_file(const std::string& path, uint64_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read file: {}", path);
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail("cannot read file: {} is a directory", path);
  const bool regular = std::filesystem::is_regular_file(path, ec);
  const uint64_t size = regular ? std::filesystem::file_size(path, ec) : 0;
  if (regular && !ec && size > max_bytes) {
    fail("{}: {} bytes, more than the {} bytes this reader accepts", path, size, max_bytes);
  }
  std::string out;
  if (regular && !ec) out.reserve(size);
  char buf[1 << 16];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    if (out.size() + static_cast<uint64_t>(in.gcount()) > max_bytes) {
      fail("{}: more than the {} bytes this reader accepts", path, max_bytes);
    }
    out.append(buf, static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) fail("cannot read file: {}", path);
  return out;
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
