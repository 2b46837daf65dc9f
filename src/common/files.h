// Whole-file reading and writing shared by every module that takes or writes a path.
#pragma once

#include <string>

namespace kvgate {

// The file's bytes; throws error("cannot read file: PATH") when it cannot be opened.
std::string read_file(const std::string& path);

// Writes bytes to "<path>.tmp.<pid>" and renames it over path (same directory, so the rename is
// atomic: a reader, or a rerun after an interruption, sees the old file or the whole new one).
// Throws error naming the file on failure.
void write_file_atomically(const std::string& path, const std::string& bytes);

}  // namespace kvgate
