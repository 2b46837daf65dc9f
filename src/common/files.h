// Whole-file reading and writing shared by every module that takes or writes a path.
#pragma once

#include <cstdint>
#include <string>

namespace kvgate {

// Largest file read_file() takes by default (4 GiB): a text, manifest or shard larger than this is
// refused with an error instead of exhausting memory.
inline constexpr uint64_t k_read_file_max_bytes = uint64_t(4) << 30;

// The file's bytes; throws error("cannot read file: PATH") when it cannot be opened, and an error
// naming the path and the cap when it holds more than max_bytes (pipes and other files without a
// size are read up to the cap).
std::string read_file(const std::string& path, uint64_t max_bytes = k_read_file_max_bytes);

// Writes bytes to "<path>.tmp.<pid>" and renames it over path (same directory, so the rename is
// atomic: a reader, or a rerun after an interruption, sees the old file or the whole new one).
// Throws error naming the file on failure.
void write_file_atomically(const std::string& path, const std::string& bytes);

}  // namespace kvgate
