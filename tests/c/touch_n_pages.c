/* Write one byte to each of N fresh anonymous pages of a VMA of their own (PROT_NONE guard pages around it,
 * so it merges with no neighbour): exactly N faults in that VMA, each a new page. Prints
 * "region PID START N" (START in hex) so a test finds the VMA among its process's counts. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 8;
    long page = sysconf(_SC_PAGESIZE);
    char *guard = mmap(NULL, (n + 2) * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guard == MAP_FAILED) { perror("mmap"); return 1; }
    char *region = guard + page;
    if (mprotect(region, n * page, PROT_READ | PROT_WRITE)) { perror("mprotect"); return 1; }
    madvise(region, n * page, MADV_NOHUGEPAGE);
    for (long i = 0; i < n; i++)
        region[i * page] = 1;
    printf("region %d %lx %ld\n", getpid(), (unsigned long)region, n);
    return 0;
}
