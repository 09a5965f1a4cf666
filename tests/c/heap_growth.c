/* The brk heap grown in steps, each step written at once: N_STEPS allocations of STEP bytes (under malloc's
 * mmap threshold, so from brk), every page written. Prints its heap's start and the break at the end:
 *     heap start=0xADDR end=0xADDR pages=N
 * It ends within milliseconds: no /proc snapshot taken while it runs sees the heap at its top. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { N_STEPS = 32, STEP = 64 * 1024 };

int main(void) {
    char *start = sbrk(0);
    for (int i = 0; i < N_STEPS; i++) {
        char *p = malloc(STEP);
        if (!p) return 1;
        memset(p, i, STEP);
    }
    char *end = sbrk(0);
    printf("heap start=%p end=%p pages=%ld\n", (void *)start, (void *)end, (long)((end - start) / 4096));
    return 0;
}
