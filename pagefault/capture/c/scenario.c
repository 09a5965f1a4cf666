/* The scenario program: runs a scenario's operations one at a time, pausing after each.
 *
 * usage: scenario CTL_FD STATUS_FD OP...
 *
 * Each OP is one argument, e.g. "mmap 1 rw anon", "write 0x100", "fork", "child write 0x0"
 * (the operations are described in pagefault/model/scenarios.py, which runs the same list in
 * the simulator). After each operation it writes one line to STATUS_FD:
 *     op N pid=P region=0xADDR pages=K [segv=CODE addr=0xADDR [esr=0xESR]]
 * and waits for one byte on CTL_FD, so the tool reads /proc while the program stands still.
 * A SIGSEGV from an access is caught (its si_code and si_addr reported) and the program goes on.
 * On arm64 the kernel also puts the abort's ESR_EL1 in the signal frame (an esr_context record;
 * unsanitised for a user address), the one place a program can read it: it is reported as esr=.
 * After a fork, the child runs the "child" operations when the parent hands them over, and
 * stays alive until the last operation is done, so its pages stay mapped while the tool looks.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static int ctl_fd, status_fd;
static char *region;
static long region_pages;
static sigjmp_buf segv_jump;
static volatile int segv_code;
static volatile unsigned long segv_addr;
static volatile unsigned long segv_esr;

#if defined(__aarch64__)
/* arch/arm64/include/uapi/asm/sigcontext.h: records in uc_mcontext.__reserved, each a {magic, size}
 * header; ESR_MAGIC's record holds the ESR. Spelled out here: that header clashes with glibc's. */
#define ESR_MAGIC 0x45535201u
struct record_head { unsigned int magic, size; };

static unsigned long esr_of(void *ctx) {
    ucontext_t *uc = ctx;
    unsigned char *p = (unsigned char *)uc->uc_mcontext.__reserved;
    unsigned char *end = p + sizeof uc->uc_mcontext.__reserved;
    while (p + sizeof(struct record_head) <= end) {
        struct record_head *h = (struct record_head *)p;
        if (h->magic == 0 || h->size < sizeof *h) break;
        if (h->magic == ESR_MAGIC) return *(unsigned long *)(p + sizeof *h);
        p += h->size;
    }
    return 0;
}
#else
static unsigned long esr_of(void *ctx) { (void)ctx; return 0; }
#endif

static void say(const char *line) {
    size_t len = strlen(line);
    if (write(status_fd, line, len) != (ssize_t)len) _exit(3);
}

static void wait_go(void) {
    char go;
    if (read(ctl_fd, &go, 1) != 1) _exit(4);   /* the tool went away: stop quietly */
}

static void fail(const char *what) {
    char line[256];
    snprintf(line, sizeof line, "error %s\n", what);
    say(line);
    _exit(1);
}

static void on_segv(int sig, siginfo_t *info, void *ctx) {
    (void)sig;
    segv_code = info->si_code;
    segv_addr = (unsigned long)info->si_addr;
    segv_esr = esr_of(ctx);
    siglongjmp(segv_jump, 1);
}

static int prot_of(const char *p) {
    if (!strcmp(p, "r")) return PROT_READ;
    if (!strcmp(p, "rw")) return PROT_READ | PROT_WRITE;
    if (!strcmp(p, "none")) return PROT_NONE;
    fail("unknown protection (r, rw or none)");
    return 0;
}

static unsigned long stack_start(void) {
    char buf[512];
    unsigned long start = 0, end;
    FILE *maps = fopen("/proc/self/maps", "r");
    if (!maps) fail("cannot read /proc/self/maps");
    while (fgets(buf, sizeof buf, maps))
        if (strstr(buf, "[stack]") && sscanf(buf, "%lx-%lx", &start, &end) == 2) break;
    fclose(maps);
    if (!start) fail("no [stack] line in /proc/self/maps");
    return start;
}

static char *map_file(long pages, int prot) {
    char path[] = "/tmp/pagefault-scenario-XXXXXX";
    const char *dir = getenv("TMPDIR");
    char buf[4096];
    char tmpl[512];
    snprintf(tmpl, sizeof tmpl, "%s/pagefault-scenario-XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(dir && *dir ? tmpl : path);
    if (fd < 0) fail("cannot create the scenario's file");
    unlink(dir && *dir ? tmpl : path);
    memset(buf, 'f', sizeof buf);
    for (long i = 0; i < pages; i++)         /* write(2): the pages are in the page cache now */
        if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) fail("cannot write the scenario's file");
    char *p = mmap(NULL, pages * 4096, prot, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) fail("mmap of the file failed");
    return p;
}

/* One operation in this process; returns the si_code of a SIGSEGV it took, or 0. */
static int run_op(const char *op) {
    char verb[16], a[32], b[32], c[32];
    int n = sscanf(op, "%15s %31s %31s %31s", verb, a, b, c);
    segv_code = 0;
    segv_esr = 0;
    if (n >= 1 && !strcmp(verb, "mmap") && n == 4) {
        region_pages = atol(a);
        if (!strcmp(c, "file")) {
            region = map_file(region_pages, prot_of(b));
        } else {
            int flags = MAP_PRIVATE | MAP_ANONYMOUS | (!strcmp(c, "anon+populate") ? MAP_POPULATE : 0);
            region = mmap(NULL, region_pages * 4096, prot_of(b), flags, -1, 0);
            if (region == MAP_FAILED) fail("mmap failed");
        }
    } else if (!strcmp(verb, "stack") && n == 2) {
        region_pages = atol(a);
        region = (char *)(stack_start() - region_pages * 4096);
    } else if ((!strcmp(verb, "read") || !strcmp(verb, "write")) && n == 2) {
        volatile char *p = region + strtol(a, NULL, 16);
        if (sigsetjmp(segv_jump, 1) == 0) {
            if (verb[0] == 'w') *p = 0x5a;
            else (void)*p;
        }
    } else if (!strcmp(verb, "mprotect") && n == 4) {
        if (mprotect(region + atol(a) * 4096, atol(b) * 4096, prot_of(c))) fail("mprotect failed");
    } else if (!strcmp(verb, "madvise") && n == 4) {
        if (madvise(region + atol(a) * 4096, atol(b) * 4096, MADV_HUGEPAGE)) fail("madvise(MADV_HUGEPAGE) failed");
    } else if (!strcmp(verb, "munmap") && n == 3) {
        if (munmap(region + atol(a) * 4096, atol(b) * 4096)) fail("munmap failed");
    } else {
        fail("malformed operation");
    }
    return segv_code;
}

int main(int argc, char **argv) {
    char line[256];
    int to_child = -1, from_child = -1;
    pid_t child = 0;
    if (argc < 3) {
        fprintf(stderr, "usage: %s CTL_FD STATUS_FD OP...\n", argv[0]);
        return 2;
    }
    ctl_fd = atoi(argv[1]);
    status_fd = atoi(argv[2]);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);

    snprintf(line, sizeof line, "ready pid=%d\n", (int)getpid());
    say(line);
    wait_go();
    for (int i = 3; i < argc; i++) {
        const char *op = argv[i];
        int code = 0;
        pid_t who = getpid();
        unsigned long addr = 0, esr = 0;
        if (!strcmp(op, "fork")) {
            int down[2], up[2];
            if (pipe(down) || pipe(up)) fail("pipe failed");
            child = fork();
            if (child < 0) fail("fork failed");
            if (child == 0) {                       /* the child: run what the parent hands over */
                close(down[1]); close(up[0]);
                int index;
                while (read(down[0], &index, sizeof index) == sizeof index && index > 0) {
                    int c = run_op(argv[index] + 6);   /* after "child " */
                    unsigned long reply[3] = {(unsigned long)c, segv_addr, segv_esr};
                    if (write(up[1], reply, sizeof reply) != sizeof reply) _exit(5);
                }
                _exit(0);
            }
            close(down[0]); close(up[1]);
            to_child = down[1]; from_child = up[0];
        } else if (!strncmp(op, "child ", 6)) {
            unsigned long reply[3];
            if (to_child < 0) fail("a child operation before fork");
            if (write(to_child, &i, sizeof i) != sizeof i || read(from_child, reply, sizeof reply) != sizeof reply)
                fail("the child did not answer");
            code = (int)reply[0];
            addr = reply[1];
            esr = reply[2];
            who = child;
        } else {
            code = run_op(op);
            addr = segv_addr;
            esr = segv_esr;
        }
        int len = snprintf(line, sizeof line, "op %d pid=%d region=%p pages=%ld", i - 3, (int)who,
                           (void *)region, region_pages);
        if (code && esr)
            snprintf(line + len, sizeof line - len, " segv=%d addr=0x%lx esr=0x%lx\n", code, addr, esr);
        else if (code)
            snprintf(line + len, sizeof line - len, " segv=%d addr=0x%lx\n", code, addr);
        else
            snprintf(line + len, sizeof line - len, "\n");
        say(line);
        wait_go();
    }
    if (child > 0) {
        int end = 0, status;
        if (write(to_child, &end, sizeof end) != sizeof end) {}
        waitpid(child, &status, 0);
    }
    return 0;
}
