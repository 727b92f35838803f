/* The linear merge (methods/linear.py) in one loop: per entry, a float32 accumulator from
 * +0.0, one fused multiply-add per model in the recipe's order (as torch's addcmul_ on a CPU
 * with FMA: one rounding), one true division by the weights' sum, and the rounding to the
 * output dtype (bfloat16: to nearest, ties to even). Inputs of the output's dtype, float32
 * or bfloat16. A NaN in the result is reported, not written as torch would write it (torch
 * writes NaN bits that differ between its loops): the caller then merges with torch. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "threads.h"

#define MAX_MODELS 64

/* the clones need FMA for fmaf to be one instruction (the default clone calls libm's) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FMA_CLONES __attribute__((target_clones("arch=haswell", "default")))
#else
#define FMA_CLONES
#endif

typedef struct {
  const void *const *xs;
  void *out;
  const float *w;
  int models, bf16, divide;
  float total;
  long long from, to;
  int nan;
} Part;

static inline float from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

FMA_CLONES static void soup_f32(Part *p) {
  const float *const *xs = (const float *const *)p->xs;
  float *out = p->out;
  int nan = 0;
  for (long long i = p->from; i < p->to; i++) {
    float acc = 0.0f;
    for (int m = 0; m < p->models; m++) acc = fmaf(xs[m][i], p->w[m], acc);
    if (p->divide) acc = acc / p->total;
    nan |= acc != acc;
    out[i] = acc;
  }
  p->nan = nan;
}

FMA_CLONES static void soup_bf16(Part *p) {
  const uint16_t *const *xs = (const uint16_t *const *)p->xs;
  uint16_t *out = p->out;
  int nan = 0;
  for (long long i = p->from; i < p->to; i++) {
    float acc = 0.0f;
    for (int m = 0; m < p->models; m++) acc = fmaf(from_bf16(xs[m][i]), p->w[m], acc);
    if (p->divide) acc = acc / p->total;
    nan |= acc != acc;
    out[i] = to_bf16(acc);
  }
  p->nan = nan;
}

static void *soup_part(void *arg) {
  Part *p = arg;
  if (p->bf16) soup_bf16(p); else soup_f32(p);
  return NULL;
}

/* out[i] = (sum over m of w[m] * xs[m][i], fused, in order) [/ total]; returns 1 when a
 * result is NaN (out then holds garbage there), 0 else, -1 for too many models */
int mk_soup(const void *const *xs, int models, const float *w, int divide, float total,
            void *out, long long n, int bf16, int threads) {
  if (models < 1 || models > MAX_MODELS) return -1;
  Part parts[MAX_THREADS];
  int count = thread_count(threads, n, 1LL << 18);
  for (int k = 0; k < count; k++) {
    Part p = {xs, out, w, models, bf16, divide, total, 0, 0, 0};
    part_range(n, count, k, &p.from, &p.to);
    parts[k] = p;
  }
  run_parts(soup_part, parts, sizeof(Part), count);
  for (int k = 0; k < count; k++)
    if (parts[k].nan) return 1;
  return 0;
}
