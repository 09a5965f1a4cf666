/* Faults of every kind, in known numbers, each kind in its own region; prints one line per region:
 *     KIND start=0xADDR pages=N expect=COUNT
 * so a test can count the classifier's verdicts inside each region.
 *
 *   anon      N fresh anonymous pages written                       → N anonymous new pages
 *   zero      M pages read, then written                            → M zero pages, then M COW copies
 *   fork      K pages written, fork; the child writes them, exits;  → K new, K copies in the child, then
 *             then the parent writes them again                       K in the parent (reuse or copy)
 *   file      F pages of a cold file (fadvise DONTNEED, MADV_RANDOM) → F reads from disk
 *   thp       one 2 MiB-aligned MADV_HUGEPAGE region, one write     → 1 THP
 *   stack     S pages below the stack's start, touched downwards    → S stack growths
 *   segv      one write to a PROT_NONE page                         → 1 SIGSEGV
 */
#define _GNU_SOURCE
#include <alloca.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096
enum { N_ANON = 32, M_ZERO = 16, K_FORK = 8, F_FILE = 12, S_STACK = 24 };

static sigjmp_buf jump;
static void on_segv(int sig) { (void)sig; siglongjmp(jump, 1); }

static char *map_anon(size_t pages) {
    char *p = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    madvise(p, pages * PAGE, MADV_NOHUGEPAGE);
    return p;
}

static unsigned long stack_start(void) {
    char line[512];
    unsigned long lo = 0, hi = 0;
    FILE *f = fopen("/proc/self/maps", "r");
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "[stack]")) { sscanf(line, "%lx-%lx", &lo, &hi); break; }
    if (f) fclose(f);
    return lo;
}

/* Touch S pages below the stack VMA's start, from the top down: each one grows the stack by a page. */
static __attribute__((noinline)) int grow(unsigned long below) {
    char here;
    size_t n = (unsigned long)&here - below + (S_STACK + 2) * PAGE;
    volatile char *a = alloca(n);
    for (int i = 1; i <= S_STACK; i++) a[below - (unsigned long)i * PAGE - (unsigned long)a] = 1;
    return a[below - PAGE - (unsigned long)a];
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    setvbuf(stdout, NULL, _IOLBF, 0);
    volatile char sink = 0;

    char *anon = map_anon(N_ANON);
    for (int i = 0; i < N_ANON; i++) anon[i * PAGE] = 1;
    printf("anon start=%p pages=%d expect=%d\n", anon, N_ANON, N_ANON);

    char *zero = map_anon(M_ZERO);
    for (int i = 0; i < M_ZERO; i++) sink += zero[i * PAGE];
    for (int i = 0; i < M_ZERO; i++) zero[i * PAGE] = 1;
    printf("zero start=%p pages=%d expect=%d\n", zero, M_ZERO, M_ZERO);

    char *shared = map_anon(K_FORK);
    for (int i = 0; i < K_FORK; i++) shared[i * PAGE] = 1;
    pid_t child = fork();
    if (child == 0) {
        for (int i = 0; i < K_FORK; i++) shared[i * PAGE] = 2;
        _exit(0);
    }
    waitpid(child, NULL, 0);
    for (int i = 0; i < K_FORK; i++) shared[i * PAGE] = 3;
    printf("fork start=%p pages=%d expect=%d child=%d\n", shared, K_FORK, K_FORK, (int)child);

    char path[4096];
    snprintf(path, sizeof path, "%s/fault_kinds.XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0) { perror("mkstemp"); return 1; }
    unlink(path);
    char buf[PAGE];
    memset(buf, 7, sizeof buf);
    for (int i = 0; i < F_FILE; i++) if (write(fd, buf, PAGE) != PAGE) { perror("write"); return 1; }
    fsync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    char *file = mmap(NULL, F_FILE * PAGE, PROT_READ, MAP_PRIVATE, fd, 0);
    if (file == MAP_FAILED) { perror("mmap file"); return 1; }
    madvise(file, F_FILE * PAGE, MADV_RANDOM);
    for (int i = 0; i < F_FILE; i++) sink += file[i * PAGE];
    printf("file start=%p pages=%d expect=%d\n", file, F_FILE, F_FILE);

    size_t huge = 2 << 20;
    char *raw = mmap(NULL, 2 * huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *thp = (char *)(((unsigned long)raw + huge - 1) & ~(huge - 1));
    madvise(thp, huge, MADV_HUGEPAGE);
    thp[0] = 1;
    printf("thp start=%p pages=%d expect=1\n", thp, (int)(huge / PAGE));

    unsigned long below = stack_start();
    sink += grow(below);
    printf("stack start=0x%lx pages=%d expect=%d\n", below - S_STACK * PAGE, S_STACK, S_STACK);

    char *guard = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    signal(SIGSEGV, on_segv);
    if (sigsetjmp(jump, 1) == 0) *(volatile char *)guard = 1;
    printf("segv start=%p pages=1 expect=1\n", guard);
    return sink == 42;
}
