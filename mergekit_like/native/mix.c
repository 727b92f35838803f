/* The TIES-family merge of one chunk in float32: each model's task vector trimmed by its
 * rule, then mixed (see kernels.py: trimmed, mix_deltas). Every operation is the one eager
 * torch does, in the same order, each rounded to float32 (no fused multiply-adds: built
 * with -ffp-contract=off), so the bytes are the eager bytes.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#define MAX_MODELS 16
#define MAX_THREADS 64
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
static void trim_block(const rule_t *r, float *d, const float *x, const float *b, int64_t at,
                       int len) {
  for (int j = 0; j < len; j++) d[j] = x[j] - b[j];
  if (r->kind == ZERO) {
    for (int j = 0; j < len; j++) d[j] = 0.0f;
  } else if (r->kind == WINDOW) {
    float keep[BLOCK];
    const uint32_t lo = r->lo, hi = r->hi;
    const int bounded = r->has_lo || r->has_hi;
    const float outside = bounded || r->n_spans ? 0.0f : 1.0f;
    for (int j = 0; j < len; j++) {
      uint32_t bits = bits_of(d[j]);
      int in = (!r->has_lo || bits >= lo) & (!r->has_hi || bits < hi);
      keep[j] = bounded && in ? 1.0f : outside;
    }
    for (int s = 0; s < r->n_spans; s++) {
      int64_t first = r->span_first[s] - at, stop = r->span_stop[s] - at;
      int from = first < 0 ? 0 : first > len ? len : (int)first;
      int to = stop < 0 ? 0 : stop > len ? len : (int)stop;
      for (int j = from; j < to; j++)
        if (bits_of(d[j]) == r->span_value[s]) keep[j] = 1.0f;
    }
    for (int j = 0; j < len; j++) d[j] = d[j] * keep[j];
  } else if (r->kind == RANDOM) {
    for (int j = 0; j < len; j++) {
      uint64_t index = (uint64_t)(r->start + at + j);
      uint32_t h = mix32((uint32_t)index ^ r->k0);
      h = mix32(h ^ (uint32_t)(index >> 32) ^ r->k1);
      float u = (float)(h >> 8) * (1.0f / 16777216.0f);
      d[j] = d[j] * (u < r->p ? 1.0f : 0.0f);
    }
  }
  if (r->post == SCALE)
    for (int j = 0; j < len; j++) d[j] = d[j] * r->factor;
  else if (r->post == DIVIDE)
    for (int j = 0; j < len; j++) d[j] = d[j] / r->p;
}

static inline float sign_of(float v) { return (float)((v > 0.0f) - (v < 0.0f)); }

static void mix_block(const mix_t *m, float (*d)[BLOCK], const float *b, float *out, int len) {
  const int n = m->models;
  if (m->consensus == MIX_ALL) {
    for (int j = 0; j < len; j++) {
      float mixed = d[0][j] * m->rules[0].weight;
      for (int i = 1; i < n; i++) mixed = mixed + d[i][j] * m->rules[i].weight;
      if (m->normalize) mixed = mixed / m->plain_divisor;
      out[j] = mixed * m->lambda + b[j];
    }
    return;
  }
  for (int j = 0; j < len; j++) {
    float total = 0.0f;
    for (int i = 0; i < n; i++) {
      if (m->consensus == SUM) total = total + d[i][j] * m->rules[i].weight;
      else if (m->consensus == SUM_UNWEIGHTED) total = total + d[i][j];
      else if (m->rules[i].sign > 0) total = total + sign_of(d[i][j]);
      else if (m->rules[i].sign < 0) total = total - sign_of(d[i][j]);
    }
    float elected = copysignf(1.0f, total), mixed = 0.0f, divisor = 0.0f;
    for (int i = 0; i < n; i++) {
      float agrees = d[i][j] * elected;
      float agree = (m->rules[i].sign >= 0 ? agrees > 0.0f : agrees < 0.0f) ? 1.0f : 0.0f;
      float term = d[i][j] * agree * m->rules[i].weight;
      float share = agree * m->rules[i].weight;
      mixed = i == 0 ? term : mixed + term;
      divisor = i == 0 ? share : divisor + share;
    }
    if (m->normalize) {
      if (m->all_positive) divisor = divisor < m->min_weight ? m->min_weight : divisor;
      else if (divisor == 0.0f) divisor = 1.0f;
      mixed = mixed / divisor;
    }
    out[j] = mixed * m->lambda + b[j];
  }
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
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  if (threads > n / MIN_PER_THREAD) threads = (int)(n / MIN_PER_THREAD);
  if (threads < 1) threads = 1;
  part_t parts[MAX_THREADS];
  pthread_t tid[MAX_THREADS];
  int64_t per = (n + threads - 1) / threads;
  per = (per + BLOCK - 1) / BLOCK * BLOCK;
  for (int t = 0; t < threads; t++) {
    int64_t from = per * t < n ? per * t : n, to = from + per < n ? from + per : n;
    parts[t] = (part_t){mix, xs, base, out, from, to};
  }
  int started = 1;
  while (started < threads && pthread_create(&tid[started], NULL, run, &parts[started]) == 0)
    started++;
  run(&parts[0]);
  for (int t = started; t < threads; t++) run(&parts[t]);
  for (int t = 1; t < started; t++) pthread_join(tid[t], NULL);
  return 0;
}
