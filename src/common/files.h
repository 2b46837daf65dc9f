// Whole-file reading shared by every module that takes a path from the user.
#pragma once

#include <string>

namespace kvgate {

// The file's bytes; throws error("cannot read file: PATH") when it cannot be opened.
std::string read_file(const std::string& path);

}  // namespace kvgate
