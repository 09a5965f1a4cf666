/* First-touch SIZE bytes (default 1 GiB) of anonymous memory, one write per 4 KiB page.
 * Prints the region so a benchmark can count the faults inside it. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

int main(int argc, char **argv) {
    size_t size = argc > 1 ? strtoull(argv[1], NULL, 0) : (1UL << 30);
    char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(p, size, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < size; i += 4096) p[i] = 1;
    printf("region=%p size=0x%zx\n", (void *)p, size);
    return 0;
}
