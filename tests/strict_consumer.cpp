// A user's translation unit under strict warnings (tests/CMakeLists.txt compiles it with
// KLGRAD_STRICT_WARNINGS and -Werror): every header, and the templates a trainer
// instantiates, for float and double, padded and packed. Compiled, never run: a warning
// any of these instantiations gives in a header fails the build.
#include <klgrad/klgrad.hpp>
// Not in the umbrella (it brings <thread>): a user includes it alone.
#include <klgrad/bench.hpp>
// Each header again, so that one the umbrella forgets is still checked (the deprecated
// forwarding headers at the old paths are checked by the self-containment test).
#include <klgrad/controllers.hpp>
#include <klgrad/core/adapter.hpp>
#include <klgrad/core/aggregation.hpp>
#include <klgrad/core/clamp.hpp>
#include <klgrad/core/estimators.hpp>
#include <klgrad/core/importance.hpp>
#include <klgrad/core/level.hpp>
#include <klgrad/core/terms.hpp>
#include <klgrad/evaluate.hpp>
#include <klgrad/explain.hpp>
#include <klgrad/instances.hpp>
#include <klgrad/kernel/chunk.hpp>
#include <klgrad/kernel/coefficient.hpp>
#include <klgrad/kernel/estimates.hpp>
#include <klgrad/kernel/evaluate_options.hpp>
#include <klgrad/kernel/passes.hpp>
#include <klgrad/kernel/plan.hpp>
#include <klgrad/kernel/run.hpp>
#include <klgrad/kernel/sum_to_go.hpp>
#include <klgrad/kernel/weights.hpp>
#include <klgrad/logits.hpp>
#include <klgrad/logits/divergences.hpp>
#include <klgrad/logits/driver.hpp>
#include <klgrad/logits/normal_log.hpp>
#include <klgrad/logits/options.hpp>
#include <klgrad/logits/sampled.hpp>
#include <klgrad/logits/streaming.hpp>
#include <klgrad/logits/top_k.hpp>
#include <klgrad/returns.hpp>
#include <klgrad/spec/presets.hpp>
#include <klgrad/spec/spec.hpp>
#include <klgrad/support/errors.hpp>
#include <klgrad/support/number_text.hpp>
#include <klgrad/support/scalars.hpp>
#include <klgrad/version.hpp>
#include <klgrad/views/batch.hpp>

#include <cstdint>
#include <string>

namespace strict_consumer {

template <class T>
using rows = Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using vec = Eigen::Array<T, Eigen::Dynamic, 1>;

// Log-prob paths: evaluate over padded and packed batches, with and without behaviour
// log-probs and masks (three batch types: each instantiates the kernels of all 16 estimator
// pairs through evaluate's dispatch, whatever the specs), and the reward-shaping helpers.
template <class T>
double log_prob_paths() {
  const Eigen::Index B = 2, L = 3;
  rows<T> logp = rows<T>::Constant(B, L, T(-1)), ref = rows<T>::Constant(B, L, T(-1.5)),
          lb = rows<T>::Constant(B, L, T(-1.2)), value(B, L), coef(B, L);
  rows<unsigned char> bmask = rows<unsigned char>::Ones(B, L);
  vec<T> flat = vec<T>::Constant(6, T(-1)), fvalue(6), fcoef(6);
  vec<std::int64_t> offsets(3);
  offsets << 0, 2, 6;
  const vec<std::int32_t> offsets32 = offsets.template cast<std::int32_t>();
  const vec<bool> flat_mask = vec<bool>::Ones(6);

  double total = 0;
  klgrad::options opt;
  opt.nonfinite = klgrad::nonfinite_policy::propagate;
  for (const char* text :
       {"k3-as-loss,beta=0.04", "k1-in-reward,level=to-go,gamma=0.9",
        "k3~k2-both,is=differentiable,is-clip=2,agg=seq-mean-token-sum-norm,agg-norm=8",
        "abs-as-loss,is=detached,is-level=sequence-mean,clamp=value:-1:1",
        "k2-as-loss,level=sequence,preset=verl"}) {
    const klgrad::spec s = klgrad::parse_spec(text);
    total += klgrad::evaluate(s, klgrad::padded(logp, ref), value, coef).loss;
    total += klgrad::evaluate(s, klgrad::padded(logp, ref, bmask).with_behavior(lb), value, coef,
                              opt).kl;
    total += klgrad::evaluate(s, klgrad::packed(flat, flat, offsets32, flat_mask)
                                     .with_behavior(flat), fvalue, fcoef).loss;
    total += double(klgrad::explain(s).sentence.size()) + double(klgrad::to_string(s).size());
  }

  rows<T> reward = rows<T>::Zero(B, L), shaped(B, L), returns(B, L), adv(B, L);
  const auto layout = klgrad::padded_layout(bmask);
  klgrad::shape_rewards(layout, reward, value, 0.1, shaped);
  klgrad::discounted_returns(layout, shaped, 0.99, returns);
  klgrad::gae(layout, shaped, returns, 0.99, 0.95, adv, returns);
  const auto flat_layout = klgrad::packed_layout(offsets);
  klgrad::discounted_returns(flat_layout, flat, 1.0, fvalue);
  return total + double(adv.sum());
}

// Full-logit paths: every divergence with and without gradient, top-k, the sampled-token
// kernels, masked and unmasked.
template <class T>
double logit_paths() {
  const Eigen::Index N = 4, V = 37;
  rows<T> z = rows<T>::Zero(N, V), zr = rows<T>::Ones(N, V), grad(N, V);
  vec<T> value(N), logp(N), coef = vec<T>::Ones(N);
  rows<float> mask = rows<float>::Ones(2, 2);
  Eigen::Array<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> top(N, 5);
  const vec<std::int32_t> ids = vec<std::int32_t>::Zero(N);

  double total = 0;
  klgrad::logits_options opt;
  for (const auto d : {klgrad::divergence::reverse_kl, klgrad::divergence::forward_kl,
                       klgrad::divergence::jensen_shannon}) {
    total += klgrad::logits_divergence(d, klgrad::logit_rows(z, zr), value, opt).loss;
    total += klgrad::logits_divergence(d, klgrad::logit_rows(z, zr, mask), value, grad, opt).loss;
    total += klgrad::logits_divergence(d, klgrad::logit_rows(z, zr, 2), value, grad, opt).loss;
  }
  total += klgrad::forward_kl_top_k(klgrad::logit_rows(z, zr), top, value, opt).loss;
  total += klgrad::forward_kl_top_k(klgrad::logit_rows(z, zr, mask), top, value, grad, opt).loss;
  klgrad::selective_log_softmax(z, ids, logp);
  klgrad::selective_log_softmax(z, ids, logp, 0.7);
  klgrad::sampled_logits_gradient(z, ids, coef, grad);
  klgrad::sampled_logits_gradient(z, ids, coef, grad, 0.7);
  return total + double(logp.sum()) + double(grad.sum());
}

/// The same paths on 16-bit logits (S: Eigen::bfloat16, Eigen::half), float outputs.
template <class S>
double logit_paths_16bit() {
  const Eigen::Index N = 4, V = 37;
  const rows<S> z = rows<float>::Zero(N, V).cast<S>(), zr = rows<float>::Ones(N, V).cast<S>();
  rows<float> grad(N, V);
  vec<float> value(N), logp(N), coef = vec<float>::Ones(N);
  const rows<float> mask = rows<float>::Ones(2, 2);
  Eigen::Array<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> top(N, 5);
  const vec<std::int32_t> ids = vec<std::int32_t>::Zero(N);
  double total = 0;
  klgrad::logits_options opt;
  for (const auto d : {klgrad::divergence::reverse_kl, klgrad::divergence::forward_kl,
                       klgrad::divergence::jensen_shannon}) {
    total += klgrad::logits_divergence(d, klgrad::logit_rows(z, zr), value, opt).loss;
    total += klgrad::logits_divergence(d, klgrad::logit_rows(z, zr, mask), value, grad, opt).loss;
  }
  for (const auto f : klgrad::top_k_forms)
    total += klgrad::top_k_divergence(f, klgrad::logit_rows(z, zr, mask), top, value, grad, opt).loss;
  klgrad::selective_log_softmax(z, ids, logp, 0.7);
  klgrad::sampled_logits_gradient(z, ids, coef, grad, 0.7);
  return total + double(logp.sum()) + double(grad.sum());
}

// Throughput measurement (bench.hpp): every format, the typed and the runtime entries.
double bench_paths() {
  klgrad::bench::batch_shape shape;
  shape.sequences = 2;
  shape.positions = 3;
  shape.vocabulary = 8;
  const klgrad::spec s = klgrad::parse_spec("k3-as-loss");
  double total = 0;
  for (const auto f : {klgrad::bench::number_format::float32, klgrad::bench::number_format::float64}) {
    total += klgrad::bench::run(s, shape, f).of_floor.median;
    total += klgrad::bench::run<klgrad::k3, klgrad::k2>(s, shape, f).of_floor.median;
  }
  for (const auto f : klgrad::bench::number_format_names)
    total += klgrad::bench::run_logits(klgrad::divergence::reverse_kl, shape, f.value).of_floor.median;
  return total;
}

}  // namespace strict_consumer

// Referenced from a function of external linkage, so that nothing above is discarded unseen.
double klgrad_strict_consumer() {
  klgrad::adaptive_kl_controller c(0.1, 6.0, 10000.0);
  klgrad::fixed_kl_controller f(0.05);
  return strict_consumer::log_prob_paths<float>() + strict_consumer::log_prob_paths<double>() +
         strict_consumer::logit_paths<float>() + strict_consumer::logit_paths<double>() +
         strict_consumer::logit_paths_16bit<Eigen::bfloat16>() +
         strict_consumer::logit_paths_16bit<Eigen::half>() +
         strict_consumer::bench_paths() + c.update(1.0, 64) + f.update(1.0, 64);
}
