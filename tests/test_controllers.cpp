// KL controllers (controllers.hpp): the fixed controller, and the adaptive proportional
// controller against its formula at points inside and beyond the clip.
#include <klgrad/controllers.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

TEST_CASE("controllers: fixed beta never moves", "[controllers]") {
  klgrad::fixed_kl_controller c(0.05);
  CHECK(c.update(100.0, 256) == 0.05);
  CHECK(c.update(0.0, 256) == 0.05);
  CHECK(c.beta() == 0.05);
  CHECK_THROWS_AS(klgrad::fixed_kl_controller(-1.0), klgrad::input_error);
  CHECK_THROWS_AS(c.update(std::nan(""), 1), klgrad::input_error);
}

TEST_CASE("controllers: adaptive beta follows Ziegler et al.'s proportional rule",
          "[controllers]") {
  // target 6, horizon 10000, n_steps 256: beta *= 1 + clip(kl/6 - 1, -0.2, 0.2) * 0.0256.
  klgrad::adaptive_kl_controller c(0.1, 6.0, 10000.0);
  double beta = 0.1;
  struct point {
    double kl, error;
  };
  const point points[] = {
      {6.6, 0.1},    // 6.6/6 - 1 = 0.1, inside the clip
      {12.0, 0.2},   // 12/6 - 1 = 1 -> clipped to 0.2
      {0.0, -0.2},   // 0/6 - 1 = -1 -> clipped to -0.2
      {5.7, -0.05},  // 5.7/6 - 1 = -0.05
      {6.0, 0.0},    // on target: no change
      {7.2, 0.2},    // 7.2/6 - 1 = 0.2 exactly at the clip
      {-3.0, -0.2},  // a negative (k1) estimate: -1.5 -> -0.2
  };
  for (const auto& p : points) {
    INFO("kl = " << p.kl);
    CHECK(c.error(p.kl) == Approx(p.error).margin(1e-15));
    beta *= 1.0 + p.error * 256.0 / 10000.0;
    CHECK(c.update(p.kl, 256) == Approx(beta).epsilon(1e-15));
    CHECK(c.beta() == Approx(beta).epsilon(1e-15));
  }
  // First step written out: 0.1 * (1 + 0.1 * 0.0256) = 0.100256.
  klgrad::adaptive_kl_controller d(0.1, 6.0, 10000.0);
  CHECK(d.update(6.6, 256) == Approx(0.100256).epsilon(1e-15));
  // A different clip.
  klgrad::adaptive_kl_controller e(1.0, 1.0, 100.0, 0.5);
  CHECK(e.update(3.0, 10) == Approx(1.0 * (1 + 0.5 * 0.1)).epsilon(1e-15));
  CHECK(e.update(0.8, 0) == Approx(1.05).epsilon(1e-15));  // no samples, no change
}

TEST_CASE("controllers: bad settings and measurements are reported", "[controllers][errors]") {
  const double inf = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(klgrad::adaptive_kl_controller(0.1, 0.0, 100.0), klgrad::input_error);
  CHECK_THROWS_AS(klgrad::adaptive_kl_controller(0.1, 1.0, -5.0), klgrad::input_error);
  CHECK_THROWS_AS(klgrad::adaptive_kl_controller(-0.1, 1.0, 5.0), klgrad::input_error);
  CHECK_THROWS_AS(klgrad::adaptive_kl_controller(0.1, inf, 5.0), klgrad::input_error);
  klgrad::adaptive_kl_controller c(0.1, 1.0, 100.0);
  try {
    c.update(std::nan(""), 4);
    FAIL("no error");
  } catch (const klgrad::input_error& e) {
    CHECK(std::string(e.what()).find("current_kl = nan") != std::string::npos);
  }
  CHECK_THROWS_AS(c.update(1.0, -1), klgrad::input_error);
  CHECK(c.beta() == 0.1);
}
