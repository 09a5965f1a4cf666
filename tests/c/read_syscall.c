/* A fault taken in kernel mode inside read(2): the program writes a file, maps a fresh anonymous buffer it
 * never touches itself, and read()s the file into it, so the kernel's copy to user memory (_copy_to_iter ←
 * filemap_read) faults on each of the buffer's pages. Prints:
 *     buffer start=0xADDR pages=N
 * argv[1]: a directory to write the file in. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

enum { PAGES = 16, PAGE = 4096 };

int main(int argc, char **argv) {
    char path[4096], block[PAGE];
    snprintf(path, sizeof path, "%s/read_syscall.XXXXXX", argc > 1 ? argv[1] : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) { perror("mkstemp"); return 1; }
    unlink(path);
    memset(block, 'r', sizeof block);
    for (int i = 0; i < PAGES; i++) if (write(fd, block, PAGE) != PAGE) { perror("write"); return 1; }
    if (lseek(fd, 0, SEEK_SET) != 0) { perror("lseek"); return 1; }
    char *buf = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(buf, PAGES * PAGE, MADV_NOHUGEPAGE);
    printf("buffer start=%p pages=%d\n", (void *)buf, PAGES);
    fflush(stdout);
    if (read(fd, buf, PAGES * PAGE) != PAGES * PAGE) { perror("read"); return 1; }
    /* a system call after the read, so that a tracer stopping the program at its next kernel entry stops it
     * alive (an exit_group would end it there) */
    printf("read done\n");
    fflush(stdout);
    return 0;
}
