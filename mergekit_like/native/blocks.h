/* What the kernels share for fixed-order sums and vector code: the tree sum of one block of
 * reductions.BLOCK entries, and the AVX2 clones of a function (GCC on x86-64 Linux). */
#ifndef MERGEKIT_LIKE_BLOCKS_H
#define MERGEKIT_LIKE_BLOCKS_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

#define SUM_BLOCK 4096 /* reductions.BLOCK */

/* the sum of v[0..SUM_BLOCK) by reductions.tree_sum's pairwise halving (v is overwritten) */
static inline float tree_sum(float *v) {
  for (int half = SUM_BLOCK / 2; half >= 1; half /= 2)
    for (int k = 0; k < half; k++) v[k] = v[k] + v[k + half];
  return v[0];
}

#endif
