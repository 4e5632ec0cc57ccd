#!/usr/bin/env python3
"""Summaries for bench/proxy_profile.sh.

  proxy_perf.py components PERF_SELF_REPORT
      groups the self cost of every symbol (perf report --no-children --sort dso,sym) into
      components: kernel, allocator, hyper, http, tokio, gateway_proxy, ...
  proxy_perf.py syscalls NAME PERF_STAT_OUTPUT WRK_OUTPUT
      syscalls per proxied request, by kind, from `perf stat -e syscalls:sys_enter_*`
"""

import re
import sys

COMPONENTS = [
    ("kernel: TCP send (writev/sendto, incl. loopback delivery to the peer)", None),
    ("kernel: other (recv, epoll, wakeups, scheduling)", None),
    ("allocator (malloc/free/realloc)", re.compile(r"malloc|_int_free|cfree|free@|realloc|unlink_chunk|tcache|__libc_free|_int_realloc|calloc|malloc_consolidate")),
    ("memcpy/memmove/memset", re.compile(r"mem(move|cpy|set)|__memcmp")),
    ("hyper (HTTP/1 parse, encode, dispatch)", re.compile(r"^(<)?hyper::|<hyper::")),
    ("hyper-util (auto/graceful/rt glue)", re.compile(r"hyper_util::")),
    ("httparse", re.compile(r"httparse::")),
    ("http (HeaderMap, names, values)", re.compile(r"(^|<|&)http::")),
    ("tokio (scheduler, I/O driver, timers, sync)", re.compile(r"tokio::|mio::")),
    ("gateway_proxy (routing, headers, balancing)", re.compile(r"gateway_proxy::")),
    ("bytes", re.compile(r"bytes::")),
    ("libc syscall wrappers", re.compile(r"__GI___writev|__libc_recv|__libc_send|epoll_wait|__GI_|syscall")),
]


SCAFFOLD = re.compile(
    r"tokio::runtime::(scheduler|context|task::(core|harness|raw)|blocking)|std::panic|core::panic|"
    r"__rust_begin_short_backtrace|call_once|thread_start|start_thread|clone3|0x0000|\?\?\?|"
    r"std::thread::local|lifecycle|catch_unwind"
)


def components(path):
    totals = {}
    other = {}
    for line in open(path, errors="replace"):
        m = re.match(r"^\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$", line)
        if not m:
            continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
        if kind == "k" or dso.startswith("[kernel"):
            # Kernel samples are attributed by the syscall they were reached from in the
            # inclusive view; here only the two coarse halves are kept.
            name = COMPONENTS[1][0]
        else:
            name = None
            for comp, rx in COMPONENTS[2:]:
                if rx.search(sym):
                    name = comp
                    break
            if name is None:
                name = "other user space"
                other[sym] = other.get(sym, 0) + pct
        totals[name] = totals.get(name, 0) + pct
    return totals, other


def main():
    if sys.argv[1] == "components":
        totals, other = components(sys.argv[2])
        # The kernel send path (inclusive) is measured separately and passed in as argv[3].
        send = float(sys.argv[3]) if len(sys.argv) > 3 else None
        k = totals.pop(COMPONENTS[1][0], 0.0)
        rows = []
        if send is not None:
            rows.append((COMPONENTS[0][0] + " [inclusive of writev]", min(send, k)))
            rows.append((COMPONENTS[1][0], max(k - send, 0.0)))
        else:
            rows.append(("kernel (all)", k))
        rows += sorted(totals.items(), key=lambda kv: -kv[1])
        for name, pct in rows:
            print(f"  {pct:5.1f}%  {name}")
        top_other = sorted(other.items(), key=lambda kv: -kv[1])[:5]
        if top_other:
            print("  (other user space, largest: " + "; ".join(f"{s[:60]} {p:.1f}%" for s, p in top_other) + ")")
    elif sys.argv[1] == "callgrind":
        # callgrind_annotate output -> "Ir  pct  function", scaffolding left out, per request.
        path, requests, top = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        rows = []
        total = None
        for line in open(path, errors="replace"):
            m = re.match(r"^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)$", line.rstrip())
            if not m:
                continue
            ir, pct, rest = int(m.group(1).replace(",", "")), float(m.group(2)), m.group(3)
            if rest.startswith("PROGRAM TOTALS"):
                total = ir
                continue
            rest = re.sub(r" \[[^\]]*\]$", "", rest)
            fn = rest.split(":", 1)[1] if ":" in rest.split(" ")[0] else rest
            if SCAFFOLD.search(fn) or fn in [r[2] for r in rows]:
                continue
            rows.append((ir, pct, fn))
        if total and requests:
            print(f"  {total:,} instructions in {requests} requests = {total / requests:,.0f} per request (user space only)")
        for ir, pct, fn in rows[:top]:
            per = f"{ir / requests:>9,.0f}/req" if requests else ""
            print(f"  {pct:5.1f}%  {per}  {fn[:150]}")
    elif sys.argv[1] == "syscalls":
        name, stat, wrk = sys.argv[2], sys.argv[3], sys.argv[4]
        text = open(wrk).read()
        m = re.search(r"(\d+) requests in", text)
        requests = int(m.group(1)) if m else 0
        counts = {}
        cpu_ms = None
        for line in open(stat):
            m = re.match(r"^\s+([\d,.]+)\s+msec\s+task-clock", line)
            if m:
                cpu_ms = float(m.group(1).replace(",", ""))
            m = re.match(r"^\s+([\d,]+)\s+syscalls:sys_enter_(\w+)", line)
            if m:
                n = int(m.group(1).replace(",", ""))
                if n:
                    counts[m.group(2)] = n
        if not requests:
            print(f"  {name}: no requests counted")
            return
        total = sum(counts.values()) / requests
        parts = ", ".join(
            f"{k} {v / requests:.2f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v / requests >= 0.01
        )
        cpu = f"{cpu_ms * 1000 / requests:5.1f} us CPU and " if cpu_ms else ""
        if len(sys.argv) > 7:
            (u0, s0), (u1, s1), hz = sys.argv[5].split(), sys.argv[6].split(), int(sys.argv[7])
            user = (int(u1) - int(u0)) / hz * 1e6 / requests
            kern = (int(s1) - int(s0)) / hz * 1e6 / requests
            cpu = f"{cpu_ms * 1000 / requests if cpu_ms else user + kern:5.1f} us CPU (user {user:4.1f} + kernel {kern:4.1f}) and "
        print(f"  {name:<8} {cpu}{total:4.2f} syscalls per request ({requests} requests): {parts}")


if __name__ == "__main__":
    main()
