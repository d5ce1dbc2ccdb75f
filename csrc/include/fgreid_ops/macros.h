// Function-attribute macros shared by the CPU and CUDA sources.
#pragma once

// Helpers called from both host and device code (index math, order keys, summation).
#if defined(__CUDACC__)
#define FGREID_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FGREID_HOST_DEVICE inline
#endif

// Hot CPU loops are compiled twice, for AVX2+FMA (x86-64-v3) and the baseline, and picked at load
// time, so one build is fast on current CPUs and still runs on old ones.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define FGREID_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FGREID_CPU_CLONES
#endif

// Forced inlining: gcc does not inline helpers into the target_clones bodies otherwise, and a
// call inside the loop stops vectorization.
#define FGREID_INLINE inline __attribute__((always_inline))
