#!/usr/bin/env python3
"""make bench: mod_rsession against plain httpd and the session systems users
would otherwise pick, side by side, as ratios measured in one run.

Every scenario gets its own private httpd on 127.0.0.1, is driven by wrk for a
bounded time (median of --runs runs), and is reported as requests/s, p50, p99
and its ratio to the plain static file measured in the same run (and, for
handlers, to the same handler without a session). Then: a sweep of many
expired sessions, and instructions per request of the module's hot path
counted by callgrind (repeatable, unlike a clock).
"""
import argparse
import atexit
import grp
import hashlib
import http.client
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(REPO, "target/release/mod_rsession.so")
MODS = "/usr/lib/apache2/modules"
SECRET = "bench-secret-0123456789abcdef"
BENCH_DIR = os.environ.get("RSESSION_BENCH_DIR", "/var/tmp")
# Scratch directories where the default configuration puts them: under
# DefaultRuntimeDir, /run on Debian, a tmpfs. (On this machine's ext4, with
# `discard`, each directory's mkdir and rmdir cost some 150 µs, which is the
# disk, not the module; RSESSION_BENCH_SCRATCH=/var/tmp measures that.)
SCRATCH_DIR = os.environ.get("RSESSION_BENCH_SCRATCH", "/dev/shm" if os.path.isdir("/dev/shm") else BENCH_DIR)


def read_text(path):
    """A log file's text so far ("" before it exists)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def end_process(proc):
    """SIGTERM, then SIGKILL if it is still there after 30 s; reaped."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, deadline, check):
    end = time.time() + deadline
    while time.time() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit("timed out waiting for " + what)


class Httpd:
    """A private httpd: `fragment` is appended to a minimal config."""

    def __init__(self, fragment, mpm="event", modules=(), rsession=True, log_level="warn"):
        # Not /tmp: on some machines (this one) creating a file there costs
        # a millisecond, which would measure the sandbox, not the module.
        self.root = tempfile.mkdtemp(prefix="rsession-bench-", dir=BENCH_DIR)
        os.chmod(self.root, 0o755)
        # {SCRATCH}: a scratch root of its own, made by the module at start.
        self.scratch = os.path.join(tempfile.mkdtemp(prefix="rsession-bench-scratch-", dir=SCRATCH_DIR), "scratch")
        os.chmod(os.path.dirname(self.scratch), 0o755)
        for d in ("logs", "htdocs"):
            os.mkdir(os.path.join(self.root, d))
            os.chmod(os.path.join(self.root, d), 0o755)
        with open(os.path.join(self.root, "htdocs/index.html"), "w") as f:
            f.write("<p>static page</p>\n" * 20)
        self.port = free_port()
        modules = list(modules)
        maker = ""
        if rsession:
            # Static files never make a session (and only a write keeps a
            # new one): sessions for the clients come from a mod_lua
            # handler that sets a key.
            modules += [] if "lua" in modules else ["lua"]
            maker = ("LuaMapHandler ^/rsession-make$ {ROOT}/maker.lua handle\n"
                     "<Location /rsession-make>\n  RSession On\n</Location>\n")
            write(self.root, "maker.lua", MAKER_HANDLER)
        loads = "".join("LoadModule %s_module %s/mod_%s.so\n" % (m, MODS, m) for m in modules)
        if rsession:
            loads += "LoadModule rsession_module %s\nRSessionSecret %s\n" % (MODULE, SECRET)
        fragment = maker + fragment
        mpm_tuning = {
            "event": "ThreadsPerChild 25\nStartServers 2\nMaxRequestWorkers 150\n",
            "prefork": "StartServers 16\nMinSpareServers 16\nMaxSpareServers 32\nMaxRequestWorkers 64\n",
        }.get(mpm, "")
        conf = """ServerRoot {root}
Listen 127.0.0.1:{port}
LoadModule mpm_{mpm}_module {mods}/mod_mpm_{mpm}.so
LoadModule authz_core_module {mods}/mod_authz_core.so
LoadModule mime_module {mods}/mod_mime.so
{loads}ServerName localhost
PidFile {root}/logs/httpd.pid
ErrorLog {root}/logs/error.log
LogLevel {level}
DefaultRuntimeDir {root}/logs
TypesConfig /etc/mime.types
User www-data
Group www-data
KeepAlive On
MaxKeepAliveRequests 0
{tuning}DocumentRoot {root}/htdocs
{fragment}
""".format(root=self.root, port=self.port, mpm=mpm, mods=MODS, loads=loads, level=log_level,
           tuning=mpm_tuning, fragment=fragment.replace("{SCRATCH}", self.scratch).replace("{ROOT}", self.root))
        self.conf = os.path.join(self.root, "httpd.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = None

    def start(self, wrapper=()):
        # A plain environment, as apache2ctl gives it: an interpreter found
        # first on a developer's PATH (pyenv) must not leak into mod_python.
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        self.proc = subprocess.Popen(list(wrapper) + ["apache2", "-f", self.conf, "-DFOREGROUND"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        wait_for("httpd to start", 120, lambda: "resuming normal operations" in self.log() or self._died())
        return self

    def _died(self):
        if self.proc.poll() is not None:
            raise SystemExit("httpd failed to start:\n" + self.log() + self.proc.stderr.read().decode())
        return False

    def log(self):
        return read_text(os.path.join(self.root, "logs/error.log"))

    def cpu_seconds(self):
        """User+system CPU of every process of this server so far (its
        process group), for CPU time per request."""
        return process_group_cpu(self.proc.pid)

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def get(self, path, cookie=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        resp = conn.getresponse()
        body = resp.read()
        set_cookie = resp.getheader("Set-Cookie")
        conn.close()
        return resp.status, set_cookie, body

    def cookies(self, n):
        """n fresh mod_rsession sessions' cookies (NAME=VALUE)."""
        return self.cookies_from("/rsession-make", n)

    def cookies_from(self, path, n):
        """n cookies (NAME=VALUE), each from a request to `path`."""
        out = []
        for _ in range(n):
            status, set_cookie, _ = self.get(path)
            if not set_cookie:
                raise SystemExit("no session cookie from %s (status %d)" % (path, status))
            out.append(set_cookie.split(";")[0])
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            # Let the last connections close first: httpd 2.4.71's event MPM
            # child now and then crashes in apr_os_sock_get when SIGTERM
            # lands on a busy child, with or without this module.
            time.sleep(0.5)
            end_process(self.proc)
        crashes = [l for l in self.log().splitlines() if "exit signal" in l or "panicked" in l]
        if crashes:
            print("warning: crash lines in %s:\n%s" % (self.root, "\n".join(crashes)), file=sys.stderr)
        # A row whose requests failed inside the module (RS0012 store
        # unavailable, RS0022 not saved) would still show a rate: say so.
        errors = [l for l in self.log().splitlines() if re.search(r":(error|crit|alert|emerg)\]", l)]
        if errors:
            print("warning: %d error lines in %s, the first:\n%s" % (len(errors), self.root, "\n".join(errors[:5])),
                  file=sys.stderr)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(os.path.dirname(self.scratch), ignore_errors=True)


TICKS = os.sysconf("SC_CLK_TCK")


def process_group_cpu_split(pgid):
    """(user, system) CPU seconds used so far by the live processes of a
    process group; children that exited are not counted, which is why the
    servers here keep their children for the whole run."""
    user = system = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state ppid pgrp ... utime(12) stime(13).
        if int(fields[2]) == pgid:
            user += int(fields[11])
            system += int(fields[12])
    return user / TICKS, system / TICKS


def process_group_cpu(pgid):
    """CPU seconds (user+system) of a process group (see the split)."""
    return sum(process_group_cpu_split(pgid))


class Redis:
    """A private redis-server on 127.0.0.1 (no persistence), in its own
    directory under BENCH_DIR; `tls` (a Pki) serves TLS only, `cluster`
    makes it a cluster node (see RedisCluster)."""

    def __init__(self, tls=None, cluster=False):
        self.dir = tempfile.mkdtemp(prefix="rsession-bench-redis-", dir=BENCH_DIR)
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.tls = tls
        cmd = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir]
        if tls:
            cmd += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", tls.path("server.crt"),
                    "--tls-key-file", tls.path("server.key"), "--tls-ca-cert-file", tls.path("ca.crt"),
                    "--tls-auth-clients", "no"]
        else:
            cmd += ["--port", str(self.port)]
        if cluster:
            cmd += ["--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                    "--cluster-config-file", os.path.join(self.dir, "nodes.conf")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for("redis-server on port %d" % self.port, 20, lambda: self._died() or self.cmd("PING").startswith(b"+PONG"))
        except BaseException:
            self.stop()
            raise

    def _died(self):
        if self.proc.poll() is not None:
            raise SystemExit("redis-server exited (%s)" % self.proc.returncode)
        return False

    def cmd(self, line):
        """One inline command; the reply's first bytes (b"" when none)."""
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
            if self.tls:
                ctx = ssl.create_default_context(cafile=self.tls.path("ca.crt"))
                sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
            with sock:
                sock.sendall(line.encode() + b"\r\n")
                return sock.recv(4096)
        except OSError:
            return b""

    def cpu_seconds(self):
        return process_group_cpu(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            end_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """Three masters (no replicas) joined by `redis-cli --cluster create`."""

    def __init__(self):
        self.nodes = []
        try:
            for _ in range(3):
                self.nodes.append(Redis(cluster=True))
            addrs = ["127.0.0.1:%d" % n.port for n in self.nodes]
            out = subprocess.run(["redis-cli", "--cluster", "create"] + addrs + ["--cluster-replicas", "0", "--cluster-yes"],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise SystemExit("redis-cli --cluster create failed:\n" + out.stdout + out.stderr)
            wait_for("the cluster to be ready", 30,
                     lambda: all(b"cluster_state:ok" in n.cmd("CLUSTER INFO") for n in self.nodes))
        except BaseException:
            self.stop()
            raise

    def url(self, params):
        return "redis-cluster://%s?%s" % (",".join("127.0.0.1:%d" % n.port for n in self.nodes), params)

    def cpu_seconds(self):
        return sum(n.cpu_seconds() for n in self.nodes)

    def stop(self):
        for n in self.nodes:
            n.stop()


class Pki:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed
    (openssl), in a directory readable by all: the CA is public, and
    redis-server reads the key (it runs as root here, the key stays 0600)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="rsession-bench-pki-", dir=BENCH_DIR)
        os.chmod(self.dir, 0o755)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self._openssl(["req", "-x509"] + ec + ["-days", "2", "-subj", "/CN=bench-ca",
                                               "-keyout", self.path("ca.key"), "-out", self.path("ca.crt")])
        write(self.dir, "server.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        self._openssl(["req"] + ec + ["-subj", "/CN=127.0.0.1", "-keyout", self.path("server.key"),
                                      "-out", self.path("server.csr")])
        self._openssl(["x509", "-req", "-days", "2", "-in", self.path("server.csr"), "-CA", self.path("ca.crt"),
                       "-CAkey", self.path("ca.key"), "-CAcreateserial", "-extfile", self.path("server.ext"),
                       "-out", self.path("server.crt")])
        os.chmod(self.path("ca.crt"), 0o644)
        os.chmod(self.path("server.key"), 0o600)

    def _openssl(self, args):
        out = subprocess.run(["openssl"] + args, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit("openssl %s failed:\n%s" % (" ".join(args), out.stderr))

    def path(self, name):
        return os.path.join(self.dir, name)

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def php_fpm_binary():
    """Debian's php-fpm (php8.2-fpm in bookworm), if installed."""
    found = sorted(f for f in os.listdir("/usr/sbin") if f.startswith("php-fpm"))
    return os.path.join("/usr/sbin", found[-1]) if found else None


def php_fpm_modules():
    """The extensions php-fpm loads with this machine's ini files."""
    out = subprocess.run([php_fpm_binary(), "-m"], capture_output=True, text=True)
    return {l.strip().lower() for l in out.stdout.splitlines()}


class PhpFpm:
    """A private php-fpm master: its own config (-y; never the system's
    pools or service), one pool per entry of `pools` (name: its
    php_admin_value settings), each on a Unix socket of its own, workers as
    www-data. Without -n, so Debian's fpm php.ini and conf.d (opcache, and
    phpredis once php8.2-redis is installed) load as in production."""

    # Static children for two cores: enough that a worker waiting on a
    # session lock or on Redis leaves others to run, few enough that they
    # do not just queue on the CPUs (wrk drives 16 connections).
    CHILDREN = 8

    def __init__(self, pools):
        self.root = tempfile.mkdtemp(prefix="rsession-bench-fpm-", dir=BENCH_DIR)
        os.chmod(self.root, 0o755)
        conf = ["[global]", "error_log = %s/error.log" % self.root, "daemonize = no", "pid = %s/fpm.pid" % self.root]
        for name, settings in pools.items():
            conf += ["[%s]" % name, "user = www-data", "group = www-data", "listen = %s" % self.socket(name),
                     "listen.owner = www-data", "listen.group = www-data", "listen.mode = 0600",
                     "pm = static", "pm.max_children = %d" % self.CHILDREN,
                     # PHP's warnings (a session that failed to load) reach error.log.
                     "catch_workers_output = yes", "php_admin_flag[log_errors] = on"]
            conf += ["php_admin_value[%s] = %s" % (k, v.replace("{ROOT}", self.root)) for k, v in settings.items()]
        self.conf = write(self.root, "fpm.conf", "\n".join(conf) + "\n")
        self.pools = list(pools)
        self.proc = None

    def socket(self, pool):
        return os.path.join(self.root, pool + ".sock")

    def handler(self, pool):
        """What routes a request to `pool` (mod_proxy_fcgi's SetHandler)."""
        return "proxy:unix:%s|fcgi://localhost" % self.socket(pool)

    def start(self):
        self.proc = subprocess.Popen([php_fpm_binary(), "-F", "-y", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for("php-fpm's sockets", 30, lambda: self._died() or all(os.path.exists(self.socket(p)) for p in self.pools))
        return self

    def _died(self):
        if self.proc.poll() is not None:
            raise SystemExit("php-fpm failed to start:\n" + self.log())
        return False

    def log(self):
        return read_text(os.path.join(self.root, "error.log"))

    def cpu_seconds(self):
        return process_group_cpu(self.proc.pid)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            end_process(self.proc)
        bad = [l for l in self.log().splitlines() if "WARNING" in l or "ERROR" in l or "said into stderr" in l]
        if bad:
            print("warning: %d php-fpm log lines in %s, the first:\n%s" % (len(bad), self.root, "\n".join(bad[:5])),
                  file=sys.stderr)
        shutil.rmtree(self.root, ignore_errors=True)


ROUND_ROBIN_LUA = """
local cookies = {%s}
local next_id = 0
function setup(thread) thread:set("id", next_id); next_id = next_id + 1 end
function init(args) n = id * 7919 end
function request()
  n = n + 1
  return wrk.format(nil, nil, {["Cookie"] = cookies[(n %% #cookies) + 1]})
end
"""


def wrk(url, seconds, cookie=None, cookies=None, conns=16):
    cmd = ["wrk", "-t2", "-c%d" % conns, "-d%ds" % seconds, "--latency", url]
    script = None
    if cookie:
        cmd += ["-H", "Cookie: " + cookie]
    if cookies:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(ROUND_ROBIN_LUA % ", ".join('"%s"' % c for c in cookies))
        script.close()
        cmd += ["-s", script.name]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    if script:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "requests": total, "p50": lat.get("50", "?"), "p99": lat.get("99", "?"),
            "errors": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1) if socket_errors else ""}


CEILING_URL = None


def measure(url, args, cpu=None, side_cpu=None, **kw):
    """Median of args.runs wrk runs, each right after a run against the
    static-file ceiling server, so that a machine whose speed drifts over
    minutes still yields a fair ratio (the pairs are close in time).
    `cpu` (a function returning the server's CPU seconds) adds the median
    server CPU time per request in microseconds; `side_cpu` the same for a
    service the server uses (Redis)."""
    runs, ceilings = [], []
    for _ in range(args.runs):
        if CEILING_URL:
            ceilings.append(wrk(CEILING_URL, args.seconds)["rps"])
        before = [f() for f in (cpu, side_cpu) if f]
        run = wrk(url, args.seconds, **kw)
        after = [f() for f in (cpu, side_cpu) if f]
        for key, b, a in zip(("cpu_us", "side_cpu_us"), before, after):
            run[key] = (a - b) / run["requests"] * 1e6 if run["requests"] else float("nan")
        runs.append(run)
    med = dict(sorted(runs, key=lambda r: r["rps"])[len(runs) // 2])
    med["errors"] = sum(r["errors"] for r in runs)
    med["ceiling"] = statistics.median(ceilings) if ceilings else None
    for key in ("cpu_us", "side_cpu_us"):
        if key in runs[0]:
            med[key] = statistics.median(r[key] for r in runs)
    return med


def warm_up(url, seconds=2):
    """Requests, not measured, until every worker has initialised what it
    does on its first request (mod_python's interpreter, PHP's opcache):
    left to the first run, that would be measured as its rate."""
    wrk(url, seconds)


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)$", text or "")
    if not m:
        return float("nan")
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v


# Keeps a new session for the bench's clients.
MAKER_HANDLER = """
function handle(r)
  r.headers_out['X-RSession'] = 'set made=1'
  r.content_type = 'text/plain'
  r:puts('made')
  return apache2.OK
end
"""

LUA_HANDLER = """
-- Reads the session and writes nothing.
function peek(r)
  r.content_type = 'text/plain'
  r:puts(r.subprocess_env['RSESSION_ID'] or '-')
  return apache2.OK
end

function handle(r)
  local data = r.subprocess_env['RSESSION_DATA'] or ''
  local n = tonumber(string.match(data, 'n=(%d+)') or '0') + 1
  r.headers_out['X-RSession'] = 'set n=' .. n
  r.content_type = 'text/plain'
  r:puts(tostring(n))
  return apache2.OK
end
"""

PYTHON_HANDLER = """
from mod_python import apache, Session

def handler(req):
    if req.uri.startswith('/py/session'):
        # mod_python's signed cookies fail on Python 3 (hmac wants bytes),
        # so its sessions run unsigned, as users of it must.
        s = Session.FileSession(req)
        s['n'] = s.get('n', 0) + 1
        s.save()
        n = s['n']
    else:
        n = 1
    req.content_type = 'text/plain'
    req.write(str(n))
    return apache.OK
"""

PHP_SESSION = "<?php session_start(); $_SESSION['n'] = ($_SESSION['n'] ?? 0) + 1; echo $_SESSION['n'];"
# Resumes the session and changes nothing (PHP then only refreshes its
# expiry: lazy_write, the default).
PHP_SESSION_READ = "<?php session_start(); echo $_SESSION['n'] ?? 0;"
PHP_PLAIN = "<?php echo 1;"


def write(root, name, text, mode=0o644):
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


SAME_COOKIES = "static file, no session, same cookies"
LUA_PLAIN = "mod_lua handler, no session"
PHP_PLAIN_ROW = "peer: PHP-FPM, no session"
# The floors: bench/floor_module.c doing inside httpd only what the row it
# bounds cannot do without, against the same baseline.
FLOOR_SCRATCH = "floor: C module, a scratch directory per request only, mod_lua"
FLOOR_READ_WRITE = "floor: C module, a read+write's store system calls only, mod_lua"
FLOOR_REDIS = "floor: C module, one Redis GET per request only, static file"
# Bots on a Redis farm: a new session nothing is written to never reaches
# Redis.
REDIS_COOKIELESS = "rsession Redis store cookieless, handler writes nothing, mod_lua"
FLOORS = {
    FLOOR_SCRATCH: "rsession cookieless, handler writes nothing, mod_lua",
    FLOOR_READ_WRITE: "rsession read+write via X-RSession, mod_lua, many sessions",
    FLOOR_REDIS: "rsession Redis store, resumed sessions, static file",
}

# Every row, in the table's order, with its own baseline: None for a
# baseline itself, "ceiling" for a row compared with the paired static file
# only.
ROWS = {
    "static file, no session, same server": None,
    SAME_COOKIES: None,
    "rsession file store, resumed sessions, static file": SAME_COOKIES,
    "rsession one session, 16 clients, static file (read-only)": "ceiling",
    LUA_PLAIN: None,
    "rsession read+write via X-RSession, mod_lua, many sessions": LUA_PLAIN,
    FLOOR_READ_WRITE: LUA_PLAIN,
    "rsession cookieless, handler writes nothing, mod_lua": LUA_PLAIN,
    "rsession cookieless, handler writes nothing, RSessionScratch Off, mod_lua": LUA_PLAIN,
    FLOOR_SCRATCH: LUA_PLAIN,
    "rsession new session writing one key, mod_lua": LUA_PLAIN,
    "rsession Redis store, resumed sessions, static file": SAME_COOKIES,
    FLOOR_REDIS: SAME_COOKIES,
    "rsession Redis store read+write via X-RSession, mod_lua, many sessions": LUA_PLAIN,
    REDIS_COOKIELESS: LUA_PLAIN,
    "rsession Redis over TLS (rediss), resumed sessions, static file": SAME_COOKIES,
    "rsession Redis Cluster (3 masters), resumed sessions, static file": SAME_COOKIES,
    "peer: mod_session_cookie, static file": "ceiling",
    "peer: mod_python handler, no session": None,
    "peer: mod_python FileSession read+write, many sessions": "peer: mod_python handler, no session",
    PHP_PLAIN_ROW: None,
    "peer: PHP-FPM file sessions read+write, many sessions": PHP_PLAIN_ROW,
    "peer: PHP-FPM file sessions, one session, 16 clients": PHP_PLAIN_ROW,
    "peer: PHP-FPM file sessions, new session per request": PHP_PLAIN_ROW,
    "peer: PHP-FPM phpredis sessions read+write, many sessions": PHP_PLAIN_ROW,
    "peer: PHP-FPM phpredis sessions resumed (read only), many sessions": PHP_PLAIN_ROW,
}


def selected(name, only):
    """Whether row `name` runs under --only: its name holds one of the
    substrings (any case), or it is the baseline of a row that does."""
    def named(n):
        return not only or any(o.lower() in n.lower() for o in only)
    return (named(name) or any(named(r) and base == name for r, base in ROWS.items())
            or (name in FLOORS and named(FLOORS[name])))


def scenario_rows(args):
    global CEILING_URL
    rows = []
    ceiling_server = Httpd("", rsession=False).start()
    CEILING_URL = ceiling_server.url("/index.html")
    try:
        return _scenario_rows(args, rows)
    finally:
        CEILING_URL = None
        ceiling_server.stop()


def _scenario_rows(args, rows):

    def want(*names):
        return any(selected(n, args.only) for n in names)

    def add(name, run, note=""):
        """Row `name` (of ROWS) measured by `run()`, when selected."""
        if not want(name):
            return
        result = run()
        rows.append({"name": name, "baseline": ROWS[name], "note": note, **result})
        print("  %-58s %9.0f req/s  p50 %-8s p99 %-8s%s" % (
            name, result["rps"], result["p50"], result["p99"],
            "  (%d errors)" % result["errors"] if result["errors"] else ""), file=sys.stderr, flush=True)

    def read_write(url, cookies_path, name, cpu, side_cpu=None, get=None):
        """`name`: 256 sessions, each changed by the request to `url`
        (cookies from `cookies_path` on the server `get`)."""
        if want(name):
            cookies = get.cookies_from(cookies_path, 256)
            add(name, lambda: measure(url, args, cpu=cpu, side_cpu=side_cpu, cookies=cookies))

    # 1. The ceiling, and mod_rsession on the same static file.
    if want("static file, no session, same server", SAME_COOKIES, "rsession file store, resumed sessions, static file",
            "rsession one session, 16 clients, static file (read-only)"):
        h = Httpd("""
RSessionStore file:{ROOT}/store
RSessionScratchRoot {SCRATCH}
<Location /s/>
  RSession On
</Location>
<Location /one/>
  RSession On
  RSessionLockTimeout 60
</Location>
Alias /s/ {ROOT}/htdocs/
Alias /one/ {ROOT}/htdocs/
Alias /p/ {ROOT}/htdocs/
""", modules=["alias"]).start()
        try:
            add("static file, no session, same server", lambda: measure(h.url("/index.html"), args, cpu=h.cpu_seconds))
            cookies = h.cookies(256)
            # The resumed rows' clients send one of 256 cookies, chosen by a
            # wrk script that costs the client CPU too: the same requests
            # without the module are their own baseline.
            add(SAME_COOKIES, lambda: measure(h.url("/p/index.html"), args, cpu=h.cpu_seconds, cookies=cookies))
            add("rsession file store, resumed sessions, static file",
                lambda: measure(h.url("/s/index.html"), args, cpu=h.cpu_seconds, cookies=cookies))
            one = h.cookies(1)[0]
            add("rsession one session, 16 clients, static file (read-only)",
                lambda: measure(h.url("/one/index.html"), args, cpu=h.cpu_seconds, cookie=one))
        finally:
            h.stop()

    # 2. Read+write on every request: a mod_lua handler through X-RSession.
    if want(LUA_PLAIN, "rsession read+write via X-RSession, mod_lua, many sessions",
            "rsession cookieless, handler writes nothing, mod_lua", "rsession new session writing one key, mod_lua",
            "rsession cookieless, handler writes nothing, RSessionScratch Off, mod_lua"):
        floor = floor_module()
        h = Httpd(LUA_SERVER + """
RSessionStore file:{ROOT}/store
RSessionScratchRoot {SCRATCH}
""" + (FLOOR_LUA % floor if floor else ""), modules=["lua"])
        write(h.root, "handler.lua", LUA_HANDLER)
        if floor:
            floor_tree(os.path.join(h.root, "floor"), h.scratch + "-floor")
        h.start()
        try:
            add(LUA_PLAIN, lambda: measure(h.url("/lua/plain"), args, cpu=h.cpu_seconds))
            read_write(h.url("/lua/session"), "/lua/session", "rsession read+write via X-RSession, mod_lua, many sessions",
                       h.cpu_seconds, get=h)
            if floor:
                add(FLOOR_READ_WRITE, lambda: measure(h.url("/lua/floor-rw"), args, cpu=h.cpu_seconds))
            # Bots and health checks: no cookie, nothing written, nothing kept.
            add("rsession cookieless, handler writes nothing, mod_lua",
                lambda: measure(h.url("/lua/peek"), args, cpu=h.cpu_seconds))
            # The same without a scratch directory: what the directory's
            # mkdir and rmdir cost such a request.
            add("rsession cookieless, handler writes nothing, RSessionScratch Off, mod_lua",
                lambda: measure(h.url("/lua/peek-bare"), args, cpu=h.cpu_seconds))
            if floor:
                add(FLOOR_SCRATCH, lambda: measure(h.url("/lua/floor-scratch"), args, cpu=h.cpu_seconds))
            add("rsession new session writing one key, mod_lua",
                lambda: measure(h.url("/lua/session"), args, cpu=h.cpu_seconds))
        finally:
            h.stop()

    # 3. Redis stores: one server resumed and read+write, over TLS, a
    # Cluster; Redis's own CPU counted apart.
    if not shutil.which("redis-server"):
        print("  (redis-server not installed: Redis rows skipped)", file=sys.stderr)
    else:
        _redis_rows(args, want, add, read_write)

    # 4. Peers, each against its own no-session baseline.
    if want("peer: mod_session_cookie, static file"):
        h = Httpd("""
<Location /ms/>
  Session On
  SessionCookieName session path=/
</Location>
Alias /ms/ {ROOT}/htdocs/
""", modules=["alias", "session", "session_cookie"], rsession=False).start()
        try:
            add("peer: mod_session_cookie, static file",
                lambda: measure(h.url("/ms/index.html"), args, cpu=h.cpu_seconds, cookie="session=user=ann&n=1"))
        finally:
            h.stop()

    if not want("peer: mod_python handler, no session", "peer: mod_python FileSession read+write, many sessions"):
        pass
    elif os.path.exists(os.path.join(MODS, "mod_python.so")):
        h = Httpd("""
<Location /py/>
  SetHandler mod_python
  PythonHandler handler
  PythonPath "['{ROOT}/py'] + sys.path"
  PythonOption mod_python.file_session.database_directory {ROOT}/pysessions
</Location>
""", mpm="prefork", modules=["python"], rsession=False)
        write(h.root, "py/handler.py", PYTHON_HANDLER)
        os.makedirs(os.path.join(h.root, "pysessions"))
        shutil.chown(os.path.join(h.root, "pysessions"), "www-data", "www-data")
        h.start()
        try:
            warm_up(h.url("/py/plain"))
            add("peer: mod_python handler, no session", lambda: measure(h.url("/py/plain"), args, cpu=h.cpu_seconds))
            read_write(h.url("/py/session"), "/py/session", "peer: mod_python FileSession read+write, many sessions",
                       h.cpu_seconds, get=h)
        finally:
            h.stop()
    else:
        print("  (mod_python not installed: skipped)", file=sys.stderr)

    php_rows = [r for r in ROWS if r.startswith("peer: PHP-FPM")]
    if not want(*php_rows):
        pass
    elif not php_fpm_binary():
        print("  (php-fpm not installed: PHP rows skipped)", file=sys.stderr)
    else:
        _php_rows(args, want, add, read_write)
    return rows


# mod_lua's handlers at /lua/*, under RSession where they use a session.
LUA_SERVER = """
LuaScope thread
LuaMapHandler ^/lua/plain$ {ROOT}/handler.lua handle
LuaMapHandler ^/lua/session$ {ROOT}/handler.lua handle
LuaMapHandler ^/lua/peek$ {ROOT}/handler.lua peek
LuaMapHandler ^/lua/peek-bare$ {ROOT}/handler.lua peek
<LocationMatch ^/lua/(session|peek|peek-bare)$>
  RSession On
</LocationMatch>
<Location /lua/peek-bare>
  RSessionScratch Off
</Location>
"""

# The floors beside the mod_lua rows (%s: the floor module's path).
FLOOR_LUA = """
LoadModule floor_module %s
LuaMapHandler ^/lua/floor-scratch$ {ROOT}/handler.lua peek
LuaMapHandler ^/lua/floor-rw$ {ROOT}/handler.lua handle
<Location /lua/floor-scratch>
  FloorScratch {SCRATCH}-floor
</Location>
<Location /lua/floor-rw>
  FloorFileRW {ROOT}/floor
</Location>
"""

# The Redis floor beside the Redis rows (the module's path, Redis's port).
FLOOR_REDIS_CONF = """
LoadModule floor_module %s
Alias /fr/ {ROOT}/htdocs/
<Location /fr/>
  FloorRedis %d
</Location>
"""

_floor_build = {}


def floor_module():
    """bench/floor_module.c (with bench/floor.c, which sets up its store)
    built once per run with apxs's flags; None without apxs
    (apache2-dev)."""
    if "module" in _floor_build:
        return _floor_build["module"]
    _floor_build["module"] = None
    cc = shutil.which("cc") or shutil.which("gcc")
    apxs = shutil.which("apxs") or shutil.which("apxs2")
    if not (cc and apxs):
        print("  (apxs or cc missing: the C floors are skipped)", file=sys.stderr)
        return None
    def query(var):
        return subprocess.run([apxs, "-q", var], capture_output=True, text=True, check=True).stdout.split()
    work = tempfile.mkdtemp(prefix="rsession-floor-module-", dir=BENCH_DIR)
    os.chmod(work, 0o755)
    _floor_build["work"] = work
    atexit.register(shutil.rmtree, work, True)
    so = os.path.join(work, "mod_floor.so")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", *query("CFLAGS"), *query("EXTRA_CPPFLAGS"),
                    "-I" + query("INCLUDEDIR")[0], "-I" + query("APR_INCLUDEDIR")[0],
                    "-o", so, os.path.join(REPO, "bench/floor_module.c")], check=True)
    subprocess.run([cc, "-O2", "-o", os.path.join(work, "floor"), os.path.join(REPO, "bench/floor.c")], check=True)
    _floor_build["module"] = so
    return so


def floor_tree(store, scratch):
    """The floor's 256 records (made by bench/floor.c as the server's
    User) and its scratch parent."""
    www = pwd.getpwnam("www-data")
    for d in (store, scratch):
        os.makedirs(d)
        os.chown(d, www.pw_uid, www.pw_gid)

    def as_www():
        os.setgid(www.pw_gid)
        os.setuid(www.pw_uid)
    subprocess.run([os.path.join(_floor_build["work"], "floor"), store, "256"], preexec_fn=as_www,
                   capture_output=True, check=True)


# A Redis-backed server: static files under /s/ and the mod_lua handlers.
REDIS_SERVER = LUA_SERVER + """
RSessionStore %s
RSessionScratchRoot {SCRATCH}
<Location /s/>
  RSession On
</Location>
Alias /s/ {ROOT}/htdocs/
"""


def _redis_rows(args, want, add, read_write):
    resumed = "rsession Redis store, resumed sessions, static file"
    rw = "rsession Redis store read+write via X-RSession, mod_lua, many sessions"
    tls = "rsession Redis over TLS (rediss), resumed sessions, static file"
    cluster = "rsession Redis Cluster (3 masters), resumed sessions, static file"

    def server(url, name, redis_cpu, rw_name=None, floor_redis=None):
        floor = floor_module() if floor_redis and want(FLOOR_REDIS) else None
        h = Httpd(REDIS_SERVER % url + (FLOOR_REDIS_CONF % (floor, floor_redis.port) if floor else ""),
                  modules=["alias", "lua"])
        write(h.root, "handler.lua", LUA_HANDLER)
        h.start()
        try:
            if want(name):
                cookies = h.cookies(256)
                add(name, lambda: measure(h.url("/s/index.html"), args, cpu=h.cpu_seconds, side_cpu=redis_cpu,
                                          cookies=cookies))
                if floor:
                    floor_redis.cmd("SET floor:record " + "x" * record_length(floor_redis))
                    add(FLOOR_REDIS, lambda: measure(h.url("/fr/index.html"), args, cpu=h.cpu_seconds,
                                                     side_cpu=redis_cpu, cookies=cookies))
            if rw_name:
                read_write(h.url("/lua/session"), "/lua/session", rw_name, h.cpu_seconds, side_cpu=redis_cpu, get=h)
                add(REDIS_COOKIELESS, lambda: measure(h.url("/lua/peek"), args, cpu=h.cpu_seconds, side_cpu=redis_cpu))
        finally:
            h.stop()

    if want(resumed, rw, REDIS_COOKIELESS):
        redis = Redis()
        try:
            server("redis://127.0.0.1:%d/0?prefix=bench:" % redis.port, resumed, redis.cpu_seconds, rw,
                   floor_redis=redis)
        finally:
            redis.stop()
    if want(tls):
        pki = Pki()
        try:
            redis = Redis(tls=pki)
            try:
                server("rediss://127.0.0.1:%d/0?prefix=bench:&ca_file=%s" % (redis.port, pki.path("ca.crt")), tls,
                       redis.cpu_seconds)
            finally:
                redis.stop()
        finally:
            pki.remove()
    if want(cluster):
        farm = RedisCluster()
        try:
            server(farm.url("prefix=bench:"), cluster, farm.cpu_seconds)
        finally:
            farm.stop()


def _php_rows(args, want, add, read_write):
    """PHP through php-fpm (mod_proxy_fcgi from an event-MPM httpd, as
    Debian sets it up), with its file sessions and, when the phpredis
    extension is installed, its Redis sessions with locking."""
    phpredis = ["peer: PHP-FPM phpredis sessions read+write, many sessions",
                "peer: PHP-FPM phpredis sessions resumed (read only), many sessions"]
    pools = {"files": {"session.save_handler": "files", "session.save_path": "{ROOT}/phpsessions",
                       "session.gc_probability": "0"}}
    redis = fpm = h = None
    try:
        if want(*phpredis):
            if not shutil.which("redis-server") or "redis" not in php_fpm_modules():
                print("  (redis-server or phpredis (php8.2-redis) not installed: phpredis rows skipped)", file=sys.stderr)
                phpredis = []
            else:
                redis = Redis()
                pools["redis"] = {"session.save_handler": "redis",
                                  "session.save_path": '"tcp://127.0.0.1:%d"' % redis.port,
                                  "redis.session.locking_enabled": "1", "session.gc_probability": "0"}
        fpm = PhpFpm(pools)
        os.mkdir(os.path.join(fpm.root, "phpsessions"))
        shutil.chown(os.path.join(fpm.root, "phpsessions"), "www-data", "www-data")
        fpm.start()
        # .php files go to the file-session pool; the same files under
        # /redis/ to the phpredis one.
        h = Httpd("""
<FilesMatch "\\.php$">
  SetHandler "%s"
</FilesMatch>
Alias /redis/ {ROOT}/htdocs/
<LocationMatch "^/redis/.+\\.php$">
  SetHandler "%s"
</LocationMatch>
""" % (fpm.handler("files"), fpm.handler("redis") if redis else fpm.handler("files")),
                  modules=["alias", "proxy", "proxy_fcgi"], rsession=False)
        write(h.root, "htdocs/plain.php", PHP_PLAIN)
        write(h.root, "htdocs/session.php", PHP_SESSION)
        write(h.root, "htdocs/session-read.php", PHP_SESSION_READ)
        h.start()
        warm_up(h.url("/plain.php"))

        def cpu():
            return h.cpu_seconds() + fpm.cpu_seconds()
        add(PHP_PLAIN_ROW, lambda: measure(h.url("/plain.php"), args, cpu=cpu))
        read_write(h.url("/session.php"), "/session.php", "peer: PHP-FPM file sessions read+write, many sessions", cpu, get=h)
        if want("peer: PHP-FPM file sessions, one session, 16 clients"):
            one = h.cookies_from("/session.php", 1)[0]
            add("peer: PHP-FPM file sessions, one session, 16 clients",
                lambda: measure(h.url("/session.php"), args, cpu=cpu, cookie=one))
        add("peer: PHP-FPM file sessions, new session per request", lambda: measure(h.url("/session.php"), args, cpu=cpu))
        if redis and want(*phpredis):
            cookies = h.cookies_from("/redis/session.php", 256)
            if b":0" == redis.cmd("DBSIZE").strip():
                raise SystemExit("phpredis sessions: nothing in Redis after 256 sessions\n" + fpm.log())
            add(phpredis[0], lambda: measure(h.url("/redis/session.php"), args, cpu=cpu, side_cpu=redis.cpu_seconds,
                                             cookies=cookies))
            add(phpredis[1], lambda: measure(h.url("/redis/session-read.php"), args, cpu=cpu,
                                             side_cpu=redis.cpu_seconds, cookies=cookies))
    finally:
        for server in (h, fpm, redis):
            if server:
                server.stop()


def record_length(redis):
    """The length of one of the sessions' records in `redis` (90 if none
    is found): the floor's GET reads as many bytes."""
    key = re.match(rb"\$\d+\r\n(bench:[^\r]*)\r\n", redis.cmd("RANDOMKEY"))
    length = key and re.match(rb":(\d+)", redis.cmd("STRLEN " + key.group(1).decode()))
    return int(length.group(1)) if length and int(length.group(1)) > 0 else 90


def _redis_ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def cpu_cell(r):
    if "cpu_us" not in r:
        return ""
    if "side_cpu_us" in r:
        return "%.1f + Redis %.1f" % (r["cpu_us"], r["side_cpu_us"])
    return "%.1f" % r["cpu_us"]


def table(rows):
    by_name = {r["name"]: r for r in rows}
    out = ["| scenario | req/s | p50 | p99 | static req/s (paired) | vs static | vs own baseline | server CPU µs/req |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        own = ""
        if r["baseline"] and r["baseline"] != "ceiling" and r["baseline"] in by_name:
            own = "%.2f" % (r["rps"] / by_name[r["baseline"]]["rps"])
        errors = " (%d non-2xx)" % r["errors"] if r["errors"] else ""
        out.append("| %s%s | %.0f | %s | %s | %.0f | %.2f | %s | %s |" % (
            r["name"], errors, r["rps"], r["p50"], r["p99"], r["ceiling"], r["rps"] / r["ceiling"], own,
            cpu_cell(r)))
    return "\n".join(out)


# The module's sweeping threads (src/store/file.rs, sweep_workers): the
# cores but one, at least one, at most this many.
MAX_SWEEP_WORKERS = 4
# Every this many sessions' scratch directory holds a file (--sweep-files-every).
UPLOAD_EVERY = 10
PLANTED = re.compile(r"^[0-9a-f]{2}0{20}[0-9a-f]{10}$")


def sweep_workers():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores - 1, MAX_SWEEP_WORKERS))


def filesystem_type(path):
    """The mount's type (findmnt tells ext4 apart; stat -f says ext2/ext3)."""
    found = subprocess.run(["findmnt", "-n", "-f", "-o", "FSTYPE", "--target", path], capture_output=True, text=True)
    if found.returncode == 0 and found.stdout.strip():
        return found.stdout.strip()
    return subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip()


def sweepfloor_exe():
    """bench/sweepfloor.c compiled into a directory of its own."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("the sweep benchmark needs a C compiler (make bench-deps)")
    work = tempfile.mkdtemp(prefix="rsession-sweepfloor-", dir=BENCH_DIR)
    exe = os.path.join(work, "sweepfloor")
    subprocess.run([cc, "-O2", "-pthread", "-o", exe, os.path.join(REPO, "bench/sweepfloor.c")], check=True)
    return work, exe


class SweepTree:
    """n expired sessions of a file store, as the module lays them out:
    records in <base>/store/<xx>/<id>, scratch directories in
    <base>/scratch/<tag>/<xx>/<id> (tag: the store's, src/scratch.rs), every
    one distinct files on the file system of BENCH_DIR, made by
    bench/sweepfloor.c as www-data and then synced to disk."""

    def __init__(self, exe, n, every, threads):
        self.exe, self.n, self.every = exe, n, every
        self.base = tempfile.mkdtemp(prefix="rsession-sweep-", dir=BENCH_DIR)
        self.store = os.path.join(self.base, "store")
        self.scratch = os.path.join(self.base, "scratch")
        # ScratchRoot::new: the first 6 bytes of SHA-256 of the store's
        # description (FileStore::describe), in hex.
        tag = hashlib.sha256(("file:" + self.store).encode()).hexdigest()[:12]
        self.tagdir = os.path.join(self.scratch, tag)
        for path in (self.base, self.store, self.scratch, self.tagdir):
            os.makedirs(path, exist_ok=True)
            shutil.chown(path, "www-data", "www-data")
        os.chmod(self.base, 0o755)
        started = time.time()
        # Expired two hours ago: no clock step or touch lag makes them live.
        expires = int(time.time()) - 7200
        self.sweepfloor("setup", threads, str(pwd.getpwnam("www-data").pw_uid),
                        str(grp.getgrnam("www-data").gr_gid), str(expires))
        os.sync()
        self.setup_seconds = time.time() - started

    def sweepfloor(self, mode, threads, *more):
        out = subprocess.run([self.exe, mode, self.store, self.tagdir, str(self.n), str(self.every), str(threads)]
                             + list(more), capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit("sweepfloor %s failed: %s" % (mode, out.stderr))
        return {k: float(v) for k, v in re.findall(r"(\w+) ([\d.]+)", out.stdout)}

    def entries(self):
        """Entries a sweep of the whole tree removes: records, scratch
        directories and the files in them."""
        return 2 * self.n + (self.n + self.every - 1) // self.every

    def left(self):
        """Planted records and scratch directories still there."""
        count = [0, 0]
        for k, top in enumerate((self.store, self.tagdir)):
            for shard in range(256):
                try:
                    count[k] += sum(1 for name in os.listdir("%s/%02x" % (top, shard)) if PLANTED.match(name))
                except FileNotFoundError:
                    pass
        return tuple(count)

    def remove(self):
        subprocess.run(["rm", "-rf", self.base], check=False)


def check_room(n, every, trees):
    """Refuses to start what the file system of BENCH_DIR cannot hold (a
    record and a directory take a block each)."""
    st = os.statvfs(BENCH_DIR)
    inodes = trees * (2 * n + n // every)
    blocks = inodes + n  # directories' blocks, records', the odd shard block
    need_bytes = blocks * st.f_frsize
    if st.f_favail < inodes * 1.1 or st.f_bavail * st.f_frsize < need_bytes * 1.1:
        raise SystemExit("the sweep benchmark needs %.1f GB and %d inodes free in %s at a time (has %.1f GB, %d)"
                         % (need_bytes / 1e9, inodes, BENCH_DIR, st.f_bavail * st.f_frsize / 1e9, st.f_favail))


def sweeper_began(store, after):
    """The moment a pass over `store` began after `after` (the sweeper lock
    file's mtime, set as each pass begins: FileStore::try_begin_sweep), or
    None."""
    for name in os.listdir(store):
        if name.startswith(".sweeper-"):
            st = os.stat(os.path.join(store, name))
            if st.st_size > 0 and st.st_mtime > after:
                return st.st_mtime
    return None


PASS_LINE = re.compile(r"^\[\w{3} (\w{3} \d{2} \d{2}:\d{2}:\d{2})(\.\d+) (\d{4})\].*RS0040 sweep of file:\S+: "
                       r"scanned (\d+), removed (\d+) expired and (\d+) orphaned scratch directories, "
                       r"(\d+) leftover temporary files, skipped (\d+) locked, (\d+) failed, in (\d+) ms", re.M)


def pass_lines(log, store):
    """The sweep passes over `store` logged so far: (unix time logged,
    expired, orphaned, skipped, failed, milliseconds)."""
    out = []
    for m in PASS_LINE.finditer(log):
        if ("file:%s:" % store) not in m.group(0):
            continue
        stamp = time.mktime(time.strptime(m.group(1) + " " + m.group(3), "%b %d %H:%M:%S %Y")) + float(m.group(2))
        out.append((stamp, int(m.group(5)), int(m.group(6)), int(m.group(8)), int(m.group(9)), int(m.group(10))))
    return out


def sweep_conf(tree, interval):
    return """
RSessionStore file:%s
RSessionScratchRoot %s
RSessionGCInterval %d
<Location /s/>
  RSession On
</Location>
Alias /s/ {ROOT}/htdocs/
""" % (tree.store, tree.scratch, interval)


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(entry))
    return kids


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def gc_schedstat(pid):
    """(seconds on a CPU, seconds runnable waiting for one) of the
    rsession-gc threads of pid's children so far, by thread."""
    out = {}
    for child in children_of(pid):
        try:
            tids = os.listdir("/proc/%d/task" % child)
        except OSError:
            continue
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/comm" % (child, tid)) as f:
                    if not f.read().startswith("rsession-gc"):
                        continue
                with open("/proc/%d/task/%s/schedstat" % (child, tid)) as f:
                    ran, waited = f.read().split()[:2]
                out[tid] = (int(ran) / 1e9, int(waited) / 1e9)
            except OSError:
                continue
    return out


def module_sweep(args, exe, every, traffic):
    """The module's background sweeper on a tree of args.sweep sessions:
    wall time from the first pass's beginning to the end of the pass that
    removed the last one. With `traffic`, resumed requests (256 sessions)
    run all along the sweep, and the same traffic on the same store
    without a sweeper first."""
    n = args.sweep
    tree = SweepTree(exe, n, every, sweep_workers())
    what = "with traffic" if traffic else "alone"
    print("  module %s: %d sessions written in %.1f s ..." % (what, n, tree.setup_seconds), file=sys.stderr, flush=True)
    undisturbed, during = None, []
    try:
        if traffic:
            quiet = Httpd(sweep_conf(tree, 0), modules=["alias"]).start()
            try:
                cookies = quiet.cookies(256)
                undisturbed = measure(quiet.url("/s/index.html"), args, cookies=cookies)
            finally:
                quiet.stop()
        h = Httpd(sweep_conf(tree, 1), modules=["alias"], log_level="warn rsession:info")
        shown = time.time()
        h.start()
        try:
            sched_before = gc_schedstat(h.proc.pid)
            began = wait_for("the first pass", 120, lambda: sweeper_began(tree.store, shown - 1))
            cpu = h.cpu_seconds()
            sched = [sched_before]

            def swept():
                # The threads' figures before they end with their pass.
                sched[1:] = [gc_schedstat(h.proc.pid)]
                return sum(p[1] for p in pass_lines(h.log(), tree.store))
            # Traffic for as long as the sweep lasts (at least one run).
            while traffic:
                run = wrk(h.url("/s/index.html"), args.seconds, cookies=cookies)
                run["ended"] = time.time()
                during.append(run)
                if swept() >= n:
                    break
            wait_for("the sweep", 4 * 3600, lambda: swept() >= n)
            cpu = h.cpu_seconds() - cpu
            passes = pass_lines(h.log(), tree.store)
        finally:
            h.stop()
        ended = passes[-1][0]
        left = tree.left()
    finally:
        tree.remove()
    out = {"n": n, "entries": tree.entries(), "seconds": ended - began,
           "pass_seconds": sum(p[5] for p in passes) / 1000, "passes": len(passes),
           "expired": sum(p[1] for p in passes), "orphaned": sum(p[2] for p in passes),
           "skipped": sum(p[3] for p in passes), "failed": sum(p[4] for p in passes), "left": left,
           "setup_seconds": tree.setup_seconds, "cpu": cpu}
    # The sweeping threads (a helper thread of a pass comes and goes with
    # it, so on more than 2 cores this undercounts them).
    gained = {tid: tuple(a - b for a, b in zip(v, sched[0].get(tid, (0, 0)))) for tid, v in sched[-1].items()}
    out["on_cpu"] = sum(v[0] for v in gained.values())
    out["run_wait"] = sum(v[1] for v in gained.values())
    if traffic:
        # Runs that ended well after the sweep mixed in traffic without it.
        inside = [r for r in during if r["ended"] <= ended + 0.5] or during[:1]
        out.update({"quiet": undisturbed, "sweep": max(inside, key=lambda r: to_ms(r["p99"])), "runs": len(inside),
                    "overlap": (ended - began) / (len(inside) * args.seconds), "wrk_seconds": args.seconds,
                    "quiet_runs": args.runs,
                    "rps_sweep": statistics.median(r["rps"] for r in inside),
                    "p50_sweep": statistics.median(to_ms(r["p50"]) for r in inside),
                    "p99_median": statistics.median(to_ms(r["p99"]) for r in inside)})
    return out


def floor_sweep(n, exe, every, threads):
    """bench/sweepfloor.c's removal of an identical tree with `threads`."""
    tree = SweepTree(exe, n, every, max(threads, 1))
    try:
        out = tree.sweepfloor("remove", threads)
        if out.get("removed") != tree.entries():
            raise SystemExit("sweepfloor removed %s of %d entries" % (out.get("removed"), tree.entries()))
        return {"threads": threads, "seconds": out["seconds"], "entries": out["removed"],
                "on_cpu": out.get("on_cpu", float("nan")), "run_wait": out.get("run_wait", float("nan"))}
    finally:
        tree.remove()


def floor_under_traffic(args, exe, every, threads):
    """bench/sweepfloor.c removing a tree of args.sweep sessions with
    `threads`, in a process of its own at normal priority, while the
    resumed traffic of module_sweep runs against a store beside it on the
    same file system: what the removals cost requests' latency when
    nothing of the module's sweeper is involved."""
    n = args.sweep
    tree = SweepTree(exe, n, every, max(threads, 1))
    beside = SweepTree(exe, 1000, every, 1)
    h = Httpd(sweep_conf(beside, 0), modules=["alias"])
    try:
        h.start()
        cookies = h.cookies(256)
        quiet = measure(h.url("/s/index.html"), args, cookies=cookies)
        done = []
        removal = threading.Thread(target=lambda: done.append(tree.sweepfloor("remove", threads)))
        removal.start()
        during = []
        while removal.is_alive():
            during.append(wrk(h.url("/s/index.html"), args.seconds, cookies=cookies))
        removal.join()
    finally:
        h.stop()
        tree.remove()
        beside.remove()
    if not done or not during:
        raise SystemExit("the floor under traffic did not run")
    return {"threads": threads, "seconds": done[0]["seconds"], "quiet": quiet, "runs": len(during),
            "rps_sweep": statistics.median(r["rps"] for r in during),
            "p99_median": statistics.median(to_ms(r["p99"]) for r in during),
            "p99_worst": max(to_ms(r["p99"]) for r in during)}


def restart_during_sweep(n, exe, every):
    """A graceful restart (SIGUSR1, apachectl -k graceful) and then a stop
    (SIGTERM, -k stop), each half a second into a pass over n sessions:
    how long until the old generation's children are gone, and until the
    server is."""
    tree = SweepTree(exe, n, every, sweep_workers())
    h = Httpd(sweep_conf(tree, 1), modules=["alias"], log_level="warn rsession:info")
    try:
        shown = time.time()
        h.start()
        began = wait_for("the first pass", 120, lambda: sweeper_began(tree.store, shown - 1))
        time.sleep(max(0.0, began + 0.5 - time.time()))
        old = children_of(h.proc.pid)
        asked = time.time()
        os.kill(h.proc.pid, signal.SIGUSR1)
        wait_for("the old children to go", 120, lambda: not any(alive(p) for p in old))
        graceful = time.time() - asked
        left_at_graceful = tree.left()[0]
        # The new generation takes the sweep up again; stop it mid-pass.
        began = wait_for("the new generation's pass", 120, lambda: sweeper_began(tree.store, asked))
        time.sleep(max(0.0, began + 0.5 - time.time()))
        asked = time.time()
        h.proc.send_signal(signal.SIGTERM)
        h.proc.wait(120)
        stop = time.time() - asked
        left_at_stop = tree.left()[0]
        crashes = [l for l in h.log().splitlines() if "exit signal" in l or "panicked" in l]
    finally:
        h.stop()
        tree.remove()
    return {"n": n, "graceful": graceful, "stop": stop, "old_children": len(old),
            "left_at_graceful": left_at_graceful, "left_at_stop": left_at_stop, "crashes": crashes}


def sweep_benchmark(args):
    """N expired sessions in a file store on BENCH_DIR's file system (never
    tmpfs): the module's sweep of them against the floor of the same
    removals in C, traffic during it, and restarts during a sweep."""
    n, every = args.sweep, args.sweep_files_every
    fs = filesystem_type(BENCH_DIR)
    if fs in ("tmpfs", "ramfs"):
        raise SystemExit("%s is %s: the sweep benchmark measures the store's real file system "
                         "(set RSESSION_BENCH_DIR)" % (BENCH_DIR, fs))
    check_room(n, every, 1)
    work, exe = sweepfloor_exe()
    try:
        workers = sweep_workers()
        result = {"fs": fs, "dir": BENCH_DIR, "workers": workers, "every": every}
        result["module"] = module_sweep(args, exe, every, traffic=False)
        if not args.no_sweep_traffic:
            result["traffic"] = module_sweep(args, exe, every, traffic=True)
            print("  floor under traffic: %d sessions, 1 thread ..." % n, file=sys.stderr, flush=True)
            result["floor_traffic"] = floor_under_traffic(args, exe, every, 1)
        result["floor"] = []
        for threads in sorted(set(args.sweep_floor_threads or (1, workers, MAX_SWEEP_WORKERS))):
            print("  floor: %d sessions, %d thread(s) ..." % (n, threads), file=sys.stderr, flush=True)
            result["floor"].append(floor_sweep(n, exe, every, threads))
        if args.sweep_restart:
            print("  restarts during a sweep of %d sessions ..." % args.sweep_restart, file=sys.stderr, flush=True)
            result["restart"] = restart_during_sweep(args.sweep_restart, exe, every)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sweep_report(s):
    """Markdown: the sweep section's table and lines."""
    m, t = s["module"], s.get("traffic")
    n = m["n"]
    out = ["Sweep of %d expired sessions on %s (%s): distinct files, a record and a scratch directory each, "
           "one directory in %d holding a file (%d entries in all; a tree written in %.1f s)."
           % (n, s["dir"], s["fs"], s["every"], m["entries"], m["setup_seconds"]), "",
           "| removing them (each on a tree of its own) | threads | seconds | sessions/s | entries/s | vs the floor, same threads "
           "| threads on a CPU, s | runnable, waiting for a CPU, s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    same = ([f for f in s["floor"] if f["threads"] == s["workers"]] or s["floor"])[0]["seconds"]
    rows = [("mod_rsession's sweeper alone, first pass begun to last pass ended", s["workers"], m["seconds"], same, m),
            ("mod_rsession's sweeper alone, inside its %d pass(es)" % m["passes"], s["workers"], m["pass_seconds"],
             same, None)]
    if t:
        rows.append(("mod_rsession's sweeper under resumed traffic (below)", s["workers"], t["seconds"], same, t))
    rows += [("floor: listing + the same unlinks and rmdirs in C (bench/sweepfloor.c)", f["threads"], f["seconds"],
              None, f) for f in s["floor"]]
    for name, threads, seconds, floor, sched in rows:
        out.append("| %s | %d | %.2f | %.0f | %.0f | %s | %s | %s |" % (
            name, threads, seconds, n / seconds, m["entries"] / seconds, "%.2f" % (floor / seconds) if floor else "",
            "%.2f" % sched["on_cpu"] if sched else "", "%.2f" % sched["run_wait"] if sched else ""))
    out.append("")
    for label, r in (("alone", m), ("under traffic", t)):
        if r:
            out.append("Sweep %s: the log counted %d expired and %d orphaned scratch directories, %d skipped locked, "
                       "%d failed; planted records and directories left: %d and %d; httpd CPU %.1f s."
                       % (label, r["expired"], r["orphaned"], r["skipped"], r["failed"], r["left"][0], r["left"][1],
                          r["cpu"]))
    if t:
        q, d = t["quiet"], t["sweep"]
        out.append("Resumed traffic (256 sessions, wrk -t2 -c16) during the sweep (%d back-to-back run(s) of %d s, "
                   "the sweep covering %.0f%% of them; medians over the runs) vs the same store without a sweeper "
                   "(median of %d): p50 %.2f ms vs %.2f ms, p99 %.2f ms vs %.2f ms (%.2fx; the worst run's p99 "
                   "%s, %.2fx); req/s %.0f vs %.0f."
                   % (t["runs"], t["wrk_seconds"], min(t["overlap"], 1) * 100, t["quiet_runs"], t["p50_sweep"],
                      to_ms(q["p50"]), t["p99_median"], to_ms(q["p99"]), t["p99_median"] / to_ms(q["p99"]),
                      d["p99"], to_ms(d["p99"]) / to_ms(q["p99"]), t["rps_sweep"], q["rps"]))
    f = s.get("floor_traffic")
    if f:
        out.append("The same traffic while bench/sweepfloor.c removed an identical tree (%d thread, its own process, "
                   "normal priority, %.1f s; %d run(s)) beside the store it reads: p99 %.2f ms vs %.2f ms without "
                   "(%.2fx; the worst run's p99 %.2f ms); req/s %.0f vs %.0f. That is what the file system's own "
                   "removals cost the requests, with none of the module's code involved."
                   % (f["threads"], f["seconds"], f["runs"], f["p99_median"], to_ms(f["quiet"]["p99"]),
                      f["p99_median"] / to_ms(f["quiet"]["p99"]), f["p99_worst"], f["rps_sweep"], f["quiet"]["rps"]))
    r = s.get("restart")
    if r:
        out.append("Restarts during a sweep of %d sessions, each half a second into a pass: graceful (SIGUSR1): "
                   "the %d old children gone in %.2f s (%d sessions still to sweep); stop (SIGTERM): the server "
                   "gone in %.2f s (%d still to sweep)."
                   % (r["n"], r["old_children"], r["graceful"], r["left_at_graceful"], r["stop"], r["left_at_stop"]))
        if r["crashes"]:
            out.append("Crash lines: " + "; ".join(r["crashes"]))
    return "\n".join(out)


PROFILE_SERVER = """
RSessionStore file:{ROOT}/store
RSessionScratchRoot {SCRATCH}
<Location /s/>
  RSession On
</Location>
Alias /s/ {ROOT}/htdocs/
LuaScope thread
LuaMapHandler ^/lua/plain$ {ROOT}/handler.lua handle
LuaMapHandler ^/lua/session$ {ROOT}/handler.lua handle
LuaMapHandler ^/lua/peek$ {ROOT}/handler.lua peek
<LocationMatch ^/lua/(session|peek)$>
  RSession On
</LocationMatch>
"""

# What each kind of profiled request asks for, and with which cookie:
# 'static' and 'lua' are the baselines of the others.
PROFILE_KINDS = {
    "static": ("/index.html", None),
    "resumed": ("/s/index.html", "/s/index.html"),
    "new": ("/lua/session", None),
    "peek": ("/lua/peek", None),
    "lua": ("/lua/plain", None),
    "write": ("/lua/session", "/lua/session"),
}


def _profile_server():
    h = Httpd(PROFILE_SERVER, modules=["alias", "lua"])
    write(h.root, "handler.lua", LUA_HANDLER)
    return h


def _drive(h, kind, n):
    """n requests of one of PROFILE_KINDS."""
    path, session_path = PROFILE_KINDS[kind]
    cookie = h.cookies(1)[0] if session_path else None
    for _ in range(n):
        h.get(path, cookie)


def _callgrind_total(kind, n, collect=()):
    """Instructions callgrind counts in `httpd -X` serving n requests of
    `kind` (only inside the functions named in `collect`, if any)."""
    h = _profile_server()
    # httpd -X still switches to User: callgrind writes as www-data.
    os.mkdir(os.path.join(h.root, "cg"))
    shutil.chown(os.path.join(h.root, "cg"), "www-data", "www-data")
    out = os.path.join(h.root, "cg", "callgrind.out")
    open(out, "w").close()
    shutil.chown(out, "www-data", "www-data")
    h.proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]
        + ["--toggle-collect=" + f for f in collect] + ["apache2", "-X", "-f", h.conf],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for("httpd under valgrind", 180, lambda: _port_open(h.port))
        _drive(h, kind, n)
    finally:
        h.proc.send_signal(signal.SIGTERM)
        h.proc.wait(120)
    with open(out) as f:
        m = re.search(r"^(?:totals|summary):\s+(\d+)", f.read(), re.M)
    shutil.rmtree(h.root, ignore_errors=True)
    return int(m.group(1)) if m else 0


def _per_request(kinds, collect=(), requests=200, warmup=20):
    """Two runs per kind, of warmup and warmup+requests requests: the
    difference divided by `requests` leaves out one-time costs."""
    if not shutil.which("valgrind"):
        return None
    return {kind: (_callgrind_total(kind, warmup + requests, collect) - _callgrind_total(kind, warmup, collect))
            / requests for kind in kinds}


def instructions_per_request():
    """Instructions executed inside the module's hooks per request
    (rsession_fixups and the saving filter, inclusive), resumed and new."""
    return _per_request(("resumed", "new"), ("rsession_fixups", "*at_first_output*"))


def whole_request_instructions():
    """Instructions of the whole httpd process per request for a static
    file without a session, resumed and new: the module's share is the
    difference, wherever it is spent (hooks, config merging, filters, APR
    tables, allocator)."""
    return _per_request(tuple(PROFILE_KINDS))


def syscalls_per_request(requests=100):
    """System calls per request by name (strace -c on httpd -X, attached
    after a warm-up), for each of PROFILE_KINDS."""
    if not shutil.which("strace"):
        return None
    counts = {}
    for kind in PROFILE_KINDS:
        h = _profile_server()
        h.proc = subprocess.Popen(["apache2", "-X", "-f", h.conf], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        out = os.path.join(h.root, "strace.txt")
        try:
            wait_for("httpd -X", 60, lambda: _port_open(h.port))
            _drive(h, kind, 20)
            tracer = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(h.proc.pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # strace prints "attached" lines to stderr before it traces;
            # a few probe requests, not counted, make sure it is on.
            time.sleep(1)
            _drive(h, kind, requests)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
            calls = {}
            with open(out) as f:
                for line in f:
                    m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
                    if m and m.group(2) != "total":
                        calls[m.group(2)] = int(m.group(1)) / requests
            counts[kind] = calls
        finally:
            h.proc.send_signal(signal.SIGTERM)
            h.proc.wait(60)
            shutil.rmtree(h.root, ignore_errors=True)
    return counts


def store_floor(n=20000):
    """The file store's unavoidable system calls timed alone (bench/floor.c),
    in microseconds per resumed and per new session."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    work = tempfile.mkdtemp(prefix="rsession-floor-", dir=BENCH_DIR)
    try:
        exe = os.path.join(work, "floor")
        subprocess.run([cc, "-O2", "-o", exe, os.path.join(REPO, "bench/floor.c")], check=True)
        os.mkdir(os.path.join(work, "d"))
        out = subprocess.run([exe, os.path.join(work, "d"), str(n)], capture_output=True, text=True, check=True).stdout
        return {k: float(v) for k, v in re.findall(r"(\w+)_us ([\d.]+)", out)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def where_the_time_goes(rows, ir, calls, floor):
    """Markdown: what each kind of session request adds to the same request
    without a session, and the best ratio to static that the unavoidable
    part alone allows (the store's system calls; for Redis, Redis's CPU)."""
    by = {r["name"]: r for r in rows}
    plain = by.get("static file, no session, same server")
    same = by.get("static file, no session, same cookies")
    lua = by.get("mod_lua handler, no session")
    redis_row = by.get("rsession Redis store, resumed sessions, static file")
    # (heading, the row, its baseline row, its profile kind, the baseline's)
    cols = [
        ("resumed", by.get("rsession file store, resumed sessions, static file"), same, "resumed", "static"),
        ("new, writes a key (mod_lua)", by.get("rsession new session writing one key, mod_lua"), lua, "new", "lua"),
        ("cookieless, writes nothing (mod_lua)", by.get("rsession cookieless, handler writes nothing, mod_lua"), lua, "peek", "lua"),
        ("read+write (mod_lua)", by.get("rsession read+write via X-RSession, mod_lua, many sessions"), lua, "write", "lua"),
        ("Redis resumed", redis_row, same, "redis", None),
    ]
    out = ["| per request, added to the same request without a session | static file | "
           + " | ".join(c[0] for c in cols) + " |", "|---|---:|" + "---:|" * len(cols)]

    def row(label, first, cell):
        out.append("| %s | %s | %s |" % (label, first, " | ".join(cell(*c[1:]) for c in cols)))

    if plain and "cpu_us" in plain:
        def cpu(r, base, kind, base_kind):
            if not (r and base and "cpu_us" in r):
                return ""
            total = r["cpu_us"] + r.get("side_cpu_us", 0)
            return "%.1f (+%.1f)" % (total, total - base["cpu_us"])
        row("server CPU, µs (wrk runs above; Redis included)", "%.1f" % plain["cpu_us"], cpu)
    if ir:
        row("user-space instructions, whole httpd (callgrind)", "%.0f" % ir["static"],
            lambda r, b, kind, bk: "%.0f (+%.0f)" % (ir[kind], ir[kind] - ir[bk]) if kind in ir else "")
    if calls:
        def added(r, b, kind, bk):
            if kind not in calls:
                return ""
            extra = {k: v - calls[bk].get(k, 0) for k, v in calls[kind].items()}
            named = ", ".join("%s %+.0f" % (k, v) for k, v in sorted(extra.items(), key=lambda kv: -kv[1]) if round(v) != 0)
            return "%.0f: %s" % (sum(calls[kind].values()), named or "none")
        row("system calls (strace)", "%.0f" % sum(calls["static"].values()), added)
    unavoidable = dict(floor or {})
    if redis_row and "side_cpu_us" in redis_row:
        unavoidable["redis"] = redis_row["side_cpu_us"]
    if unavoidable:
        row("unavoidable, µs: the store's system calls alone (bench/floor.c); Redis's own CPU", "",
            lambda r, b, kind, bk: "%.1f" % unavoidable[kind] if kind in unavoidable else "")

        def best(r, base, kind, bk):
            if kind not in unavoidable or not base:
                return ""
            # The machine's CPU per baseline request (both cores, wrk
            # included); adding the unavoidable µs leaves at most this share
            # of the baseline's rate. Compared with "vs own baseline" above.
            machine = 2e6 / base["rps"]
            return "%.2f" % (machine / (machine + unavoidable[kind]))
        if rows:
            row("best ratio to its own baseline if the module cost only that", "", best)
    floors = {bound: by[f] for f, bound in FLOORS.items() if f in by}
    if floors:
        def measured(r, base, kind, bk):
            f = r and floors.get(r["name"])
            if not (f and base):
                return ""
            added = " (+%.1f µs)" % (f["cpu_us"] + f.get("side_cpu_us", 0) - base["cpu_us"]) if "cpu_us" in f else ""
            return "%.2f%s" % (f["rps"] / base["rps"], added)
        row("measured floor: a C module doing only that inside httpd (bench/floor_module.c), vs own baseline",
            "", measured)
        row("this row's rate over its floor's", "",
            lambda r, b, kind, bk: "%.2f" % (r["rps"] / floors[r["name"]]["rps"]) if r and r["name"] in floors else "")
    return "\n".join(out)


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=4, help="duration of one wrk run")
    p.add_argument("--runs", type=int, default=3, help="runs per scenario (the median is reported)")
    p.add_argument("--sweep", type=int, default=1000000, help="expired sessions in the sweep benchmark (0: skip)")
    p.add_argument("--sweep-files-every", type=int, default=UPLOAD_EVERY,
                   help="one scratch directory in this many holds a file")
    p.add_argument("--sweep-floor-threads", type=lambda v: [int(x) for x in v.split(",")], default=None,
                   help="thread counts of the C floor, e.g. 1,4 (default: 1, the sweeper's, %d)" % MAX_SWEEP_WORKERS)
    p.add_argument("--no-sweep-traffic", action="store_true",
                   help="skip the sweep under traffic (p50/p99 during a sweep)")
    p.add_argument("--sweep-restart", type=int, default=None,
                   help="expired sessions in the restart-during-a-sweep measurement (default: min(--sweep, 200000); 0: skip)")
    p.add_argument("--no-callgrind", action="store_true")
    p.add_argument("--no-scenarios", action="store_true", help="only the sweep and callgrind parts")
    p.add_argument("--no-profile", action="store_true", help="skip where-the-time-goes (strace, floor)")
    p.add_argument("--only", action="append", metavar="SUBSTRING",
                   help="run only the scenarios whose name holds SUBSTRING (any case; repeatable), with their"
                        " baselines; the sweep, callgrind and profile parts have their own switches")
    args = p.parse_args()
    if args.sweep_restart is None:
        args.sweep_restart = min(args.sweep, 200000)
    if not os.path.exists(MODULE):
        raise SystemExit("build first: make")
    started = time.time()
    rows = []
    if not args.no_scenarios:
        print("scenarios (wrk -t2 -c16, %d x %ds each):" % (args.runs, args.seconds), file=sys.stderr)
        rows = scenario_rows(args)
        print()
        print(table(rows))
    if args.sweep:
        print("sweep of %d expired sessions:" % args.sweep, file=sys.stderr, flush=True)
        s = sweep_benchmark(args)
        print()
        print(sweep_report(s))
    if not args.no_callgrind:
        ir = instructions_per_request()
        if ir:
            print()
            print("Instructions per request inside mod_rsession's hooks (callgrind): resumed %.0f, new %.0f."
                  % (ir["resumed"], ir["new"]))
    if not args.no_profile:
        print("profile (callgrind, strace, bench/floor.c) ...", file=sys.stderr, flush=True)
        whole = None if args.no_callgrind else whole_request_instructions()
        print()
        print("Where the time goes (callgrind and valgrind run without the CPU's SHA instructions,"
              " so HMAC counts higher there than it costs):")
        print()
        print(where_the_time_goes(rows, whole, syscalls_per_request(), store_floor()))
    print()
    print("Whole run: %.0f s." % (time.time() - started))


if __name__ == "__main__":
    main()
