#!/usr/bin/env python3
"""Reads the outputs of bench/https.sh and bench/tcp.sh and prints, for each mode, the medians of
the rounds and the ratios of the gateway to each other system: wrk outputs
(RESULTS/<round>-<system>-<mode>.txt) as req/s, p50, p99 and errors; iperf3 JSON outputs
(RESULTS/<round>-<system>-bulk.json, mode "bulk") as MB/s.
Usage: tls_report.py RESULTS ROUNDS MODES SYSTEMS [LOAD]"""

import json
import statistics
import sys
from pathlib import Path

from proxy_report import fmt_ms, fmt_rps, parse


def bulk(results, rounds, systems, load):
    """MB/s received by the iperf3 server, median of the rounds."""
    med = {}
    for s in systems:
        xs = []
        for r in range(1, rounds + 1):
            p = results / f"{r}-{s}-bulk.json"
            try:
                d = json.loads(p.read_text())
                xs.append(d["end"]["sum_received"]["bits_per_second"] / 8e6)
            except (OSError, ValueError, KeyError):
                pass
        if xs:
            med[s] = {"mb_s": statistics.median(xs), "runs": len(xs)}
    print()
    print(f"bulk: median of {rounds} ({load})")
    print(f"| {'system':<10} | {'MB/s':>8} | {'runs':>5} |")
    print(f"|{'-' * 12}|{'-' * 9}:|{'-' * 6}:|")
    for s, m in med.items():
        print(f"| {s:<10} | {m['mb_s']:>8.0f} | {m['runs']:>5} |")
    g = med.get("gateway")
    if g:
        for peer, p in med.items():
            if peer != "gateway" and p["mb_s"]:
                print(f"bulk gateway/{peer}: MB/s {g['mb_s'] / p['mb_s']:.2f}")
    return med


def main():
    results = Path(sys.argv[1])
    rounds = int(sys.argv[2])
    modes = sys.argv[3].split(",")
    systems = sys.argv[4].split(",")
    load = sys.argv[5] if len(sys.argv) > 5 else "wrk"
    out = {}
    for mode in modes:
        if mode == "bulk":
            out[mode] = bulk(results, rounds, systems, load)
            continue
        data = {s: [] for s in systems}
        for r in range(1, rounds + 1):
            for s in systems:
                p = results / f"{r}-{s}-{mode}.txt"
                if p.exists():
                    data[s].append(parse(p))
        med = {}
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
        out[mode] = med
        print()
        unit = " (req/s: one connection per request)" if mode in ("close", "conns") else ""
        print(f"{mode}: median of {rounds} ({load}){unit}")
        print(f"| {'system':<10} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>7} |")
        print(f"|{'-' * 12}|{'-' * 9}:|{'-' * 8}:|{'-' * 8}:|{'-' * 8}:|")
        for s, m in med.items():
            print(
                f"| {s:<10} | {fmt_rps(m['rps']):>8} | {fmt_ms(m['p50']):>7} "
                f"| {fmt_ms(m['p99']):>7} | {m['errors']:>7} |"
            )
        g = med.get("gateway")
        if g:
            for peer, p in med.items():
                if peer == "gateway" or not p["rps"] or not p["p99"]:
                    continue
                print(
                    f"{mode} gateway/{peer}: req/s {g['rps'] / p['rps']:.2f}, "
                    f"p99 {g['p99'] / p['p99']:.2f}"
                )
    (results / "medians.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
