/* A program that names itself and the file it maps with terminal control sequences, as an attacker's
 * program would: its comm is "ESC ]0;PWN BEL" (a window-title OSC) and it maps a file in DIR (argv[1])
 * whose name holds "ESC [2J" (clear screen). pagefault must show both escaped. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char path[4096];
    const size_t size = 16 * 4096;
    if (argc != 2)
        return 2;
    if (prctl(PR_SET_NAME, "\x1b]0;PWN\x07", 0, 0, 0) != 0)
        return 3;
    snprintf(path, sizeof path, "%s/map\x1b[2Jfile", argv[1]);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, size) != 0)
        return 4;
    char *file = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    char *anon = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (file == MAP_FAILED || anon == MAP_FAILED)
        return 5;
    for (size_t off = 0; off < size; off += 4096) {
        file[off] = 1;      /* faults on the file with the hostile name */
        anon[off] = 1;
    }
    munmap(file, size);
    close(fd);
    unlink(path);
    return 0;
}
