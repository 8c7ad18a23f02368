// No kernel allocates: evaluate() for every spec the tests sweep, on padded and packed
// batches in float and double, and the full-vocabulary kernels, each run inside a window
// where Eigen's run-time malloc check is on (EIGEN_RUNTIME_NO_MALLOC, its assertion made to
// throw so that it works in release builds too) and a replaced operator new counts calls.
// A program of its own: both instruments change what every translation unit sees.
#include <stdexcept>
#define EIGEN_RUNTIME_NO_MALLOC
#define eigen_assert(x) \
  ((x) ? void(0) : throw std::logic_error("Eigen assertion failed: " #x))
#define CATCH_CONFIG_MAIN

#include "spec_strings.hpp"

#include <klgrad/klgrad.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

namespace {
std::atomic<bool> counting{false};
const int* volatile escaped = nullptr;  // where a test's allocation escapes, so that no
                                        // compiler elides it
std::atomic<long> allocations{0};
}  // namespace

// Every replaceable allocation function except the aligned ones (which stay a matching pair
// of the runtime's) counts and allocates with malloc; every deallocation function frees:
// a partial set would pair one runtime's new with free (ASan reports Catch's nothrow new).
// gcc, seeing free() given what operator new returned, would warn of a mismatch that the
// replacement makes correct.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
namespace {
void* counted_malloc(std::size_t n) noexcept {
  if (counting) ++allocations;
  return std::malloc(n ? n : 1);
}
void* counted_or_throw(std::size_t n) {
  if (void* p = counted_malloc(n)) return p;
  throw std::bad_alloc();
}
}  // namespace
void* operator new(std::size_t n) { return counted_or_throw(n); }
void* operator new[](std::size_t n) { return counted_or_throw(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return counted_malloc(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

using klgrad::Index;

/// Runs f with allocation forbidden; returns the operator new calls it made (Eigen's own
/// allocations throw).
template <class F>
long allocations_in(F&& f) {
  allocations = 0;
  counting = true;
  Eigen::internal::set_is_malloc_allowed(false);
  try {
    f();
  } catch (...) {
    Eigen::internal::set_is_malloc_allowed(true);
    counting = false;
    throw;
  }
  Eigen::internal::set_is_malloc_allowed(true);
  counting = false;
  return allocations;
}

template <class T>
using rows = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class T>
rows<T> random_rows(Index r, Index c, double lo, double hi, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> u(lo, hi);
  rows<T> x(r, c);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = T(u(gen));
  return x;
}

}  // namespace

TEMPLATE_TEST_CASE("evaluate allocates nothing, for any spec, padded or packed", "[alloc]",
                   float, double) {
  using T = TestType;
  // 600 tokens a row: several chunks and a partial packet; one row fully masked.
  const Index B = 3, L = 600;
  const rows<T> lp = random_rows<T>(B, L, -4, 0, 1), lr = random_rows<T>(B, L, -4, 0, 2),
                lb = random_rows<T>(B, L, -4, 0, 3);
  rows<T> mask = (random_rows<T>(B, L, 0, 1, 4) < T(0.8)).template cast<T>();
  mask.row(1).setZero();
  rows<T> value(B, L), coef(B, L);
  const Eigen::Array<Index, Eigen::Dynamic, 1> offsets =
      (Eigen::Array<Index, 4, 1>() << 0, 0, 700, B * L).finished();
  const auto padded = klgrad::padded(lp, lr, mask).with_behavior(lb);
  using flat = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;
  const auto packed = klgrad::packed(flat(lp.data(), B * L), flat(lr.data(), B * L), offsets)
                          .with_behavior(flat(lb.data(), B * L));
  Eigen::Array<T, Eigen::Dynamic, 1> flat_value(B * L), flat_coef(B * L);
  const auto specs = klgrad::test::all_spec_strings();
  for (const auto& text : specs) {
    const klgrad::spec s = klgrad::parse_spec(text);
    INFO(text);
    CHECK(allocations_in([&] { klgrad::evaluate(s, padded, value, coef); }) == 0);
    CHECK(allocations_in([&] { klgrad::evaluate(s, packed, flat_value, flat_coef); }) == 0);
  }
}

/// Every full-vocabulary path on logits stored as S (float, double, Eigen::bfloat16,
/// Eigen::half), computed and written in T = compute_t<S>: no allocation. V = 5003: several
/// online blocks and a packet tail.
template <class S>
void check_full_vocabulary_paths() {
  using T = klgrad::detail::compute_t<S>;
  const Index N = 3, V = 5003, k = 20;
  const rows<S> z = random_rows<T>(N, V, -3, 3, 5).template cast<S>(),
                zr = random_rows<T>(N, V, -3, 3, 6).template cast<S>();
  Eigen::Array<T, Eigen::Dynamic, 1> value(N), logp(N), coef(N);
  coef << T(0.5), T(-1), T(2);
  rows<T> grad(N, V);
  Eigen::Array<int, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> top(N, k);
  const Eigen::Array<int, Eigen::Dynamic, 1> ids = (Eigen::Array<int, 3, 1>() << 0, 17, 5002).finished();
  const auto batch = klgrad::logit_rows(z, zr);
  klgrad::logits_options opt;
  opt.temperature = 0.7;
  using klgrad::divergence;
  for (divergence d :
       {divergence::reverse_kl, divergence::forward_kl, divergence::jensen_shannon}) {
    INFO(klgrad::to_string(d));
    CHECK(allocations_in([&] { klgrad::logits_divergence(d, batch, value, opt); }) == 0);
    CHECK(allocations_in([&] { klgrad::logits_divergence(d, batch, value, grad, opt); }) == 0);
  }
  // With the caller's workspace.
  std::vector<T> work(std::size_t(klgrad::logits_workspace_size<T>(V)));
  klgrad::logits_options with = opt;
  with.workspace = work.data();
  with.workspace_size = Index(work.size());
  for (divergence d :
       {divergence::reverse_kl, divergence::forward_kl, divergence::jensen_shannon}) {
    INFO(klgrad::to_string(d) << " with a workspace");
    CHECK(allocations_in([&] { klgrad::logits_divergence(d, batch, value, with); }) == 0);
    CHECK(allocations_in([&] { klgrad::logits_divergence(d, batch, value, grad, with); }) == 0);
  }
  CHECK(allocations_in([&] { klgrad::forward_kl_top_k(batch, top, value, opt); }) == 0);
  CHECK(allocations_in([&] { klgrad::forward_kl_top_k(batch, top, value, grad, opt); }) == 0);
  for (klgrad::top_k_form f : klgrad::top_k_forms) {
    INFO(klgrad::to_string(f));
    CHECK(allocations_in([&] { klgrad::top_k_divergence(f, batch, top, value, opt); }) == 0);
    CHECK(allocations_in([&] { klgrad::top_k_divergence(f, batch, top, value, grad, opt); }) == 0);
  }
  CHECK(allocations_in([&] { klgrad::selective_log_softmax(z, ids, logp, 0.7); }) == 0);
  CHECK(allocations_in([&] { klgrad::sampled_logits_gradient(z, ids, coef, grad, 0.7); }) == 0);
}

TEMPLATE_TEST_CASE("the full-vocabulary kernels allocate nothing", "[alloc]", float, double) {
  check_full_vocabulary_paths<TestType>();
}

TEMPLATE_TEST_CASE("the full-vocabulary kernels on 16-bit logits allocate nothing", "[alloc][16bit]",
                   Eigen::bfloat16, Eigen::half) {
  check_full_vocabulary_paths<TestType>();
}

TEST_CASE("the instruments see an allocation", "[alloc]") {
  // Without this, a broken instrument would pass every test above.
  CHECK(allocations_in([] {
          std::vector<int> v(3);
          escaped = v.data();
        }) == 1);
  CHECK_THROWS_AS(allocations_in([] { Eigen::ArrayXd x(64); }), std::logic_error);
}
