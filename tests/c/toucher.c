/* Touch PAGES fresh anonymous pages (default: forever, 1 GiB regions reused), one every DELAY_US
 * microseconds; with "ignore" as the third argument, SIGINT, SIGTERM and SIGHUP are ignored.
 * Prints its PID first, so a test knows whom to look for. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long pages = argc > 1 ? atol(argv[1]) : 0;
    long delay = argc > 2 ? atol(argv[2]) : 1000;
    if (argc > 3 && !strcmp(argv[3], "ignore")) {
        signal(SIGINT, SIG_IGN);
        signal(SIGTERM, SIG_IGN);
        signal(SIGHUP, SIG_IGN);
    }
    printf("pid=%d\n", getpid());
    fflush(stdout);
    const long region = 1L << 18;   /* pages per 1 GiB region */
    for (long done = 0; !pages || done < pages;) {
        char *p = mmap(NULL, region * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        madvise(p, region * 4096, MADV_NOHUGEPAGE);
        for (long i = 0; i < region && (!pages || done < pages); i++, done++) {
            p[i * 4096] = 1;
            if (delay) usleep(delay);
        }
        munmap(p, region * 4096);
    }
    return 0;
}
