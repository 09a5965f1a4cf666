/* A known call chain in code built without frame pointers (tests/test_cfi_unwind.py builds it with
 * -O2 -fomit-frame-pointer): main → alpha → bravo → charlie → delta, each with a frame of its own (a
 * volatile array) and work after its call (no tail call). With no argument delta spins until the test,
 * having read the registers and the stack, kills it (it prints "ready" when it spins); with "fault" it
 * writes each page of a fresh 64-page anonymous region (64 faults whose RIP is in delta) and returns. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#define NOINLINE __attribute__((noinline))

volatile int sink;
static int touch;

NOINLINE void delta(int n)
{
	volatile char pad[200];
	pad[n & 127] = (char)n;
	if (touch) {
		char *p = mmap(NULL, 64 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return;
		for (int i = 0; i < 64; i++)
			((volatile char *)p)[i * 4096] = pad[n & 127];
		return;
	}
	printf("ready\n");
	fflush(stdout);
	for (;;)
		sink += pad[n & 127];
}

NOINLINE int charlie(int n)
{
	volatile long pad[40];
	pad[n & 31] = n;
	delta(n + 1);
	return (int)pad[n & 31];
}

NOINLINE int bravo(int n)
{
	volatile int pad[70];
	pad[n & 63] = n;
	return charlie(n + 1) + pad[n & 63];
}

NOINLINE int alpha(int n)
{
	volatile short pad[90];
	pad[n & 63] = (short)n;
	return bravo(n + 1) + pad[n & 63];
}

int main(int argc, char **argv)
{
	touch = argc > 1 && strcmp(argv[1], "fault") == 0;
	return alpha(argc) & 0;
}
