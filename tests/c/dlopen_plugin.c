/* The library tests/c/dlopen_host.c dlopen()s: pf_plugin_touch writes one byte to each page of a fresh region,
 * so the region's faults have their RIP in this function of a library the program did not have at start. */
void pf_plugin_touch(volatile char *region, long pages)
{
	for (long i = 0; i < pages; i++)
		region[i * 4096] = 7;
}
