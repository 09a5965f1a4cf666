/* A cold file read through a mapping from start to end, as a sequential reader does: the kernel reads
 * ahead, so most faults find their page already cached (minor) and a few must read it (major).
 * argv[1]: the directory for the file. Prints:  file start=0xADDR pages=N */
#define _GNU_SOURCE
#include <stdlib.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { PAGES = 512, PAGE = 4096 };

int main(int argc, char **argv) {
    char path[4096], block[PAGE];
    snprintf(path, sizeof path, "%s/file_sequential.XXXXXX", argc > 1 ? argv[1] : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) { perror("mkstemp"); return 1; }
    unlink(path);
    memset(block, 's', sizeof block);
    for (int i = 0; i < PAGES; i++) if (write(fd, block, PAGE) != PAGE) { perror("write"); return 1; }
    fsync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    volatile char *file = mmap(NULL, PAGES * PAGE, PROT_READ, MAP_PRIVATE, fd, 0);
    if (file == MAP_FAILED) { perror("mmap"); return 1; }
    char sink = 0;
    for (int i = 0; i < PAGES; i++) sink += file[i * PAGE];
    printf("file start=%p pages=%d\n", (void *)file, PAGES);
    return sink == 1;
}
