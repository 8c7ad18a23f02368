// klgrad.bench's rows for the C++ kernels: the measurement `klgrad bench` runs
// (klgrad/bench.hpp, through the front end's bench_json), the GIL released while it runs,
// returned as the same JSON text, which the package turns into a dict.
#include "binding.hpp"

#include <klgrad_frontend/bench_json.hpp>

#include <nanobind/stl/vector.h>

#include <vector>

namespace klgrad::python {
namespace {

namespace bj = frontend::bench_json;

/// One row: kind "spec" (name a spec text) or "logits" (name a divergence) on a padded batch
/// (sequences x positions) or a packed one (tokens > 0, lengths cycled). The package checks
/// the arguments in its own words first; an unknown divergence is refused here as
/// ValueError naming logits=, a bad spec as SpecError (the library's message names it).
std::string bench_text(const std::string& kind, const std::string& name, Index sequences,
                       Index positions, Index tokens, const std::vector<Index>& lengths,
                       Index vocabulary, const std::string& dtype, int threads, double seconds) {
  const auto format = bj::format_named(dtype);
  if (!format)
    throw argument_error{python_error::value, "dtype= must be \"float\", \"double\", \"bf16\" or "
                                              "\"fp16\", got \"" + dtype + "\""};
  const bj::kind k = kind == "logits" ? bj::kind::logits : bj::kind::spec;
  bench::batch_shape shape;
  shape.sequences = sequences;
  shape.positions = positions;
  shape.tokens = tokens;
  shape.lengths = lengths;
  shape.vocabulary = vocabulary;
  bench::settings how;
  how.seconds = seconds;
  how.threads = threads;
  try {
    nb::gil_scoped_release unlocked;
    return bj::result_json(k, bj::measure(k, name, "logits='" + name + "': ", shape, *format, how)).dump();
  } catch (const frontend::usage_error& e) {
    throw argument_error{python_error::value, e.what()};
  }
}

}  // namespace

void bind_bench(nb::module_& m) {
  m.def("bench_kernel", &bench_text, nb::arg("kind"), nb::arg("name"), nb::arg("sequences"),
        nb::arg("positions"), nb::arg("tokens"), nb::arg("lengths"), nb::arg("vocabulary"),
        nb::arg("dtype"), nb::arg("threads"), nb::arg("seconds"),
        "The measurement behind klgrad.bench's kernel rows (klgrad/bench.py): JSON text.");
}

}  // namespace klgrad::python
