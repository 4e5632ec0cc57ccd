#!/usr/bin/env python3
"""Committed config writes/s and p50/p99 latency: a 3-node gateway cluster (PUT /v1/pools/{name})
beside a 3-member etcd cluster (POST /v3/kv/put via its JSON gateway), same load tool (wrk + put.lua),
same concurrency, same duration, in one run. Each write creates a new name, so each is a real change.

Both sides are measured through the leader and through a follower, alternating systems so that
drift of this shared machine hits both alike. Run through bench/raft-writes.sh (installs wrk and
etcd, builds the gateway, cleans up); run directly only with the tools already in place.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clusters  # noqa: E402
from clusters import log  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def run_wrk(args, mode, address, prefix, seconds):
    cmd = [
        args.wrk, "-t", str(args.threads), "-c", str(args.connections), "-d", "%ds" % seconds,
        "--timeout", "10s", "-s", os.path.join(HERE, "put.lua"), "http://%s" % address,
    ]
    env = dict(os.environ, BENCH_MODE=mode, BENCH_RUN=prefix, BENCH_NAMES=str(args.names))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    pidfile = os.environ.get("BENCH_PIDFILE")
    if pidfile:
        with open(pidfile, "a") as f:
            f.write("%d\n" % p.pid)
    out, _ = p.communicate()
    m = re.search(r"^BENCH_RESULT (\{.*\})$", out, re.M)
    if p.returncode != 0 or not m:
        raise RuntimeError("wrk failed (exit %s):\n%s" % (p.returncode, out))
    r = json.loads(m.group(1))
    r["ok"] = r["requests"] - r["err_status"]
    r["seconds"] = r["duration_us"] / 1e6
    r["wps"] = r["ok"] / r["seconds"] if r["seconds"] else 0.0
    r["errors"] = r["err_status"] + r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
    return r


def probe_write(c, nid):
    """One write through node nid before the run, so that a wrong body or URL fails loudly."""
    method, path, body = c.write_request("probe-%d-%d" % (nid, int(time.time() * 1000)))
    st, data = clusters.http_request(c.client_addr(nid), method, path, body, timeout=10)
    if st != 200:
        raise RuntimeError("%s: probe write through node %d answered %d: %s" % (c.name, nid, st, data[:300]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=20, help="seconds per measured run (default 20)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured load before each run")
    ap.add_argument("--connections", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads (default 1; leaves the cores to the servers)")
    ap.add_argument("--names", type=int, default=0,
                    help="0 (default): every write creates a new name; N: cycle over N names per wrk thread "
                         "(each write still changes the value), to keep the stored state small")
    ap.add_argument("--systems", default="gateway,etcd", help="comma list of gateway,etcd")
    ap.add_argument("--gateway-bin", default=os.path.join(os.path.dirname(HERE), "target/release/gateway"))
    ap.add_argument("--workdir", required=True, help="fresh folder for data dirs and logs")
    ap.add_argument("--wrk", default="wrk")
    args = ap.parse_args()
    clusters.install_signal_handlers()
    systems = [s for s in args.systems.split(",") if s]
    args.wrk = clusters.which_or_die(args.wrk)

    ports = clusters.Ports()
    cl = {}
    try:
        for s in systems:
            root = os.path.join(args.workdir, s)
            if s == "gateway":
                cl[s] = clusters.GatewayCluster(args.gateway_bin, root, ports)
            elif s == "etcd":
                cl[s] = clusters.EtcdCluster(root, ports, etcd=clusters.which_or_die("etcd"),
                                             etcdctl=clusters.which_or_die("etcdctl"))
            else:
                raise SystemExit("unknown system %r" % s)
            log("starting 3-node %s cluster in %s" % (s, root))
            t0 = time.monotonic()
            cl[s].start()
            log("  %s ready in %.1f s, leader: node %s" % (s, time.monotonic() - t0, cl[s].leader_id()))

        results = []
        for via in ("leader", "follower"):
            for s in systems:
                c = cl[s]
                lid = c.leader_id()
                nid = lid if via == "leader" else min(i for i in c.nodes if i != lid)
                address = c.client_addr(nid)
                probe_write(c, nid)
                prefix = "%s%d" % (via[0], int(time.time()))
                if args.warmup:
                    run_wrk(args, s, address, "w" + prefix, args.warmup)
                rev_before = c.revision()
                log("%s via %s (node %d, %s): %d clients for %d s" % (s, via, nid, address, args.connections, args.duration))
                r = run_wrk(args, s, address, prefix, args.duration)
                lid_after = c.leader_id()
                rev_after = c.revision()
                committed = rev_after - rev_before if None not in (rev_before, rev_after) else None
                stored = c.count(prefix + "-") if args.names == 0 else None
                # wrk stops mid-flight: up to one write per connection may commit without being counted,
                # and the warm-up's own stragglers may still commit after rev_before was read
                slack = args.connections
                rev_slack = slack * (2 if args.warmup else 1)
                r["verified"] = committed is not None and r["ok"] <= committed <= r["ok"] + rev_slack and (
                    args.names != 0 or (stored is not None and r["ok"] <= stored <= r["ok"] + slack))
                r.update(system=s, via=via, node=nid, stored=stored, committed=committed,
                         leader_changed=(lid_after != lid))
                log("  %.0f writes/s, p50 %.2f ms, p99 %.2f ms, %d ok, %d errors, revision +%s, %s new names%s" % (
                    r["wps"], r["lat_p50_us"] / 1000, r["lat_p99_us"] / 1000, r["ok"], r["errors"], committed,
                    stored if stored is not None else "-", ", LEADER CHANGED" if r["leader_changed"] else ""))
                results.append(r)
    finally:
        clusters.stop_all()

    print()
    print("Raft config writes: 3 nodes each, %d concurrent clients (wrk -t%d -c%d), %d s per run, %s"
          % (args.connections, args.threads, args.connections, args.duration,
             "a new name per write" if args.names == 0 else "%d names per wrk thread, rewritten" % args.names))
    print()
    hdr = "| system | via | writes/s | p50 ms | p99 ms | max ms | errors | acked = committed? |"
    print(hdr)
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        what = "revision +%s" % r["committed"] + (", %s names stored" % r["stored"] if r["stored"] is not None else "")
        check = ("ok (%d acked, %s)" if r["verified"] else "MISMATCH: %d acked, %s") % (r["ok"], what)
        if r["leader_changed"]:
            check += ", leader changed"
        print("| %s | %s | %.0f | %.2f | %.2f | %.1f | %d | %s |" % (
            r["system"], r["via"], r["wps"], r["lat_p50_us"] / 1000, r["lat_p99_us"] / 1000,
            r["lat_max_us"] / 1000, r["errors"], check))
    by = {(r["system"], r["via"]): r for r in results}
    if "gateway" in systems and "etcd" in systems:
        print()
        print("| via | writes/s gateway/etcd | p50 gateway/etcd | p99 gateway/etcd | goal (>= 2x writes/s, lower p99) |")
        print("|---|---:|---:|---:|---|")
        for via in ("leader", "follower"):
            g, e = by[("gateway", via)], by[("etcd", via)]
            wr = g["wps"] / e["wps"] if e["wps"] else float("inf")
            p50 = g["lat_p50_us"] / e["lat_p50_us"] if e["lat_p50_us"] else float("inf")
            p99 = g["lat_p99_us"] / e["lat_p99_us"] if e["lat_p99_us"] else float("inf")
            met = wr >= 2.0 and p99 < 1.0 and g["verified"]
            print("| %s | %.2fx | %.2fx | %.2fx | %s |" % (via, wr, p50, p99, "met" if met else "NOT met"))
    print()
    print("RESULTS_JSON " + json.dumps(results))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        clusters.log("interrupted; stopped every process started")
        sys.exit(130)
