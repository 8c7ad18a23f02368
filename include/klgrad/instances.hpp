// Compiled-once kernels, an opt-in for programs with many translation units that call
// evaluate(). evaluate() is a template: each translation unit that calls it compiles the
// kernels of all sixteen estimator pairs for its batch type again (about 20 s per batch type
// with g++ -O3; several times that under the sanitizers). With this header a program compiles
// them once for the common batch types:
//
//   * every translation unit is compiled with KLGRAD_EXTERN_TEMPLATES defined (for example
//     `target_compile_definitions(app PRIVATE KLGRAD_EXTERN_TEMPLATES)`): evaluate.hpp then
//     declares the instances below `extern`, and calls to evaluate() on these batch types
//     link against them instead of compiling them;
//   * one translation unit per scalar type defines them:
//       #include <klgrad/instances.hpp>
//       KLGRAD_INSTANTIATE_EVALUATE(float)
//
// Batch types outside the list compile where they are used, as without this header. The
// library stays header-only: nothing changes unless KLGRAD_EXTERN_TEMPLATES is defined.
#pragma once

#include "evaluate.hpp"
#include "kernel/run.hpp"
#include "views/batch.hpp"

#include <Eigen/Core>

// The batch types whose kernels are compiled once, for scalar T: padded with or without a
// mask of T, and packed with int or Index (int64) offsets. PREFIX is `extern` for the
// declarations and empty for the definitions.
#define KLGRAD_EVALUATE_INSTANCES(PREFIX, T)                                                  \
  namespace klgrad::detail {                                                                  \
  PREFIX template summary dispatch(const spec&, const padded_batch<T, T>&,                    \
                                   const strided_rows<T>&, const strided_rows<T>&,            \
                                   const options&);                                           \
  PREFIX template summary dispatch(const spec&, const packed_batch<T, T, int>&,               \
                                   const strided_rows<T>&, const strided_rows<T>&,            \
                                   const options&);                                           \
  PREFIX template summary dispatch(const spec&, const packed_batch<T, T, Index>&,             \
                                   const strided_rows<T>&, const strided_rows<T>&,            \
                                   const options&);                                           \
  }

/// Defines (compiles) the kernels of the listed batch types for scalar T: once per program.
#define KLGRAD_INSTANTIATE_EVALUATE(T) KLGRAD_EVALUATE_INSTANCES(, T)

#ifdef KLGRAD_EXTERN_TEMPLATES
KLGRAD_EVALUATE_INSTANCES(extern, float)
KLGRAD_EVALUATE_INSTANCES(extern, double)
#endif
