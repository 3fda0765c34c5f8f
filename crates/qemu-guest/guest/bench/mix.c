/* vmprobe bench workload: ITER rounds of busy arithmetic, with a null
 * system call (getppid) every EVERY rounds (never if EVERY is 0), so that a
 * probe on getppid fires at a rate the host chooses.
 * Usage: vmprobe-mix ITER EVERY */
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long iter = argc > 1 ? atol(argv[1]) : 1000000;
    long every = argc > 2 ? atol(argv[2]) : 0;
    volatile unsigned long acc = 1;
    for (long i = 1; i <= iter; i++) {
        for (int j = 0; j < 64; j++)
            acc = acc * 6364136223846793005UL + 1442695040888963407UL;
        if (every > 0 && i % every == 0)
            syscall(SYS_getppid);
    }
    return (int)(acc & 0);
}
