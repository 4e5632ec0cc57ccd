#!/usr/bin/env python3
"""Reads a `perf record --call-graph dwarf` profile of one gateway node and says where its
control thread's samples went.

  bench/perf_tasks.py PERF_DATA                 share of each tokio task (the future the
                                                runtime polled when the sample was taken)
  bench/perf_tasks.py PERF_DATA FRAME [FRAME..] share of samples with each FRAME (a substring
                                                of a function name) anywhere on the stack

Only samples of the threads named `--comm` (default tokio-rt-worker: the control plane) count;
shares are of those samples. How bench/README.md's "session 13" profile was read:

  perf record -p <leader pid> -F 299 --call-graph dwarf,16384 -o leader.data -- sleep 6
  bench/perf_tasks.py leader.data
  bench/perf_tasks.py leader.data State::apply imbl::nodes::hamt
"""
import argparse
import collections
import re
import signal
import subprocess
import sys

# Frames that only carry a poll down to the task's own future.
PLUMBING = re.compile(r"(<core::pin|<core::future|core::|tokio::loom|<tracing::instrument|<futures_util|tokio::runtime)")
TASK_ENTRY = ("tokio::runtime::task::core::Core<T,S>::poll::{{closure}}", "tokio::runtime::task::raw::poll")


def stacks(path, comm):
    out = subprocess.run(["perf", "script", "-i", path], capture_output=True, text=True, check=True).stdout
    for block in out.split("\n\n"):
        lines = block.strip().split("\n")
        if not lines or not lines[0].startswith(comm):
            continue
        # "  addr function+0xoff (dso)": keep the function; the first frame is the leaf.
        yield [re.sub(r"^\s*[0-9a-f]+\s+", "", l).rsplit("+0x", 1)[0] for l in lines[1:]]


def task_of(frames):
    for i, f in enumerate(frames):
        if f.startswith(TASK_ENTRY):
            for g in reversed(frames[:i]):
                if not PLUMBING.match(g):
                    return g[:110]
            break
    return "(outside a task) " + (frames[-2][:80] if len(frames) > 1 else "?")


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # quiet when piped into head
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("frames", nargs="*")
    ap.add_argument("--comm", default="tokio-rt-worker")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    all_stacks = list(stacks(a.data, a.comm))
    if not all_stacks:
        sys.exit("no samples of threads named %r in %s" % (a.comm, a.data))
    n = len(all_stacks)
    print("%d samples of %s" % (n, a.comm))
    if a.frames:
        for want in a.frames:
            hits = sum(1 for s in all_stacks if any(want in f for f in s))
            print("%5.1f %%  %s" % (100.0 * hits / n, want))
        return
    tasks = collections.Counter(task_of(s) for s in all_stacks)
    for task, count in tasks.most_common(a.top):
        print("%5.1f %%  %s" % (100.0 * count / n, task))


if __name__ == "__main__":
    main()
