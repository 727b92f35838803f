/* Replay of an introsort (libstdc++'s std::sort) over int32 keys, ascending, carrying each
 * key's index, as far as some cut points need (see methods/introsort.py): ranges holding no
 * cut are left as they are. Median of three to the front, unguarded Hoare partition, heap
 * sort past the depth limit, insertion sort for ranges of 16 or fewer.
 */
#include <stdint.h>

#define THRESHOLD 16

typedef struct {
  int32_t *key;
  int64_t *idx;
  const int64_t *cuts;
  int ncuts;
  int blocks; /* partition by block_swaps first (1), or one entry at a time only (0) */
} arr_t;

static inline void swap(arr_t *a, int64_t i, int64_t j) {
  int32_t k = a->key[i];
  a->key[i] = a->key[j];
  a->key[j] = k;
  int64_t x = a->idx[i];
  a->idx[i] = a->idx[j];
  a->idx[j] = x;
}

/* The unguarded partition's swaps, found a block at a time without branches (as in
 * BlockQuicksort): the left scan stops at the entries >= pivot in position order, the right
 * scan at those <= pivot in reverse order, and the k-th swap exchanges the k-th stop of each,
 * so collecting each side's stops in a block of untouched entries and pairing them in order
 * makes the same swaps as the scans. Stops once fewer than two blocks are left between the
 * scans, leaving (*lo, *hi) as the scalar loop has them after the same swaps. */
#define BLOCK 128

static void block_swaps(arr_t *a, int32_t pivot, int64_t *lo, int64_t *hi) {
  const int32_t *key = a->key;
  int64_t left[BLOCK], right[BLOCK];
  int nl = 0, il = 0, nr = 0, ir = 0;
  int64_t ls = *lo, rs = *hi - 1; /* the next entries each scan has not looked at */
  for (;;) {
    if (il == nl) {
      if (rs - ls + 1 < 2 * BLOCK) break;
      nl = il = 0;
      for (int j = 0; j < BLOCK; j++) {
        left[nl] = ls + j;
        nl += key[ls + j] >= pivot;
      }
      ls += BLOCK;
    }
    if (ir == nr) {
      if (rs - ls + 1 < BLOCK) break;
      nr = ir = 0;
      for (int j = 0; j < BLOCK; j++) {
        right[nr] = rs - j;
        nr += key[rs - j] <= pivot;
      }
      rs -= BLOCK;
    }
    int n = nl - il < nr - ir ? nl - il : nr - ir;
    for (int j = 0; j < n; j++) swap(a, left[il + j], right[ir + j]);
    if (n > 0) {
      il += n;
      ir += n;
      *lo = left[il - 1] + 1;
      *hi = right[ir - 1];
    }
  }
}

static int64_t partition(arr_t *a, int64_t first, int64_t last) {
  const int32_t *key = a->key;
  int64_t p = first + 1, m = first + (last - first) / 2, c = last - 1, median;
  if (key[p] < key[m])
    median = key[m] < key[c] ? m : (key[p] < key[c] ? c : p);
  else
    median = key[p] < key[c] ? p : (key[m] < key[c] ? c : m);
  swap(a, first, median);
  const int32_t pivot = key[first];
  int64_t lo = first + 1, hi = last;
  if (a->blocks) block_swaps(a, pivot, &lo, &hi);
  for (;;) {
    while (key[lo] < pivot) lo++;
    hi--;
    while (pivot < key[hi]) hi--;
    if (!(lo < hi)) return lo;
    swap(a, lo, hi);
    lo++;
  }
}

static void insertion(arr_t *a, int64_t first, int64_t last) {
  for (int64_t i = first + 1; i < last; i++) {
    int32_t k = a->key[i];
    int64_t x = a->idx[i], j = i;
    while (j > first && k < a->key[j - 1]) {
      a->key[j] = a->key[j - 1];
      a->idx[j] = a->idx[j - 1];
      j--;
    }
    a->key[j] = k;
    a->idx[j] = x;
  }
}

/* libstdc++'s __adjust_heap over base[0, n), hole at `hole`, placing (k, x) */
static void adjust(int32_t *key, int64_t *idx, int64_t hole, int64_t n, int32_t k, int64_t x) {
  const int64_t top = hole;
  int64_t child = hole;
  while (child < (n - 1) / 2) {
    child = 2 * (child + 1);
    if (key[child] < key[child - 1]) child--;
    key[hole] = key[child];
    idx[hole] = idx[child];
    hole = child;
  }
  if ((n & 1) == 0 && child == (n - 2) / 2) {
    child = 2 * (child + 1);
    key[hole] = key[child - 1];
    idx[hole] = idx[child - 1];
    hole = child - 1;
  }
  int64_t parent = (hole - 1) / 2;
  while (hole > top && key[parent] < k) {
    key[hole] = key[parent];
    idx[hole] = idx[parent];
    hole = parent;
    parent = (hole - 1) / 2;
  }
  key[hole] = k;
  idx[hole] = x;
}

static void heap_sort(arr_t *a, int64_t first, int64_t last) {
  int32_t *key = a->key + first;
  int64_t *idx = a->idx + first, n = last - first;
  if (n < 2) return;
  for (int64_t parent = (n - 2) / 2;; parent--) {
    adjust(key, idx, parent, n, key[parent], idx[parent]);
    if (parent == 0) break;
  }
  for (int64_t end = n - 1; end > 0; end--) {
    int32_t k = key[end];
    int64_t x = idx[end];
    key[end] = key[0];
    idx[end] = idx[0];
    adjust(key, idx, 0, end, k, x);
  }
}

static int holds_cut(const arr_t *a, int64_t first, int64_t last) {
  for (int i = 0; i < a->ncuts; i++)
    if (first < a->cuts[i] && a->cuts[i] < last) return 1;
  return 0;
}

static void settle(arr_t *a, int64_t first, int64_t last, int depth) {
  while (holds_cut(a, first, last)) {
    if (last - first <= THRESHOLD) {
      insertion(a, first, last);
      return;
    }
    if (depth == 0) {
      heap_sort(a, first, last);
      return;
    }
    depth--;
    int64_t cut = partition(a, first, last);
    settle(a, cut, last, depth);
    last = cut;
  }
}

/* Arrange key[0, n) (and idx alongside) as an introsort would, as far as the ncuts cut
 * points need: afterwards idx[0, k) holds the entries sorted before each cut k. depth: the
 * splits allowed before heap sort (std::sort's: 2 * floor(log2(n))). blocks: 1 to find the
 * partitions' swaps by blocks, 0 one entry at a time (the same swaps; for the tests). */
int mk_introsort_settle(int32_t *key, int64_t *idx, int64_t n, const int64_t *cuts, int ncuts,
                        int depth, int blocks) {
  arr_t a = {key, idx, cuts, ncuts, blocks};
  if (n > 1) settle(&a, 0, n, depth);
  return 0;
}
