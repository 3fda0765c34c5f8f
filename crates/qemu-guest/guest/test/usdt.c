/* vmprobe test workload for usdt probes: fires STAP_PROBE2(vmprobe, step,
 * i, total) N times and prints each probe's arguments and the count
 * itself, so that vmprobe's usdt counts and arguments can be checked
 * against what the program saw. `total` is kept in memory (volatile, on
 * the stack), so the note gives its argument as a memory operand; `neg`
 * is a negative signed int. `twice` is inlined into two places, one
 * probe with two locations that keep their argument in different
 * registers. Usage: vmprobe-usdt [N] */
#include <stdio.h>
#include <stdlib.h>
#include <sys/sdt.h>

static inline __attribute__((always_inline)) void twice(long v) {
    STAP_PROBE1(vmprobe, twice, v);
    printf("usdt twice %ld\n", v);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 3;
    volatile long total = 0;
    long fired = 0;
    for (long i = 0; i < n; i++) {
        total += i * 3;
        int neg = -(int)i - 1;
        STAP_PROBE2(vmprobe, step, i, total);
        STAP_PROBE1(vmprobe, neg, neg);
        printf("usdt step %ld %ld\n", i, (long)total);
        printf("usdt neg %d\n", neg);
        twice(i);
        twice(i * 5 + 1);
        fired++;
    }
    printf("usdt fired %ld\n", fired);
    return 0;
}
