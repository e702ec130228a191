/* The sweep benchmark's two C parts (bench.py compiles and runs them):
 *
 *   sweepfloor setup  STORE TAGDIR N EVERY THREADS UID GID EXPIRES
 *   sweepfloor remove STORE TAGDIR N EVERY THREADS
 *
 * setup: N expired sessions laid out as the file store and the scratch
 *        root lay them out, each one distinct files: the record
 *        STORE/<xx>/<id> (JSON, mode 0600, mtime = its expiry EXPIRES) and
 *        the scratch directory TAGDIR/<xx>/<id> (0700; every EVERY-th one
 *        holds a small file), TAGDIR being <scratch root>/<store tag>.
 *        Session i has the id %02x%030x of (i % 256, i), so shard i % 256.
 *        Everything is created as UID:GID (the server's User), with
 *        THREADS threads, each making whole shards.
 * remove: the floor of a sweep of that tree: in each shard, the listing of
 *        the store's shard and, in its order, the unlink of each record,
 *        of the file in its scratch directory (if it has one) and the
 *        rmdir of that directory. Nothing else: no stat, lock, read or
 *        check a sweeper next to live requests needs. THREADS threads
 *        take whole shards in turn, as the module's sweeping threads do.
 *        Prints seconds, the entries removed and their rate, and the
 *        seconds its threads ran and waited runnable for a CPU.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SHARDS 256
#define FILE_NAME "upload.bin"

static const char *store, *tagdir;
static long n, every;
static long long expires;
static atomic_int next_shard;
static atomic_long removed;
/* Nanoseconds the threads ran, and waited runnable for a CPU. */
static atomic_llong on_cpu, run_wait;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void die(const char *what, const char *path) {
    fprintf(stderr, "sweepfloor: %s %s: %s\n", what, path, strerror(errno));
    exit(1);
}

static int open_dir(const char *base, int shard) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%02x", base, shard);
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) die("open", path);
    return fd;
}

static void make_shard(int shard) {
    char path[4096];
    const char *bases[2] = {store, tagdir};
    for (int b = 0; b < 2; b++) {
        snprintf(path, sizeof path, "%s/%02x", bases[b], shard);
        if (mkdir(path, 0700) != 0 && errno != EEXIST) die("mkdir", path);
    }
    int records = open_dir(store, shard), scratch = open_dir(tagdir, shard);
    /* The record as the module writes it (src/record.rs): created and last
     * accessed an idle timeout before it expires, no touch lag, the scope
     * of the bench's server (its ServerName), a little data. */
    char body[256];
    long long t = 60, accessed = expires - t;
    int len = snprintf(body, sizeof body,
                       "{\"v\":1,\"c\":%lld,\"a\":%lld,\"t\":%lld,\"l\":0,\"g\":0,\"s\":\"localhost\",\"d\":{\"n\":\"1\"}}",
                       accessed, accessed, t);
    static const char upload[200] = "an upload a handler left in the session's directory";
    struct timespec times[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_sec = expires}};
    char id[40], inner[80];
    for (long i = shard; i < n; i += SHARDS) {
        snprintf(id, sizeof id, "%02x%030lx", shard, i);
        int fd = openat(records, id, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0) die("create record", id);
        if (write(fd, body, len) != len) die("write record", id);
        if (futimens(fd, times) != 0) die("futimens", id);
        close(fd);
        if (mkdirat(scratch, id, 0700) != 0) die("mkdir scratch", id);
        if (i % every == 0) {
            snprintf(inner, sizeof inner, "%s/" FILE_NAME, id);
            fd = openat(scratch, inner, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
            if (fd < 0) die("create", inner);
            if (write(fd, upload, sizeof upload) != sizeof upload) die("write", inner);
            close(fd);
        }
    }
    close(records);
    close(scratch);
}

static void remove_shard(int shard) {
    int records = open_dir(store, shard), scratch = open_dir(tagdir, shard);
    DIR *listing = fdopendir(dup(records));
    if (!listing) die("fdopendir", store);
    long done = 0;
    char inner[80];
    struct dirent *e;
    while ((e = readdir(listing))) {
        const char *name = e->d_name;
        if (strlen(name) != 32) continue; /* ".", "..", anything else */
        if (unlinkat(records, name, 0) != 0) die("unlink record", name);
        long i = strtol(name + 2, NULL, 16);
        if (i % every == 0) {
            snprintf(inner, sizeof inner, "%s/" FILE_NAME, name);
            if (unlinkat(scratch, inner, 0) != 0) die("unlink", inner);
            done++;
        }
        if (unlinkat(scratch, name, AT_REMOVEDIR) != 0) die("rmdir", name);
        done += 2;
    }
    closedir(listing);
    close(records);
    close(scratch);
    atomic_fetch_add(&removed, done);
}

static void (*each)(int);

static void *worker(void *unused) {
    (void)unused;
    for (int s; (s = atomic_fetch_add(&next_shard, 1)) < SHARDS;) each(s);
    /* Whether the machine let the threads run (a shared one may not). */
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    long long ran, waited;
    if (f && fscanf(f, "%lld %lld", &ran, &waited) == 2) {
        atomic_fetch_add(&on_cpu, ran);
        atomic_fetch_add(&run_wait, waited);
    }
    if (f) fclose(f);
    return NULL;
}

int main(int argc, char **argv) {
    int setup = argc == 10 && strcmp(argv[1], "setup") == 0;
    int remove = argc == 7 && strcmp(argv[1], "remove") == 0;
    if (!setup && !remove) {
        fprintf(stderr, "usage: sweepfloor setup STORE TAGDIR N EVERY THREADS UID GID EXPIRES\n"
                        "       sweepfloor remove STORE TAGDIR N EVERY THREADS\n");
        return 2;
    }
    store = argv[2];
    tagdir = argv[3];
    n = atol(argv[4]);
    every = atol(argv[5]) > 0 ? atol(argv[5]) : 1;
    int threads = atoi(argv[6]) > 0 ? atoi(argv[6]) : 1;
    if (setup) {
        expires = atoll(argv[9]);
        /* As the server's User: it must read, lock and remove all this. */
        if (setgid(atoi(argv[8])) != 0 || setuid(atoi(argv[7])) != 0) die("setuid", argv[7]);
    }
    each = setup ? make_shard : remove_shard;
    pthread_t tids[64];
    if (threads > 64) threads = 64;
    double t = now();
    for (int k = 1; k < threads; k++)
        if (pthread_create(&tids[k], NULL, worker, NULL) != 0) die("pthread_create", "");
    worker(NULL);
    for (int k = 1; k < threads; k++) pthread_join(tids[k], NULL);
    double took = now() - t;
    if (remove) {
        long r = atomic_load(&removed);
        printf("seconds %.3f\nremoved %ld\nper_second %.0f\non_cpu %.3f\nrun_wait %.3f\n", took, r, r / took,
               atomic_load(&on_cpu) / 1e9, atomic_load(&run_wait) / 1e9);
    } else {
        printf("seconds %.3f\n", took);
    }
    return 0;
}
