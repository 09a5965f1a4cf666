/* mmap one anonymous page, write a string at an offset, report the address and the PFN from our own pagemap. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    size_t offset = argc > 1 ? strtoul(argv[1], NULL, 0) : 0x100;
    char *vaddr = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (vaddr == MAP_FAILED) { perror("mmap"); return 1; }
    strcpy(vaddr + offset, "offset world");
    uint64_t entry = 0;
    int fd = open("/proc/self/pagemap", O_RDONLY);
    if (fd < 0 || pread(fd, &entry, 8, ((uintptr_t)vaddr >> 12) * 8) != 8) { perror("pagemap"); return 1; }
    printf("vaddr=%p offset=0x%zx pagemap=0x%llx pfn=0x%llx text=%s\n", (void *)vaddr, offset,
           (unsigned long long)entry, (unsigned long long)(entry & ((1ULL << 55) - 1)), vaddr + offset);
    return 0;
}
