// The dataset on disk: manifest.json (nlohmann-json) and binary shards (format in dataset.h).
#include "data/dataset.h"

#include "common/files.h"

#include <algorithm>
#include <bit>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <type_traits>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <unistd.h>

#include "common/error.h"

namespace kvgate {

namespace fs = std::filesystem;
using json = nlohmann::json;

static_assert(std::endian::native == std::endian::little, "shards are written in host order: little-endian only");

namespace {

constexpr size_t k_header_fixed = 40;

struct fnv1a {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  }
};

// Bytes of one example: key (f16) [d_head], label, bucket, position (i32), document (i32), and
// from version 2 on the soft score (f32).
int64_t example_bytes(int d_head, int version) {
  return 2 * int64_t(d_head) + 1 + 1 + 4 + 4 + (version >= 2 ? 4 : 0);
}

// Appends raw bytes to out and to the checksum.
class shard_writer {
 public:
  explicit shard_writer(const std::string& path) : path_(path), f_(std::fopen(path.c_str(), "wb")) {
    if (!f_) fail("cannot write shard {}", path);
  }
  ~shard_writer() {
    if (f_) std::fclose(f_);
  }
  template <typename T>
  void put(const T* data, size_t n) {
    sum_.add(data, n * sizeof(T));
    if (n && std::fwrite(data, sizeof(T), n, f_) != n) fail("write failed: {}", path_);
    bytes_ += static_cast<int64_t>(n * sizeof(T));
  }
  int64_t close() {
    const uint64_t sum = sum_.h;
    if (std::fwrite(&sum, sizeof sum, 1, f_) != 1 || std::fflush(f_) != 0 || fsync(fileno(f_)) != 0) {
      fail("write failed: {}", path_);
    }
    std::fclose(f_);
    f_ = nullptr;
    return bytes_ + 8;
  }

 private:
  std::string path_;
  FILE* f_;
  fnv1a sum_;
  int64_t bytes_ = 0;
};

// Parses the header at the start of bytes (at least the fixed part must be there).
shard_header parse_header(const std::string& path, const char* bytes, size_t size, int64_t file_size) {
  if (size < k_header_fixed) fail("damaged shard {}: {} bytes, shorter than a header", path, file_size);
  if (std::memcmp(bytes, k_shard_magic, 8) != 0) fail("damaged shard {}: bad magic (not a kvgate shard)", path);
  uint32_t version, n_heads, d_head;
  std::memcpy(&version, bytes + 8, 4);
  std::memcpy(&n_heads, bytes + 12, 4);
  std::memcpy(&d_head, bytes + 16, 4);
  if (version != 1 && version != static_cast<uint32_t>(k_dataset_version)) {
    fail("shard {} has version {}, this build reads versions 1 and {}", path, version, k_dataset_version);
  }
  if (n_heads == 0 || n_heads > 1u << 16 || d_head == 0 || d_head > 1u << 16) {
    fail("damaged shard {}: implausible dims ({} heads, d_head {})", path, n_heads, d_head);
  }
  shard_header h;
  h.n_heads = static_cast<int>(n_heads);
  h.d_head = static_cast<int>(d_head);
  h.version = static_cast<int>(version);
  std::memcpy(&h.first_doc, bytes + 24, 8);
  std::memcpy(&h.n_docs, bytes + 32, 8);
  const size_t header_bytes = k_header_fixed + 8 * n_heads;
  if (size < header_bytes) fail("damaged shard {}: truncated header", path);
  h.n.resize(n_heads);
  std::memcpy(h.n.data(), bytes + k_header_fixed, 8 * n_heads);
  // Each count is bounded by the file's size before it is multiplied, and the running total stops
  // at the file's size, so no product or sum can overflow (counts are hostile until checked).
  int64_t total = static_cast<int64_t>(header_bytes) + 8;
  const uint64_t max_examples = static_cast<uint64_t>(std::max<int64_t>(file_size, 0)) / example_bytes(h.d_head, h.version);
  for (uint64_t n : h.n) {
    if (n > max_examples) {
      fail("damaged shard {}: example count {} does not fit in its {} bytes", path, n, file_size);
    }
    total += static_cast<int64_t>(n) * example_bytes(h.d_head, h.version);
    if (total > file_size) break;
  }
  h.file_bytes = total;
  if (file_size != total) fail("damaged shard {}: {} bytes, its header implies {}", path, file_size, total);
  return h;
}

template <typename T>
void take(const char*& p, std::vector<T>& out, size_t n) {
  const size_t old = out.size();
  out.resize(old + n);
  std::memcpy(out.data() + old, p, n * sizeof(T));
  p += n * sizeof(T);
}

template <typename T>
T field(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key)) fail("{}: manifest field '{}' is missing", where, key);
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    // nlohmann converts 1e12 or 2.5 to int silently; an integer field must hold an integer of T's range.
    const json& v = j.at(key);
    const bool fits = v.is_number_unsigned()  ? v.get<uint64_t>() <= uint64_t(std::numeric_limits<T>::max())
                      : v.is_number_integer() ? v.get<int64_t>() >= int64_t(std::numeric_limits<T>::min()) &&
                                                    (std::is_unsigned_v<T> || v.get<int64_t>() <= int64_t(std::numeric_limits<T>::max()))
                                              : false;
    if (!fits) fail("{}: manifest field '{}' must be an integer that fits {} bytes", where, key, sizeof(T));
  }
  try {
    return j.at(key).get<T>();
  } catch (const json::exception& e) {
    fail("{}: manifest field '{}' has the wrong type ({})", where, key, e.what());
  }
}

// An integer field inside [lo, hi]: JSON numbers are read as int64 first, so 1e12 or 2^32 + 1 is
// refused, not truncated to an int.
int bounded_int(const json& j, const char* key, int64_t lo, int64_t hi, const std::string& where) {
  if (!j.contains(key)) fail("{}: manifest field '{}' is missing", where, key);
  const json& v = j.at(key);
  if (!v.is_number_integer()) fail("{}: manifest field '{}' must be an integer", where, key);
  const int64_t x = v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX) ? INT64_MAX : v.get<int64_t>();
  if (x < lo || x > hi) fail("{}: manifest field '{}' = {} is outside [{}, {}]", where, key, x, lo, hi);
  return static_cast<int>(x);
}

template <typename T>
T optional_field(const json& j, const char* key, T fallback, const std::string& where) {
  return j.contains(key) ? field<T>(j, key, where) : fallback;
}

// A float as the double that prints like it (0.08f -> 0.08, not 0.07999999821186066); reading
// it back as float gives the same float.
double shortest(float x) { return std::stod(fmt::format("{}", x)); }

}  // namespace

int64_t dataset_manifest::n_labelled() const {
  int64_t n = 0;
  for (int64_t x : n_pos) n += x;
  for (int64_t x : n_neg) n += x;
  return n;
}

double dataset_manifest::positive_rate() const {
  int64_t pos = 0;
  for (int64_t x : n_pos) pos += x;
  const int64_t n = n_labelled();
  return n > 0 ? static_cast<double>(pos) / n : 0.0;
}

json dataset_manifest::to_json() const {
  json docs_json = json::array();
  for (const document_info& d : docs) docs_json.push_back({d.file, d.offset, d.n_tokens});
  return {
      {"version", version},
      {"model_name", model_name},
      {"model_arch", model_arch},
      {"model_fingerprint", model_fingerprint},
      {"n_layer", n_layer},
      {"n_head", n_head},
      {"n_kv_head", n_kv_head},
      {"d_head", d_head},
      {"label",
       {{"sinks", label.sinks},
        {"window", label.window},
        {"tau", shortest(label.tau)},
        {"horizon", label.horizon},
        {"max_bucket", label.max_bucket},
        {"key_kind", label.key_kind}}},
      {"negative_keep", shortest(negative_keep)},
      {"seed", seed},
      {"ctx", ctx},
      {"min_doc_tokens", min_doc_tokens},
      {"n_batch", n_batch},
      {"chat_share", shortest(chat_share)},
      {"label_sources", label_sources},
      {"shard_docs", shard_docs},
      {"corpus_files", corpus_files},
      {"n_docs", n_docs},
      {"n_tokens", n_tokens},
      {"positive_rate", positive_rate()},
      {"n_pos", n_pos},
      {"n_neg", n_neg},
      {"n_stored", n_stored},
      {"shards", shards},
      {"docs", docs_json},  // [file, offset, n_tokens] per document
  };
}

dataset_manifest dataset_manifest::from_json(const json& j, const std::string& where) {
  if (!j.is_object()) fail("{}: manifest is not a JSON object", where);
  dataset_manifest m;
  m.version = field<int>(j, "version", where);
  if (m.version != 1 && m.version != k_dataset_version) {
    fail("{}: dataset version {}, this build reads versions 1 and {}; collect it again", where, m.version,
         k_dataset_version);
  }
  m.model_name = field<std::string>(j, "model_name", where);
  m.model_arch = field<std::string>(j, "model_arch", where);
  m.n_layer = bounded_int(j, "n_layer", 1, 4096, where);
  m.n_kv_head = bounded_int(j, "n_kv_head", 1, 4096, where);
  m.d_head = bounded_int(j, "d_head", 1, 1 << 16, where);
  const json label = field<json>(j, "label", where);
  m.label.sinks = field<int>(label, "sinks", where);
  m.label.window = field<int>(label, "window", where);
  m.label.tau = field<float>(label, "tau", where);
  m.label.horizon = field<int>(label, "horizon", where);
  m.label.max_bucket = field<int>(label, "max_bucket", where);
  m.label.key_kind = field<std::string>(label, "key_kind", where);
  m.negative_keep = field<float>(j, "negative_keep", where);
  m.corpus_files = field<std::vector<std::string>>(j, "corpus_files", where);
  m.n_docs = field<int64_t>(j, "n_docs", where);
  m.n_tokens = field<int64_t>(j, "n_tokens", where);
  if (m.n_docs < 0 || m.n_tokens < 0) fail("{}: manifest fields 'n_docs' and 'n_tokens' must be >= 0", where);
  m.n_pos = field<std::vector<int64_t>>(j, "n_pos", where);
  m.n_neg = field<std::vector<int64_t>>(j, "n_neg", where);
  m.shards = field<std::vector<std::string>>(j, "shards", where);

  m.n_head = optional_field<int>(j, "n_head", 0, where);
  m.model_fingerprint = optional_field<std::string>(j, "model_fingerprint", "", where);
  m.ctx = optional_field<int>(j, "ctx", 0, where);
  m.min_doc_tokens = optional_field<int>(j, "min_doc_tokens", 0, where);
  m.n_batch = optional_field<int>(j, "n_batch", 0, where);
  m.chat_share = optional_field<float>(j, "chat_share", 0.0f, where);
  m.label_sources = optional_field<std::vector<std::string>>(j, "label_sources", {"future"}, where);
  m.version = k_dataset_version;  // what write_manifest writes back (a resumed v1 dataset gains v2 shards)
  m.seed = optional_field<uint64_t>(j, "seed", 0, where);
  m.shard_docs = optional_field<int>(j, "shard_docs", 0, where);
  m.n_stored = optional_field<std::vector<int64_t>>(j, "n_stored", {}, where);
  const json docs = optional_field<json>(j, "docs", json::array(), where);
  if (!docs.is_array()) fail("{}: manifest field 'docs' must be an array", where);
  for (const json& d : docs) {
    if (!d.is_array() || d.size() != 3 || !d[0].is_number_integer() || !d[1].is_number_integer() ||
        !d[2].is_number_integer() || d[0].get<int64_t>() < 0 || d[0].get<int64_t>() > INT32_MAX ||
        d[2].get<int64_t>() < 0 || d[2].get<int64_t>() > INT32_MAX) {
      fail("{}: manifest 'docs' entries must be [file, offset, n_tokens] (non-negative integers)", where);
    }
    m.docs.push_back({d[0].get<int>(), d[1].get<int64_t>(), d[2].get<int>()});
  }

  const size_t n_heads = static_cast<size_t>(m.n_heads());  // <= 4096 x 4096, checked above
  if (m.n_pos.size() != n_heads || m.n_neg.size() != n_heads || (!m.n_stored.empty() && m.n_stored.size() != n_heads)) {
    fail("{}: per-head counts do not have n_layer x n_kv_head = {} entries", where, n_heads);
  }
  if (!m.docs.empty() && static_cast<int64_t>(m.docs.size()) != m.n_docs) {
    fail("{}: {} document entries for n_docs {}", where, m.docs.size(), m.n_docs);
  }
  return m;
}

int64_t write_shard(const std::string& path, const std::vector<head_examples>& heads, int d_head, int64_t first_doc,
                    int64_t n_docs) {
  const std::string tmp = path + ".tmp";
  int64_t bytes;
  {
    shard_writer w(tmp);
    const uint32_t fixed[4] = {static_cast<uint32_t>(k_dataset_version), static_cast<uint32_t>(heads.size()),
                               static_cast<uint32_t>(d_head), 0};
    w.put(k_shard_magic, 8);
    w.put(fixed, 4);
    w.put(&first_doc, 1);
    w.put(&n_docs, 1);
    for (const head_examples& h : heads) {
      const uint64_t n = h.size();
      if (h.keys.size() != n * d_head || h.bucket.size() != n || h.pos.size() != n || h.doc.size() != n ||
          (h.score.size() != n && !h.score.empty())) {
        fail("write_shard: a head's arrays disagree in length");
      }
      w.put(&n, 1);
    }
    for (const head_examples& h : heads) {
      w.put(h.keys.data(), h.keys.size());
      w.put(h.label.data(), h.label.size());
      w.put(h.bucket.data(), h.bucket.size());
      w.put(h.pos.data(), h.pos.size());
      w.put(h.doc.data(), h.doc.size());
      if (h.score.empty()) {  // no soft score given: the label is the score
        const std::vector<float> score(h.label.begin(), h.label.end());
        w.put(score.data(), score.size());
      } else {
        w.put(h.score.data(), h.score.size());
      }
    }
    bytes = w.close();
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fail("cannot rename {} to {}: {}", tmp, path, ec.message());
  return bytes;
}

shard_header read_shard_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("shard listed in the manifest is missing: {}", path);
  std::error_code ec;
  const int64_t size = static_cast<int64_t>(fs::file_size(path, ec));
  std::string head(k_header_fixed, '\0');
  in.read(head.data(), k_header_fixed);
  head.resize(in.gcount());
  if (head.size() == k_header_fixed) {
    uint32_t n_heads;
    std::memcpy(&n_heads, head.data() + 12, 4);
    if (n_heads <= 1u << 16) {
      head.resize(k_header_fixed + 8 * static_cast<size_t>(n_heads));
      in.read(head.data() + k_header_fixed, 8 * static_cast<std::streamsize>(n_heads));
      head.resize(k_header_fixed + in.gcount());
    }
  }
  return parse_header(path, head.data(), head.size(), size);
}

shard_header read_shard(const std::string& path, std::vector<head_examples>& heads) {
  if (!fs::exists(path)) fail("shard listed in the manifest is missing: {}", path);
  const std::string bytes = read_file(path);
  const shard_header h = parse_header(path, bytes.data(), bytes.size(), static_cast<int64_t>(bytes.size()));
  fnv1a sum;
  sum.add(bytes.data(), bytes.size() - 8);
  uint64_t stored;
  std::memcpy(&stored, bytes.data() + bytes.size() - 8, 8);
  if (stored != sum.h) fail("damaged shard {}: checksum mismatch", path);
  if (static_cast<size_t>(h.n_heads) != heads.size()) {
    fail("shard {} holds {} heads, the dataset {}", path, h.n_heads, heads.size());
  }
  const char* p = bytes.data() + k_header_fixed + 8 * h.n_heads;
  for (int ih = 0; ih < h.n_heads; ++ih) {
    head_examples& e = heads[ih];
    const size_t n = h.n[ih];
    take(p, e.keys, n * h.d_head);
    take(p, e.label, n);
    take(p, e.bucket, n);
    take(p, e.pos, n);
    take(p, e.doc, n);
    if (h.version >= 2) {
      take(p, e.score, n);
    } else {
      for (size_t i = e.label.size() - n; i < e.label.size(); ++i) e.score.push_back(static_cast<float>(e.label[i]));
    }
  }
  return h;
}

void write_manifest(const std::string& dir, const dataset_manifest& manifest) {
  const std::string path = dir + "/manifest.json", tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot write {}", tmp);
    out << manifest.to_json().dump(1) << '\n';
    out.close();
    if (!out) fail("write failed: {}", tmp);
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fail("cannot rename {} to {}: {}", tmp, path, ec.message());
}

dataset_manifest read_manifest(const std::string& dir) {
  if (!fs::is_directory(dir)) fail("dataset directory not found: {}", dir);
  const std::string path = dir + "/manifest.json";
  if (!fs::exists(path)) fail("{} is not a dataset directory: manifest.json is missing", dir);
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", path, e.what());
  }
  return dataset_manifest::from_json(j, path);
}

dataset dataset::load(const std::string& dir) {
  dataset d;
  d.manifest = read_manifest(dir);
  const dataset_manifest& m = d.manifest;
  d.heads.resize(m.n_heads());
  int64_t next_doc = 0;
  for (const std::string& name : m.shards) {
    const std::string path = dir + "/" + name;
    const shard_header h = read_shard(path, d.heads);
    if (h.d_head != m.d_head) fail("shard {} has d_head {}, the manifest {}", path, h.d_head, m.d_head);
    if (h.first_doc != next_doc) {
      fail("shard {} starts at document {}, expected {} (shards missing or out of order)", path, h.first_doc, next_doc);
    }
    next_doc += h.n_docs;
  }
  if (next_doc != m.n_docs) fail("{}: the shards hold {} documents, the manifest says {}", dir, next_doc, m.n_docs);
  for (size_t ih = 0; ih < m.n_stored.size(); ++ih) {
    if (static_cast<int64_t>(d.heads[ih].size()) != m.n_stored[ih]) {
      fail("{}: head {} has {} examples, the manifest says {}", dir, ih, d.heads[ih].size(), m.n_stored[ih]);
    }
  }
  return d;
}

}  // namespace kvgate
