/* vmprobe bench workload: N null system calls (getppid), the cheapest
 * kernel entry and exit. Usage: vmprobe-nullsys N */
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    for (long i = 0; i < n; i++)
        syscall(SYS_getppid);
    return 0;
}
