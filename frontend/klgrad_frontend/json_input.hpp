// Reading the front end's JSON input safely: bounded nesting, no duplicate keys, numbers in
// the double range, known keys only, and values shown in messages without dumping them whole.
#pragma once

#include "errors.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <initializer_list>
#include <set>
#include <string>
#include <vector>

namespace klgrad::frontend {

/// Deepest nesting accepted: the deepest input (B x T x V logits in an object) needs 4; the
/// bound keeps every recursive walk of a value (ours and nlohmann's dump) shallow.
constexpr int max_json_depth = 32;

/// A JSON value for a message: a scalar or a short flat list as text (cut short), another
/// list or an object by its size.
inline std::string shown(const nlohmann::json& x) {
  const bool flat_list = x.is_array() && x.size() <= 4 &&
                         std::none_of(x.begin(), x.end(), [](const nlohmann::json& e) {
                           return e.is_structured();
                         });
  if (x.is_array() && !flat_list)
    return "a list of " + std::to_string(x.size()) + (x.size() == 1 ? " entry" : " entries");
  if (x.is_object())
    return "an object of " + std::to_string(x.size()) + (x.size() == 1 ? " key" : " keys");
  const std::string text = x.dump();
  return text.size() > 60 ? text.substr(0, 57) + "..." : text;
}

/// Where the parser is, kept by the parse callback: one frame per open list or object.
struct json_path {
  struct frame {
    bool list;
    std::string key;      ///< the current key, in an object (cut short)
    std::size_t count;    ///< entries finished, in a list (the current entry's index)
    std::set<std::string> keys;  ///< keys seen, in an object
  };
  std::vector<frame> frames;

  /// The path of the value being parsed, as a field name: logp[0][3], or the key alone.
  std::string text() const {
    std::string out;
    for (const frame& f : frames) {
      if (f.list) out += "[" + std::to_string(f.count) + "]";
      else out += (out.empty() ? "" : ".") + f.key;
    }
    return out.empty() ? "the input" : out;
  }
  void finished() {
    if (!frames.empty() && frames.back().list) ++frames.back().count;
  }
};

/// Parses text (read from `source`, for messages) as JSON into `doc`, refusing nesting
/// deeper than max_json_depth, a key given twice in an object and numbers outside the double
/// range, each with the path of the offending value.
inline void parse_json(const std::string& text, const std::string& source, nlohmann::json& doc) {
  using event = nlohmann::json::parse_event_t;
  json_path path;
  auto track = [&](int depth, event e, nlohmann::json& parsed) {
    switch (e) {
      case event::object_start:
      case event::array_start:
        if (depth >= max_json_depth)
          throw json_error("'" + source + "': " + path.text() + " is nested deeper than " +
                           std::to_string(max_json_depth) +
                           " levels; klgrad's inputs are at most 4 deep");
        path.frames.push_back({e == event::array_start, "", 0, {}});
        break;
      case event::key: {
        auto& f = path.frames.back();
        const std::string& key = parsed.get_ref<const std::string&>();
        f.key = key.size() > 60 ? key.substr(0, 57) + "..." : key;  // for messages
        if (!f.keys.insert(key).second)
          throw json_error("'" + source + "': key '" + path.text() + "' is given twice");
        break;
      }
      case event::object_end:
      case event::array_end:
        path.frames.pop_back();
        path.finished();
        break;
      case event::value:
        path.finished();
        break;
    }
    return true;
  };
  try {
    // The DOM parser behind nlohmann::json::parse, writing into the caller's doc.
    nlohmann::detail::json_sax_dom_callback_parser<nlohmann::json> dom(doc, track, true);
    nlohmann::json::sax_parse(text, &dom);
  } catch (const nlohmann::json::exception& e) {
    // nlohmann's ids are unique over its exception types; 406 is out_of_range's "number
    // overflow parsing '1e999'", the number in the message's last quotes.
    if (e.id != 406) throw json_error("'" + source + "' is not valid JSON: " + e.what());
    const std::string what = e.what();
    const auto close = what.rfind('\''), open = what.rfind('\'', close - 1);
    throw json_error("'" + source + "': " + path.text() + " is " +
                     what.substr(open + 1, close - open - 1) +
                     ", outside the range of a double (about +-1.8e308)");
  }
}

/// Edit distance of a and b (for suggesting a key), capped: short keys only.
inline std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
      diagonal = up;
    }
  }
  return row[b.size()];
}

/// Refuses a key of the object `in` that is not among `known`, naming it, the nearest known
/// key when it is a likely typo, and every known key. `what` names the input ("logits input").
inline void require_known_keys(const nlohmann::json& in, std::initializer_list<const char*> known,
                               const std::string& what) {
  for (const auto& item : in.items()) {
    const std::string& key = item.key();
    if (std::any_of(known.begin(), known.end(), [&](const char* k) { return key == k; }))
      continue;
    std::string list, near;
    std::size_t best = 3;  // a typo is at most 2 edits away
    for (const char* k : known) {
      list += std::string(list.empty() ? "" : ", ") + k;
      if (key.size() > 64) continue;
      const std::size_t d = edit_distance(key, k);
      if (d < best) best = d, near = k;
    }
    const std::string shown_key = key.size() > 60 ? key.substr(0, 57) + "..." : key;
    throw schema_error(what + " has an unknown key '" + shown_key + "'" +
                       (near.empty() ? "" : " (did you mean '" + near + "'?)") + "; keys: " + list);
  }
}

}  // namespace klgrad::frontend
