#!/usr/bin/env python3
"""Leader failover under write load: kill -9 the Raft leader while writers hammer every node, and
time from the kill until a write is acknowledged again through a survivor. Same procedure for a
3-node gateway cluster and a 3-member etcd cluster (etcd's default heartbeat 100 ms / election
1000 ms), in one run.

Per kill:
  1. wait until all 3 nodes are up, agree on one leader and have applied up to its commit index;
  2. start writers (W per node, each a closed loop of writes with a short client timeout, paced);
  3. after LOAD_BEFORE seconds of acknowledged writes, find the leader (gateway: GET /leader;
     etcd: `etcdctl endpoint status -w json`) and kill -9 it;
  4. recovery = time from the kill to the acknowledgement of the first write that was SENT after
     the killed process was reaped, through a survivor (so no write that the old leader could have
     committed counts); also logged: when a survivor first reports a new leader;
  5. stop the writers, restart the killed node on its data dir, wait until it has caught up.
Prints every kill and a table with median and max. Run through bench/failover.sh.
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clusters  # noqa: E402
from clusters import log  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class Writers:
    """W closed-loop writer threads per node; records acknowledged writes (send time, ack time)."""

    def __init__(self, cluster, tag, per_node, timeout, pace):
        self.c = cluster
        self.tag = tag
        self.timeout = timeout
        self.pace = pace
        self.stop = threading.Event()
        self.recovered = threading.Event()
        self.lock = threading.Lock()
        self.after = None  # writes sent at or after this monotonic time count for recovery
        self.killed = None
        self.first_ack = None  # (sent, acked, node)
        self.acks = {i: 0 for i in cluster.nodes}
        self.failures = {i: 0 for i in cluster.nodes}
        self.threads = [
            threading.Thread(target=self._run, args=(nid, w), daemon=True)
            for nid in cluster.nodes
            for w in range(per_node)
        ]

    def start(self):
        for t in self.threads:
            t.start()

    def arm(self, killed, after):
        with self.lock:
            self.killed = killed
            self.after = after

    def _run(self, nid, w):
        address = self.c.client_addr(nid)
        host, port = address.rsplit(":", 1)
        conn = None
        k = 0
        while not self.stop.is_set():
            k += 1
            method, path, body = self.c.write_request("%s-%d-%d-%d" % (self.tag, nid, w, k), k)
            sent = time.monotonic()
            ok = False
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
                conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            acked = time.monotonic()
            with self.lock:
                if ok:
                    self.acks[nid] += 1
                    if (self.after is not None and sent >= self.after and nid != self.killed
                            and self.first_ack is None):
                        self.first_ack = (sent, acked, nid)
                        self.recovered.set()
                else:
                    self.failures[nid] += 1
            # paced when fine, short back-off when not (no busy loop stealing the 2 cores)
            time.sleep(self.pace if ok else 0.005)
        if conn is not None:
            conn.close()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)


def watch_new_leader(c, killed, t_kill, out, stop):
    """Polls the survivors until one names a live leader other than the killed node."""
    survivors = [i for i in c.nodes if i != killed]
    while not stop.is_set():
        for i in survivors:
            lid = c.leader_seen_by(i, timeout=0.2)
            if lid is not None and lid != killed:
                out["leader_at"] = time.monotonic() - t_kill
                out["new_leader"] = lid
                return
        time.sleep(0.01)


def run_system(c, args):
    log("starting 3-node %s cluster in %s" % (c.name, c.root))
    c.start()
    rows = []
    for k in range(1, args.kills + 1):
        clusters.wait_until(c.stable, 120, "%s to be stable before kill %d" % (c.name, k), interval=0.1)
        tag = "fo%d-%d" % (k, int(time.time()))
        w = Writers(c, tag, args.writers_per_node, args.timeout, args.pace)
        w.start()
        try:
            time.sleep(args.load_before)
            if sum(w.acks.values()) == 0:
                clusters.wait_until(lambda: sum(w.acks.values()) > 0, 30, "%s to acknowledge writes" % c.name)
            leader = c.leader_id()
            if leader is None:
                raise RuntimeError("%s: no leader known before kill %d" % (c.name, k))
            acks_before = dict(w.acks)
            now = time.time()
            wall_kill = time.strftime("%H:%M:%S", time.gmtime(now)) + ".%03dZ" % (int(now * 1000) % 1000)
            t_kill, t_dead = c.kill(leader)
            w.arm(leader, t_dead)
            info, stop_watch = {}, threading.Event()
            watcher = threading.Thread(target=watch_new_leader, args=(c, leader, t_kill, info, stop_watch), daemon=True)
            watcher.start()
            recovered = w.recovered.wait(args.give_up)
            watcher.join(timeout=5)  # let it see the new leader if the write came first
            stop_watch.set()
            watcher.join(timeout=2)
        finally:
            w.finish()
        if recovered:
            sent, acked, via = w.first_ack
            rec = acked - t_kill
            row = dict(kill=k, at=wall_kill, killed=leader, recovery=rec, via=via, reap=t_dead - t_kill,
                       leader_at=info.get("leader_at"), new_leader=info.get("new_leader"),
                       acks_before=sum(acks_before.values()))
            log("  %s kill %2d at %s: leader %d killed, write acknowledged via node %d after %.3f s "
                "(new leader %s seen after %s)" % (
                    c.name, k, wall_kill, leader, via, rec, info.get("new_leader"),
                    "%.3f s" % info["leader_at"] if "leader_at" in info else "-"))
        else:
            row = dict(kill=k, at=wall_kill, killed=leader, recovery=None, via=None, reap=t_dead - t_kill,
                       leader_at=info.get("leader_at"), new_leader=info.get("new_leader"),
                       acks_before=sum(acks_before.values()))
            log("  %s kill %2d at %s: leader %d killed, NO write acknowledged within %.0f s" % (c.name, k, wall_kill, leader, args.give_up))
        rows.append(row)
        t0 = time.monotonic()
        c.restart(leader)
        c.wait_caught_up(leader, timeout=120)
        row["rejoin"] = time.monotonic() - t0
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10, help="leader kills per system (default 10)")
    ap.add_argument("--systems", default="gateway,etcd", help="comma list of gateway,etcd")
    ap.add_argument("--gateway-bin", default=os.path.join(os.path.dirname(HERE), "target/release/gateway"))
    ap.add_argument("--workdir", required=True, help="fresh folder for data dirs and logs")
    ap.add_argument("--timeout", type=float, default=0.2, help="client timeout per write, seconds (default 0.2)")
    ap.add_argument("--writers-per-node", type=int, default=3, help="writer threads per node (default 3)")
    ap.add_argument("--pace", type=float, default=0.01, help="pause after an acknowledged write, s (default 0.01)")
    ap.add_argument("--load-before", type=float, default=1.0, help="seconds of write load before each kill")
    ap.add_argument("--give-up", type=float, default=30.0, help="seconds after which a kill counts as not recovered")
    args = ap.parse_args()
    clusters.install_signal_handlers()
    systems = [s for s in args.systems.split(",") if s]

    ports = clusters.Ports()
    results = {}
    try:
        for s in systems:
            root = os.path.join(args.workdir, s)
            if s == "gateway":
                c = clusters.GatewayCluster(args.gateway_bin, root, ports)
            elif s == "etcd":
                c = clusters.EtcdCluster(root, ports, etcd=clusters.which_or_die("etcd"),
                                         etcdctl=clusters.which_or_die("etcdctl"))
            else:
                raise SystemExit("unknown system %r" % s)
            results[s] = run_system(c, args)
            clusters.stop_all()
    finally:
        clusters.stop_all()

    print()
    print("Leader failover under write load: 3 nodes, kill -9 of the leader x%d, writers %d/node, "
          "client timeout %.0f ms" % (args.kills, args.writers_per_node, args.timeout * 1000))
    print()
    print("| system | kills | recovered | median s | max s | min s | new leader seen, median s | rejoin+catch-up, median s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    med = {}
    for s, rows in results.items():
        recs = [r["recovery"] for r in rows if r["recovery"] is not None]
        lead = [r["leader_at"] for r in rows if r["leader_at"] is not None]
        rej = [r["rejoin"] for r in rows if r.get("rejoin") is not None]
        failed = len(rows) - len(recs)
        med[s] = statistics.median(recs) if recs else None
        worst = "inf (%d not recovered)" % failed if failed else "%.3f" % max(recs)
        print("| %s | %d | %d | %s | %s | %s | %s | %s |" % (
            s, len(rows), len(recs), "%.3f" % med[s] if recs else "-", worst,
            "%.3f" % min(recs) if recs else "-", "%.3f" % statistics.median(lead) if lead else "-",
            "%.2f" % statistics.median(rej) if rej else "-"))
    if med.get("gateway") is not None and med.get("etcd"):
        print()
        print("median recovery gateway/etcd: %.2fx; goal gateway median < 0.5 s: %s" % (
            med["gateway"] / med["etcd"], "met" if med["gateway"] < 0.5 else "NOT met"))
    print()
    print("RESULTS_JSON " + json.dumps(results))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        clusters.log("interrupted; stopped every process started")
        sys.exit(130)
