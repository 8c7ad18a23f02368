// Reading the program's JSON input from a file or stdin (the front end reads text, never
// files): what only the CLI needs, for it reads one document per run.
#pragma once

#include <klgrad_frontend/errors.hpp>
#include <klgrad_frontend/json_input.hpp>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <system_error>

namespace klgrad::cli {

/// A file that cannot be opened or read (or is a directory).
struct file_error : frontend::usage_error {
  using frontend::usage_error::usage_error;
};

/// Reads JSON from a file, or from stdin when the path is empty or "-". The document is
/// never freed (the program ends after one command): freeing a large one costs time, and
/// nlohmann frees through a heap stack, which on an exhausted heap would abort the program
/// instead of reporting std::bad_alloc.
inline const nlohmann::json& read_json(const std::string& path) {
  std::string text;
  const bool stdin_input = path.empty() || path == "-";
  if (stdin_input) {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec))
      throw file_error("'" + path + "' is a directory, not a JSON file");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw file_error("cannot open '" + path + "': " + std::strerror(errno));
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (in.bad()) throw file_error("cannot read '" + path + "': " + std::strerror(errno));
  }
  auto* doc = new nlohmann::json;
  frontend::parse_json(text, stdin_input ? "-" : path, *doc);
  return *doc;
}

}  // namespace klgrad::cli
