/* vmprobe test workload: a hostile guest. Builds, in its own memory, the
 * structures a careless handler could hang or crash on, and hands each to
 * write(2) on /dev/null as the buffer, the byte count saying which it is:
 *   1  a cyclic list: two nodes whose `next` (first word) point at each other
 *   2  a list whose third node's `next` is a wild, non-canonical pointer
 *   3  a 1 MiB string with no terminating NUL
 * Each node is a 16-byte struct { void *next; long value; }.
 * Usage: vmprobe-hostile */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct node {
    struct node *next;
    long value;
};

int main(void) {
    static struct node cyclic[2], wild[3];
    cyclic[0].next = &cyclic[1];
    cyclic[1].next = &cyclic[0];
    wild[0].next = &wild[1];
    wild[1].next = &wild[2];
    wild[2].next = (struct node *)0xdead00000000beefUL;
    size_t huge_len = 1 << 20;
    char *huge = malloc(huge_len);
    if (!huge)
        return 1;
    memset(huge, 'A', huge_len);
    int fd = open("/dev/null", O_WRONLY);
    if (fd < 0)
        return 1;
    int ok = write(fd, cyclic, 1) == 1 && write(fd, wild, 2) == 2 &&
             write(fd, huge, 3) == 3;
    printf("hostile_done=%d\n", ok);
    return ok ? 0 : 1;
}
