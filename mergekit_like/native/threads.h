/* Run a pass split in parts on threads: part 0 on the calling thread, the others on threads
 * of their own; a part whose thread could not start runs on the calling thread too. */
#ifndef MERGEKIT_LIKE_THREADS_H
#define MERGEKIT_LIKE_THREADS_H

#include <pthread.h>
#include <stddef.h>

#define MAX_THREADS 64

/* fn(parts + k * size) for every k < count (count <= MAX_THREADS), then return */
static void run_parts(void *(*fn)(void *), void *parts, size_t size, int count) {
  pthread_t tid[MAX_THREADS];
  char *at = parts;
  int started = 1;
  while (started < count && pthread_create(&tid[started], NULL, fn, at + size * started) == 0)
    started++;
  fn(parts);
  for (int k = started; k < count; k++) fn(at + size * k);
  for (int k = 1; k < started; k++) pthread_join(tid[k], NULL);
}

/* how many threads for n items, at least per_thread each: between 1 and max(1, asked) */
static int thread_count(int asked, long long n, long long per_thread) {
  if (asked > MAX_THREADS) asked = MAX_THREADS;
  if (asked > n / per_thread) asked = (int)(n / per_thread);
  return asked < 1 ? 1 : asked;
}

/* part t of `count` even parts of [0, n): [*from, *to) */
static void part_range(long long n, int count, int t, long long *from, long long *to) {
  long long per = (n + count - 1) / count;
  *from = per * t < n ? per * t : n;
  *to = *from + per < n ? *from + per : n;
}

#endif
