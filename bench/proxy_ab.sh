#!/usr/bin/env bash
# A/B of gateway builds or settings under the bench/proxy.sh load (wrk -t1 -c64 against one
# nginx backend), with nginx and HAProxy as references: every variant runs at the same time
# (idle when not measured), rounds interleave the variants so the machine's drift falls on all
# alike, and the median of the rounds is printed with p99 latency, the proxy's CPU time per
# request (and its user-space part), and the wake-ups (voluntary context switches) per request of
# the backend and of the client (wrk); then each variant paired with the reference round by
# round, and the shape of the latency tail (p50 to max, from bench/percentiles.lua).
#
#   bench/proxy_ab.sh ROUNDS VARIANT...
#     VARIANT: NAME=BINARY[:VAR=VALUE[,VAR=VALUE...]]   (environment for that gateway)
#              or nginx, haproxy
#   e.g. bench/proxy_ab.sh 6 base=/tmp/gw-a new=/tmp/gw-b nginx
#   env: DURATION=5 (s per run)  CONNECTIONS=64  KEEP=1
#        REF=NAME: the variant the others are paired with, round by round (default: the first)
#        PIN=1: the proxies on CPU 1, wrk and the backend on CPU 0, so that each proxy's rate
#        shows its own cost per request rather than how the scheduler placed the processes
source "$(dirname "${BASH_SOURCE[0]}")/proxy_common.sh"

ROUNDS="${1:-}"
shift || true
case "$ROUNDS" in '' | *[!0-9]*) echo "usage: bench/proxy_ab.sh ROUNDS NAME=BINARY[:VAR=VALUE,...]|nginx|haproxy ..." >&2; exit 2 ;; esac
[ $# -ge 1 ] || { echo "error: name at least one variant (NAME=BINARY, nginx or haproxy)" >&2; exit 2; }
DURATION="${DURATION:-5}"
CONNECTIONS="${CONNECTIONS:-64}"

ensure_peers
make_workdir
start_backend
names=() ports=() pids=()
for v in "$@"; do
    case "$v" in
        nginx) start_nginx; names+=(nginx); ports+=("$NGINX_PORT"); pids+=("$NGINX_PID") ;;
        haproxy) start_haproxy; names+=(haproxy); ports+=("$HAPROXY_PORT"); pids+=("$HAPROXY_PID") ;;
        *=*)
            name=${v%%=*} rest=${v#*=}
            bin=${rest%%:*} envs=""
            [ "$bin" != "$rest" ] && envs=${rest#*:}
            [ -x "$bin" ] || { echo "error: $bin (variant $name) is not an executable" >&2; exit 2; }
            GATEWAY_BIN=$bin GATEWAY_WRAP="env ${envs//,/ }" start_gateway "gw-$name"
            names+=("$name"); ports+=("$GATEWAY_PORT"); pids+=("$GATEWAY_PID")
            ;;
        *) echo "error: '$v' is not NAME=BINARY, nginx or haproxy" >&2; exit 2 ;;
    esac
done
if [ -n "${REF:-}" ] && [[ " ${names[*]} " != *" $REF "* ]]; then
    echo "error: REF=$REF is not one of the variants (${names[*]})" >&2
    exit 2
fi
WRK=(wrk)
if [ "${PIN:-}" = 1 ]; then
    pin() { local p; for p in $(pgrep -P "$2") "$2"; do taskset -a -p -c "$1" "$p" >/dev/null; done; }
    pin 0 "$BACKEND_PID"
    for p in "${pids[@]}"; do pin 1 "$p"; done
    WRK=(taskset -c 0 wrk)
fi
print_context
echo "command: ${PIN:+PIN=$PIN }bench/proxy_ab.sh $ROUNDS $*  (DURATION=$DURATION CONNECTIONS=$CONNECTIONS)"

for i in "${!names[@]}"; do
    run_fg "${WRK[@]}" -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:${ports[$i]}/" >/dev/null
done
# Per run: wrk's output in $WORK/ab/ROUND-NAME.txt, and the proxy's CPU ticks, the
# backend's wake-ups, the proxy's user-space ticks and wrk's wake-ups over the run in ab.tsv
# beside it.
RESULTS="$WORK/ab"
# Runs a command and writes how many times it went to sleep (its voluntary context switches,
# from getrusage) to the file named first: the client's wake-ups.
COUNT_WAKEUPS='import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw))
sys.exit(code)'

mkdir -p "$RESULTS"
hz=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
    line="round $round:"
    for i in "${!names[@]}"; do
        out="$RESULTS/$round-${names[$i]}.txt"
        c0=$(ticks "${pids[$i]}"); u0=$(user_ticks "${pids[$i]}"); v0=$(wakeups "$BACKEND_PID")
        run_fg python3 -c "$COUNT_WAKEUPS" "$out.wakeups" \
            "${WRK[@]}" -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$BENCH_DIR/percentiles.lua" \
            "http://127.0.0.1:${ports[$i]}/" >"$out"
        c1=$(ticks "${pids[$i]}"); u1=$(user_ticks "${pids[$i]}"); v1=$(wakeups "$BACKEND_PID")
        echo -e "$round\t${names[$i]}\t$((c1 - c0))\t$((v1 - v0))\t$((u1 - u0))\t$(cat "$out.wakeups")" \
            >>"$RESULTS/ab.tsv"
        line="$line  ${names[$i]} $(awk '/Requests\/sec/ {printf "%.1fk", $2 / 1000}' "$out")"
    done
    echo "$line"
done
python3 - "$BENCH_DIR" "$RESULTS" "$hz" "${names[@]}" <<'PY'
import os, statistics, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from proxy_report import pair_stats, parse  # parse: wrk's output (rate, p99, requests, errors)

results, hz = Path(sys.argv[2]), int(sys.argv[3])
rows = [l.split("\t") for l in (results / "ab.tsv").read_text().splitlines() if l]
wrk = {(r[0], r[1]): parse(results / f"{r[0]}-{r[1]}.txt") for r in rows}  # (round, name)
print("\nmedian of rounds      req/s   p99 ms   proxy CPU us/req  (of it user)   backend wake-ups/req"
      "   client wake-ups/req   errors")
for name in sys.argv[4:]:
    runs = [(wrk[r[0], name], *map(int, r[2:6])) for r in rows if r[1] == name]
    rate = statistics.median(w["rps"] for w, *_ in runs)
    p99 = statistics.median(w["p99"] for w, *_ in runs)
    cpu = statistics.median(t / hz * 1e6 / w["requests"] for w, t, _, _, _ in runs)
    user = statistics.median(u / hz * 1e6 / w["requests"] for w, _, _, u, _ in runs)
    wake = statistics.median(v / w["requests"] for w, _, v, _, _ in runs)
    client = statistics.median(c / w["requests"] for w, *_, c in runs)
    errors = sum(w["non2xx"] + w["sock"] for w, *_ in runs)
    print(f"{name:<18} {rate / 1000:8.1f}k {p99:8.2f} {cpu:18.1f} {user:13.1f} {wake:22.3f}"
          f" {client:21.3f} {errors:8d}")

# Paired by round: each variant against the reference measured in the same round, which cancels
# the drift between rounds that the medians above still carry.
ref = os.environ.get("REF") or sys.argv[4]  # checked before the runs
rounds = sorted({r[0] for r in rows}, key=int)
print(f"\npaired with {ref}, per round   req/s ratio (rounds ahead)   p99 ratio (rounds lower)")
for name in sys.argv[4:]:
    if name == ref:
        continue
    stats = pair_stats((wrk[r, name], wrk[r, ref]) for r in rounds if (r, name) in wrk and (r, ref) in wrk)
    if stats is None:
        print(f"{name:<18} no round with both runs complete")
        continue
    rate, ahead, p99, lower, n = stats
    print(f"{name:<18} {rate:16.3f} ({ahead}/{n}) {p99:17.3f} ({lower}/{n})")

# The shape of the tail (bench/percentiles.lua's line in each run's output), medians of rounds.
cuts = ["p50", "p90", "p95", "p98", "p99", "p99.9", "max"]
print("\nlatency ms, median of rounds " + "".join(f"{c:>8}" for c in cuts))
for name in sys.argv[4:]:
    tails = [w["tail"] for (_, n), w in wrk.items() if n == name and w["tail"]]
    if tails:
        cells = "".join(f"{statistics.median(t[c] for t in tails):8.2f}" for c in cuts)
        print(f"{name:<30}{cells}")
PY
