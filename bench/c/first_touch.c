/* First-touch SIZE bytes (default 1 GiB) of anonymous memory, one write per 4 KiB page.
 * Prints the region so a benchmark can count the faults inside it, and the loop's own time and
 * the minor faults it took (getrusage), so a benchmark can compute the kernel's fault rate; and the
 * CPU time the loop took (user + system, getrusage): on a machine busy with other work the wall time
 * also holds the time other tasks had the CPU, the CPU time does not. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

int main(int argc, char **argv) {
    size_t size = argc > 1 ? strtoull(argv[1], NULL, 0) : (1UL << 30);
    char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(p, size, MADV_NOHUGEPAGE);
    struct rusage before, after;
    struct timespec t0, t1;
    getrusage(RUSAGE_SELF, &before);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (size_t i = 0; i < size; i += 4096) p[i] = 1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    getrusage(RUSAGE_SELF, &after);
    long long cpu_us = (after.ru_utime.tv_sec - before.ru_utime.tv_sec + after.ru_stime.tv_sec - before.ru_stime.tv_sec)
                       * 1000000LL + (after.ru_utime.tv_usec - before.ru_utime.tv_usec)
                       + (after.ru_stime.tv_usec - before.ru_stime.tv_usec);
    printf("region=%p size=0x%zx loop_ns=%lld minflt=%ld loop_cpu_ns=%lld\n", (void *)p, size,
           (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec),
           after.ru_minflt - before.ru_minflt, cpu_us * 1000);
    return 0;
}
