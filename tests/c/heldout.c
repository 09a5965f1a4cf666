/* Held-out programs for the fault classes (issue 26): one kind of fault per run, in a number known by
 * construction, so that the classes a trace gives can be held to it and its totals to the kernel's own.
 *     heldout MODE DIR      prints   REGION start=0xADDR pages=N expect=COUNT
 * The program first re-executes itself without address-space randomisation (personality), so that the
 * faults every run takes outside its region (ld.so, libc, fault-around of the libraries) are the same from
 * one run to the next: a run of MODE minus a run of "none" is MODE's own faults.
 *
 *   none          nothing more                                          (the baseline)
 *   anon          64 fresh anonymous pages written                      → 64 anonymous new pages
 *   zero          64 anonymous pages read                               → 64 zero-page faults
 *   fork          16 pages written, fork, the child writes them          → 16 new, 16 COW copies (the child)
 *   readfresh     read() of a cached 64-page file into a fresh buffer   → 64 anonymous new pages, kernel mode
 *   brk           the heap grown by 64 pages with sbrk, each written    → 64 anonymous new pages in [heap]
 *   privwrite     writes to 64 pages of a cached file, MAP_PRIVATE      → 64 COW copies
 *   cachedseq     256 cached pages read in order (fault-around: 16)     → 16 page-cache hits
 *   cachedrand    one page in each 16-page window, windows shuffled     → 16 page-cache hits
 *   fixedfile     cachedrand's, mapped MAP_FIXED over an anonymous      → 16 page-cache hits
 *                 mapping at the same start
 *   uncachedseq   256 cold pages read in order (readahead)              → the kernel's major count
 *   uncachedrand  32 cold pages, MADV_RANDOM, shuffled                  → 32 reads from disk (major)
 *   segv          4 writes to a PROT_NONE page                          → 4 SIGSEGV
 *   sigbus        4 reads of the page past a 1-page file's end          → 4 SIGBUS
 *   thp           2 MADV_HUGEPAGE 2 MiB regions, one write each         → 2 THP
 *   populate      64 pages MAP_POPULATE, then written                   → 0 faults
 *   mlock         64 pages mlock()ed, then written                      → 0 faults
 *   threads       4 threads write 16 pages each of one buffer           → 64 anonymous new pages
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096UL
#define WINDOW 16               /* fault_around_bytes (64 KiB) / PAGE */

static volatile char sink;
static sigjmp_buf jump;
static void on_signal(int sig) { (void)sig; siglongjmp(jump, 1); }

/* Printing without stdio's buffer: malloc would make the heap the brk mode counts. */
static void say(const char *region, const void *start, unsigned long pages, long expect) {
    char line[256];
    int n = snprintf(line, sizeof line, "%s start=%p pages=%lu expect=%ld\n", region, start, pages, expect);
    if (write(1, line, n) != n) _exit(3);
}

static void die(const char *what) { perror(what); _exit(2); }

/* `pages` of anonymous memory aligned to 64 KiB (fault-around windows), no huge pages. */
static char *map_anon(unsigned long pages) {
    unsigned long align = WINDOW * PAGE;
    char *raw = mmap(NULL, pages * PAGE + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) die("mmap");
    char *p = (char *)(((unsigned long)raw + align - 1) & ~(align - 1));
    if (mmap(p, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
        die("mmap fixed");
    madvise(p, pages * PAGE, MADV_NOHUGEPAGE);
    return p;
}

/* A file of `pages` pages in DIR named NAME, cached (just written) or cold (written, synced, dropped). */
static int make_file(const char *dir, const char *name, unsigned long pages, int cold) {
    char path[4096], block[PAGE];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) die("open");
    memset(block, 'h', sizeof block);
    for (unsigned long i = 0; i < pages; i++) if (write(fd, block, PAGE) != (ssize_t)PAGE) die("write");
    if (cold) {
        fsync(fd);
        if (posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)) die("fadvise");
    }
    return fd;
}

/* The file NAME in DIR again, read-only: a shared mapping of it may not become writable (no VM_MAYWRITE), as
 * 9p without a write-back cache requires of a shared mapping (generic_file_readonly_mmap: EINVAL else). */
static int reopen_read_only(const char *dir, const char *name, int fd) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int ro = open(path, O_RDONLY);
    if (ro < 0) die("open read-only");
    close(fd);
    return ro;
}

/* The file mapped at a 64 KiB-aligned address (so fault-around windows are whole): a free range is found,
 * given back, and asked for as a hint, so no other mapping ever started where the file's does. With
 * `fixed`, mapped instead with MAP_FIXED over an anonymous mapping at the same start (as ld.so maps a
 * library's segments over its reservation). */
static char *map_file(int fd, unsigned long pages, int prot, int flags, int fixed) {
    unsigned long align = WINDOW * PAGE, size = pages * PAGE;
    if (fixed) {
        char *p = mmap(map_anon(pages), size, prot, flags | MAP_FIXED, fd, 0);
        if (p == MAP_FAILED) die("mmap file");
        return p;
    }
    char *raw = mmap(NULL, size + 2 * align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) die("mmap");
    char *at = (char *)(((unsigned long)raw + PAGE + align - 1) & ~(align - 1));
    munmap(raw, size + 2 * align);
    char *p = mmap(at, size, prot, flags, fd, 0);
    if (p != at) die("mmap file at its hint");
    return p;
}

static void shuffle(unsigned long *v, unsigned long n) {
    unsigned long seed = 12345;
    for (unsigned long i = n - 1; i > 0; i--) {
        seed = seed * 6364136223846793005UL + 1442695040888963407UL;
        unsigned long j = (seed >> 33) % (i + 1), t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

static char *threads_buffer;
static void *thread_writes(void *arg) {
    unsigned long first = (unsigned long)arg;
    for (unsigned long i = first; i < first + 16; i++) threads_buffer[i * PAGE] = 1;
    return NULL;
}

static int signals(int sig, char *at, int times) {
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_NODEFER;
    sigaction(sig, &sa, NULL);
    int caught = 0;
    for (int i = 0; i < times; i++) {
        if (sigsetjmp(jump, 1) == 0) {
            if (sig == SIGSEGV) *(volatile char *)at = 1;
            else sink += *(volatile char *)at;
        } else caught++;
    }
    return caught;
}

static int run(const char *mode, const char *dir) {
    if (!strcmp(mode, "none")) return 0;
    if (!strcmp(mode, "anon")) {
        char *p = map_anon(64);
        for (unsigned long i = 0; i < 64; i++) p[i * PAGE] = 1;
        say("anon", p, 64, 64);
    } else if (!strcmp(mode, "zero")) {
        char *p = map_anon(64);
        for (unsigned long i = 0; i < 64; i++) sink += p[i * PAGE];
        say("zero", p, 64, 64);
    } else if (!strcmp(mode, "fork")) {
        char *p = map_anon(16);
        for (unsigned long i = 0; i < 16; i++) p[i * PAGE] = 1;
        pid_t child = fork();
        if (child == 0) {
            for (unsigned long i = 0; i < 16; i++) p[i * PAGE] = 2;
            _exit(0);
        }
        waitpid(child, NULL, 0);
        say("fork", p, 16, 16);
    } else if (!strcmp(mode, "readfresh")) {
        int fd = make_file(dir, "heldout-readfresh.dat", 64, 0);
        char *p = map_anon(64);
        if (pread(fd, p, 64 * PAGE, 0) != (ssize_t)(64 * PAGE)) die("pread");
        say("readfresh", p, 64, 64);
    } else if (!strcmp(mode, "brk")) {
        char *top = sbrk(0);
        char *start = (char *)(((unsigned long)top + PAGE - 1) & ~(PAGE - 1));
        if (sbrk(start - top + 64 * PAGE) == (void *)-1) die("sbrk");
        for (unsigned long i = 0; i < 64; i++) start[i * PAGE] = 1;
        say("brk", start, 64, 64);
    } else if (!strcmp(mode, "privwrite")) {
        int fd = make_file(dir, "heldout-privwrite.dat", 64, 0);
        char *p = map_file(fd, 64, PROT_READ | PROT_WRITE, MAP_PRIVATE, 0);
        for (unsigned long i = 0; i < 64; i++) p[i * PAGE] = 1;
        say("privwrite", p, 64, 64);
    } else if (!strcmp(mode, "cachedseq") || !strcmp(mode, "uncachedseq")) {
        int cold = mode[0] == 'u';
        const char *name = cold ? "heldout-uncachedseq.dat" : "heldout-cachedseq.dat";
        int fd = reopen_read_only(dir, name, make_file(dir, name, 256, cold));
        char *p = map_file(fd, 256, PROT_READ, MAP_SHARED, 0);
        for (unsigned long i = 0; i < 256; i++) sink += p[i * PAGE];
        say(mode, p, 256, cold ? -1 : 256 / WINDOW);
    } else if (!strcmp(mode, "cachedrand") || !strcmp(mode, "fixedfile")) {
        int fixed = mode[0] == 'f';
        const char *name = fixed ? "heldout-fixedfile.dat" : "heldout-cachedrand.dat";
        int fd = reopen_read_only(dir, name, make_file(dir, name, 256, 0));
        char *p = map_file(fd, 256, PROT_READ, MAP_SHARED, fixed);
        unsigned long order[16];
        for (unsigned long w = 0; w < 16; w++) order[w] = w;
        shuffle(order, 16);
        for (unsigned long w = 0; w < 16; w++) sink += p[(order[w] * WINDOW + (order[w] * 7) % WINDOW) * PAGE];
        say(mode, p, 256, 16);
    } else if (!strcmp(mode, "uncachedrand")) {
        int fd = reopen_read_only(dir, "heldout-uncachedrand.dat", make_file(dir, "heldout-uncachedrand.dat", 32, 1));
        char *p = map_file(fd, 32, PROT_READ, MAP_SHARED, 0);
        madvise(p, 32 * PAGE, MADV_RANDOM);
        unsigned long order[32];
        for (unsigned long i = 0; i < 32; i++) order[i] = i;
        shuffle(order, 32);
        for (unsigned long i = 0; i < 32; i++) sink += p[order[i] * PAGE];
        say("uncachedrand", p, 32, 32);
    } else if (!strcmp(mode, "segv")) {
        char *p = map_anon(1);
        mprotect(p, PAGE, PROT_NONE);
        say("segv", p, 1, signals(SIGSEGV, p, 4));
    } else if (!strcmp(mode, "sigbus")) {
        int fd = reopen_read_only(dir, "heldout-sigbus.dat", make_file(dir, "heldout-sigbus.dat", 1, 0));
        char *p = map_file(fd, 2, PROT_READ, MAP_SHARED, 0);
        say("sigbus", p + PAGE, 1, signals(SIGBUS, p + PAGE, 4));
    } else if (!strcmp(mode, "thp")) {
        unsigned long huge = 2UL << 20;
        char *raw = mmap(NULL, 3 * huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) die("mmap");
        char *p = (char *)(((unsigned long)raw + huge - 1) & ~(huge - 1));
        if (madvise(p, 2 * huge, MADV_HUGEPAGE)) die("madvise");
        p[0] = 1;
        p[huge] = 1;
        say("thp", p, 2 * huge / PAGE, 2);
    } else if (!strcmp(mode, "populate")) {
        char *p = mmap(NULL, 64 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (p == MAP_FAILED) die("mmap");
        for (unsigned long i = 0; i < 64; i++) p[i * PAGE] = 1;
        say("populate", p, 64, 0);
    } else if (!strcmp(mode, "mlock")) {
        char *p = map_anon(64);
        if (mlock(p, 64 * PAGE)) die("mlock");
        for (unsigned long i = 0; i < 64; i++) p[i * PAGE] = 1;
        say("mlock", p, 64, 0);
    } else if (!strcmp(mode, "threads")) {
        threads_buffer = map_anon(64);
        pthread_t t[4];
        for (unsigned long i = 0; i < 4; i++) pthread_create(&t[i], NULL, thread_writes, (void *)(i * 16));
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
        say("threads", threads_buffer, 64, 64);
    } else {
        fprintf(stderr, "heldout: unknown mode %s\n", mode);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: heldout MODE DIR\n");
        return 2;
    }
    if (!(personality(0xffffffff) & ADDR_NO_RANDOMIZE)) {
        personality(ADDR_NO_RANDOMIZE);
        execv("/proc/self/exe", argv);
        die("execv");
    }
    return run(argv[1], argv[2]);
}
