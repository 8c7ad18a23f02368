// Your own estimator's cost, measured as `klgrad bench` measures the shipped ones: Neyman's
// chi-square (examples/neyman_chi2.hpp) through the fused kernel on a 64 x 1024 float batch,
// beside this machine's triad over the same bytes, timed in the same rounds.
#include "neyman_chi2.hpp"

#include <klgrad/bench.hpp>

#include <iostream>

int main() {
  klgrad::bench::batch_shape shape;
  shape.sequences = 64;
  shape.positions = 1024;
  klgrad::bench::settings how;
  how.seconds = 0.2;
  const klgrad::bench::result r = klgrad::bench::run<neyman_chi2>(
      klgrad::parse_spec("k1-both"), shape, klgrad::bench::number_format::float32, how);
  std::cout << "neyman_chi2 k1-both: " << r.items_per_second.median / 1e6 << " Mtokens/s, "
            << r.of_floor.median << " of the triad's speed over the same bytes\n";
}
