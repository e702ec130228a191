#!/usr/bin/env python3
"""make soak: a bounded soak of mod_rsession, file store then Redis.

Each store gets half of SOAK_SECONDS (default 600). A private httpd (event
MPM, two children, MaxConnectionsPerChild 0) serves mixed traffic from wrk:
resumed sessions on a static file, new sessions, read+write through a
mod_lua handler, regenerate and invalidate. Meanwhile counter clients
increment one shared session and remember what was acknowledged. Faults are
injected in the first quarter of each run (SIGKILL of a child, graceful
restarts); the rest runs without faults, and the children alive at the end
are measured over the last 45% (the time between is their warm-up). Prints a Markdown table; exits 1 when a
goal is missed (lost updates, non-2xx outside faults, RSS slope of 100 KiB
or more per 100k requests, crashes other than the injected kills); the
slope is judged only over 500k requests or more (SOAK_SECONDS=600 gets
there; a short run measures the allocator's warm-up).

The handler runs under `LuaScope server`: httpd 2.4's mod_lua leaves each
handler's return value on the stack of a Lua state it keeps (LuaScope
thread or conn), which grows the child without bound, with or without
mod_rsession (BENCHMARKS.md, Memory).

Also: SOAK_STORES=file or Redis (default both), SOAK_WRK_CONNS (16),
SOAK_DEBUG=1 (faults, errors and samples on stderr as they happen).
"""
import http.client
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import bench

SLOPE_GOAL_KIB = 100
# Fewer requests after the warm-up than this: the slope is shown, not judged.
SLOPE_MIN_REQUESTS = 500000
LOCK_TTL = 5
COUNTER_CLIENTS = 3
# After a fault, responses this long after it ended still count as its own
# (a killed child's Redis locks free themselves after LOCK_TTL).
SETTLE = LOCK_TTL + 3

HANDLER = """
-- ?inc adds one to n and answers the new value; ?read answers n;
-- ?regenerate and ?invalidate pass the command to mod_rsession.
function handle(r)
  local data = '&' .. (r.subprocess_env['RSESSION_DATA'] or '')
  local n = tonumber(string.match(data, '&n=(%d+)') or '0')
  local op = r.args or 'read'
  if op == 'inc' then
    n = n + 1
    r.headers_out['X-RSession'] = 'set n=' .. n
  elseif op == 'regenerate' or op == 'invalidate' then
    r.headers_out['X-RSession'] = op
  end
  r.content_type = 'text/plain'
  r:puts(n .. '\\n')
  return apache2.OK
end
"""

# Out of every 20 requests: 8 resumed static, 1 new session, 7 read+write
# on 64 shared sessions, 2 regenerate, 1 invalidate, 1 read, the last four
# on the thread's own session (whatever cookie it was given last).
MIX_LUA = """
local cookies = {%s}
threads = {}
function setup(thread) table.insert(threads, thread) end
statuses = {}
local n = 0
local mine = nil
function init(args) n = math.random(1, 1000) end
local function own(path)
  if mine then return wrk.format(nil, path, {["Cookie"] = mine}) end
  return wrk.format(nil, path)
end
function request()
  n = n + 1
  local k = n %% 20
  local c = cookies[(n %% #cookies) + 1]
  if k < 8 then return wrk.format(nil, "/s/index.html", {["Cookie"] = c}) end
  if k < 9 then return wrk.format(nil, "/s/index.html") end
  if k < 16 then return wrk.format(nil, "/lua/h?inc", {["Cookie"] = c}) end
  if k < 18 then return own("/lua/h?regenerate") end
  if k < 19 then return own("/lua/h?invalidate") end
  return own("/lua/h?read")
end
function response(status, headers, body)
  local key = os.time() .. " " .. status
  statuses[key] = (statuses[key] or 0) + 1
  local set = headers["Set-Cookie"]
  if set then
    if string.find(set, "Max-Age=0", 1, true) then mine = nil
    else mine = string.match(set, "^([^;]+)") end
  end
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for key, count in pairs(t:get("statuses")) do
      io.write("STATUS " .. key .. " " .. count .. "\\n")
    end
  end
end
"""


def conf(store):
    # 25 threads per child: with fewer, the event MPM is over its connection
    # limit under this load and closes keep-alive connections between
    # requests, which clients see as resets having nothing to do with faults.
    return """
StartServers 2
ServerLimit 4
ThreadsPerChild 25
MaxRequestWorkers 50
MinSpareThreads 1
MaxSpareThreads 50
MaxConnectionsPerChild 0
GracefulShutdownTimeout 15
RSessionStore %s
RSessionScratchRoot {ROOT}/scratch
RSessionTimeout 20
RSessionTouchInterval 5
RSessionGCInterval 5
RSessionLockTTL %d
RSessionLockTimeout 10
LuaScope server 1 25
LuaMapHandler ^/lua/h$ {ROOT}/soak.lua handle
Alias /s/ {ROOT}/htdocs/
<LocationMatch "^/(s|lua)/">
  RSession On
</LocationMatch>
""" % (store, LOCK_TTL)


def proc_field(pid, n):
    """Field n (0-based, after the command) of /proc/pid/stat."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[n])
    except (OSError, ValueError, IndexError):
        return None


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


class Server:
    def __init__(self, store):
        self.h = bench.Httpd(conf(store), modules=["alias", "lua"])
        bench.write(self.h.root, "soak.lua", HANDLER)
        self.h.start()
        self.pid = self.h.proc.pid
        self.killed = set()

    def ready_count(self):
        return self.h.log().count("resuming normal operations")

    def children(self):
        """Worker children (threaded, so more than one thread)."""
        out = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                pid = int(name)
                if proc_field(pid, 1) == self.pid and (proc_field(pid, 17) or 0) > 1:
                    out.append(pid)
        return sorted(out)

    def graceful(self):
        """SIGUSR1; returns once the new generation is ready."""
        before = self.ready_count()
        os.kill(self.pid, signal.SIGUSR1)
        bench.wait_for("graceful restart", 60, lambda: self.ready_count() > before)

    def kill_child(self):
        kids = self.children()
        if kids:
            victim = kids[-1]
            os.kill(victim, signal.SIGKILL)
            self.killed.add(victim)
            # The parent notices and starts a replacement.
            bench.wait_for("a replacement child", 30,
                           lambda: victim not in self.children() and len(self.children()) >= len(kids))

    def unexpected_crashes(self):
        out = []
        for line in self.h.log().splitlines():
            m = re.search(r"child pid (\d+) exit signal (\w+)", line)
            if m and not (int(m.group(1)) in self.killed and m.group(2) == "Killed"):
                out.append(line)
            elif "panicked" in line or "RS0100" in line:
                out.append(line)
        return out

    def stop(self):
        """graceful-stop (SIGWINCH), bounded by GracefulShutdownTimeout."""
        proc = self.h.proc
        if proc.poll() is None:
            os.kill(self.pid, signal.SIGWINCH)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.h.root, ignore_errors=True)


class Faults:
    """Windows [start, end] of injected faults, by kind."""

    def __init__(self):
        self.windows = []

    def run(self, kind, action):
        start = time.time()
        action()
        self.windows.append((kind, start, time.time() + SETTLE))
        if os.environ.get("SOAK_DEBUG"):
            print("  %s %s (took %.1f s)" % (time.strftime("%H:%M:%S", time.localtime(start)), kind,
                                             time.time() - start), file=sys.stderr)

    def during(self, t):
        return any(start - 1 <= t <= end for _, start, end in self.windows)


class Counter:
    """Clients incrementing one shared session. Every 200 answers the new
    value; each acknowledged increment must be in the final value. A
    request that got no answer may or may not have counted (ambiguous)."""

    def __init__(self, port, cookie):
        self.port, self.cookie = port, cookie
        self.lock = threading.Lock()
        self.acked = []
        self.ambiguous = 0
        self.answers = []  # (time, status)
        self.base = 0
        self.stop = threading.Event()

    def client(self):
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("GET", "/lua/h?inc", headers={"Cookie": self.cookie})
                resp = conn.getresponse()
                body = resp.read()
                with self.lock:
                    self.answers.append((time.time(), resp.status))
                    if resp.status == 200:
                        self.acked.append(int(body))
            except (OSError, http.client.HTTPException, ValueError) as e:
                with self.lock:
                    self.ambiguous += 1
                    self.answers.append((time.time(), type(e).__name__))
                if conn:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn:
            conn.close()

    def final(self):
        for _ in range(50):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("GET", "/lua/h?read", headers={"Cookie": self.cookie})
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                if resp.status == 200:
                    return int(body)
            except (OSError, http.client.HTTPException, ValueError):
                pass
            time.sleep(0.2)
        return None


def wrk_chunk(url, seconds, script):
    out = subprocess.run(["wrk", "-t2", "-c%d" % int(os.environ.get("SOAK_WRK_CONNS", "16")), "-d%ds" % seconds, "-s", script, url],
                         capture_output=True, text=True, timeout=seconds + 60).stdout
    buckets = {}
    for sec, status, count in re.findall(r"^STATUS (\d+) (\d+) (\d+)$", out, re.M):
        key = (int(sec), int(status))
        buckets[key] = buckets.get(key, 0) + int(count)
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(x) for x in m.groups()) if m else 0
    if socket_errors and os.environ.get("SOAK_DEBUG"):
        print("  %s wrk %s" % (time.strftime("%H:%M:%S"), m.group(0)), file=sys.stderr)
    return buckets, socket_errors


def slope_per_100k(points):
    """Least-squares slope of (requests, KiB), in KiB per 100k requests."""
    if len(points) < 3:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 1e5


def soak(store_name, store, seconds):
    print("== %s store, %d s" % (store_name, seconds), file=sys.stderr, flush=True)
    s = Server(store)
    faults = Faults()
    samples = []  # (time, {pid: (rss, fds)}, parent rss, parent fds)
    sampling = threading.Event()

    def sampler():
        while not sampling.is_set():
            kids = s.children()
            samples.append((time.time(), {k: (rss_kib(k), fd_count(k)) for k in kids},
                            rss_kib(s.pid), fd_count(s.pid)))
            sampling.wait(1)

    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    counter = None
    try:
        # Made by a write, so that a store that keeps only written
        # sessions keeps them too.
        cookies = s.h.cookies_from("/lua/h?inc", 65)
        counter = Counter(s.h.port, cookies.pop())
        counter.base = counter.final()
        script.write(MIX_LUA % ", ".join('"%s"' % c for c in cookies))
        script.close()
        started = time.time()
        threads = [threading.Thread(target=sampler, daemon=True)]
        threads += [threading.Thread(target=counter.client, daemon=True) for _ in range(COUNTER_CLIENTS)]
        for t in threads:
            t.start()
        schedule = [(0.05, "SIGKILL a child", s.kill_child), (0.10, "graceful restart", s.graceful),
                    (0.15, "SIGKILL a child", s.kill_child), (0.20, "graceful restart", s.graceful),
                    (0.25, "SIGKILL a child", s.kill_child)]

        def injector():
            for at, kind, action in schedule:
                delay = started + at * seconds - time.time()
                if delay > 0 and sampling.wait(delay):
                    return
                faults.run(kind, action)
        inj = threading.Thread(target=injector, daemon=True)
        inj.start()
        chunk = max(2, min(5, seconds // 30))
        buckets, chunks = {}, []
        while time.time() - started < seconds:
            t0 = time.time()
            b, errors = wrk_chunk(s.h.url("/s/index.html"), chunk, script.name)
            for k, v in b.items():
                buckets[k] = buckets.get(k, 0) + v
            chunks.append((t0, time.time(), errors))
        counter.stop.set()
        inj.join(120)
        for t in threads[1:]:
            t.join(60)
        sampling.set()
        threads[0].join(10)
        final = counter.final()
        crashes = s.unexpected_crashes()
    finally:
        sampling.set()
        if counter:
            counter.stop.set()
        os.unlink(script.name)
        print("   stopping and removing the server's files ...", file=sys.stderr, flush=True)
        s.stop()
    return report(store_name, seconds, started, buckets, chunks, counter, final, faults, samples, crashes)


def report(name, seconds, started, buckets, chunks, counter, final, faults, samples, crashes):
    # Responses per second (wrk and counter clients), for requests served by
    # a given time and for sorting into fault windows.
    per_sec = {}
    outside, inside = {}, {}
    for (sec, status), count in buckets.items():
        per_sec[sec] = per_sec.get(sec, 0) + count
        into = inside if faults.during(sec + 0.5) else outside
        into[status] = into.get(status, 0) + count
    for t, status in counter.answers:
        if os.environ.get("SOAK_DEBUG") and status != 200:
            print("  counter %s at %s%s" % (status, time.strftime("%H:%M:%S", time.localtime(t)),
                                           "" if faults.during(t) else " OUTSIDE"), file=sys.stderr)
        sec = int(t)
        per_sec[sec] = per_sec.get(sec, 0) + 1
        into = inside if faults.during(t) else outside
        into[status] = into.get(status, 0) + 1
    socket_in = sum(e for a, b, e in chunks if any(a - 1 <= end and start <= b for _, start, end in faults.windows))
    socket_out = sum(e for _, _, e in chunks) - socket_in
    secs = sorted(per_sec)
    cumulative, total = {}, 0
    for sec in range(secs[0], secs[-1] + 1) if secs else []:
        total += per_sec.get(sec, 0)
        cumulative[sec] = total

    def served_by(t):
        sec = int(t)
        return cumulative.get(sec - 1, 0) + per_sec.get(sec, 0) * (t - sec)

    # The final generation: children alive at the last sample, measured
    # after the faults and a warm-up (from 55% of the run on).
    last_fault = max((end for _, _, end in faults.windows), default=started)
    warm_from = max(started + 0.55 * seconds, last_fault)
    final_kids = set(samples[-1][1]) if samples else set()
    steady = [smp for smp in samples if smp[0] >= warm_from and set(smp[1]) == final_kids]
    points = [(served_by(t), sum(v[0] or 0 for v in kids.values())) for t, kids, _, _ in steady]
    slope = slope_per_100k(points)
    if os.environ.get("SOAK_DEBUG"):
        for (t, kids, _, _), (served, rss) in zip(steady, points):
            print("  %s %9d requests  RSS %s  descriptors %s" % (
                time.strftime("%H:%M:%S", time.localtime(t)), served,
                [v[0] for v in kids.values()], [v[1] for v in kids.values()]), file=sys.stderr)
    fds = [[v[1] for v in kids.values()] for _, kids, _, _ in steady]
    acked = len(counter.acked)
    counted = None if final is None or counter.base is None else final - counter.base
    lost = None if counted is None else max(0, acked - counted)
    duplicates = acked - len(set(counter.acked))
    extra = None if counted is None else max(0, counted - acked - counter.ambiguous)
    non2xx = {k: v for k, v in outside.items() if not (isinstance(k, int) and 200 <= k < 300)}
    fault_non2xx = {k: v for k, v in inside.items() if not (isinstance(k, int) and 200 <= k < 300)}
    kinds = {}
    for kind, _, _ in faults.windows:
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "store": name,
        "seconds": seconds,
        "requests": total,
        "faults": ", ".join("%d x %s" % (n, k) for k, n in kinds.items()),
        "non2xx": non2xx,
        "socket_out": socket_out,
        "fault_responses": sum(inside.values()),
        "fault_non2xx": fault_non2xx,
        "socket_in": socket_in,
        "acked": acked,
        "ambiguous": counter.ambiguous,
        "final": final,
        "base": counter.base,
        "lost": lost,
        "duplicates": duplicates,
        "extra": extra,
        "slope": slope,
        "steady_requests": points[-1][0] - points[0][0] if len(points) > 1 else 0,
        "rss_from_to": (points[0][1], points[-1][1]) if points else None,
        "children": len(final_kids),
        "fds_from_to": (fds[0], fds[-1]) if fds else None,
        "fds_max": max((max(f) for f in fds if f), default=None),
        "parent": ((samples[0][2], samples[0][3]), (samples[-1][2], samples[-1][3])) if samples else None,
        "crashes": crashes,
    }


def by_status(d):
    if not d:
        return "0"
    return "%d (%s)" % (sum(d.values()), ", ".join("%s: %d" % (k, v) for k, v in sorted(d.items(), key=str)))


def table(results):
    rows = [
        ("run", lambda r: "%d s; faults in the first quarter: %s" % (r["seconds"], r["faults"])),
        ("requests (wrk mix + counter clients)", lambda r: "%d" % r["requests"]),
        ("non-2xx outside faults, by status", lambda r: by_status(r["non2xx"])),
        ("socket errors outside faults", lambda r: "%d" % r["socket_out"]),
        ("during faults: responses; non-2xx by status; socket errors",
         lambda r: "%d; %s; %d" % (r["fault_responses"], by_status(r["fault_non2xx"]), r["socket_in"])),
        ("counter: increments acknowledged / stored (no answer, may or may not count)",
         lambda r: "%d / %s (%d)" % (r["acked"], r["final"] - r["base"] if r["final"] is not None else None,
                                     r["ambiguous"])),
        ("lost updates (acknowledged, not in the final value; duplicate values)",
         lambda r: "%s; %d" % (r["lost"], r["duplicates"])),
        ("RSS slope after warm-up, all children of the last generation, KiB per 100k requests",
         lambda r: "%.1f over %d requests" % (r["slope"], r["steady_requests"]) if r["slope"] is not None else "n/a"),
        ("RSS of those children, KiB (warm-up end → end)",
         lambda r: "%d → %d (%d children)" % (r["rss_from_to"] + (r["children"],)) if r["rss_from_to"] else "n/a"),
        ("open descriptors per child (warm-up end → end; max)",
         lambda r: "%s → %s; %s" % (r["fds_from_to"] + (r["fds_max"],)) if r["fds_from_to"] else "n/a"),
        ("parent RSS KiB / descriptors (start → end)",
         lambda r: "%d / %d → %d / %d" % (r["parent"][0] + r["parent"][1]) if r["parent"] else "n/a"),
        ("crashes other than the injected kills", lambda r: "%d" % len(r["crashes"])),
    ]
    out = ["| | " + " | ".join(r["store"] for r in results) + " |", "|---|" + "---|" * len(results)]
    for label, cell in rows:
        out.append("| %s | %s |" % (label, " | ".join(cell(r) for r in results)))
    return "\n".join(out)


def missed_goals(r):
    missed = []
    if r["lost"] is None:
        missed.append("the counter's final value could not be read")
    elif r["lost"] or r["duplicates"]:
        missed.append("%s lost updates, %d duplicate counter values" % (r["lost"], r["duplicates"]))
    if r["extra"]:
        missed.append("%d increments counted that were never sent" % r["extra"])
    if r["non2xx"] or r["socket_out"]:
        missed.append("non-2xx or socket errors outside faults")
    if r["slope"] is None or r["steady_requests"] < SLOPE_MIN_REQUESTS:
        # A short run measures the allocator's warm-up, not a trend.
        print("note (%s): RSS slope over %d requests only; not judged below %d (run longer)"
              % (r["store"], r["steady_requests"], SLOPE_MIN_REQUESTS))
    elif r["slope"] >= SLOPE_GOAL_KIB:
        missed.append("RSS slope %.1f KiB per 100k requests" % r["slope"])
    if r["crashes"]:
        missed.append("crashes: " + "; ".join(r["crashes"][:3]))
    return missed


def main():
    seconds = int(os.environ.get("SOAK_SECONDS", "600"))
    if not os.path.exists(bench.MODULE):
        raise SystemExit("build first: make")
    for tool in ("wrk", "apache2"):
        if not shutil.which(tool):
            raise SystemExit("%s not found: make deps" % tool)
    only = os.environ.get("SOAK_STORES", "file,Redis").split(",")
    stores = [("file", "file:{ROOT}/store")] if "file" in only else []
    redis = None
    if "Redis" not in only:
        pass
    elif shutil.which("redis-server"):
        port = bench.free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        bench.wait_for("redis", 20, lambda: bench._redis_ping(port))
        stores.append(("Redis", "redis://127.0.0.1:%d/0?prefix=soak:" % port))
    else:
        print("(redis-server not installed: the Redis store is skipped)", file=sys.stderr)
    try:
        results = [soak(name, store, seconds // len(stores)) for name, store in stores]
    finally:
        if redis:
            redis.terminate()
            redis.wait()
    print(table(results))
    missed = [(r["store"], m) for r in results for m in missed_goals(r)]
    print()
    if missed:
        for store, m in missed:
            print("goal missed (%s): %s" % (store, m))
        sys.exit(1)
    print("Goals met: 0 lost updates, 0 non-2xx outside faults, RSS slope under %d KiB per 100k requests"
          " (where judged)." % SLOPE_GOAL_KIB)


if __name__ == "__main__":
    main()
