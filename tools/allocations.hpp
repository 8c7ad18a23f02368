// The program's count of heap allocations (allocations.cpp), which `klgrad bench` reads
// around every kernel call: the kernels promise to allocate nothing, and the command shows it.
#pragma once

namespace klgrad::cli {

/// Whether this build counts its allocations (glibc without a sanitizer, which brings its
/// own allocator).
bool counts_allocations();

/// Heap allocations made by the program so far, on any thread.
long long heap_allocations();

}  // namespace klgrad::cli
