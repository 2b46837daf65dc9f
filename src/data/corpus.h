// Corpus reading: the text files a collection runs over, and their cutting into documents of at
// most ctx tokens. Everything here is deterministic (sorted paths, fixed windows), because a
// resumed collection must see exactly the documents the first run saw, in the same order.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvgate {

class tokenizer;

// The CLI's default corpora (Debian packages python3.11-doc and git-doc).
inline constexpr const char* k_default_train_corpus = "/usr/share/doc/python3.11/html/_sources";
inline constexpr const char* k_default_heldout_corpus = "/usr/share/doc/git-doc";

// Which files of a directory count as text: by name ending (".rst.txt" ends in ".txt"), then by
// content. The ending filter is what keeps git-doc's *.html twins (valid UTF-8 too) out.
inline const std::vector<std::string> k_default_text_extensions = {".txt", ".md", ".rst"};

// Valid UTF-8 (no overlong forms, surrogates or code points above U+10FFFF) and no NUL byte.
bool is_utf8_text(std::string_view bytes);

struct corpus_listing {
  std::vector<std::string> files;     // absolute, sorted, each once; every one non-empty UTF-8 text
  std::vector<int64_t> bytes;         // [files] size of each file
  std::vector<std::string> skipped;   // files found in directories but not UTF-8 text
};

// Expands paths: a file is taken as it is (it must be UTF-8 text: error otherwise); a directory
// is walked recursively (symlinks followed) for regular files whose name ends in one of
// extensions and whose content is UTF-8 text. Empty files are left out. Throws error for a
// missing path, or when nothing remains ("empty corpus").
corpus_listing list_corpus(const std::vector<std::string>& paths,
                           const std::vector<std::string>& extensions = k_default_text_extensions);

// Puts the files (with their sizes) in an order drawn from seed: Fisher-Yates over splitmix64,
// so the order is the same on every platform. A collection cut short by --max-tokens then samples
// the whole corpus instead of its alphabetical head (the python docs start with 40 C-API files).
void shuffle_files(corpus_listing& listing, uint64_t seed);

// One document: a window of one file's tokens, run from an empty cache.
struct corpus_document {
  int file = 0;                  // index into corpus_listing::files
  int64_t offset = 0;            // first token's index in the file's token sequence
  std::vector<int32_t> tokens;   // [n_tokens]
};

// The windows a file of n_tokens tokens is cut into: consecutive [offset, offset + ctx), the last
// one shorter; a window shorter than min_tokens is skipped (a tail too short to label).
// Returns (offset, length) pairs.
std::vector<std::pair<int64_t, int>> document_windows(int64_t n_tokens, int ctx, int min_tokens);

// Streams the documents of a listing in order, tokenizing one file at a time (no BOS is added:
// windows after a file's first start mid-text anyway, and the sinks take the first positions).
class corpus_reader {
 public:
  corpus_reader(const corpus_listing& listing, const tokenizer& vocab, int ctx, int min_tokens);

  // Starts at file `file`, at its first window with offset >= offset (resuming after a document).
  void seek(int file, int64_t offset);
  // The next document; false when the corpus is exhausted.
  bool next(corpus_document& doc);

  // For progress: document tokens left in the corpus, estimated from the files not yet read at
  // the tokens-per-byte rate of those read (exact for the current file); -1 before any file.
  int64_t tokens_left_estimate() const;

 private:
  void load_file(int file);

  const corpus_listing& listing_;
  const tokenizer& vocab_;
  int ctx_, min_tokens_;
  int file_ = 0;                   // the file documents come from next
  int loaded_ = -1;                // the file ids_ and windows_ hold; -1 = none
  std::vector<int32_t> ids_;       // [n_tokens] of file loaded_
  std::vector<std::pair<int64_t, int>> windows_;
  size_t next_window_ = 0;
  int64_t min_offset_ = 0;         // seek's offset, applies to file_ only
  int64_t bytes_read_ = 0, doc_tokens_read_ = 0;
};

}  // namespace kvgate
