// Shared by the tests of the gradient written over the logits (test_logits.cpp,
// test_logits_top_k.cpp): a batch with the rows that take each kernel's special paths, and
// the check that a call writing its gradient over z gives what it gives into a separate
// array.
#pragma once

#include <klgrad/logits.hpp>

#include <catch2/catch.hpp>

#include "logits_oracle.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace over_logits {

using klgrad::Index;
template <class T>
using rows = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using column = Eigen::Array<T, Eigen::Dynamic, 1>;
using mask_rows = Eigen::Array<unsigned char, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// 2 sequences of 3 rows of V entries: ordinary rows, -inf entries in row 1 (every third)
/// and row 2 (the first half: blocks before the row's first finite entry), in z and z_ref
/// alike (so that every divergence stays finite), ties in row 3 (small integers: many
/// entries equal to a top-k threshold), row 4 masked and holding NaN; with log_probs each
/// valid row's log-softmax.
template <class T>
struct batch {
  rows<T> z, zr;
  mask_rows mask;
  Index rows_n() const { return z.rows(); }
};

template <class T>
batch<T> batch_for(Index V, bool log_probs, unsigned seed) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  logits_oracle::Rows z = logits_oracle::random_rows(6, V, 3.0, seed),
                      zr = logits_oracle::random_rows(6, V, 2.0, seed + 1);
  for (Index j = 0; j < V; ++j) {
    if (j % 3 == 1) z(1, j) = zr(1, j) = -inf;
    if (2 * j < V) z(2, j) = zr(2, j) = -inf;
    z(3, j) = std::round(z(3, j));
    zr(3, j) = std::round(zr(3, j));
  }
  if (log_probs)
    for (logits_oracle::Rows* x : {&z, &zr})
      for (Index r = 0; r < 6; ++r) {
        const auto lp = logits_oracle::log_softmax(x->row(r).data(), V, 1);
        for (Index j = 0; j < V; ++j) (*x)(r, j) = double(lp[std::size_t(j)]);
      }
  batch<T> b;
  b.z = z.cast<T>();
  b.zr = zr.cast<T>();
  b.z.row(4).setConstant(T(std::nan("")));
  b.mask = mask_rows::Ones(2, 3);
  b.mask(1, 1) = 0;  // row 4
  return b;
}

template <class A, class B>
bool same_bits(const A& a, const B& b) {
  return a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), std::size_t(a.size()) * sizeof(*a.data())) == 0;
}

/// run(logit batch, value, grad) -> logits_summary once into a separate grad and once with
/// grad = z itself: the same values and loss, and the same gradient bit for bit (or, with
/// bitwise = false, within a few units in the last place of the largest entry).
template <class T, class Run>
void check_over_z(const batch<T>& b, Run&& run, bool bitwise = true) {
  const Index N = b.rows_n(), V = b.z.cols();
  rows<T> grad(N, V), over = b.z;
  column<T> value(N), value_over(N);
  grad.setConstant(T(7));
  const auto apart = run(klgrad::logit_rows(b.z, b.zr, b.mask), value, grad);
  const auto in_place = run(klgrad::logit_rows(over, b.zr, b.mask), value_over, over);
  CHECK(same_bits(value, value_over));
  CHECK(apart.loss == in_place.loss);
  CHECK(apart.rows == 5);
  CHECK(grad.allFinite());
  if (bitwise) {
    CHECK(same_bits(grad, over));
  } else {
    const T scale = grad.abs().maxCoeff();
    CHECK(((grad - over).abs() <= 8 * std::numeric_limits<T>::epsilon() * scale).all());
  }
}

/// Calls f(log_probs, tau) for the settings the over-z tests sweep: logits at temperatures
/// 1 and 0.7, and log-probabilities (whose temperature is 1).
template <class F>
void for_each_setting(F&& f) {
  f(false, 1.0);
  f(false, 0.7);
  f(true, 1.0);
}

}  // namespace over_logits
