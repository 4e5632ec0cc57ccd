#!/usr/bin/env python3
"""Changes the gateway's routes RATE times a second for DURATION seconds (bounded: at most
RATE*DURATION changes), through the admin REST API on loopback.

Even steps re-PUT the benchmark's own route "bench" (same content, a committed Raft write that
republishes the state and makes the data plane recompile and swap its route table); odd steps PUT
"bench-churn-<i % 10>" with a new path prefix each time (a real change of the table). At the end
the churn routes are deleted, so the table is as before. Prints one line "CHURN {json}".
"""

import argparse
import http.client
import json
import time


def request(conn_args, method, path, body=None):
    conn = http.client.HTTPConnection(*conn_args, timeout=10)
    try:
        t0 = time.monotonic()
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.monotonic() - t0
    except OSError as e:
        return f"error: {e}", 0.0
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin-port", type=int, required=True)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--duration", type=float, default=10.0)
    args = ap.parse_args()
    target = ("127.0.0.1", args.admin_port)
    steps = int(args.rate * args.duration)
    period = 1.0 / args.rate
    statuses = {}
    latencies = []
    start = time.monotonic()
    for i in range(steps):
        due = start + i * period
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        if i % 2 == 0:
            path, body = "/v1/routes/bench", {"pool": "bench", "path_prefix": "/"}
        else:
            path = f"/v1/routes/bench-churn-{i % 10}"
            body = {"pool": "bench", "path_prefix": f"/churn/{i}"}
        status, took = request(target, "PUT", path, json.dumps(body))
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status == 200:
            latencies.append(took)
    elapsed = time.monotonic() - start
    for n in range(10):
        request(target, "DELETE", f"/v1/routes/bench-churn-{n}")
    latencies.sort()
    out = {
        "changes": steps,
        "ok": statuses.get("200", 0),
        "statuses": statuses,
        "seconds": round(elapsed, 2),
        "put_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
        "put_max_ms": round(latencies[-1] * 1000, 1) if latencies else None,
    }
    print("CHURN " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
