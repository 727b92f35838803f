/* The elementwise steps of the Karcher iteration (methods/karcher.py) in one loop each, in
 * float32 or bfloat16, with the roundings of the torch operations they replace: every
 * torch operation on bfloat16 computes in float32 and rounds its result to bfloat16 (to
 * nearest, ties to even), so each step below rounds where a torch call ends. Built with
 * -ffp-contract=off: no product is fused into a sum. */
#include <stdint.h>
#include <string.h>

#include "blocks.h"
#include "threads.h"

/* c10::BFloat16's rounding from float32: to nearest, ties to even; NaN -> 0x7fc0 */
static inline uint16_t to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if (f != f) return 0x7fc0;
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float from_bf16(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* rounds a float32 result as a bfloat16 torch operation would (kept in a float) */
static inline float rb(float f) { return from_bf16(to_bf16(f)); }

typedef struct {
  void *t;        /* the tangent (updated) or the iterate (updated) */
  const void *u;  /* a unit vector, or the tangent */
  const void *m;  /* the iterate (tangent_add only) */
  long long from, to;
  float s0, s1, s2;
  int bf16;
} Part;

/* t += c * (u - d * m), each operation rounded: s0 = d, s1 = c */
VECTOR_CLONES static void tangent_f32(Part *p) {
  float *t = p->t;
  const float *u = p->u, *m = p->m;
  const float d = p->s0, c = p->s1;
  for (long long i = p->from; i < p->to; i++) {
    float q = u[i] - d * m[i];
    t[i] = t[i] + c * q;
  }
}

VECTOR_CLONES static void tangent_bf16(Part *p) {
  uint16_t *t = p->t;
  const uint16_t *u = p->u, *m = p->m;
  const float d = p->s0, c = p->s1;
  for (long long i = p->from; i < p->to; i++) {
    float dm = rb(d * from_bf16(m[i]));
    float q = rb(from_bf16(u[i]) - dm);
    float cq = rb(c * q);
    t[i] = to_bf16(from_bf16(t[i]) + cq);
  }
}

/* m = m * cs + sn * (t / tn), each operation rounded: s0 = cs, s1 = sn, s2 = tn */
VECTOR_CLONES static void exp_f32(Part *p) {
  float *m = p->t;
  const float *t = p->u;
  const float cs = p->s0, sn = p->s1, tn = p->s2;
  for (long long i = p->from; i < p->to; i++) {
    float a = m[i] * cs;
    float b = sn * (t[i] / tn);
    m[i] = a + b;
  }
}

VECTOR_CLONES static void exp_bf16(Part *p) {
  uint16_t *m = p->t;
  const uint16_t *t = p->u;
  const float cs = p->s0, sn = p->s1, tn = p->s2;
  for (long long i = p->from; i < p->to; i++) {
    float a = rb(from_bf16(m[i]) * cs);
    float b = rb(sn * rb(from_bf16(t[i]) / tn));
    m[i] = to_bf16(a + b);
  }
}

static void *tangent_part(void *arg) {
  Part *p = arg;
  if (p->bf16) tangent_bf16(p); else tangent_f32(p);
  return NULL;
}

static void *exp_part(void *arg) {
  Part *p = arg;
  if (p->bf16) exp_bf16(p); else exp_f32(p);
  return NULL;
}

#define PER_THREAD (1LL << 18)

static void run(void *(*fn)(void *), Part proto, long long n, int threads) {
  Part parts[MAX_THREADS];
  int count = thread_count(threads, n, PER_THREAD);
  for (int k = 0; k < count; k++) {
    parts[k] = proto;
    part_range(n, count, k, &parts[k].from, &parts[k].to);
  }
  run_parts(fn, parts, sizeof(Part), count);
}

/* t[i] += c * (u[i] - d * m[i]) over n entries (bf16: 16-bit entries, else float32) */
void mk_tangent_add(void *t, const void *u, const void *m, long long n, float d, float c,
                    int bf16, int threads) {
  Part proto = {t, u, m, 0, 0, d, c, 0.0f, bf16};
  run(tangent_part, proto, n, threads);
}

/* m[i] = m[i] * cs + sn * (t[i] / tn) over n entries */
void mk_exp_step(void *m, const void *t, long long n, float cs, float sn, float tn, int bf16,
                 int threads) {
  Part proto = {m, t, NULL, 0, 0, cs, sn, tn, bf16};
  run(exp_part, proto, n, threads);
}
