/* vmprobe test workload: main -> f1 -> f2 -> write(2) of one byte to
 * /dev/null, N times, built with frame pointers. f2 makes the system call
 * itself, so the user pc at the kernel entry is in f2 and the frame-pointer
 * chain holds f1 and then main. With "spin", f2 instead loops N million
 * times in user mode (for samples taken while the vCPU runs user code).
 * Usage: vmprobe-fpstack [N] [spin] */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

__attribute__((noipa)) long f2(int fd, long spin) {
    long ret = 1;
    static const char byte = 'x';
    /* A leaf keeps no frame of its own, even with frame pointers; asking
     * for its frame address makes it push one, so that the chain seen at
     * the system call starts with f2's frame (holding f1's return). */
    void *volatile frame = __builtin_frame_address(0);
    (void)frame;
    if (spin) {
        for (volatile long i = 0; i < spin; i++)
            ;
        return ret;
    }
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"(1L /* SYS_write */), "D"((long)fd), "S"(&byte), "d"(1L)
                     : "rcx", "r11", "memory");
    return ret;
}

/* The addition after the call keeps it a call, not a tail jump. */
__attribute__((noipa)) long f1(int fd, long spin) { return f2(fd, spin) + 1; }

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 3;
    if (argc > 2 && strcmp(argv[2], "spin") == 0)
        return f1(-1, n * 1000000L) == 2 ? 0 : 1;
    int fd = open("/dev/null", O_WRONLY);
    long total = 0;
    for (int i = 0; i < n; i++)
        total += f1(fd, 0);
    return total == 2L * n ? 0 : 1;
}
