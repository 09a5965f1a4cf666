/* A program that loads a library after its start: dlopen("libpfplugin.so") (found through its DT_RUNPATH,
 * $ORIGIN: the test builds both into one directory), or the library whose path is its first argument (a name
 * it makes at run time), then has its pf_plugin_touch write PAGES pages of a fresh region, printed first as
 * "region start=0x… pages=N". Built by tests/test_selectors_dlopen.py with -ldl -Wl,-rpath,'$ORIGIN'. */
#include <dlfcn.h>
#include <stdio.h>
#include <sys/mman.h>

#define PAGES 64

int main(int argc, char **argv)
{
	void *lib = dlopen(argc > 1 ? argv[1] : "libpfplugin.so", RTLD_NOW);
	if (!lib) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 1;
	}
	void (*touch)(volatile char *, long) = (void (*)(volatile char *, long))dlsym(lib, "pf_plugin_touch");
	char *region = mmap(NULL, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!touch || region == MAP_FAILED)
		return 1;
	printf("region start=%p pages=%d\n", (void *)region, PAGES);
	fflush(stdout);
	touch(region, PAGES);
	return region[4096] == 7 ? 0 : 2;
}
