/* mod_floor: the least a module pays inside httpd, on this machine, for
 * what two of mod_rsession's scenarios must do. `make bench` builds it
 * with apxs and runs it beside them, against the same baselines, so the
 * ratio a design could reach here is measured rather than guessed.
 *
 *   FloorRedis PORT   in fixups: one blocking GET of a record-sized value
 *                     on this thread's connection to 127.0.0.1:PORT
 *                     (TCP_NODELAY, kept for the thread's life): the one
 *                     round trip of a resumed request (SPEC §7)
 *   FloorScratch DIR  in fixups: 16 random bytes as 32 hex characters,
 *                     mkdir DIR/<hex> 0700, the id and path in notes and
 *                     environment, rmdir when the request's pool goes:
 *                     a cookieless request that writes nothing (SPEC §3)
 *   FloorFileRW DIR   in fixups: bench/floor.c's "write" sequence on one of
 *                     the 256 records `floor DIR 256` left in DIR (OFD lock
 *                     byte, open + read + close of the record, open + fstat
 *                     + pwrite + futimens of the spare, renameat2(EXCHANGE),
 *                     close, unlock): a read+write
 *                     request's store system calls, inside httpd
 *
 * No error handling beyond stopping the request with 500: it is a
 * measuring stick, not a module to deploy.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <time.h>
#include <linux/fs.h>

#include "httpd.h"
#include "http_config.h"
#include "http_request.h"
#include "apr_strings.h"

module AP_MODULE_DECLARE_DATA floor_module;

typedef struct {
    int redis_port;          /* 0: off */
    const char *scratch_dir; /* NULL: off */
    const char *file_dir;    /* NULL: off */
} floor_dir;

static void *create_dir(apr_pool_t *p, char *dir)
{
    (void)dir;
    return apr_pcalloc(p, sizeof(floor_dir));
}

static const char *set_redis(cmd_parms *cmd, void *conf, const char *arg)
{
    (void)cmd;
    ((floor_dir *)conf)->redis_port = atoi(arg);
    return NULL;
}

static const char *set_scratch(cmd_parms *cmd, void *conf, const char *arg)
{
    (void)cmd;
    ((floor_dir *)conf)->scratch_dir = arg;
    return NULL;
}

static const char *set_file(cmd_parms *cmd, void *conf, const char *arg)
{
    (void)cmd;
    ((floor_dir *)conf)->file_dir = arg;
    return NULL;
}

static const command_rec floor_cmds[] = {
    AP_INIT_TAKE1("FloorRedis", set_redis, NULL, ACCESS_CONF, "a Redis port on 127.0.0.1"),
    AP_INIT_TAKE1("FloorScratch", set_scratch, NULL, ACCESS_CONF, "a directory for scratch directories"),
    AP_INIT_TAKE1("FloorFileRW", set_file, NULL, ACCESS_CONF, "a directory set up by `floor DIR 256`"),
    {NULL}
};

static __thread int redis_fd = -1;

static int redis_connect(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* GET floor:record; true when a whole bulk reply came back. */
static int redis_get(int port, char *buf, size_t size)
{
    static const char cmd[] = "*2\r\n$3\r\nGET\r\n$12\r\nfloor:record\r\n";
    size_t have = 0, want = 0;
    if (redis_fd < 0 && (redis_fd = redis_connect(port)) < 0)
        return 0;
    if (send(redis_fd, cmd, sizeof cmd - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof cmd - 1))
        goto broken;
    for (;;) {
        ssize_t n = recv(redis_fd, buf + have, size - 1 - have, 0);
        if (n <= 0)
            goto broken;
        have += (size_t)n;
        buf[have] = 0;
        if (!want) {
            char *end = strstr(buf, "\r\n");
            if (!end)
                continue;
            if (buf[0] != '$' || atoi(buf + 1) < 0)
                return 0;
            want = (size_t)(end - buf) + 2 + (size_t)atoi(buf + 1) + 2;
        }
        if (have >= want)
            return 1;
        if (have >= size - 1)
            goto broken;
    }
broken:
    close(redis_fd);
    redis_fd = -1;
    return 0;
}

static apr_status_t remove_scratch(void *path)
{
    rmdir(path);
    return APR_SUCCESS;
}

static const char RECORD[] = "{\"v\":1,\"c\":1795688654,\"a\":1795688654,\"t\":1800,\"l\":0,\"d\":{\"n\":\"1\"}}";

/* One description of the lock file per thread: an OFD lock excludes other
 * descriptions only. (The module keeps a pool of them per shard; one file
 * for all sessions costs the kernel the same per lock.) */
static __thread int lock_fd = -1;
static __thread unsigned int pick = 0;

static int lock_byte(int fd, short type, off_t at)
{
    struct flock l = {.l_type = type, .l_whence = SEEK_SET, .l_start = at, .l_len = 1};
    return fcntl(fd, type == F_UNLCK ? F_OFD_SETLK : F_OFD_SETLKW, &l);
}

/* bench/floor.c's write sequence on record i of dir; false on any error. */
static int file_read_write(request_rec *r, const char *dir)
{
    char buf[2048];
    struct stat st;
    struct timespec expiry[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_sec = time(NULL) + 1800}};
    unsigned int i;
    off_t at;
    int fd, ok;
    const char *path, *spare;
    if (!pick)
        pick = (unsigned int)(uintptr_t)&pick | 1;
    pick ^= pick << 13, pick ^= pick >> 17, pick ^= pick << 5;
    i = pick % 256;
    at = ((off_t)i * 2654435761u) & 0x3fffffffffffffff;
    if (lock_fd < 0 &&
        (lock_fd = open(apr_pstrcat(r->pool, dir, "/store/00/.locks", NULL), O_RDWR | O_CLOEXEC)) < 0)
        return 0;
    path = apr_psprintf(r->pool, "%s/store/%02x/%02x%030x", dir, i, i, i);
    spare = apr_pstrcat(r->pool, path, ".spare", NULL);
    if (lock_byte(lock_fd, F_WRLCK, at) != 0)
        return 0;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    ok = fd >= 0 && read(fd, buf, sizeof buf) > 0;
    if (fd >= 0)
        close(fd);
    fd = ok ? open(spare, O_RDWR | O_CREAT | O_CLOEXEC, 0600) : -1;
    ok = fd >= 0 && fstat(fd, &st) == 0 &&
         pwrite(fd, RECORD, sizeof RECORD - 1, 0) == (ssize_t)(sizeof RECORD - 1) &&
         futimens(fd, expiry) == 0 &&
         syscall(SYS_renameat2, AT_FDCWD, spare, AT_FDCWD, path, RENAME_EXCHANGE) == 0;
    if (fd >= 0)
        close(fd);
    lock_byte(lock_fd, F_UNLCK, at);
    return ok;
}

static int floor_fixups(request_rec *r)
{
    floor_dir *conf = ap_get_module_config(r->per_dir_config, &floor_module);
    if (conf->redis_port) {
        char reply[4096];
        if (!redis_get(conf->redis_port, reply, sizeof reply))
            return HTTP_INTERNAL_SERVER_ERROR;
        apr_table_setn(r->notes, "floor-record", apr_pstrdup(r->pool, reply));
    }
    if (conf->scratch_dir) {
        unsigned char raw[16];
        char *id = apr_palloc(r->pool, 33), *path;
        static const char hex[] = "0123456789abcdef";
        if (getrandom(raw, sizeof raw, 0) != sizeof raw)
            return HTTP_INTERNAL_SERVER_ERROR;
        for (int i = 0; i < 16; i++) {
            id[2 * i] = hex[raw[i] >> 4];
            id[2 * i + 1] = hex[raw[i] & 15];
        }
        id[32] = 0;
        path = apr_pstrcat(r->pool, conf->scratch_dir, "/", id, NULL);
        if (mkdir(path, 0700) != 0)
            return HTTP_INTERNAL_SERVER_ERROR;
        apr_pool_cleanup_register(r->pool, path, remove_scratch, apr_pool_cleanup_null);
        apr_table_setn(r->notes, "rsession-id", id);
        apr_table_setn(r->notes, "rsession-dir", path);
        apr_table_setn(r->notes, "rsession-new", "1");
        apr_table_setn(r->subprocess_env, "RSESSION_ID", id);
        apr_table_setn(r->subprocess_env, "RSESSION_DIR", path);
        apr_table_setn(r->subprocess_env, "RSESSION_NEW", "1");
    }
    if (conf->file_dir && !file_read_write(r, conf->file_dir))
        return HTTP_INTERNAL_SERVER_ERROR;
    return DECLINED;
}

static void register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_fixups(floor_fixups, NULL, NULL, APR_HOOK_MIDDLE);
}

module AP_MODULE_DECLARE_DATA floor_module = {
    STANDARD20_MODULE_STUFF, create_dir, NULL, NULL, NULL, floor_cmds, register_hooks, 0
};
