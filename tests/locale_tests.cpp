// Specs and messages under a comma-decimal locale (de_DE.UTF-8, where strtod reads "0,5" and
// printf and iostreams print "0,5" and "12.345"), set by setlocale and by
// std::locale::global: klgrad reads and prints numbers as in the C locale all the same. A
// program of its own, since it changes the process's locale; CTest runs it with LOCPATH at the
// locale its fixture generates with localedef (tests/CMakeLists.txt). It fails, not skips,
// when the locale cannot be set.
#define CATCH_CONFIG_MAIN
#include "spec_strings.hpp"

#include <klgrad/controllers.hpp>
#include <klgrad/spec/spec.hpp>

#include <catch2/catch.hpp>

#include <clocale>
#include <cstdlib>
#include <locale>
#include <sstream>
#include <string>

// glibc's setlocale keeps a 51-byte buffer (__argz_add_sep) for the life of the process,
// which LeakSanitizer reports as a leak in the ASan build; it is glibc's, not klgrad's.
extern "C" const char* __lsan_default_suppressions() { return "leak:__argz_add_sep\n"; }

namespace {

constexpr const char* comma_locale = "de_DE.UTF-8";

/// The comma locale, set through the C library or as the C++ global locale (which sets the
/// C library's too) for the life of the object, then "C" again.
class comma_decimal {
 public:
  explicit comma_decimal(bool cpp_global) : cpp_global_(cpp_global) {
    const char* where = std::getenv("LOCPATH");
    INFO("LOCPATH=" << (where ? where : "(unset)")
                    << "; run through CTest, whose fixture generates the locale there");
    if (cpp_global) {
      REQUIRE_NOTHROW(std::locale::global(std::locale(comma_locale)));
      std::ostringstream out;  // a fresh stream takes the global locale
      out << 0.5 << ' ' << 12345;
      REQUIRE(out.str() == "0,5 12.345");
    } else {
      REQUIRE(std::setlocale(LC_ALL, comma_locale) != nullptr);
    }
    // The C library's numbers are the comma's too.
    REQUIRE(std::string(std::localeconv()->decimal_point) == ",");
    REQUIRE(std::strtod("0,5", nullptr) == 0.5);
  }
  ~comma_decimal() {
    if (cpp_global_) std::locale::global(std::locale::classic());
    std::setlocale(LC_ALL, "C");
  }
  comma_decimal(const comma_decimal&) = delete;
  comma_decimal& operator=(const comma_decimal&) = delete;

 private:
  bool cpp_global_;
};

std::string refusal(const std::string& text) {
  try {
    klgrad::parse_spec(text);
  } catch (const klgrad::spec_error& e) {
    return e.what();
  }
  return "(accepted)";
}

std::string message_of(void (*f)()) {
  try {
    f();
  } catch (const klgrad::error& e) {
    return e.what();
  }
  return "(no error)";
}

void check_numbers_are_the_c_locales() {
  // Every numeric key reads its decimal point; the values are the compiler's readings.
  const auto a = klgrad::parse_spec(
      "k3-as-loss,is=detached,is-clip=1.5,is-mask=0.25:2.5,clamp=log-ratio:-1.5:2.5/"
      "value:-0.5:0.75,agg=token-sum-norm,agg-norm=0.5,agg-scale=0.125,beta=0.04");
  CHECK(a.importance.clip == 1.5);
  CHECK(a.importance.mask_lo == 0.25);
  CHECK(a.importance.mask_hi == 2.5);
  CHECK(a.clamp.log_lo == -1.5);
  CHECK(a.clamp.log_hi == 2.5);
  CHECK(a.clamp.value_lo == -0.5);
  CHECK(a.clamp.value_hi == 0.75);
  CHECK(a.aggregation_constants.norm == 0.5);
  CHECK(a.aggregation_constants.scale == 0.125);
  CHECK(a.beta == 0.04);
  const auto b = klgrad::parse_spec(
      "k1-in-reward,level=to-go,gamma=0.99,agg=seq-mean-token-mean,agg-eps=1e-8,"
      "agg-seq-eps=2.5e-1");
  CHECK(b.gamma == 0.99);
  CHECK(b.aggregation_constants.eps == 1e-8);
  CHECK(b.aggregation_constants.seq_eps == 0.25);
  // The canonical text prints a '.', and reads back.
  CHECK(to_string(a) ==
        "k3-as-loss,is=detached,is-clip=1.5,is-mask=0.25:2.5,clamp=log-ratio:-1.5:2.5/"
        "value:-0.5:0.75,agg=token-sum-norm,agg-norm=0.5,agg-scale=0.125,beta=0.04");
  CHECK(to_string(b) ==
        "k1-in-reward,level=to-go,gamma=0.99,agg=seq-mean-token-mean,agg-eps=1e-08,"
        "agg-seq-eps=0.25");
  std::size_t swept = 0;
  for (const std::string& text : klgrad::test::all_spec_strings()) {
    const auto s = klgrad::parse_spec(text);
    CHECK(klgrad::parse_spec(to_string(s)) == s);
    ++swept;
  }
  CHECK(swept > 1000);
  // "0,04" is no number in any locale (and the ',' starts a key).
  CHECK(refusal("k3-as-loss,beta=0,04") ==
        "spec 'k3-as-loss,beta=0,04': '04' is not key=value; keys: preset, is, is-level, "
        "is-clip, is-mask, clamp, level, gamma, agg, agg-norm, agg-eps, agg-seq-eps, agg-scale, "
        "beta, kl");
  // Messages print numbers the parser reads back: validation's, the grammar's, cat()'s.
  CHECK(refusal("k3-as-loss,beta=-0.5") == "spec 'k3-as-loss,beta=-0.5': beta=-0.5 must be >= 0");
  CHECK(refusal("k3-as-loss,agg-scale=-2.5") ==
        "spec 'k3-as-loss,agg-scale=-2.5': agg-scale=-2.5 must be > 0 (use beta=0 to switch the "
        "term off)");
  CHECK(refusal("k3-as-loss,beta=1e-310") ==
        "spec 'k3-as-loss,beta=1e-310': beta='1e-310' is nonzero but below the smallest normal "
        "double, 2.2250738585072014e-308: write 0 or a larger magnitude");
  CHECK(message_of([] { klgrad::fixed_kl_controller c(-0.25); }) ==
        "fixed_kl_controller: beta = -0.25 must be finite and >= 0");
  CHECK(message_of([] { klgrad::fixed_kl_controller(0.5).update(0.5, -12345); }) ==
        "fixed_kl_controller::update: n_steps = -12345 must be >= 0");
  CHECK(klgrad::detail::cat(0.1f, ' ', 2.5, ' ', 1234567) == "0.1 2.5 1234567");
  CHECK(klgrad::detail::format_number(0.04) == "0.04");
}

}  // namespace

TEST_CASE("locale: numbers read and print as in C under setlocale de_DE", "[locale]") {
  const comma_decimal german(false);
  check_numbers_are_the_c_locales();
}

TEST_CASE("locale: numbers read and print as in C under std::locale::global de_DE",
          "[locale]") {
  const comma_decimal german(true);
  check_numbers_are_the_c_locales();
}
