// gguf::writer: builds a GGUF v3 file and writes it atomically.
//
// Layout as ggml writes it (gguf.cpp): header, key/values, tensor infos, zero padding to the
// alignment, then each tensor's data padded to the alignment, the last one included (ggml's reader
// expects the padded total).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>

#include "gguf/gguf.h"
#include "gguf/gguf_internal.h"

namespace kvgate::gguf {

namespace {

bool is_power_of_two(uint64_t a) { return a != 0 && (a & (a - 1)) == 0; }

class byte_sink {
 public:
  template <typename T>
  void put(T v) {
    const size_t at = bytes.size();
    bytes.resize(at + sizeof(T));
    std::memcpy(bytes.data() + at, &v, sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    bytes.insert(bytes.end(), s.begin(), s.end());
  }
  void put_value(const value& v) {
    switch (v.type()) {
      case value_type::u8: put(static_cast<uint8_t>(v.as_u64())); return;
      case value_type::u16: put(static_cast<uint16_t>(v.as_u64())); return;
      case value_type::u32: put(static_cast<uint32_t>(v.as_u64())); return;
      case value_type::u64: put(v.as_u64()); return;
      case value_type::i8: put(static_cast<int8_t>(v.as_i64())); return;
      case value_type::i16: put(static_cast<int16_t>(v.as_i64())); return;
      case value_type::i32: put(static_cast<int32_t>(v.as_i64())); return;
      case value_type::i64: put(v.as_i64()); return;
      case value_type::f32: put(static_cast<float>(v.as_f64())); return;  // stored from a float
      case value_type::f64: put(v.as_f64()); return;
      case value_type::boolean: put(static_cast<uint8_t>(v.as_bool() ? 1 : 0)); return;
      case value_type::string: put_string(v.as_string()); return;
      case value_type::array:
        put(static_cast<uint32_t>(v.elem_type()));
        put<uint64_t>(v.as_array().size());
        for (const value& e : v.as_array()) put_value(e);
        return;
    }
  }
  std::vector<uint8_t> bytes;
};

size_t padded(size_t n, size_t alignment) { return n + (alignment - n % alignment) % alignment; }

// Writes all of [data, data + n) or throws naming path.
void write_all(int fd, const uint8_t* data, size_t n, const std::string& path) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail("{}: write failed: {}", path, std::strerror(errno));
    }
    data += w;
    n -= static_cast<size_t>(w);
  }
}

}  // namespace

void writer::set(std::string key, value v) {
  if (key == "general.alignment") {
    uint64_t a = 0;
    try {
      a = v.as_u64();
    } catch (const error& e) {
      fail("gguf writer: general.alignment: {}", e.what());
    }
    if (!is_power_of_two(a) || a > std::numeric_limits<uint32_t>::max()) {
      fail("gguf writer: general.alignment = {} is not a power of two", a);
    }
    alignment_ = static_cast<uint32_t>(a);
  }
  for (auto& [k, old] : metadata_) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  metadata_.emplace_back(std::move(key), std::move(v));
}

void writer::set_alignment(uint32_t alignment) {
  if (!is_power_of_two(alignment))
    fail("gguf writer: alignment {} is not a power of two", alignment);
  set("general.alignment", value::of_u32(alignment));
}

void writer::add_tensor(std::string name, std::vector<int64_t> ne, tensor_type type,
                        std::span<const uint8_t> data) {
  if (name.size() > max_tensor_name_bytes) {
    fail("gguf writer: tensor name '{}' is {} bytes, longer than the limit of {}", name,
         name.size(), max_tensor_name_bytes);
  }
  for (const pending_tensor& t : tensors_) {
    if (t.name == name) fail("gguf writer: duplicate tensor name '{}'", name);
  }
  if (ne.empty() || ne.size() > detail::max_dims) {
    fail("gguf writer: tensor '{}' has {} dimensions, expected 1 to {}", name, ne.size(),
         detail::max_dims);
  }
  int64_t n_rows = 1;
  for (size_t i = 0; i < ne.size(); ++i) {
    if (ne[i] <= 0) fail("gguf writer: tensor '{}': dimension {} is {}", name, i, ne[i]);
    if (i > 0) {
      if (n_rows > std::numeric_limits<int64_t>::max() / ne[i] / ne[0]) {
        fail("gguf writer: tensor '{}': element count overflows", name);
      }
      n_rows *= ne[i];
    }
  }
  const size_t expected = row_bytes(type, ne[0]) * static_cast<size_t>(n_rows);
  if (data.size() != expected) {
    fail("gguf writer: tensor '{}' ({}, ne[0] = {}, {} rows) needs {} bytes of data, got {}", name,
         traits(type).name, ne[0], n_rows, expected, data.size());
  }
  tensors_.push_back({std::move(name), std::move(ne), type, {data.begin(), data.end()}});
}

void writer::add_tensor_f32(std::string name, std::vector<int64_t> ne,
                            std::span<const float> data) {
  const auto bytes = std::as_bytes(data);
  add_tensor(std::move(name), std::move(ne), tensor_type::f32,
             {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()});
}

void writer::write(const std::string& path) const {
  byte_sink head;
  uint32_t magic;
  std::memcpy(&magic, detail::magic, 4);
  head.put(magic);
  head.put<uint32_t>(3);
  head.put<uint64_t>(tensors_.size());
  head.put<uint64_t>(metadata_.size());
  for (const auto& [key, v] : metadata_) {
    head.put_string(key);
    head.put(static_cast<uint32_t>(v.type()));
    head.put_value(v);
  }
  size_t offset = 0;  // relative to the data section
  for (const pending_tensor& t : tensors_) {
    head.put_string(t.name);
    head.put(static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) head.put(static_cast<uint64_t>(d));
    head.put(static_cast<uint32_t>(t.type));
    head.put(static_cast<uint64_t>(offset));
    offset += padded(t.data.size(), alignment_);
  }
  head.bytes.resize(padded(head.bytes.size(), alignment_), 0);

  // Same directory, so the rename is atomic; readers see the old file or the whole new one.
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot create {}: {}", path, tmp, std::strerror(errno));
  try {
    write_all(fd, head.bytes.data(), head.bytes.size(), tmp);
    const std::vector<uint8_t> zeros(alignment_, 0);
    for (const pending_tensor& t : tensors_) {
      write_all(fd, t.data.data(), t.data.size(), tmp);
      write_all(fd, zeros.data(), padded(t.data.size(), alignment_) - t.data.size(), tmp);
    }
    if (fsync(fd) != 0) fail("{}: fsync failed: {}", tmp, std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail("{}: close failed: {}", tmp, std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail("{}: cannot rename {} into place: {}", path, tmp, std::strerror(err));
  }
  // Make the rename itself durable; failure here leaves a complete file, so it is not an error.
  const auto parent = std::filesystem::path(path).parent_path();
  const std::filesystem::path dir = parent.empty() ? std::filesystem::path(".") : parent;
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace kvgate::gguf
