// Counts every heap allocation of the klgrad program, in the program alone: malloc and its
// relatives are defined here, each counting and then calling glibc's own (__libc_malloc,
// ...), so that operator new (which calls malloc), Eigen's aligned allocations (malloc too)
// and C allocations are all seen, on every thread. Builds where that is not possible
// (another C library, a sanitizer's allocator) count nothing and say so.
#include "allocations.hpp"

#include <atomic>

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(memory_sanitizer) || \
    __has_feature(thread_sanitizer)
#define KLGRAD_CLI_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define KLGRAD_CLI_SANITIZED 1
#endif

#if defined(__GLIBC__) && !defined(KLGRAD_CLI_SANITIZED)
#define KLGRAD_CLI_COUNTS 1
#endif

namespace {
std::atomic<long long> allocations{0};
}  // namespace

namespace klgrad::cli {

bool counts_allocations() {
#ifdef KLGRAD_CLI_COUNTS
  return true;
#else
  return false;
#endif
}

long long heap_allocations() { return allocations.load(std::memory_order_relaxed); }

}  // namespace klgrad::cli

#ifdef KLGRAD_CLI_COUNTS
#include <cerrno>
#include <cstddef>

extern "C" {
// glibc's allocator under its own names (exported by libc.so since glibc 2.0).
void* __libc_malloc(std::size_t) noexcept;
void* __libc_calloc(std::size_t, std::size_t) noexcept;
void* __libc_realloc(void*, std::size_t) noexcept;
void* __libc_memalign(std::size_t, std::size_t) noexcept;
void* __libc_valloc(std::size_t) noexcept;
void* __libc_pvalloc(std::size_t) noexcept;
void __libc_free(void*) noexcept;

namespace {
void* counted(void* p) {
  if (p) allocations.fetch_add(1, std::memory_order_relaxed);
  return p;
}
}  // namespace

void* malloc(std::size_t n) noexcept { return counted(__libc_malloc(n)); }
void* calloc(std::size_t k, std::size_t n) noexcept { return counted(__libc_calloc(k, n)); }
void* realloc(void* p, std::size_t n) noexcept { return counted(__libc_realloc(p, n)); }
void* memalign(std::size_t a, std::size_t n) noexcept { return counted(__libc_memalign(a, n)); }
void* aligned_alloc(std::size_t a, std::size_t n) noexcept { return counted(__libc_memalign(a, n)); }
void* valloc(std::size_t n) noexcept { return counted(__libc_valloc(n)); }
void* pvalloc(std::size_t n) noexcept { return counted(__libc_pvalloc(n)); }
int posix_memalign(void** out, std::size_t a, std::size_t n) noexcept {
  if (a < sizeof(void*) || (a & (a - 1)) != 0) return EINVAL;
  void* p = counted(__libc_memalign(a, n));
  if (!p && n != 0) return ENOMEM;
  *out = p;
  return 0;
}
void free(void* p) noexcept { __libc_free(p); }
}
#endif
