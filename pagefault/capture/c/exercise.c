/* The journey's exercise program: one anonymous mapping, one write into it.
 *
 * usage: exercise CTL_FD STATUS_FD OFFSET SIZE [TEXT]
 *
 * It stops at each phase until the tool lets it go: it writes one line to STATUS_FD and then
 * reads one byte from CTL_FD. No sleeps, no races: while it waits, the tool reads its
 * /proc/PID files and the person can look at the paused process. Lines are written with
 * write(2), never through stdio, so nothing sits in a buffer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define DEFAULT_TEXT "offset world"

static int ctl_fd, status_fd;

static void phase(const char *line) {
    char go;
    size_t len = strlen(line);
    if (write(status_fd, line, len) != (ssize_t)len) _exit(3);
    if (read(ctl_fd, &go, 1) != 1) _exit(4);   /* the tool went away: stop quietly */
}

int main(int argc, char **argv) {
    char line[512];
    if (argc < 5) {
        fprintf(stderr, "usage: %s CTL_FD STATUS_FD OFFSET SIZE [TEXT]\n", argv[0]);
        return 2;
    }
    ctl_fd = atoi(argv[1]);
    status_fd = atoi(argv[2]);
    size_t offset = strtoul(argv[3], NULL, 0);
    size_t size = strtoul(argv[4], NULL, 0);
    const char *text = argc > 5 ? argv[5] : NULL;

    snprintf(line, sizeof line, "ready pid=%d\n", (int)getpid());
    phase(line);

    char *vaddr = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (vaddr == MAP_FAILED) {
        snprintf(line, sizeof line, "error mmap failed\n");
        phase(line);
        return 1;
    }
    snprintf(line, sizeof line, "mapped vaddr=%p size=0x%zx\n", (void *)vaddr, size);
    phase(line);

    /* The write that faults. With the default text the compiler turns strcpy into stores
     * inside main; a text from the command line is copied by the C library's strcpy. */
    if (text)
        strcpy(vaddr + offset, text);
    else
        strcpy(vaddr + offset, DEFAULT_TEXT);

    snprintf(line, sizeof line, "touched readback=%.400s\n", vaddr + offset);
    phase(line);
    return 0;
}
