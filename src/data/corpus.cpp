#include "data/corpus.h"

#include "common/files.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/random.h"
#include "tokenizer/tokenizer.h"

namespace kvgate {

namespace fs = std::filesystem;

namespace {

bool has_extension(const std::string& name, const std::vector<std::string>& extensions) {
  for (const std::string& ext : extensions) {
    if (name.size() >= ext.size() && name.compare(name.size() - ext.size(), ext.size(), ext) == 0) return true;
  }
  return false;
}

}  // namespace

bool is_utf8_text(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const unsigned c = p[i];
    if (c == 0) return false;
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2, cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3, cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4, cp = c & 0x07;
    } else {
      return false;  // continuation byte first, or C0/C1/F5..FF (overlong or out of range)
    }
    if (i + len > n) return false;
    for (int k = 1; k < len; ++k) {
      const unsigned b = p[i + k];
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))) {
      return false;
    }
    i += len;
  }
  return true;
}

corpus_listing list_corpus(const std::vector<std::string>& paths, const std::vector<std::string>& extensions) {
  if (paths.empty()) fail("empty corpus: no corpus path given");
  std::set<std::string> explicit_files, found_files;
  for (const std::string& path : paths) {
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    if (ec || !fs::exists(st)) fail("corpus path not found: {}", path);
    if (fs::is_directory(st)) {
      for (auto it = fs::recursive_directory_iterator(path, fs::directory_options::follow_directory_symlink, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (it->is_regular_file(ec) && has_extension(it->path().filename().string(), extensions)) {
          found_files.insert(fs::absolute(it->path()).lexically_normal().string());
        }
      }
      if (ec) fail("cannot walk corpus directory {}: {}", path, ec.message());
    } else if (fs::is_regular_file(st)) {
      explicit_files.insert(fs::absolute(path).lexically_normal().string());
    } else {
      fail("corpus path is neither a file nor a directory: {}", path);
    }
  }

  std::set<std::string> all = found_files;
  all.insert(explicit_files.begin(), explicit_files.end());
  corpus_listing out;
  for (const std::string& file : all) {  // std::set: sorted by bytes, each once
    const std::string text = read_file(file);
    if (text.empty()) continue;
    if (!is_utf8_text(text)) {
      if (explicit_files.count(file)) fail("corpus file is not UTF-8 text: {}", file);
      out.skipped.push_back(file);
      continue;
    }
    out.files.push_back(file);
    out.bytes.push_back(static_cast<int64_t>(text.size()));
  }
  if (out.files.empty()) {
    std::string list;
    for (const std::string& p : paths) list += (list.empty() ? "" : ", ") + p;
    std::string exts;
    for (const std::string& e : extensions) exts += (exts.empty() ? "" : " ") + e;
    fail("empty corpus: no non-empty UTF-8 text file (directories: names ending in {}) under {}", exts, list);
  }
  return out;
}

void shuffle_files(corpus_listing& l, uint64_t seed) {
  uint64_t state = seed;
  auto next = [&state] { return splitmix64_next(state); };
  for (size_t i = l.files.size(); i > 1; --i) {
    const size_t j = next() % i;  // the modulo bias is far below anything that matters here
    std::swap(l.files[i - 1], l.files[j]);
    std::swap(l.bytes[i - 1], l.bytes[j]);
  }
}

std::vector<std::pair<int64_t, int>> document_windows(int64_t n_tokens, int ctx, int min_tokens) {
  std::vector<std::pair<int64_t, int>> out;
  for (int64_t off = 0; off < n_tokens; off += ctx) {
    const int n = static_cast<int>(std::min<int64_t>(ctx, n_tokens - off));
    if (n >= min_tokens) out.emplace_back(off, n);
  }
  return out;
}

corpus_reader::corpus_reader(const corpus_listing& listing, const tokenizer& vocab, int ctx, int min_tokens)
    : listing_(listing), vocab_(vocab), ctx_(ctx), min_tokens_(min_tokens) {
  if (ctx < 1 || min_tokens > ctx) fail("corpus_reader: min_tokens {} must not exceed ctx {}", min_tokens, ctx);
}

void corpus_reader::seek(int file, int64_t offset) {
  file_ = file;
  min_offset_ = offset;
  loaded_ = -1;
}

void corpus_reader::load_file(int file) {
  const std::string text = read_file(listing_.files[file]);
  ids_ = vocab_.encode(text, false);
  windows_ = document_windows(static_cast<int64_t>(ids_.size()), ctx_, min_tokens_);
  loaded_ = file;
  next_window_ = 0;
  while (next_window_ < windows_.size() && windows_[next_window_].first < min_offset_) ++next_window_;
  min_offset_ = 0;
  bytes_read_ += static_cast<int64_t>(text.size());
  for (const auto& w : windows_) doc_tokens_read_ += w.second;
}

bool corpus_reader::next(corpus_document& doc) {
  while (file_ < static_cast<int>(listing_.files.size())) {
    if (loaded_ != file_) load_file(file_);
    if (next_window_ < windows_.size()) {
      const auto [off, n] = windows_[next_window_++];
      doc.file = file_;
      doc.offset = off;
      doc.tokens.assign(ids_.begin() + off, ids_.begin() + off + n);
      return true;
    }
    ++file_;
  }
  return false;
}

int64_t corpus_reader::tokens_left_estimate() const {
  if (bytes_read_ == 0) return -1;
  int64_t left = 0;
  if (loaded_ == file_) {
    for (size_t w = next_window_; w < windows_.size(); ++w) left += windows_[w].second;
  }
  int64_t bytes_left = 0;
  for (size_t f = loaded_ == file_ ? file_ + 1 : file_; f < listing_.files.size(); ++f) bytes_left += listing_.bytes[f];
  return left + static_cast<int64_t>(static_cast<double>(bytes_left) * doc_tokens_read_ / bytes_read_);
}

}  // namespace kvgate
