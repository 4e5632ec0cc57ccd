"""Start, inspect, kill and restart 3-node clusters of the gateway and of etcd for the benchmarks.

Python 3 standard library only. Everything listens on and talks to 127.0.0.1 only. Every process
started here is recorded (Popen handle, and its pid appended to $BENCH_PIDFILE when set, so the
calling shell script's trap can clean up even if this interpreter dies) and `stop_all()` ends them.
"""

import base64
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

LOOPBACK = "127.0.0.1"

_procs = []  # every Popen this module started


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


def spawn(args, log_path):
    """Start a process with stdout/stderr appended to log_path; remember it for stop_all()."""
    logf = open(log_path, "ab")
    logf.write(("\n==== %s %s\n" % (time.strftime("%H:%M:%S"), " ".join(args))).encode())
    logf.flush()
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
    logf.close()
    _procs.append(p)
    pidfile = os.environ.get("BENCH_PIDFILE")
    if pidfile:
        with open(pidfile, "a") as f:
            f.write("%d\n" % p.pid)
    return p


def stop_all(grace=3.0):
    """End every process this module started: SIGTERM, then SIGKILL after `grace` seconds."""
    alive = [p for p in _procs if p.poll() is None]
    for p in alive:
        try:
            p.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for p in alive:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    _procs.clear()


def install_signal_handlers():
    """SIGTERM (sent by the shell script's trap) and SIGHUP unwind through `finally` blocks."""

    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)
    # The shell runs us in the background, where SIGINT is ignored; restore it for direct runs.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def tail(path, lines=30):
    try:
        with open(path, "rb") as f:
            data = f.read().decode(errors="replace").splitlines()
        return "\n".join(data[-lines:])
    except OSError as e:
        return "(no log: %s)" % e


# ---------------------------------------------------------------- ports, http, waiting


class Ports:
    """Hands out free TCP ports on 127.0.0.1, below the ephemeral range so that client sockets
    never take the port of a node that is down between a kill and its restart."""

    def __init__(self, base=None):
        self.next = int(base or os.environ.get("BENCH_PORT_BASE", "21000"))

    def take(self):
        while self.next < 32000:
            port = self.next
            self.next += 1
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((LOOPBACK, port))
                except OSError:
                    continue
            return port
        raise RuntimeError("no free port below 32000 on 127.0.0.1")


def addr(port):
    return "%s:%d" % (LOOPBACK, port)


def http_request(address, method, path, body=None, timeout=2.0, headers=None):
    """One HTTP request on a fresh connection. Returns (status, body bytes); raises OSError or
    http.client.HTTPException when the server cannot be reached or answers garbage."""
    host, port = address.rsplit(":", 1)
    assert host == LOOPBACK, "benchmarks only ever talk to 127.0.0.1"
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_json(address, method, path, body=None, timeout=2.0):
    """(status, parsed JSON or None); (None, None) when unreachable."""
    try:
        status, data = http_request(address, method, path, body, timeout)
    except (OSError, http.client.HTTPException):
        return None, None
    try:
        return status, json.loads(data)
    except ValueError:
        return status, None


def wait_until(cond, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def b64(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def pool_body(name, n=1):
    """The pool written by every benchmark (same bytes stored on both sides)."""
    return '{"name":"%s","balance":"round_robin","backends":[{"id":"a","address":"127.0.0.1:%d","weight":1}]}' % (
        name,
        10000 + n % 50000,
    )


# ---------------------------------------------------------------- gateway


class GatewayNode:
    def __init__(self, nid, root, ports):
        self.id = nid
        self.data_dir = os.path.join(root, "gw%d" % nid)
        self.cluster_addr = addr(ports.take())
        self.admin_addr = addr(ports.take())
        self.http_addr = addr(ports.take())
        self.log = os.path.join(root, "gw%d.log" % nid)
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class GatewayCluster:
    """3 `gateway` processes forming one Raft group (CLI and REST API of notes/CONTRACT.md)."""

    name = "gateway"

    def __init__(self, binary, root, ports, size=3):
        self.binary = binary
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.secret_file = os.path.join(root, "cluster-secret")
        with open(self.secret_file, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        os.chmod(self.secret_file, 0o600)
        self.nodes = {i: GatewayNode(i, root, ports) for i in range(1, size + 1)}

    # -- lifecycle

    def _check_started(self, n):
        if not n.alive():
            raise RuntimeError("gateway node %d exited (code %s); log %s:\n%s" % (n.id, n.proc.returncode, n.log, tail(n.log)))

    def start(self, timeout=60):
        first = self.nodes[1]
        first.proc = spawn(
            [self.binary, "serve", "--id", "1", "--data-dir", first.data_dir, "--cluster-addr", first.cluster_addr,
             "--admin-addr", first.admin_addr, "--http-addr", first.http_addr, "--init",
             "--cluster-secret-file", self.secret_file],
            first.log,
        )

        def first_leads():
            self._check_started(first)
            st, j = http_json(first.admin_addr, "GET", "/leader", timeout=1)
            return st == 200 and j and j.get("id") == 1

        wait_until(first_leads, timeout, "gateway node 1 to lead its one-node cluster")
        for nid in sorted(self.nodes)[1:]:
            n = self.nodes[nid]
            n.proc = spawn(
                [self.binary, "join", "--id", str(nid), "--peers", first.cluster_addr, "--data-dir", n.data_dir,
                 "--cluster-addr", n.cluster_addr, "--admin-addr", n.admin_addr, "--http-addr", n.http_addr,
                 "--cluster-secret-file", self.secret_file],
                n.log,
            )

            def joined(n=n):
                self._check_started(n)
                st = self.status(self.leader_id() or 1)
                voters = {v.get("id") for v in (st or {}).get("voters", [])}
                return n.id in voters and self.ready(n.id)

            wait_until(joined, timeout, "gateway node %d to join as a voter" % nid)
        wait_until(lambda: all(self.ready(i) for i in self.nodes), timeout, "every gateway node to be ready")

    def kill(self, nid):
        """kill -9; returns (time of the kill, time the process was reaped)."""
        p = self.nodes[nid].proc
        t_kill = time.monotonic()
        p.send_signal(signal.SIGKILL)
        p.wait()
        return t_kill, time.monotonic()

    def restart(self, nid):
        n = self.nodes[nid]
        n.proc = spawn([self.binary, "serve", "--data-dir", n.data_dir], n.log)

    # -- inspection

    def live(self):
        return [i for i, n in self.nodes.items() if n.alive()]

    def status(self, nid, timeout=1.0):
        st, j = http_json(self.nodes[nid].admin_addr, "GET", "/status", timeout=timeout)
        return j if st == 200 else None

    def ready(self, nid):
        try:
            st, _ = http_request(self.nodes[nid].admin_addr, "GET", "/readyz", timeout=1.0)
        except (OSError, http.client.HTTPException):
            return False
        return st == 200

    def leader_seen_by(self, nid, timeout=0.5):
        st, j = http_json(self.nodes[nid].admin_addr, "GET", "/leader", timeout=timeout)
        return j.get("id") if st == 200 and j else None

    def leader_id(self):
        """The leader as reported by GET /leader on the live nodes (None if none knows one)."""
        for nid in self.live():
            lid = self.leader_seen_by(nid)
            if lid is not None:
                return lid
        return None

    def stable(self):
        """All nodes up, ready, agreeing on one live leader, and applied up to the leader's commit."""
        if len(self.live()) != len(self.nodes):
            return False
        leaders = {self.leader_seen_by(i) for i in self.nodes}
        if len(leaders) != 1 or None in leaders:
            return False
        (lid,) = leaders
        lst = self.status(lid)
        if not lst or lst.get("role") != "leader":
            return False
        commit = lst.get("committed_index") or 0
        for i in self.nodes:
            st = self.status(i)
            if not st or (st.get("applied_index") or 0) < commit or not self.ready(i):
                return False
        return True

    def wait_caught_up(self, nid, timeout=60):
        n = self.nodes[nid]

        def ok():
            self._check_started(n)
            return self.stable()

        wait_until(ok, timeout, "gateway node %d to rejoin and catch up" % nid, interval=0.1)

    def describe_leader(self):
        lid = self.leader_id()
        return "node %s" % lid

    # -- writes

    def client_addr(self, nid):
        return self.nodes[nid].admin_addr

    def write_request(self, name, n=1):
        """(method, path, body) of one write that creates pool `name`."""
        return "PUT", "/v1/pools/" + name, pool_body(name, n)

    def count(self, prefix):
        lid = self.leader_id()
        st, j = http_json(self.nodes[lid].admin_addr, "GET", "/v1/pools", timeout=30)
        if st != 200 or not j:
            return None
        return sum(1 for p in j.get("pools", []) if p.get("name", "").startswith(prefix))

    def revision(self):
        """Committed config revision (X-Gateway-Revision of a linearizable read on the leader)."""
        lid = self.leader_id()
        host, port = self.nodes[lid].admin_addr.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", "/v1/pools/bench-no-such-pool")
            resp = conn.getresponse()
            resp.read()
            rev = resp.getheader("X-Gateway-Revision")
            return int(rev) if rev is not None else None
        except (OSError, http.client.HTTPException, ValueError):
            return None
        finally:
            conn.close()

    def version(self):
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=10)
            return out.stdout.strip() or "gateway"
        except OSError:
            return "gateway"


# ---------------------------------------------------------------- etcd


class EtcdMember:
    def __init__(self, idx, root, ports):
        self.id = idx
        self.name = "e%d" % idx
        self.data_dir = os.path.join(root, self.name)
        self.client_port = ports.take()
        self.peer_port = ports.take()
        self.client_url = "http://%s:%d" % (LOOPBACK, self.client_port)
        self.peer_url = "http://%s:%d" % (LOOPBACK, self.peer_port)
        self.log = os.path.join(root, self.name + ".log")
        self.proc = None
        self.member_id = None  # raft member id, learnt from status

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    """3 etcd members (Debian's etcd-server) with etcd's default raft settings."""

    name = "etcd"

    def __init__(self, root, ports, size=3, etcd="etcd", etcdctl="etcdctl"):
        self.etcd = etcd
        self.etcdctl = etcdctl
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.members = {i: EtcdMember(i, root, ports) for i in range(1, size + 1)}
        self.nodes = self.members
        self.token = "gw-bench-" + secrets.token_hex(4)
        self.initial_cluster = ",".join("%s=%s" % (m.name, m.peer_url) for m in self.members.values())

    def _args(self, m):
        return [
            self.etcd, "--name", m.name, "--data-dir", m.data_dir,
            "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", self.initial_cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", self.token, "--logger", "zap", "--log-level", "warn",
        ]

    def _check_started(self, m):
        if not m.alive():
            raise RuntimeError("etcd %s exited (code %s); log %s:\n%s" % (m.name, m.proc.returncode, m.log, tail(m.log)))

    def start(self, timeout=60):
        for m in self.members.values():
            m.proc = spawn(self._args(m), m.log)

        def up():
            for m in self.members.values():
                self._check_started(m)
            return self.stable()

        wait_until(up, timeout, "the etcd cluster to elect a leader", interval=0.1)

    def kill(self, idx):
        p = self.members[idx].proc
        t_kill = time.monotonic()
        p.send_signal(signal.SIGKILL)
        p.wait()
        return t_kill, time.monotonic()

    def restart(self, idx):
        # With an existing data dir etcd ignores the --initial-* flags and rejoins as itself.
        m = self.members[idx]
        m.proc = spawn(self._args(m), m.log)

    # -- inspection

    def live(self):
        return [i for i, m in self.members.items() if m.alive()]

    def status(self, idx, timeout=1.0):
        """Maintenance status through the JSON gateway; uint64 fields are strings there."""
        st, j = http_json(addr(self.members[idx].client_port), "POST", "/v3/maintenance/status", {}, timeout=timeout)
        if st != 200 or not j:
            return None
        mid = j.get("header", {}).get("member_id")
        if mid:
            self.members[idx].member_id = str(mid)
        return j

    def leader_seen_by(self, idx, timeout=0.5):
        st = self.status(idx, timeout)
        if not st:
            return None
        lead = str(st.get("leader") or "0")
        for i, m in self.members.items():
            if m.member_id == lead:
                return i
        return None

    def leader_id(self):
        """The leader member, found with `etcdctl endpoint status -w json` as an operator would."""
        eps = ",".join(self.members[i].client_url for i in self.live())
        try:
            out = subprocess.run(
                [self.etcdctl, "--endpoints", eps, "--dial-timeout", "1s", "--command-timeout", "2s",
                 "endpoint", "status", "-w", "json"],
                capture_output=True, text=True, timeout=10, env=dict(os.environ, ETCDCTL_API="3"),
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        try:
            rows = json.loads(out.stdout)
        except ValueError:
            return None
        for row in rows:
            s = row.get("Status", {})
            if s.get("leader") and s.get("leader") == s.get("header", {}).get("member_id"):
                for i, m in self.members.items():
                    if m.client_url == row.get("Endpoint"):
                        m.member_id = str(s["header"]["member_id"])
                        return i
        return None

    def stable(self):
        if len(self.live()) != len(self.members):
            return False
        sts = {i: self.status(i) for i in self.members}
        if any(s is None for s in sts.values()):
            return False
        leaders = {str(s.get("leader")) for s in sts.values()}
        if len(leaders) != 1 or leaders == {"0"}:
            return False
        (lead,) = leaders
        lst = [s for s in sts.values() if str(s["header"]["member_id"]) == lead]
        if not lst:
            return False
        commit = int(lst[0].get("raftIndex", 0))
        return all(int(s.get("raftAppliedIndex", s.get("raftIndex", 0))) >= commit for s in sts.values())

    def wait_caught_up(self, idx, timeout=60):
        m = self.members[idx]

        def ok():
            self._check_started(m)
            return self.stable()

        wait_until(ok, timeout, "etcd %s to rejoin and catch up" % m.name, interval=0.1)

    # -- writes

    def client_addr(self, idx):
        return addr(self.members[idx].client_port)

    def write_request(self, name, n=1):
        body = json.dumps({"key": b64("/pools/" + name), "value": b64(pool_body(name, n))})
        return "POST", "/v3/kv/put", body

    def count(self, prefix):
        key = ("/pools/" + prefix).encode()
        end = key[:-1] + bytes([key[-1] + 1])
        lid = self.leader_id() or 1
        st, j = http_json(self.client_addr(lid), "POST", "/v3/kv/range",
                          {"key": b64(key), "range_end": b64(end), "count_only": True}, timeout=30)
        if st != 200 or j is None:
            return None
        return int(j.get("count", 0))

    def revision(self):
        """Store revision (one more per put) from a linearizable range on the leader."""
        lid = self.leader_id() or 1
        st, j = http_json(self.client_addr(lid), "POST", "/v3/kv/range", {"key": b64("/bench-no-such-key")}, timeout=10)
        if st != 200 or not j:
            return None
        return int(j.get("header", {}).get("revision", 0))

    def version(self):
        try:
            out = subprocess.run([self.etcd, "--version"], capture_output=True, text=True, timeout=10)
            return out.stdout.splitlines()[0].strip()
        except (OSError, IndexError):
            return "etcd"


def which_or_die(cmd):
    path = shutil.which(cmd)
    if not path:
        raise SystemExit("error: %s not found (run the bench/*.sh wrapper, which installs it)" % cmd)
    return path
