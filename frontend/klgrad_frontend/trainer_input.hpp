// A trainer's configuration as the flat key map the mapping of trainer_config.hpp reads:
// from a nested mapping (JSON, as Python's dict arrives) or from a command line, plus --set
// overrides. (The YAML front end, linked by the tool only, is tools/trainer_yaml.hpp.)
#pragma once

#include "errors.hpp"

#include <nlohmann/json.hpp>

#include <cctype>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace klgrad::frontend {

/// Dotted key (a YAML path, or a command-line option without its dashes) -> scalar text.
using config_map = std::map<std::string, std::string>;

/// A nested JSON object (a trainer's YAML or JSON as loaded) as dotted keys.
inline void flatten(const nlohmann::json& j, const std::string& prefix, config_map& out) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it)
      flatten(it.value(), prefix.empty() ? it.key() : prefix + "." + it.key(), out);
  } else if (!prefix.empty()) {
    out[prefix] = j.is_string() ? j.get<std::string>() : j.dump();
  }
}

/// The words of a command line as a POSIX shell splits them: quotes, backslash escapes,
/// line continuations, # comments and the parentheses of an argument array (the file a user
/// keeps of a launch command, or the launch script itself).
inline std::vector<std::string> split_command_line(std::string_view text) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  char quote = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quote) {
      if (c == quote) quote = 0;
      else if (c == '\\' && quote == '"' && i + 1 < text.size()) word += text[++i];
      else word += c;
    } else if (c == '\'' || c == '"') {
      quote = c, in_word = true;
    } else if (c == '\\' && i + 1 < text.size()) {
      if (text[i + 1] != '\n') word += text[i + 1], in_word = true;
      ++i;
    } else if (c == '#' && !in_word) {
      while (i < text.size() && text[i] != '\n') ++i;
    } else if (std::isspace(static_cast<unsigned char>(c)) || c == '(' || c == ')') {
      if (in_word) words.push_back(word);
      word.clear(), in_word = false;
      if (c == '(' || c == ')') words.emplace_back(1, c);  // as the shell: a word of its own
    } else {
      word += c, in_word = true;
    }
  }
  if (quote) throw trainer_error(std::string("the command line has an unclosed ") + quote);
  if (in_word) words.push_back(word);
  return words;
}

/// A word that ends a command or an array in a launch script (`)`, `;`, `&&`, `|`, ...):
/// never an option's value.
inline bool shell_syntax(const std::string& w) {
  return w == "(" || w == ")" || w == ";" || w == "&&" || w == "||" || w == "|" || w == "&";
}

/// The options of a command line (argparse style): --key value, --key=value, or a flag
/// --key (then "true"). Other words (the program, positionals) are not options. An option
/// given twice keeps the last value, as argparse does, with a warning.
inline config_map read_command_line(const std::vector<std::string>& words,
                                    std::vector<std::string>& warnings) {
  config_map out;
  for (std::size_t i = 0; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (w.size() < 3 || w.compare(0, 2, "--") != 0) continue;
    std::string key = w.substr(2), value = "true";
    if (const auto eq = key.find('='); eq != std::string::npos) {
      value = key.substr(eq + 1), key.resize(eq);
    } else if (i + 1 < words.size() && words[i + 1].compare(0, 2, "--") != 0 &&
               !shell_syntax(words[i + 1])) {
      value = words[++i];
    }
    const auto seen = out.find(key);
    if (seen != out.end() && seen->second != value)
      warnings.push_back("--" + key + " is given twice ('" + seen->second + "', then '" + value +
                         "'): the last wins, as in argparse");
    out[key] = value;
  }
  return out;
}

/// Applies --set KEY=VALUE overrides.
inline void apply_overrides(config_map& m, const std::vector<std::string>& sets) {
  for (const auto& s : sets) {
    const auto eq = s.find('=');
    if (eq == std::string::npos || eq == 0)
      throw trainer_error("--set '" + s + "' must be KEY=VALUE (e.g. algorithm.use_kl_in_reward=true)");
    m[s.substr(0, eq)] = s.substr(eq + 1);
  }
}

}  // namespace klgrad::frontend
