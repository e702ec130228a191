/* The system calls the file store cannot do without, timed alone (no
 * httpd, no Rust, one thread): what a resumed and a new session cost the
 * kernel at the least on this machine. `make bench` compiles and runs it;
 * bench.py sets the lower bound of the module's cost from it.
 *
 *   floor DIR N   (DIR: an empty directory on the store's file system)
 *
 * resumed: OFD write lock on a byte of the shard's lock file, open + read +
 *          close of a 60-byte record, unlock            (what a resumed
 *          request does with RSessionLock On)
 * new:     exclusive create + write + futimens + close of a record, and
 *          mkdir of the scratch directory              (a new session)
 * write:   resumed, plus a later save under that lock (the spare exists):
 *          open + fstat + pwrite + futimens + close of the spare,
 *          renameat2(EXCHANGE) of spare and record, unlock (read+write)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/fs.h>

static const char RECORD[] = "{\"v\":1,\"c\":1795688654,\"a\":1795688654,\"t\":1800,\"l\":0,\"d\":{}}";

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void lock_byte(int fd, short type, off_t at) {
    struct flock l = {.l_type = type, .l_whence = SEEK_SET, .l_start = at, .l_len = 1};
    if (fcntl(fd, F_OFD_SETLK, &l) != 0) die("fcntl");
}

/* The lock-byte offset of session i (any spread of offsets will do). */
static off_t offset_of(int i) {
    return ((off_t)i * 2654435761u) & 0x3fffffffffffffff;
}

/* A resumed request's share: lock session i, read its record (whose path is
 * left in `path`), keep the lock. */
static void lock_and_read(int lockfd, const char *dir, int i, char *path, size_t size) {
    char buf[2048];
    lock_byte(lockfd, F_WRLCK, offset_of(i));
    snprintf(path, size, "%s/store/%02x/%02x%030x", dir, i % 256, i % 256, i);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("open record");
    if (read(fd, buf, sizeof buf) <= 0) die("read");
    close(fd);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: floor DIR N\n");
        return 2;
    }
    const char *dir = argv[1];
    int n = atoi(argv[2]);
    char path[4096];
    int locks[256];
    for (int s = 0; s < 256; s++) {
        snprintf(path, sizeof path, "%s/store/%02x", dir, s);
        if (s == 0) {
            snprintf(path, sizeof path, "%s/store", dir);
            mkdir(path, 0700);
            snprintf(path, sizeof path, "%s/scratch", dir);
            mkdir(path, 0700);
            snprintf(path, sizeof path, "%s/store/%02x", dir, s);
        }
        if (mkdir(path, 0700) != 0 && errno != EEXIST) die("mkdir shard");
        snprintf(path, sizeof path, "%s/store/%02x/.locks", dir, s);
        locks[s] = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (locks[s] < 0) die("open lock file");
    }
    struct timespec expiry[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_sec = time(NULL) + 1800}};
    double t = now();
    for (int i = 0; i < n; i++) {
        int s = i % 256;
        snprintf(path, sizeof path, "%s/store/%02x/%02x%030x", dir, s, s, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) die("create record");
        if (write(fd, RECORD, sizeof RECORD - 1) != (ssize_t)(sizeof RECORD - 1)) die("write");
        if (futimens(fd, expiry) != 0) die("futimens");
        close(fd);
        snprintf(path, sizeof path, "%s/scratch/%02x%030x", dir, s, i);
        if (mkdir(path, 0700) != 0) die("mkdir scratch");
    }
    double created = (now() - t) / n;
    t = now();
    for (int i = 0; i < n; i++) {
        lock_and_read(locks[i % 256], dir, i, path, sizeof path);
        lock_byte(locks[i % 256], F_UNLCK, offset_of(i));
    }
    double resumed = (now() - t) / n;
    char spare[sizeof path + 8];
    struct stat st;
    /* Two passes: the first save of a session creates its spare file (an
     * inode, as for a new session); the second is the steady state. */
    for (int pass = 0; pass < 2; pass++) {
        t = now();
        for (int i = 0; i < n; i++) {
            int s = i % 256;
            off_t at = offset_of(i);
            lock_and_read(locks[s], dir, i, path, sizeof path);
            snprintf(spare, sizeof spare, "%s.spare", path);
            int fd = open(spare, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
            if (fd < 0) die("open spare");
            if (fstat(fd, &st) != 0) die("fstat");
            if (pwrite(fd, RECORD, sizeof RECORD - 1, 0) != (ssize_t)(sizeof RECORD - 1)) die("pwrite");
            if (futimens(fd, expiry) != 0) die("futimens");
            if (syscall(SYS_renameat2, AT_FDCWD, spare, AT_FDCWD, path, RENAME_EXCHANGE) != 0) die("renameat2");
            close(fd);
            lock_byte(locks[s], F_UNLCK, at);
        }
    }
    double written = (now() - t) / n;
    printf("resumed_us %.2f\nnew_us %.2f\nwrite_us %.2f\n", resumed * 1e6, created * 1e6, written * 1e6);
    return 0;
}
