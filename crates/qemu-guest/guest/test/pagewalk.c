/* vmprobe test workload: puts STRING at a fixed virtual address, 12 bytes
 * before a page boundary (0x5a5a0ff4, so longer strings cross into the next
 * page), prints its pid, the address and the physical address of both pages
 * as the kernel reports them in /proc/self/pagemap, then sleeps SECONDS so
 * that other processes run while it waits.
 * Usage: vmprobe-pagewalk STRING [SECONDS] */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define BASE 0x5a5a0000UL

static unsigned long long phys(int fd, unsigned long va) {
    uint64_t e = 0;
    if (pread(fd, &e, 8, (off_t)(va >> 12) * 8) != 8 || !(e >> 63))
        return 0;
    return (e & ((1ULL << 55) - 1)) << 12;
}

int main(int argc, char **argv) {
    if (argc < 2 || strlen(argv[1]) > 200)
        return 2;
    char *p = mmap((void *)BASE, 8192, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED)
        return 1;
    char *s = p + 4096 - 12;
    memcpy(s, argv[1], strlen(argv[1]) + 1);
    p[0] = p[4096 + 2048] = 1; /* both pages present */
    int fd = open("/proc/self/pagemap", O_RDONLY);
    printf("PAGEWALK pid=%d addr=%#lx phys0=%#llx phys1=%#llx\n", getpid(),
           (unsigned long)s, phys(fd, BASE), phys(fd, BASE + 4096));
    fflush(stdout);
    sleep(argc > 2 ? atoi(argv[2]) : 5);
    return 0;
}
