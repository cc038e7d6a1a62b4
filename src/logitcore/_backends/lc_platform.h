/*
 * lc_platform.h -- compiler and CPU plumbing of the Cython backend's C code: the index
 * type, inlining and unrolling macros, runtime SIMD dispatch (LC_DISPATCH), bit casts and
 * prefetching. No arithmetic of logitcore's own lives here.
 * Private to logitcore._backends._cython_kernels; not a public API.
 */
#ifndef LC_PLATFORM_H
#define LC_PLATFORM_H

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef ptrdiff_t lc_index; /* Py_ssize_t-sized: arrays of more than 2^31 elements work */

#ifdef _OPENMP
#define LC_OPENMP_ENABLED 1
#else
#define LC_OPENMP_ENABLED 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define LC_INLINE static inline __attribute__((always_inline))
#else
#define LC_INLINE static __forceinline
#endif

/* On the inner loop of a lanes reduction: gcc would otherwise unroll it completely before
   vectorising and then fail to vectorise the unrolled max (it stays scalar vmaxss). */
#if defined(__clang__)
#define LC_NO_UNROLL _Pragma("clang loop unroll(disable)")
#elif defined(__GNUC__)
#define LC_NO_UNROLL _Pragma("GCC unroll 1")
#else
#define LC_NO_UNROLL
#endif

/* On a short loop of a constant count that must become straight-line code (the Horner
   steps of lc_math.h). */
#if defined(__clang__)
#define LC_UNROLL_ALL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__)
#define LC_UNROLL_ALL _Pragma("GCC unroll 32")
#else
#define LC_UNROLL_ALL
#endif

/* Runtime dispatch: gcc >= 12 on x86-64 glibc (target_clones needs ifunc, and the
   x86-64-v3/v4 names need gcc 12). Elsewhere, or with -DLC_NO_DISPATCH (a native build:
   CFLAGS="-march=native -DLC_NO_DISPATCH"), the functions are compiled once, for whatever
   the compiler targets. */
#if !defined(LC_NO_DISPATCH) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && \
    defined(__x86_64__) && defined(__linux__) && defined(__GLIBC__)
#define LC_HAVE_DISPATCH 1
#define LC_DISPATCH \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LC_HAVE_DISPATCH 0
#define LC_DISPATCH
#endif

/* The code path the dispatcher picks on this CPU (gcc's resolver prefers v4, then v3). */
static const char* lc_simd_path(void)
{
#if LC_HAVE_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4"))
        return "avx512 (x86-64-v4 clone)";
    if (__builtin_cpu_supports("x86-64-v3"))
        return "avx2+fma (x86-64-v3 clone)";
    return "baseline x86-64 (sse2)";
#elif defined(__x86_64__) && defined(__AVX512F__)
    return "avx512 (compile-time -march, no runtime dispatch)";
#elif defined(__x86_64__) && defined(__AVX2__)
    return "avx2 (compile-time -march, no runtime dispatch)";
#elif defined(__x86_64__) || defined(_M_X64)
    return "baseline x86-64 (sse2, no runtime dispatch)";
#elif defined(__aarch64__) || defined(_M_ARM64)
    return "aarch64 neon (compile-time)";
#else
    return "portable C (compiler default)";
#endif
}
/* Bit casts through memcpy: well defined, and gcc turns them into plain register moves. */
LC_INLINE int32_t lc_float_bits(float x) { int32_t b; memcpy(&b, &x, sizeof b); return b; }
LC_INLINE float lc_float_from_bits(int32_t b) { float x; memcpy(&x, &b, sizeof x); return x; }
LC_INLINE int64_t lc_double_bits(double x) { int64_t b; memcpy(&b, &x, sizeof b); return b; }
LC_INLINE double lc_double_from_bits(int64_t b) { double x; memcpy(&x, &b, sizeof x); return x; }
LC_INLINE lc_index lc_min_index(lc_index a, lc_index b) { return a < b ? a : b; }

/* Ask for the cache lines of [p, p + n_bytes) ahead of use (for writing if `write`). A
   prefetch never faults, so p may point past the end of the array. */
LC_INLINE void lc_prefetch(const void* p, lc_index n_bytes, int write)
{
#if defined(__GNUC__) || defined(__clang__)
    for (lc_index offset = 0; offset < n_bytes; offset += 64) {
        if (write)
            __builtin_prefetch((const char*)p + offset, 1, 3);
        else
            __builtin_prefetch((const char*)p + offset, 0, 3);
    }
#else
    (void)p;
    (void)n_bytes;
    (void)write;
#endif
}

#endif /* LC_PLATFORM_H */
