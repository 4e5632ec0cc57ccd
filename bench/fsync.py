#!/usr/bin/env python3
"""fsync latency of small appends on the disk holding DIR (default: the current folder).

    bench/fsync.py [DIR] [SAMPLES]

The figures quoted for the Raft timing defaults in crates/cluster/src/handle.rs come from this.
"""
import os
import sys
import tempfile
import time

folder = sys.argv[1] if len(sys.argv) > 1 else "."
samples = int(sys.argv[2]) if len(sys.argv) > 2 else 200
with tempfile.NamedTemporaryFile(dir=folder) as f:
    times = []
    for _ in range(samples):
        os.write(f.fileno(), b"x" * 200)
        t = time.perf_counter()
        os.fsync(f.fileno())
        times.append((time.perf_counter() - t) * 1000)
times.sort()
pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
print(f"fsync of a 200-byte append, {samples} samples: p50 {pick(0.5):.2f} ms, p99 {pick(0.99):.2f} ms, max {times[-1]:.2f} ms")
