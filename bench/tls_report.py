#!/usr/bin/env python3
"""Reads the wrk outputs of bench/https.sh and bench/tcp.sh (RESULTS/<round>-<system>-<mode>.txt)
and prints, for each mode, the per-round figures, the medians, and the ratios of the gateway to
each other system. Usage: tls_report.py RESULTS ROUNDS MODES SYSTEMS [LOAD]"""

import json
import statistics
import sys
from pathlib import Path

from proxy_report import fmt_ms, fmt_rps, parse


def main():
    results = Path(sys.argv[1])
    rounds = int(sys.argv[2])
    modes = sys.argv[3].split(",")
    systems = sys.argv[4].split(",")
    load = sys.argv[5] if len(sys.argv) > 5 else "wrk"
    out = {}
    for mode in modes:
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
        print(f"{mode}: median of {rounds} ({load})")
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
