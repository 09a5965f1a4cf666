/* A known call chain in code built without frame pointers (tests/test_cfi_unwind.py builds it with
 * -O2 -fomit-frame-pointer): main → alpha → bravo → charlie → delta, each with a frame of its own (a
 * volatile array) and work after its call (no tail call). delta spins until the test, having read the
 * registers and the stack, kills it. It prints "ready" when it spins. */
#include <stdio.h>

#define NOINLINE __attribute__((noinline))

volatile int sink;

NOINLINE void delta(int n)
{
	volatile char pad[200];
	pad[n & 127] = (char)n;
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
	(void)argv;
	return alpha(argc);
}
