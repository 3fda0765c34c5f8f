/* vmprobe test workload: lseek(/dev/null, i, SEEK_SET) for i = 1..N, so that
 * a probe on ksys_lseek sees a gap-free sequence in arg1.
 * Usage: vmprobe-seq N */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000;
    int fd = open("/dev/null", O_RDONLY);
    if (fd < 0)
        return 1;
    for (long i = 1; i <= n; i++)
        lseek(fd, i, SEEK_SET);
    return 0;
}
