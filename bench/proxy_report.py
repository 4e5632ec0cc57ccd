#!/usr/bin/env python3
"""Reads the wrk outputs of bench/proxy.sh (RESULTS/<round>-<system>.txt) and prints the
per-round figures, the medians, and the ratios of the gateway to the other proxies."""

import json
import re
import statistics
import sys
from pathlib import Path

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse(path):
    text = path.read_text()
    r = {"rps": None, "p99": None, "p50": None, "non2xx": 0, "sock": 0, "requests": None}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        if m:
            r[key] = float(m.group(1)) * UNITS[m.group(2)]
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        r["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        r["sock"] = sum(int(x) for x in m.groups())
        r["sock_detail"] = m.group(0)
    m = re.search(r"(\d+) requests in", text)
    if m:
        r["requests"] = int(m.group(1))
    # bench/percentiles.lua's line, when the run used it: {"p50": ms, ..., "max": ms}.
    m = re.search(r"^rps \S+ (.*)$", text, re.M)
    r["tail"] = {k: float(v) for k, v in (f.split("=") for f in m.group(1).split())} if m else None
    return r


def fmt_rps(v):
    return "-" if v is None else f"{v / 1000:.1f}k"


def fmt_ms(v):
    return "-" if v is None else f"{v:.2f}"


def pair_stats(pairs):
    """Round by round ratios of (ours, theirs) runs of the same rounds (which share the machine's
    state): the median req/s ratio, the rounds ours was ahead in, the median p99 ratio, the
    rounds ours was lower in, and the number of pairs."""
    pairs = [(a, b) for a, b in pairs if None not in (a["rps"], b["rps"], a["p99"], b["p99"])]
    if not pairs:
        return None
    rate = [a["rps"] / b["rps"] for a, b in pairs]
    p99 = [a["p99"] / b["p99"] for a, b in pairs]
    return (
        statistics.median(rate),
        sum(x > 1 for x in rate),
        statistics.median(p99),
        sum(x < 1 for x in p99),
        len(pairs),
    )


def paired(ours, theirs):
    """`pair_stats` of two systems' runs, keyed by round, as a note for the ratio line."""
    stats = pair_stats((ours[r], theirs[r]) for r in ours if r in theirs)
    if stats is None:
        return ""
    rate, ahead, p99, lower, n = stats
    return (
        f" (paired by round: req/s {rate:.2f}, ahead in {ahead}/{n};"
        f" p99 {p99:.2f}, lower in {lower}/{n})"
    )


def main():
    results = Path(sys.argv[1])
    systems = sys.argv[2].split(",")
    rounds = int(sys.argv[3])
    load = sys.argv[4] if len(sys.argv) > 4 else "wrk"
    data = {s: [] for s in systems}
    by_round = {s: {} for s in systems}
    for r in range(1, rounds + 1):
        for s in systems:
            p = results / f"{r}-{s}.txt"
            if p.exists():
                by_round[s][r] = parse(p)
                data[s].append(by_round[s][r])

    print()
    print("per round: req/s (p99 ms)")
    print(f"{'system':<15}" + "".join(f"{'round ' + str(r):>20}" for r in range(1, rounds + 1)))
    for s in systems:
        cells = [f"{fmt_rps(x['rps'])} ({fmt_ms(x['p99'])})" for x in data[s]]
        print(f"{s:<15}" + "".join(f"{c:>20}" for c in cells))

    med = {}
    print()
    print(f"median of {rounds} ({load}):")
    print(f"| {'system':<14} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>7} | {'of direct':>9} |")
    print(f"|{'-' * 16}|{'-' * 9}:|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|{'-' * 10}:|")
    for s in systems:
        xs = [x for x in data[s] if x["rps"] is not None]
        if not xs:
            continue
        med[s] = {
            "rps": statistics.median(x["rps"] for x in xs),
            "p50": statistics.median(x["p50"] for x in xs if x["p50"] is not None),
            "p99": statistics.median(x["p99"] for x in xs if x["p99"] is not None),
            "errors": sum(x["non2xx"] + x["sock"] for x in data[s]),
        }
    direct = med.get("direct", {}).get("rps")
    for s, m in med.items():
        of_direct = f"{m['rps'] / direct:.2f}" if direct else "-"
        print(
            f"| {s:<14} | {fmt_rps(m['rps']):>8} | {fmt_ms(m['p50']):>7} | {fmt_ms(m['p99']):>7} "
            f"| {m['errors']:>7} | {of_direct:>9} |"
        )

    print()
    g = med.get("gateway")
    if g:
        for peer in ("nginx", "haproxy", "caddy"):
            if peer in med:
                p = med[peer]
                print(
                    f"gateway/{peer}: req/s {g['rps'] / p['rps']:.2f}, p99 {g['p99'] / p['p99']:.2f}"
                    + paired(by_round["gateway"], by_round[peer])
                )
        fastest = [p for p in ("nginx", "haproxy") if p in med]
        if fastest:
            best = max(fastest, key=lambda p: med[p]["rps"])
            ok_rps = g["rps"] >= med[best]["rps"]
            ok_p99 = g["p99"] <= med[best]["p99"]
            print(
                f"goal (req/s >= faster of nginx/haproxy = {best}, p99 no higher): "
                f"req/s {'met' if ok_rps else 'NOT met'}, p99 {'met' if ok_p99 else 'NOT met'}"
            )
    c = med.get("gateway-churn")
    if c:
        print()
        total = sum(x["requests"] or 0 for x in data["gateway-churn"])
        detail = "; ".join(
            f"non-2xx {x['non2xx']}, {x.get('sock_detail', 'no socket errors')}"
            for x in data["gateway-churn"]
        )
        print(
            f"under route churn: {c['errors']} errors in {total} requests over {len(data['gateway-churn'])} runs "
            f"({detail}); req/s {fmt_rps(c['rps'])}"
            + (f" = {c['rps'] / g['rps']:.2f} of the quiet gateway" if g else "")
        )
        for r in range(1, rounds + 1):
            p = results / f"{r}-churn.json"
            if p.exists():
                print(f"  round {r} route changes: {p.read_text().strip()}")
    (results / "medians.json").write_text(json.dumps(med, indent=1))


if __name__ == "__main__":
    main()
