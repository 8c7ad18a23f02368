// Which vector instructions a measurement ran on: the set Eigen's packets use in the
// program that measured (fixed when it was compiled: a generic x86-64 build uses SSE2 even
// on a CPU with AVX-512), and the widest this CPU offers, so that a result says what a
// build for this machine (-march=native) would use instead.
#pragma once

#include <Eigen/Core>

#include <string_view>

namespace klgrad::bench {

/// The vector instruction set of Eigen's packets in this build: "avx512", "avx2", "avx",
/// "sse4", "sse2", "neon", "sve", "vsx", "altivec", "other" (another vectorisation) or
/// "none" (scalar code).
inline std::string_view compiled_vector_isa() {
#if defined(EIGEN_VECTORIZE_AVX512)
  return "avx512";
#elif defined(EIGEN_VECTORIZE_AVX2)
  return "avx2";
#elif defined(EIGEN_VECTORIZE_AVX)
  return "avx";
#elif defined(EIGEN_VECTORIZE_SSE4_1)
  return "sse4";
#elif defined(EIGEN_VECTORIZE_SSE2)
  return "sse2";
#elif defined(EIGEN_VECTORIZE_SVE)
  return "sve";
#elif defined(EIGEN_VECTORIZE_NEON)
  return "neon";
#elif defined(EIGEN_VECTORIZE_VSX)
  return "vsx";
#elif defined(EIGEN_VECTORIZE_ALTIVEC)
  return "altivec";
#elif defined(EIGEN_VECTORIZE)
  return "other";
#else
  return "none";
#endif
}

/// The widest of those sets this CPU runs, in the same names ("avx512" needs AVX-512F,
/// "avx2" AVX2 and FMA, as Eigen's packets do); "unknown" where the compiler cannot ask
/// the CPU (outside x86 with GCC or Clang).
inline std::string_view cpu_vector_isa() {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "avx512";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "avx2";
  if (__builtin_cpu_supports("avx")) return "avx";
  if (__builtin_cpu_supports("sse4.1")) return "sse4";
  if (__builtin_cpu_supports("sse2")) return "sse2";
  return "none";
#else
  return "unknown";
#endif
}

}  // namespace klgrad::bench
