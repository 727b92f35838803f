/* The TIES-family merge of one chunk in float32: each model's task vector trimmed by its
 * rule, then mixed (see methods/passes.py: trimmed, mix_deltas). Every operation is the one eager
 * torch does, in the same order, each rounded to float32 (no fused multiply-adds: built
 * with -ffp-contract=off), so the bytes are the eager bytes.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "blocks.h"
#include "threads.h"

#define MAX_MODELS 16
#define BLOCK 256
#define MIN_PER_THREAD (1 << 15)

enum { ALL = 0, ZERO = 1, WINDOW = 2, RANDOM = 3 };
enum { NONE = 0, SCALE = 1, DIVIDE = 2 };
enum { MIX_ALL = -1, SUM = 0, COUNT = 1, SUM_UNWEIGHTED = 2 };

typedef struct {
  int32_t kind, post, has_lo, has_hi, n_spans, sign;
  uint32_t lo, hi, span_value[2], k0, k1;
  int64_t span_first[2], span_stop[2], start;
  float p, factor, weight;
} rule_t;

typedef struct {
  int32_t models, consensus, normalize, all_positive;
  float plain_divisor, min_weight, lambda;
  rule_t rules[MAX_MODELS];
} mix_t;

typedef struct {
  const mix_t *mix;
  const float *const *xs;
  const float *base;
  float *out;
  int64_t from, to;
} part_t;

static inline uint32_t bits_of(float v) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  return bits & 0x7fffffffu;
}

static inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x21F0AAADu;
  x ^= x >> 15;
  x *= 0x735A2D97u;
  return x ^ (x >> 15);
}

/* d = trimmed(x - b) for entries [at, at + len) of the chunk */
VECTOR_CLONES static void trim_block(const rule_t *r, float *restrict d, const float *restrict x,
                                     const float *restrict b, int64_t at, int len) {
  for (int j = 0; j < len; j++) d[j] = x[j] - b[j];
  const int kind = r->kind;
  if (kind == ZERO) {
    for (int j = 0; j < len; j++) d[j] = 0.0f;
  } else if (kind == WINDOW) {
    float keep[BLOCK];
    const uint32_t lo = r->has_lo ? r->lo : 0u, hi = r->has_hi ? r->hi : 0xffffffffu;
    const int bounded = r->has_lo || r->has_hi;
    if (bounded) {
      for (int j = 0; j < len; j++) {
        uint32_t bits = bits_of(d[j]);
        keep[j] = bits >= lo && bits < hi ? 1.0f : 0.0f;
      }
    } else {
      const float all = r->n_spans ? 0.0f : 1.0f;
      for (int j = 0; j < len; j++) keep[j] = all;
    }
    for (int s = 0; s < r->n_spans; s++) {
      int64_t first = r->span_first[s] - at, stop = r->span_stop[s] - at;
      int from = first < 0 ? 0 : first > len ? len : (int)first;
      int to = stop < 0 ? 0 : stop > len ? len : (int)stop;
      const uint32_t value = r->span_value[s];
      for (int j = from; j < to; j++)
        if (bits_of(d[j]) == value) keep[j] = 1.0f;
    }
    for (int j = 0; j < len; j++) d[j] = d[j] * keep[j];
  } else if (kind == RANDOM) {
    const uint32_t k0 = r->k0, k1 = r->k1;
    const float p = r->p;
    const uint64_t first = (uint64_t)(r->start + at);
    const uint32_t low = (uint32_t)first, high = (uint32_t)(first >> 32);
    if ((uint64_t)low + (uint64_t)len <= ((uint64_t)1 << 32)) { /* one high word */
      const uint32_t high_key = high ^ k1;
      float u[BLOCK];
      for (int j = 0; j < len; j++) {
        uint32_t h = mix32(mix32((low + (uint32_t)j) ^ k0) ^ high_key);
        u[j] = (float)(int32_t)(h >> 8) * (1.0f / 16777216.0f);
      }
      for (int j = 0; j < len; j++) d[j] = d[j] * (u[j] < p ? 1.0f : 0.0f);
    } else {
      for (int j = 0; j < len; j++) {
        uint64_t index = first + (uint64_t)j;
        uint32_t h = mix32(mix32((uint32_t)index ^ k0) ^ (uint32_t)(index >> 32) ^ k1);
        float u = (float)(int32_t)(h >> 8) * (1.0f / 16777216.0f);
        d[j] = d[j] * (u < p ? 1.0f : 0.0f);
      }
    }
  }
  if (r->post == SCALE) {
    const float factor = r->factor;
    for (int j = 0; j < len; j++) d[j] = d[j] * factor;
  } else if (r->post == DIVIDE) {
    const float p = r->p;
    for (int j = 0; j < len; j++) d[j] = d[j] / p;
  }
}

static inline float sign_of(float v) { return (float)((v > 0.0f) - (v < 0.0f)); }

VECTOR_CLONES static void mix_block(const mix_t *m, float (*restrict d)[BLOCK],
                                    const float *restrict b, float *restrict out, int len) {
  const int n = m->models;
  const float lambda = m->lambda;
  float mixed[BLOCK];
  if (m->consensus == MIX_ALL) {
    const float w0 = m->rules[0].weight;
    for (int j = 0; j < len; j++) mixed[j] = d[0][j] * w0;
    for (int i = 1; i < n; i++) {
      const float w = m->rules[i].weight;
      for (int j = 0; j < len; j++) mixed[j] = mixed[j] + d[i][j] * w;
    }
    if (m->normalize) {
      const float divisor = m->plain_divisor;
      for (int j = 0; j < len; j++) mixed[j] = mixed[j] / divisor;
    }
    for (int j = 0; j < len; j++) out[j] = mixed[j] * lambda + b[j];
    return;
  }
  float total[BLOCK], divisor[BLOCK];
  for (int j = 0; j < len; j++) total[j] = 0.0f;
  for (int i = 0; i < n; i++) {
    const float w = m->rules[i].weight;
    const int sign = m->rules[i].sign;
    if (m->consensus == SUM)
      for (int j = 0; j < len; j++) total[j] = total[j] + d[i][j] * w;
    else if (m->consensus == SUM_UNWEIGHTED)
      for (int j = 0; j < len; j++) total[j] = total[j] + d[i][j];
    else if (sign > 0)
      for (int j = 0; j < len; j++) total[j] = total[j] + sign_of(d[i][j]);
    else if (sign < 0)
      for (int j = 0; j < len; j++) total[j] = total[j] - sign_of(d[i][j]);
  }
  for (int j = 0; j < len; j++) total[j] = copysignf(1.0f, total[j]); /* the elected signs */
  for (int i = 0; i < n; i++) {
    const float w = m->rules[i].weight;
    float agree[BLOCK];
    if (m->rules[i].sign >= 0)
      for (int j = 0; j < len; j++) agree[j] = d[i][j] * total[j] > 0.0f ? 1.0f : 0.0f;
    else
      for (int j = 0; j < len; j++) agree[j] = d[i][j] * total[j] < 0.0f ? 1.0f : 0.0f;
    if (i == 0) {
      for (int j = 0; j < len; j++) mixed[j] = d[0][j] * agree[j] * w;
      for (int j = 0; j < len; j++) divisor[j] = agree[j] * w;
    } else {
      for (int j = 0; j < len; j++) mixed[j] = mixed[j] + d[i][j] * agree[j] * w;
      for (int j = 0; j < len; j++) divisor[j] = divisor[j] + agree[j] * w;
    }
  }
  if (m->normalize) {
    if (m->all_positive) {
      const float least = m->min_weight;
      for (int j = 0; j < len; j++) divisor[j] = divisor[j] < least ? least : divisor[j];
    } else {
      for (int j = 0; j < len; j++) divisor[j] = divisor[j] == 0.0f ? 1.0f : divisor[j];
    }
    for (int j = 0; j < len; j++) mixed[j] = mixed[j] / divisor[j];
  }
  for (int j = 0; j < len; j++) out[j] = mixed[j] * lambda + b[j];
}

static void *run(void *arg) {
  const part_t *p = arg;
  const mix_t *m = p->mix;
  float d[MAX_MODELS][BLOCK];
  for (int64_t at = p->from; at < p->to; at += BLOCK) {
    int len = p->to - at < BLOCK ? (int)(p->to - at) : BLOCK;
    for (int i = 0; i < m->models; i++)
      trim_block(&m->rules[i], d[i], p->xs[i] + at, p->base + at, at, len);
    mix_block(m, d, p->base + at, p->out + at, len);
  }
  return NULL;
}

/* out = the merge of the chunk (n entries): see the header. Returns 0, or -2 for a spec
 * this kernel does not take. */
int mk_trim_mix_f32(const mix_t *mix, const float *const *xs, const float *base, float *out,
                    int64_t n, int threads) {
  if (mix->models < 1 || mix->models > MAX_MODELS) return -2;
  threads = thread_count(threads, n, MIN_PER_THREAD);
  part_t parts[MAX_THREADS];
  int64_t per = (n + threads - 1) / threads;
  per = (per + BLOCK - 1) / BLOCK * BLOCK;
  for (int t = 0; t < threads; t++) {
    int64_t from = per * t < n ? per * t : n, to = from + per < n ? from + per : n;
    parts[t] = (part_t){mix, xs, base, out, from, to};
  }
  run_parts(run, parts, sizeof parts[0], threads);
  return 0;
}

/* |d| and |trimmed d| of n entries at chunk offset at (trim_magnitudes in methods/passes.py) */
static void magnitudes(const rule_t *r, const float *x, const float *b, int64_t at, int64_t n,
                       float *mags, float *kept) {
  for (int64_t k = 0; k < n; k += BLOCK) {
    int len = n - k < BLOCK ? (int)(n - k) : BLOCK;
    trim_block(r, kept + k, x + k, b + k, at + k, len);
    for (int j = 0; j < len; j++) {
      mags[k + j] = fabsf(x[k + j] - b[k + j]);
      kept[k + j] = fabsf(kept[k + j]);
    }
  }
}

typedef struct {
  const rule_t *rule;
  const float *x, *b;
  int64_t at, blocks;
  float *mag_sums, *kept_sums;
} norms_t;

/* one block's sums of |d| and |trimmed d| */
VECTOR_CLONES static void block_norms(const rule_t *r, const float *x, const float *b,
                                      int64_t at, float *mag_sum, float *kept_sum) {
  float mags[SUM_BLOCK], kept[SUM_BLOCK];
  magnitudes(r, x, b, at, SUM_BLOCK, mags, kept);
  *mag_sum = tree_sum(mags);
  *kept_sum = tree_sum(kept);
}

static void *norms(void *arg) {
  const norms_t *p = arg;
  for (int64_t k = 0; k < p->blocks; k++) {
    int64_t off = k * SUM_BLOCK;
    block_norms(p->rule, p->x + off, p->b + off, p->at + off, p->mag_sums + k,
                p->kept_sums + k);
  }
  return NULL;
}

/* The L1 norms' first-level block sums (reductions.BlockSums) of |x - b| and of its trimmed
 * magnitudes, for `blocks` whole blocks of 4096 entries starting at chunk offset at. */
int mk_trim_norms_f32(const rule_t *rule, const float *x, const float *b, int64_t at,
                      int64_t blocks, float *mag_sums, float *kept_sums, int threads) {
  threads = thread_count(threads, blocks, 8);
  norms_t parts[MAX_THREADS];
  for (int t = 0; t < threads; t++) {
    long long from, to;
    part_range(blocks, threads, t, &from, &to);
    int64_t off = from * SUM_BLOCK;
    parts[t] = (norms_t){rule, x + off, b + off, at + off, to - from, mag_sums + from,
                         kept_sums + from};
  }
  run_parts(norms, parts, sizeof parts[0], threads);
  return 0;
}

/* |x - b| and its trimmed magnitudes, for n entries at chunk offset at */
int mk_trim_magnitudes_f32(const rule_t *rule, const float *x, const float *b, int64_t at,
                           int64_t n, float *mags, float *kept) {
  magnitudes(rule, x, b, at, n, mags, kept);
  return 0;
}
