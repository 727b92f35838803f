/* The Gram matrix's first-level block sums in float32 (see gram.py): for each pair i <= j of
 * n vectors and each block of 4096 entries, the tree sum of x_i * x_j over the block, in the
 * order of reductions.tree_sum (products, then pairwise halving; no fused multiply-adds:
 * built with -ffp-contract=off), so the bytes are those of BlockSums.add. */
#include <stdint.h>

#include "blocks.h"
#include "threads.h"

#define MAX_VECTORS 16

typedef struct {
  const float *const *xs;
  int n;
  float *out; /* [pair][block]: pairs (0,0), (0,1), ..., (1,1), ... */
  int64_t blocks, from, to;
} part_t;

/* the tree sum of a[k] * b[k] over one block */
VECTOR_CLONES static float block_dot(const float *restrict a, const float *restrict b) {
  float v[SUM_BLOCK];
  for (int k = 0; k < SUM_BLOCK; k++) v[k] = a[k] * b[k];
  return tree_sum(v);
}

static void *run(void *arg) {
  const part_t *p = arg;
  for (int64_t k = p->from; k < p->to; k++) {
    int pair = 0;
    for (int i = 0; i < p->n; i++)
      for (int j = i; j < p->n; j++)
        p->out[pair++ * p->blocks + k] =
            block_dot(p->xs[i] + k * SUM_BLOCK, p->xs[j] + k * SUM_BLOCK);
  }
  return NULL;
}

/* out[pair * blocks + k] = the tree sum of block k of x_i * x_j, for every pair i <= j of the
 * n vectors (blocks * 4096 entries each). Returns 0, or -2 for more than 16 vectors. */
int mk_gram_blocks_f32(const float *const *xs, int n, int64_t blocks, float *out, int threads) {
  if (n < 1 || n > MAX_VECTORS) return -2;
  threads = thread_count(threads, blocks, 8);
  part_t parts[MAX_THREADS];
  for (int t = 0; t < threads; t++) {
    long long from, to;
    part_range(blocks, threads, t, &from, &to);
    parts[t] = (part_t){xs, n, out, blocks, from, to};
  }
  run_parts(run, parts, sizeof parts[0], threads);
  return 0;
}
