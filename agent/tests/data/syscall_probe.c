/* A hostile workload's probe for the seccomp attack tests (agent/tests/workload_sandbox.rs): tries one system
 * call through the ABI named by argv[1] and appends "<mode> <raw return value>" to /output/result. Built static
 * and non-PIE so that the i386 call's argument block sits below 4 GiB (int 0x80 takes 32-bit pointers). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#define AF_VSOCK_FAMILY 40L
#define I386_NR_SOCKETCALL 102L
#define SYS_SOCKET_CALL 1L
#define X32_SYSCALL_BIT 0x40000000L
#define X86_64_NR_SOCKET 41L

/* socketcall(SYS_SOCKET, {AF_VSOCK, SOCK_STREAM, 0}) */
static unsigned int socket_args[3] = {40, 1, 0};

static long i386_socketcall(void) {
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(I386_NR_SOCKETCALL), "b"(SYS_SOCKET_CALL), "c"((long)socket_args)
                     : "memory");
    return ret;
}

static long x32_socket(void) {
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(X32_SYSCALL_BIT | X86_64_NR_SOCKET), "D"(AF_VSOCK_FAMILY), "S"(1L), "d"(0L)
                     : "rcx", "r11", "memory");
    return ret;
}

static void report(const char *mode, long ret) {
    FILE *f = fopen("/output/result", "a");
    if (f == NULL) return;
    fprintf(f, "%s %ld\n", mode, ret);
    fclose(f);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    long ret;
    report("start", 0);
    if (!strcmp(mode, "i386")) {
        ret = i386_socketcall();
    } else if (!strcmp(mode, "x32")) {
        ret = x32_socket();
    } else if (!strcmp(mode, "native")) {
        ret = socket((int)AF_VSOCK_FAMILY, SOCK_STREAM, 0);
        if (ret < 0) ret = -errno;
    } else if (!strcmp(mode, "inet")) {
        ret = socket(AF_INET, SOCK_STREAM, 0);
        if (ret < 0) ret = -errno;
    } else {
        return 2;
    }
    report(mode, ret);
    return 0;
}
