/* vmprobe test workload for uprobes: calls ucount_step(i) for i = 0..N-1
 * and prints its own count of the calls and each call's return value, so
 * that a uprobe's count and a uretprobe's retval can be checked against
 * what the program saw. Run from a copy under another path, the same code
 * must not count for a probe on /bin/vmprobe-ucount.
 * Usage: vmprobe-ucount [N] */
#include <stdio.h>
#include <stdlib.h>

static long calls;

/* noipa: a real call with the argument in rdi and the result in rax. */
__attribute__((noipa)) long ucount_step(long i) {
    calls++;
    return i * i + 7;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 3;
    for (long i = 0; i < n; i++)
        printf("ucount ret %ld\n", ucount_step(i));
    printf("ucount calls %ld\n", calls);
    return 0;
}
