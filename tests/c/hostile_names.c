/* Red team (issue 28, class 1): names a traced program controls, each holding terminal controls: its comm
   (written through /proc/self/comm), a thread name, a function symbol (a GAS quoted name with ESC, BEL and a
   bidi override); tests/test_red_team_terminal.py runs it under a file name holding ESC[2J. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <fcntl.h>
/* a function whose symbol name holds ESC and a bidi override (GAS quoted names) */
__attribute__((noinline)) void evil(char *p, int n) __asm__("\"evil\x1b]52;c;UFdO\x07\xe2\x80\xaename\"");
__attribute__((noinline)) void evil(char *p, int n) { for (int i = 0; i < n; i += 4096) p[i] = 1; __asm__ volatile("" ::: "memory"); }
static void *thr(void *a) {
    pthread_setname_np(pthread_self(), "\x1b[2Jthr\xe2\x80\xae");
    for (int k = 0; k < 200; k++) { char *p = mmap(0, 1<<20, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0); evil(p, 1<<20); munmap(p, 1<<20); usleep(5000);}
    return 0;
}
int main(int argc, char **argv) {
    int fd = open("/proc/self/comm", O_WRONLY); write(fd, "\x1b]0;PWN\x07", 8); close(fd);
    pthread_t t; pthread_create(&t, 0, thr, 0);
    for (int k = 0; k < 200; k++) { char *p = mmap(0, 1<<20, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0); evil(p, 1<<20); munmap(p, 1<<20); usleep(5000);}
    pthread_join(t, 0);
    return 0;
}
