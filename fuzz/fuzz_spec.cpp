// libFuzzer target for the spec parser: parse_spec never crashes, refuses only with a
// klgrad::spec_error of bounded length, and every spec it accepts prints to a canonical
// string that reads back as the same spec (also with its preset expanded) and prints again
// as the same string. The corpus is fuzz/corpus/fuzz_spec/, the dictionary fuzz/spec.dict.
#include <klgrad/explain.hpp>
#include <klgrad/spec/spec.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>

namespace {

// A message quotes at most 80 characters of the spec and of the word at fault (issue 13,
// item 9), plus the allowed words: far below this whatever the input's length.
constexpr std::size_t max_message = 1024;

// The first 300 bytes of an input, non-printable ones as \xNN.
std::string printable(std::string_view input) {
  std::string out;
  for (const char c : input.substr(0, 300)) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) {
      out += c;
    } else {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", unsigned{u});
      out += hex;
    }
  }
  return input.size() > 300 ? out + "... (" + std::to_string(input.size()) + " bytes)" : out;
}

[[noreturn]] void fail(const char* what, std::string_view input, const std::string& detail) {
  std::fprintf(stderr, "fuzz_spec: %s\n  input: '%s'\n  %s\n", what, printable(input).c_str(),
               printable(detail).c_str());
  std::abort();
}

// s reads back from its canonical string as itself, and that string is a fixed point.
void check_round_trip(const klgrad::spec& s, std::string_view input, const char* which) {
  const std::string text = klgrad::to_string(s);
  klgrad::spec back;
  try {
    back = klgrad::parse_spec(text);
  } catch (const klgrad::spec_error& e) {
    fail(which, input, "to_string gave '" + text + "', which parse_spec refuses: " + e.what());
  }
  if (back != s)
    fail(which, input, "parse_spec(to_string(s)) != s; to_string(s) = '" + text +
                           "', read back as '" + klgrad::to_string(back) + "'");
  if (klgrad::to_string(back) != text)
    fail(which, input, "to_string is not idempotent: '" + text + "' then '" +
                           klgrad::to_string(back) + "'");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  klgrad::spec s;
  try {
    s = klgrad::parse_spec(input);
  } catch (const klgrad::spec_error& e) {
    const std::string_view message = e.what();
    if (message.size() > max_message)
      fail("message too long", input, std::to_string(message.size()) + " characters: " +
                                          std::string(message));
    return 0;
  } catch (const std::exception& e) {
    fail("refused with an exception other than klgrad::spec_error", input, e.what());
  }
  check_round_trip(s, input, "round trip");
  check_round_trip(klgrad::expand(s), input, "round trip of expand(s)");
  // What a spec is for must accept every spec the parser accepts.
  try {
    (void)klgrad::explain(s);
  } catch (const std::exception& e) {
    fail("explain refuses a spec parse_spec accepted", input, e.what());
  }
  return 0;
}
