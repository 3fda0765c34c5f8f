/* vmprobe test workload for uprobes in a PIE executable and in libc (the
 * default guest's glibc): calls upie_step(i) and libc's getppid() N times
 * each, and prints its pid, where upie_step runs in this process (a PIE:
 * a new address at each exec, with ASLR) and its own count of the calls.
 * Built `cc -fPIE -pie`, dynamically linked against the guest's libc.
 * Usage: vmprobe-upie [N] */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static long calls;

/* noipa: a real call, as in ucount.c. */
__attribute__((noipa)) long upie_step(long i) {
    calls++;
    return i + 1;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 3;
    long sum = 0;
    for (long i = 0; i < n; i++)
        sum += upie_step(i) + (getppid() > 0);
    printf("upie pid %d at %p calls %ld sum %ld\n", (int)getpid(), (void *)upie_step, calls, sum);
    return 0;
}
