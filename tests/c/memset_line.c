/* A program whose faults come from a library: main memsets a fresh anonymous region (the faults' RIPs are in
 * libc's memset, which keeps no frame: the return address into main is at the stack pointer), then does
 * arithmetic that cannot fault. tests/test_selectors_everywhere.py picks its faults by --at memset,
 * --at libc.so.6:memset and --at memset_line.c:LINE (the memset line, and the arithmetic line that matches
 * nothing). It prints the region as "region start=0x… pages=N". */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define PAGES 256

int main(void)
{
	volatile unsigned long sum = 0;
	char *region = mmap(NULL, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (region == MAP_FAILED)
		return 1;
	printf("region start=%p pages=%d\n", (void *)region, PAGES);
	fflush(stdout);
	memset(region, 7, PAGES * 4096);   /* MEMSET LINE */
	for (int i = 0; i < 1000; i++)
		sum += i;                   /* NO FAULT LINE */
	return region[4096] == 7 && sum ? 0 : 2;
}
