/* One pass of a bracketed rank selection over |x - b| in float32 (see rank_bracket.py).
 *
 * For each of nb <= 2 brackets [lo, hi] of magnitude bit patterns, count the entries
 * below lo and equal to lo, and copy out, in order, the bit patterns in (lo, hi] and, where
 * asked, their positions (the window's ledger: rank_bracket.Ledger). The pass is
 * split across threads; on x86-64 CPUs with AVX2, eight entries at a time (a left-packing
 * store), elsewhere one at a time. Same results either way.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "threads.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
#endif

#define MAX_BRACKETS 2
#define MIN_PER_THREAD (1 << 16)

typedef struct {
  const float *x, *b;
  int64_t n;
  int nb;
  uint32_t lo[MAX_BRACKETS], hi[MAX_BRACKETS];
  int64_t below[MAX_BRACKETS], at_lo[MAX_BRACKETS], len[MAX_BRACKETS];
  uint32_t *buf[MAX_BRACKETS]; /* n + 8 entries each: every store writes, few advance */
  uint32_t *pos[MAX_BRACKETS]; /* the positions of buf's entries in the part, as many */
} part_t;

static inline uint32_t magnitude_bits(float x, float b) {
  float d = x - b;
  uint32_t bits;
  memcpy(&bits, &d, sizeof bits);
  return bits & 0x7fffffffu;
}

static void scan_scalar(part_t *p, int64_t from) {
  for (int j = 0; j < p->nb; j++) {
    const uint32_t lo = p->lo[j], width = p->hi[j] - p->lo[j];
    uint32_t *out = p->buf[j], *pos = p->pos[j];
    int64_t below = 0, at = 0, len = p->len[j];
    for (int64_t i = from; i < p->n; i++) {
      uint32_t bits = magnitude_bits(p->x[i], p->b[i]);
      below += bits < lo;
      at += bits == lo;
      out[len] = bits;
      pos[len] = (uint32_t)i;
      len += bits - lo - 1u < width; /* lo < bits <= hi */
    }
    p->below[j] += below;
    p->at_lo[j] += at;
    p->len[j] = len;
  }
}

#ifdef HAVE_AVX2_PATH
static uint32_t pack_order[256][8]; /* lanes of each 8-bit mask, lowest first */

static void init_pack_order(void) {
  for (int m = 0; m < 256; m++) {
    int k = 0;
    for (int lane = 0; lane < 8; lane++)
      if (m >> lane & 1) pack_order[m][k++] = (uint32_t)lane;
    while (k < 8) pack_order[m][k++] = 0;
  }
}

__attribute__((target("avx2,popcnt"))) static int64_t scan_avx2(part_t *p) {
  /* bit patterns are below 2^31, so signed 32-bit compares order them */
  const __m256i sign_off = _mm256_set1_epi32(0x7fffffff);
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int64_t n8 = p->n & ~(int64_t)7;
  for (int j = 0; j < p->nb; j++) {
    const __m256i lo = _mm256_set1_epi32((int32_t)p->lo[j]);
    const __m256i hi = _mm256_set1_epi32((int32_t)p->hi[j]);
    uint32_t *out = p->buf[j], *pos = p->pos[j];
    int64_t len = 0, below = 0, at = 0;
    for (int64_t start = 0; start < n8; start += (int64_t)1 << 24) {
      int64_t end = start + ((int64_t)1 << 24) < n8 ? start + ((int64_t)1 << 24) : n8;
      __m256i below_v = _mm256_setzero_si256(), at_v = _mm256_setzero_si256();
      for (int64_t i = start; i < end; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(p->x + i), _mm256_loadu_ps(p->b + i));
        __m256i bits = _mm256_and_si256(_mm256_castps_si256(d), sign_off);
        below_v = _mm256_sub_epi32(below_v, _mm256_cmpgt_epi32(lo, bits));
        at_v = _mm256_sub_epi32(at_v, _mm256_cmpeq_epi32(bits, lo));
        __m256i inside = _mm256_andnot_si256(_mm256_cmpgt_epi32(bits, hi),
                                             _mm256_cmpgt_epi32(bits, lo));
        int mask = _mm256_movemask_ps(_mm256_castsi256_ps(inside));
        __m256i order = _mm256_loadu_si256((const __m256i *)pack_order[mask]);
        _mm256_storeu_si256((__m256i *)(out + len), _mm256_permutevar8x32_epi32(bits, order));
        __m256i where = _mm256_add_epi32(_mm256_set1_epi32((int32_t)(uint32_t)i), iota);
        _mm256_storeu_si256((__m256i *)(pos + len), _mm256_permutevar8x32_epi32(where, order));
        len += _mm_popcnt_u32((unsigned)mask);
      }
      int32_t lanes[8];
      _mm256_storeu_si256((__m256i *)lanes, below_v);
      for (int k = 0; k < 8; k++) below += lanes[k];
      _mm256_storeu_si256((__m256i *)lanes, at_v);
      for (int k = 0; k < 8; k++) at += lanes[k];
    }
    p->below[j] = below;
    p->at_lo[j] = at;
    p->len[j] = len;
  }
  return n8;
}
#endif

static int use_avx2 = 0;

static void *scan(void *arg) {
  part_t *p = arg;
  int64_t from = 0;
#ifdef HAVE_AVX2_PATH
  if (use_avx2) from = scan_avx2(p);
#endif
  scan_scalar(p, from);
  return NULL;
}

/* Ready the module: returns 1 when the AVX2 path is used, 0 otherwise. */
int mk_bracket_init(int allow_avx2) {
#ifdef HAVE_AVX2_PATH
  __builtin_cpu_init();
  use_avx2 = allow_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  if (use_avx2) init_pack_order();
#else
  (void)allow_avx2;
#endif
  return use_avx2;
}

/* Adds each bracket's counts into below[j] and at_lo[j]; writes the bit patterns in
 * (lo[j], hi[j]] to out[j] from index len[j] on, as far as cap[j] allows, and advances
 * len[j] by how many there were (past cap[j] if they did not fit). Where pos[j] is not NULL,
 * writes their positions among the n entries there too (n below 2^32). Returns 0, -1 when
 * out of memory, -2 for a bad bracket count. */
int mk_bracket_f32(const float *x, const float *b, int64_t n, int nb, const uint32_t *lo,
                   const uint32_t *hi, int64_t *below, int64_t *at_lo, uint32_t *const *out,
                   uint32_t *const *pos, int64_t *len, const int64_t *cap, int threads) {
  if (nb < 1 || nb > MAX_BRACKETS) return -2;
  threads = thread_count(threads, n, MIN_PER_THREAD);
  part_t parts[MAX_THREADS];
  int64_t per = (n + threads - 1) / threads;
  int failed = 0;
  for (int t = 0; t < threads; t++) {
    int64_t s = per * t < n ? per * t : n, e = s + per < n ? s + per : n;
    memset(&parts[t], 0, sizeof(part_t));
    parts[t].x = x + s;
    parts[t].b = b + s;
    parts[t].n = e - s;
    parts[t].nb = nb;
    for (int j = 0; j < nb; j++) {
      parts[t].lo[j] = lo[j];
      parts[t].hi[j] = hi[j];
      parts[t].buf[j] = malloc((size_t)(e - s + 8) * sizeof(uint32_t));
      parts[t].pos[j] = malloc((size_t)(e - s + 8) * sizeof(uint32_t));
      failed |= parts[t].buf[j] == NULL || parts[t].pos[j] == NULL;
    }
  }
  if (!failed) {
    run_parts(scan, parts, sizeof parts[0], threads);
    for (int t = 0; t < threads; t++)
      for (int j = 0; j < nb; j++) {
        below[j] += parts[t].below[j];
        at_lo[j] += parts[t].at_lo[j];
        int64_t room = cap[j] - len[j], count = parts[t].len[j];
        int64_t kept = room < count ? room : count;
        if (kept > 0) {
          memcpy(out[j] + len[j], parts[t].buf[j], (size_t)kept * 4);
          if (pos != NULL && pos[j] != NULL) {
            const uint32_t shift = (uint32_t)(parts[t].x - x);
            for (int64_t k = 0; k < kept; k++) pos[j][len[j] + k] = parts[t].pos[j][k] + shift;
          }
        }
        len[j] += count;
      }
  }
  for (int t = 0; t < threads; t++)
    for (int j = 0; j < nb; j++) {
      free(parts[t].buf[j]);
      free(parts[t].pos[j]);
    }
  return failed ? -1 : 0;
}

/* counts[v] += how many of the n entries' |x - b| bit patterns equal values[v] */
int mk_count_equal_f32(const float *x, const float *b, int64_t n, int nv,
                       const uint32_t *values, int64_t *counts) {
  for (int v = 0; v < nv; v++) {
    const uint32_t value = values[v];
    int64_t total = 0;
    for (int64_t start = 0; start < n; start += (int64_t)1 << 24) {
      int64_t end = start + ((int64_t)1 << 24) < n ? start + ((int64_t)1 << 24) : n;
      uint32_t count = 0;
      for (int64_t i = start; i < end; i++) count += magnitude_bits(x[i], b[i]) == value;
      total += count;
    }
    counts[v] += total;
  }
  return 0;
}

/* the flat position of the entries of [from, n) equal to value, scalar (see below) */
static int64_t places_scalar(const float *x, const float *b, int64_t from, int64_t n,
                             uint32_t value, int nk, const int64_t *ks, int64_t *positions,
                             int *k, int64_t seen) {
  for (int64_t i = from; i < n && *k < nk; i++) {
    if (magnitude_bits(x[i], b[i]) != value) continue;
    while (*k < nk && ks[*k] == seen) positions[(*k)++] = i;
    seen++;
  }
  return seen;
}

#ifdef HAVE_AVX2_PATH
/* eight entries at a time: count the equal ones, and look closer only where a wanted one is */
__attribute__((target("avx2,popcnt"))) static int64_t places_avx2(
    const float *x, const float *b, int64_t n, uint32_t value, int nk, const int64_t *ks,
    int64_t *positions, int *k, int64_t *seen) {
  const __m256i sign_off = _mm256_set1_epi32(0x7fffffff);
  const __m256i want = _mm256_set1_epi32((int32_t)value);
  const int64_t n8 = n & ~(int64_t)7;
  int64_t i = 0;
  for (; i < n8 && *k < nk; i += 8) {
    __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(b + i));
    __m256i bits = _mm256_and_si256(_mm256_castps_si256(d), sign_off);
    unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(bits, want)));
    int64_t count = _mm_popcnt_u32(mask);
    if (*seen + count > ks[*k]) *seen = places_scalar(x, b, i, i + 8, value, nk, ks, positions, k, *seen);
    else *seen += count;
  }
  return i;
}
#endif

/* positions[k] = the flat position of the ks[k]-th entry (0-based, ks ascending) whose
 * |x - b| bit pattern equals value, or n where there are not that many */
int mk_equal_places_f32(const float *x, const float *b, int64_t n, uint32_t value, int nk,
                        const int64_t *ks, int64_t *positions) {
  int k = 0;
  int64_t seen = 0, from = 0;
#ifdef HAVE_AVX2_PATH
  if (use_avx2) from = places_avx2(x, b, n, value, nk, ks, positions, &k, &seen);
#endif
  places_scalar(x, b, from, n, value, nk, ks, positions, &k, seen);
  for (; k < nk; k++) positions[k] = n;
  return 0;
}
