#!/usr/bin/env python3
"""Memory per idle keep-alive client connection of one proxy (used by bench/proxy_mem.sh).

1. Warm-up: WINDOW connections at once, each sending a few requests, then closed (so the
   proxy's upstream connection pool and buffers are already at the size the opening phase needs).
2. RSS before: sum of VmRSS of the given pids (nginx: master and workers), from /proc/PID/status.
3. Opens CONNS connections to 127.0.0.1:PORT, at most WINDOW being opened at a time; each sends
   one GET, reads the whole response (must be 200 with a body) and then stays open and idle.
4. Waits SETTLE seconds, checks how many connections the proxy closed meanwhile, reads RSS after.
5. Closes every connection, waits, reads RSS once more (how much the proxy gives back).

Prints one line "MEM {json}". Only 127.0.0.1 is ever targeted; every loop is bounded.
"""

import argparse
import asyncio
import json
import time


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def all_pids(root):
    """root and its children (an nginx master's workers)."""
    pids = [root]
    try:
        with open(f"/proc/{root}/task/{root}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except FileNotFoundError:
        pass
    return pids


async def one_request(reader, writer, req):
    writer.write(req)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await asyncio.wait_for(reader.readexactly(length), 30)
    return status


async def open_one(port, req, sem, conns, failures, requests=1, keep=True):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
        except (OSError, asyncio.TimeoutError) as e:
            failures.append(f"connect: {e!r}")
            return
        try:
            for _ in range(requests):
                status = await one_request(reader, writer, req)
                if status != 200:
                    failures.append(f"status {status}")
                    writer.close()
                    return
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as e:
            failures.append(f"request: {e!r}")
            writer.close()
            return
        if keep:
            conns.append((reader, writer))
        else:
            writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="the proxy's (master) pid")
    ap.add_argument("--conns", type=int, default=8000)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--name", default="proxy")
    args = ap.parse_args()
    req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\nUser-Agent: proxy_mem\r\n\r\n".encode()

    # 1. warm-up
    sem = asyncio.Semaphore(args.window)
    failures = []
    await asyncio.gather(
        *(open_one(args.port, req, sem, [], failures, requests=20, keep=False) for _ in range(args.window * 4))
    )
    if failures:
        print("MEM " + json.dumps({"error": "warm-up failed", "failures": failures[:5]}), flush=True)
        return
    await asyncio.sleep(args.settle)

    # 2. before
    pids = all_pids(args.pid)
    before = rss_kb(pids)

    # 3. open and keep
    conns = []
    t0 = time.monotonic()
    await asyncio.gather(*(open_one(args.port, req, sem, conns, failures) for _ in range(args.conns)))
    opened = time.monotonic() - t0

    # 4. settle, check, measure
    await asyncio.sleep(args.settle)
    closed_by_proxy = 0
    for reader, _ in conns:
        if reader.at_eof() or reader.exception() is not None:
            closed_by_proxy += 1
    after = rss_kb(all_pids(args.pid))

    # 5. close all, measure again
    for _, writer in conns:
        writer.close()
    await asyncio.sleep(args.settle)
    released = rss_kb(all_pids(args.pid))

    open_now = len(conns) - closed_by_proxy
    out = {
        "pids": pids,
        "conns_asked": args.conns,
        "conns_open": open_now,
        "closed_by_proxy": closed_by_proxy,
        "failures": len(failures),
        "failure_samples": failures[:3],
        "open_seconds": round(opened, 2),
        "rss_before_kb": before,
        "rss_after_kb": after,
        "rss_after_close_kb": released,
        "kb_per_conn": round((after - before) / open_now, 2) if open_now else None,
    }
    print("MEM " + json.dumps(out), flush=True)
    per = f"{out['kb_per_conn']} KB" if open_now else "-"
    print(
        f"{args.name:<8} RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB with {open_now} idle "
        f"connections = {per} per connection; {released / 1024:.1f} MiB after closing them; "
        f"opened in {opened:.1f} s; closed by the proxy before the measurement: {closed_by_proxy}"
        + (" (round not counted)" if closed_by_proxy else "")
        + f"; failed: {len(failures)} {failures[:3] or ''}",
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main())
