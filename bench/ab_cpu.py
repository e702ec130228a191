#!/usr/bin/env python3
"""A/B of the read+write and cookieless rows' server CPU, split into user and
system time, for one or more builds of the module.

    python3 bench/ab_cpu.py [--rounds N] [--seconds S] MODULE.so [MODULE.so ...]

Each round starts, for each build in turn, the bench's mod_lua server
(bench.py's LUA_SERVER with its floor module) and runs wrk against the
handler without a session, the read+write row (256 sessions), its floor, the
cookieless row and its floor, reading the user and system CPU of the
server's processes (/proc/<pid>/stat) around each run. Prints the medians
per request and what each row adds over the handler. Rounds alternate the
builds, so a machine whose speed drifts over minutes still compares them
fairly; differences under the spread of the rounds are not differences.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

ROWS = (
    ("handler", "/lua/plain", True),
    ("read+write", "/lua/session", True),
    ("floor read+write", "/lua/floor-rw", True),
    ("cookieless", "/lua/peek", False),
    ("floor cookieless", "/lua/floor-scratch", False),
)


def one_round(module, floor, seconds):
    bench.MODULE = module
    h = bench.Httpd(bench.LUA_SERVER + "\nRSessionStore file:{ROOT}/store\nRSessionScratchRoot {SCRATCH}\n"
                    + bench.FLOOR_LUA % floor, modules=["lua"])
    bench.write(h.root, "handler.lua", bench.LUA_HANDLER)
    bench.floor_tree(os.path.join(h.root, "floor"), h.scratch + "-floor")
    h.start()
    out = {}
    try:
        cookies = h.cookies_from("/lua/session", 256)
        bench.wrk(h.url("/lua/session"), 1, cookies=cookies)
        for name, path, with_cookies in ROWS:
            before = bench.process_group_cpu_split(h.proc.pid)
            run = bench.wrk(h.url(path), seconds, cookies=cookies if with_cookies else None)
            after = bench.process_group_cpu_split(h.proc.pid)
            n = run["requests"]
            out[name] = tuple((a - b) / n * 1e6 for a, b in zip(after, before))
    finally:
        h.stop()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("modules", nargs="+")
    args = p.parse_args()
    floor = bench.floor_module()
    if not floor:
        sys.exit("no C compiler or apxs: the floor module cannot be built")
    results = {m: [] for m in args.modules}
    for i in range(args.rounds):
        for m in args.modules:
            results[m].append(one_round(m, floor, args.seconds))
            print("round %d done: %s" % (i + 1, m), file=sys.stderr, flush=True)
    for m in args.modules:
        print("\n%s (%d rounds, µs per request, medians)" % (m, args.rounds))
        print("  %-18s %7s %7s %7s   %s" % ("row", "user", "system", "total", "added over the handler (user/system)"))
        base = results[m]
        for name, _, _ in ROWS:
            user = statistics.median(r[name][0] for r in base)
            system = statistics.median(r[name][1] for r in base)
            added = [(r[name][0] - r["handler"][0], r[name][1] - r["handler"][1]) for r in base]
            print("  %-18s %7.1f %7.1f %7.1f   %s" % (
                name, user, system, user + system,
                " ".join("%+.1f/%+.1f" % a for a in added) if name != "handler" else ""))


if __name__ == "__main__":
    main()
