/* Faults taken in kernel mode: read(2) copies a file into a fresh anonymous mapping, so the kernel's
 * copy_to_user faults on each page (the program itself never touches them). Prints:
 *     buffer start=0xADDR pages=N
 * argv[1]: a directory to write the file in. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { PAGES = 64, PAGE = 4096 };

int main(int argc, char **argv) {
    char path[4096], block[PAGE];
    snprintf(path, sizeof path, "%s/read_into_fresh.XXXXXX", argc > 1 ? argv[1] : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) { perror("mkstemp"); return 1; }
    unlink(path);
    memset(block, 'x', sizeof block);
    for (int i = 0; i < PAGES; i++) if (write(fd, block, PAGE) != PAGE) { perror("write"); return 1; }
    char *buf = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(buf, PAGES * PAGE, MADV_NOHUGEPAGE);
    if (pread(fd, buf, PAGES * PAGE, 0) != PAGES * PAGE) { perror("pread"); return 1; }
    printf("buffer start=%p pages=%d\n", (void *)buf, PAGES);
    return 0;
}
