// gguf::file: opening, validating and looking up a memory-mapped GGUF file.
//
// Every count and length read from the file is checked against the bytes that remain before
// anything is reserved or read, so a hostile file fails with an error instead of a huge allocation
// or a read past the mapping.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <unordered_set>

#include "gguf/gguf.h"
#include "gguf/gguf_internal.h"

namespace kvgate::gguf {

namespace {

// Arrays nest in practice one level deep; the limit keeps recursion bounded.
constexpr int max_array_depth = 8;
// The largest real arrays are vocabularies and merge lists (~262k entries); each element becomes
// a `value` of ~48 bytes, so a limit keeps a file of a few hundred MB from asking for tens of GB.
constexpr uint64_t max_array_count = uint64_t{1} << 24;
constexpr uint64_t max_alignment = uint64_t{1} << 30;

// A count from the file is only an upper bound until its elements have been read: reserve at most
// this much up front and let the vector grow with what is really there.
size_t reserve_hint(uint64_t count) { return static_cast<size_t>(std::min<uint64_t>(count, 4096)); }

// Bounds-checked reading from the mapping. Every failure names the file and a byte offset: where
// the field that was read last starts (the offending count, type or name), or for a truncation,
// where the missing bytes should have been.
class cursor {
 public:
  cursor(const std::string& path, const uint8_t* base, size_t size)
      : path_(path), base_(base), size_(size) {}

  size_t pos() const { return pos_; }
  size_t left() const { return size_ - pos_; }

  template <typename... Args>
  [[noreturn]] void bad(fmt::format_string<Args...> format, Args&&... args) const {
    fail("{}: {} (at byte {})", path_, fmt::format(format, std::forward<Args>(args)...), field_);
  }

  void need(uint64_t n, std::string_view what) {
    if (n > left()) {
      field_ = pos_;
      bad("truncated: {} needs {} bytes, {} are left in the {}-byte file", what, n, left(), size_);
    }
  }

  template <typename T>
  T read(std::string_view what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    field_ = pos_;
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(std::string_view what) {
    const auto len = read<uint64_t>(what);
    if (len > left()) bad("{} claims {} bytes but only {} are left in the file", what, len, left());
    std::string s(reinterpret_cast<const char*>(base_ + pos_), len);
    pos_ += len;
    return s;
  }

 private:
  const std::string& path_;
  const uint8_t* base_;  // [size_]
  size_t size_;
  size_t pos_ = 0;
  size_t field_ = 0;  // start of the field read last
};

value read_value(cursor& c, value_type type, int depth, const std::string& key);

value read_array(cursor& c, int depth, const std::string& key) {
  if (depth >= max_array_depth) {
    c.bad("key '{}': arrays nested deeper than {} levels", key, max_array_depth);
  }
  const auto elem_raw = c.read<uint32_t>("array element type");
  const auto elem = static_cast<value_type>(elem_raw);
  if (!detail::is_valid(elem)) c.bad("key '{}': unknown array element type {}", key, elem_raw);
  const auto count = c.read<uint64_t>("array count");
  const uint64_t min_size = detail::min_encoded_size(elem);
  if (count > c.left() / min_size) {
    c.bad("key '{}': array of {} {} elements cannot fit in the {} bytes left", key, count,
          value_type_name(elem), c.left());
  }
  if (count > max_array_count) {
    c.bad("key '{}': array of {} elements is larger than the limit of {}", key, count,
          max_array_count);
  }
  value::array elements;
  elements.reserve(reserve_hint(count));
  for (uint64_t i = 0; i < count; ++i) elements.push_back(read_value(c, elem, depth + 1, key));
  return value::of_array(elem, std::move(elements));
}

value read_value(cursor& c, value_type type, int depth, const std::string& key) {
  switch (type) {
    case value_type::u8: return value::of_u8(c.read<uint8_t>("u8 value"));
    case value_type::i8: return value::of_i8(c.read<int8_t>("i8 value"));
    case value_type::u16: return value::of_u16(c.read<uint16_t>("u16 value"));
    case value_type::i16: return value::of_i16(c.read<int16_t>("i16 value"));
    case value_type::u32: return value::of_u32(c.read<uint32_t>("u32 value"));
    case value_type::i32: return value::of_i32(c.read<int32_t>("i32 value"));
    case value_type::u64: return value::of_u64(c.read<uint64_t>("u64 value"));
    case value_type::i64: return value::of_i64(c.read<int64_t>("i64 value"));
    case value_type::f32: return value::of_f32(c.read<float>("f32 value"));
    case value_type::f64: return value::of_f64(c.read<double>("f64 value"));
    case value_type::boolean: {
      const auto b = c.read<uint8_t>("bool value");
      if (b > 1) c.bad("key '{}': bool value {} is neither 0 nor 1", key, b);
      return value::of_bool(b != 0);
    }
    case value_type::string: return value::of_string(c.read_string("string value"));
    case value_type::array: return read_array(c, depth, key);
  }
  c.bad("key '{}': unknown value type {}", key, static_cast<uint32_t>(type));
}

std::string shape_string(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

// Reads one tensor info (name, dims, type, offset) and checks everything that does not depend on
// where the data section starts; names collects the names seen so far.
tensor_info read_tensor_info(cursor& c, std::unordered_set<std::string>& names) {
  tensor_info t;
  t.name = c.read_string("tensor name");
  if (!names.insert(t.name).second) c.bad("duplicate tensor name '{}'", t.name);
  if (t.name.size() > max_tensor_name_bytes) {
    c.bad("tensor name '{}...' is {} bytes, longer than the limit of {}", t.name.substr(0, 32),
          t.name.size(), max_tensor_name_bytes);
  }
  const auto n_dims = c.read<uint32_t>("tensor dimension count");
  if (n_dims == 0 || n_dims > detail::max_dims) {
    c.bad("tensor '{}' has {} dimensions, expected 1 to {}", t.name, n_dims, detail::max_dims);
  }
  uint64_t n_elements = 1;
  for (uint32_t i = 0; i < n_dims; ++i) {
    const auto d = c.read<uint64_t>("tensor dimension");
    if (d == 0) c.bad("tensor '{}': dimension {} is 0", t.name, i);
    if (n_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / d) {
      c.bad("tensor '{}': dimension {} = {} makes the element count overflow 2^63", t.name, i, d);
    }
    n_elements *= d;
    t.ne.push_back(static_cast<int64_t>(d));
  }
  const auto type_raw = c.read<uint32_t>("tensor type");
  t.type = static_cast<tensor_type>(type_raw);
  const type_traits* tt = find_traits(t.type);
  if (!tt) {
    c.bad("tensor '{}' has type {} ({}), which kvgate does not support", t.name, type_raw,
          detail::ggml_type_name(type_raw));
  }
  if (t.ne[0] % tt->block_size != 0) {
    c.bad("tensor '{}' {}: ne[0] = {} is not a multiple of the {} block size {}", t.name,
          shape_string(t.ne), t.ne[0], tt->name, tt->block_size);
  }
  // n_elements < 2^63 and type_size / block_size <= 4, so this cannot overflow 64 bits
  const uint64_t n_bytes = n_elements / tt->block_size * tt->type_size;
  if (n_bytes > std::numeric_limits<size_t>::max()) c.bad("tensor '{}' is too large", t.name);
  t.n_bytes = static_cast<size_t>(n_bytes);
  t.offset = c.read<uint64_t>("tensor data offset");
  return t;
}

}  // namespace

std::unique_ptr<file> file::open(const std::string& path) {
  std::unique_ptr<file> f(new file());
  f->path_ = path;

  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open GGUF file: {}", path, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail("{}: cannot stat: {}", path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path);
  }
  if (st.st_size == 0) {
    ::close(fd);
    fail("{}: file is empty, not GGUF", path);
  }
  void* map = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file open
  if (map == MAP_FAILED) fail("{}: cannot mmap: {}", path, std::strerror(map_err));
  f->map_ = static_cast<const uint8_t*>(map);
  f->size_ = static_cast<size_t>(st.st_size);

  cursor c(f->path_, f->map_, f->size_);

  // header: magic, version, tensor count, metadata count
  c.need(4, "magic");
  if (std::memcmp(f->map_, detail::magic, 4) != 0) {
    const uint8_t* m = f->map_;
    c.bad(
        "not a GGUF file: magic bytes are {:02x} {:02x} {:02x} {:02x}, expected 47 47 55 46 "
        "(\"GGUF\")",
        m[0], m[1], m[2], m[3]);
  }
  c.read<uint32_t>("magic");
  f->version_ = c.read<uint32_t>("version");
  if (f->version_ == 1) {
    c.bad(
        "GGUF version 1 is not supported (it used 32-bit counts); convert the model again "
        "with a current llama.cpp");
  }
  if (f->version_ == 0x02000000 || f->version_ == 0x03000000) {
    c.bad("big-endian GGUF is not supported");
  }
  if (f->version_ != 2 && f->version_ != 3) {
    c.bad("unsupported GGUF version {}, expected 3 (or 2)", f->version_);
  }
  // smallest key/value: u64 key length + u32 type + 1 byte; smallest tensor info: u64 name
  // length + u32 n_dims + one u64 dim + u32 type + u64 offset
  constexpr uint64_t min_kv = 13, min_tensor_info = 32;
  const auto n_tensors = c.read<uint64_t>("tensor count");
  if (n_tensors > c.left() / min_tensor_info) {
    c.bad("header claims {} tensors, more than the {} bytes left can hold", n_tensors, c.left());
  }
  const auto n_kv = c.read<uint64_t>("metadata count");
  if (n_kv > c.left() / min_kv) {
    c.bad("header claims {} metadata keys, more than the {} bytes left can hold", n_kv, c.left());
  }

  // metadata
  std::unordered_set<std::string> keys;
  f->metadata_.reserve(reserve_hint(n_kv));
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.read_string("metadata key");
    if (keys.contains(key)) c.bad("duplicate metadata key '{}'", key);
    keys.insert(key);
    const auto type_raw = c.read<uint32_t>("value type");
    const auto type = static_cast<value_type>(type_raw);
    if (!detail::is_valid(type)) c.bad("key '{}' has unknown value type {}", key, type_raw);
    value v = read_value(c, type, 0, key);
    f->metadata_.emplace_back(std::move(key), std::move(v));
  }

  f->alignment_ = detail::default_alignment;
  if (const value* a = f->find("general.alignment")) {
    uint64_t alignment = 0;
    try {
      alignment = a->as_u64();
    } catch (const error& e) {
      fail("{}: general.alignment: {}", path, e.what());
    }
    if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > max_alignment) {
      fail("{}: general.alignment = {} is not a power of two up to 2^30", path, alignment);
    }
    f->alignment_ = static_cast<size_t>(alignment);
  }

  // tensor infos
  if (n_tensors > c.left() / min_tensor_info) {
    fail(
        "{}: header claims {} tensors, more than the {} bytes after the metadata (from byte {}) "
        "can hold",
        path, n_tensors, c.left(), c.pos());
  }
  std::unordered_set<std::string> names;
  f->tensors_.reserve(reserve_hint(n_tensors));
  for (uint64_t i = 0; i < n_tensors; ++i) f->tensors_.push_back(read_tensor_info(c, names));

  // data section: starts at the next multiple of the alignment; every tensor must lie inside
  const size_t a = f->alignment_;
  const size_t data_start = c.pos() + (a - c.pos() % a) % a;
  for (tensor_info& t : f->tensors_) {
    if (t.offset % a != 0) {
      fail("{}: tensor '{}': data offset {} is not a multiple of the alignment {}", path, t.name,
           t.offset, a);
    }
    if (data_start > f->size_ || t.offset > f->size_ - data_start ||
        t.n_bytes > f->size_ - data_start - t.offset) {
      fail(
          "{}: tensor '{}' {} {}: its {} bytes at data offset {} (data section at byte {}) lie "
          "outside the {}-byte file",
          path, t.name, shape_string(t.ne), traits(t.type).name, t.n_bytes, t.offset, data_start,
          f->size_);
    }
    t.data = f->map_ + data_start + t.offset;
  }
  return f;
}

void file::drop_pages(const uint8_t* p, size_t n) const {
  if (p < map_ || n > size_ || p - map_ > static_cast<ptrdiff_t>(size_ - n)) fail("{}: drop_pages outside the file", path_);
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
  // Advice only: a failure leaves the pages in memory, which is harmless.
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

file::~file() {
  if (map_) munmap(const_cast<uint8_t*>(map_), size_);
}

const value* file::find(std::string_view key) const {
  for (const auto& [k, v] : metadata_) {
    if (k == key) return &v;
  }
  return nullptr;
}

const value& file::get(std::string_view key) const {
  const value* v = find(key);
  if (!v) fail("{}: missing metadata key '{}'", path_, key);
  return *v;
}

// Runs a value conversion; a type mismatch is rethrown naming the file and the key.
template <typename T, typename F>
static T convert(const std::string& path, std::string_view key, F&& f) {
  try {
    return f();
  } catch (const error& e) {
    fail("{}: metadata key '{}': {}", path, key, e.what());
  }
}

std::string file::get_string(std::string_view key, std::string_view fallback) const {
  const value* v = find(key);
  if (!v) return std::string(fallback);
  return convert<std::string>(path_, key, [&] { return v->as_string(); });
}

uint64_t file::get_u64(std::string_view key, uint64_t fallback) const {
  const value* v = find(key);
  if (!v) return fallback;
  return convert<uint64_t>(path_, key, [&] { return v->as_u64(); });
}

double file::get_f64(std::string_view key, double fallback) const {
  const value* v = find(key);
  if (!v) return fallback;
  return convert<double>(path_, key, [&] { return v->as_f64(); });
}

bool file::get_bool(std::string_view key, bool fallback) const {
  const value* v = find(key);
  if (!v) return fallback;
  return convert<bool>(path_, key, [&] { return v->as_bool(); });
}

const tensor_info* file::find_tensor(std::string_view name) const {
  for (const tensor_info& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const tensor_info& file::tensor(std::string_view name) const {
  const tensor_info* t = find_tensor(name);
  if (!t) fail("{}: no tensor named '{}'", path_, name);
  return *t;
}

}  // namespace kvgate::gguf
