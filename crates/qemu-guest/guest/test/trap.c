/* vmprobe test workload: takes N breakpoint traps. Executes `int3` N times,
 * each caught by a SIGTRAP handler, so the guest kernel runs its breakpoint
 * exception handler (exc_int3) exactly N times for this process, and prints
 * how many traps the handler saw as "traps=N".
 * Usage: vmprobe-trap N */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

static volatile sig_atomic_t seen;

static void on_trap(int sig) {
    (void)sig;
    seen++;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1;
    struct sigaction sa = {0};
    sa.sa_handler = on_trap;
    if (sigaction(SIGTRAP, &sa, NULL) != 0)
        return 1;
    for (long i = 0; i < n; i++)
        __asm__ volatile("int3");
    printf("traps=%ld\n", (long)seen);
    return seen == n ? 0 : 1;
}
