/*
 * wdshim: an LD_PRELOAD test bed for tenure's watchdog device driver.
 *
 * This machine has no /dev/watchdog and no softdog. The shim makes placeholder files
 * $TENURE_WDSHIM_DIR/watchdog* behave like Linux watchdog devices by forwarding every
 * open/ioctl/write/close on them to an emulated watchdog process listening on
 * <placeholder>.sock (`tenure watchdog emulate`), which holds the timer, so the timer
 * outlives the process that armed it — exactly like hardware. The placeholder itself is
 * really opened too, so /proc/PID/fd shows who holds the "device".
 *
 * Mapping (kernel watchdog API -> emulator line protocol, see watchdog/src/emulated.rs):
 *   open               -> OPEN <pid>   (BUSY -> EBUSY; emulator gone -> ENXIO)
 *   WDIOC_GETSUPPORT   -> INFO
 *   WDIOC_SETTIMEOUT   -> SETTIMEOUT n (ERR e -> errno e)
 *   WDIOC_GETTIMEOUT   -> GETTIMEOUT
 *   WDIOC_GETTIMELEFT  -> GETTIMELEFT
 *   WDIOC_KEEPALIVE    -> KEEPALIVE
 *   write(buf)         -> WRITE V if buf holds a 'V', else WRITE -
 *   close              -> CLOSE        (the emulator decides: magic close or still armed)
 *   process death      -> the socket closes: still armed, as with the kernel.
 *
 * Test-only code; part of tenure (MIT OR Apache-2.0).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/watchdog.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define SLOTS 16

struct slot { int fd; int sock; };
static struct slot slots[SLOTS];
static int slots_used;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_ioctl)(int, unsigned long, ...);
static ssize_t (*real_write)(int, const void *, size_t);
static int (*real_close)(int);

static void init(void) {
    if (real_close) return;
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_ioctl = dlsym(RTLD_NEXT, "ioctl");
    real_write = dlsym(RTLD_NEXT, "write");
    real_close = dlsym(RTLD_NEXT, "close");
}

/* Is `path` an emulated device? Fills `sock` with its emulator socket. */
static int emulated(const char *path, char *sock, size_t n) {
    const char *dir = getenv("TENURE_WDSHIM_DIR");
    if (!dir || !path) return 0;
    size_t dl = strlen(dir);
    if (strncmp(path, dir, dl) != 0 || path[dl] != '/') return 0;
    const char *base = path + dl + 1;
    if (strncmp(base, "watchdog", 8) != 0 || strchr(base, '/') || strstr(base, ".sock")) return 0;
    return snprintf(sock, n, "%s.sock", path) < (int)n;
}

static int sock_of(int fd) {
    int s = -1;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < slots_used; i++)
        if (slots[i].fd == fd) s = slots[i].sock;
    pthread_mutex_unlock(&lock);
    return s;
}

/* Sends one command line, reads one reply line into `reply`. 0 on success. */
static int call(int sock, const char *cmd, char *reply, size_t n) {
    char line[160];
    int len = snprintf(line, sizeof line, "%s\n", cmd);
    if (len <= 0 || (size_t)len >= sizeof line) return -1;
    if (send(sock, line, (size_t)len, MSG_NOSIGNAL) != len) return -1;
    size_t got = 0;
    while (got + 1 < n) {
        char c;
        ssize_t r = recv(sock, &c, 1, 0);
        if (r <= 0) return -1;
        if (c == '\n') break;
        reply[got++] = c;
    }
    reply[got] = 0;
    return 0;
}

/* Reply "OK <int>" -> value; "ERR e ..." -> errno e. */
static int int_reply(int sock, const char *cmd, int *out) {
    char r[160];
    if (call(sock, cmd, r, sizeof r) != 0) { errno = EIO; return -1; }
    if (strncmp(r, "OK", 2) == 0) {
        if (out) *out = atoi(r + 2);
        return 0;
    }
    if (strncmp(r, "ERR ", 4) == 0) { errno = atoi(r + 4); return -1; }
    errno = EIO;
    return -1;
}

static int wrap_open(int fd, const char *sockpath) {
    if (fd < 0) return fd;
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    if (s < 0 || strlen(sockpath) >= sizeof a.sun_path) goto nodev;
    strcpy(a.sun_path, sockpath);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) goto nodev;
    char cmd[64], r[160];
    snprintf(cmd, sizeof cmd, "OPEN %d", (int)getpid());
    if (call(s, cmd, r, sizeof r) != 0) goto nodev;
    if (strncmp(r, "BUSY", 4) == 0) {
        real_close(s); real_close(fd); errno = EBUSY; return -1;
    }
    if (strcmp(r, "OK") != 0) goto nodev;
    pthread_mutex_lock(&lock);
    if (slots_used == SLOTS) {
        pthread_mutex_unlock(&lock);
        real_close(s); real_close(fd); errno = EMFILE; return -1;
    }
    slots[slots_used].fd = fd;
    slots[slots_used].sock = s;
    slots_used++;
    pthread_mutex_unlock(&lock);
    return fd;
nodev:
    if (s >= 0) real_close(s);
    real_close(fd);
    errno = ENXIO;
    return -1;
}

static int do_open(int (*f)(const char *, int, ...), const char *path, int flags, mode_t mode) {
    char sock[4096];
    int fd = f(path, flags, mode);
    if (!emulated(path, sock, sizeof sock)) return fd;
    return wrap_open(fd, sock);
}

int open(const char *path, int flags, ...) {
    init();
    va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, int); va_end(ap);
    return do_open(real_open, path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    init();
    va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, int); va_end(ap);
    return do_open(real_open64, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    init();
    va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, int); va_end(ap);
    char sock[4096];
    int fd = real_openat(dirfd, path, flags, mode);
    if (path[0] != '/' || !emulated(path, sock, sizeof sock)) return fd;
    return wrap_open(fd, sock);
}

int ioctl(int fd, unsigned long req, ...) {
    init();
    va_list ap; va_start(ap, req); void *arg = va_arg(ap, void *); va_end(ap);
    int s = sock_of(fd);
    if (s < 0) return real_ioctl(fd, req, arg);
    switch (req) {
    case WDIOC_GETSUPPORT: {
        char r[160];
        if (call(s, "INFO", r, sizeof r) != 0 || strncmp(r, "OK ", 3) != 0) { errno = EIO; return -1; }
        struct watchdog_info *wi = arg;
        memset(wi, 0, sizeof *wi);
        char *p = r + 3, *end;
        wi->options = (unsigned)strtoul(p, &end, 10);
        wi->firmware_version = (unsigned)strtoul(end, &end, 10);
        if (*end == ' ') end++;
        strncpy((char *)wi->identity, end, sizeof wi->identity - 1);
        return 0;
    }
    case WDIOC_SETTIMEOUT: {
        char cmd[64];
        snprintf(cmd, sizeof cmd, "SETTIMEOUT %d", *(int *)arg);
        return int_reply(s, cmd, (int *)arg);
    }
    case WDIOC_GETTIMEOUT: return int_reply(s, "GETTIMEOUT", (int *)arg);
    case WDIOC_GETTIMELEFT: return int_reply(s, "GETTIMELEFT", (int *)arg);
    case WDIOC_KEEPALIVE: return int_reply(s, "KEEPALIVE", NULL);
    default: errno = ENOTTY; return -1;
    }
}

ssize_t write(int fd, const void *buf, size_t n) {
    init();
    int s = sock_of(fd);
    if (s < 0) return real_write(fd, buf, n);
    const char *cmd = memchr(buf, 'V', n) ? "WRITE V" : "WRITE -";
    if (int_reply(s, cmd, NULL) != 0) return -1;
    return (ssize_t)n;
}

int close(int fd) {
    init();
    int s = -1;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < slots_used; i++) {
        if (slots[i].fd == fd) {
            s = slots[i].sock;
            slots[i] = slots[--slots_used];
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    if (s >= 0) {
        char r[160];
        call(s, "CLOSE", r, sizeof r);
        real_close(s);
    }
    return real_close(fd);
}
