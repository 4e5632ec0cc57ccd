#!/usr/bin/env bash
# Who waits for a CPU: the gateway, nginx and HAProxy in front of the backend, set up as
# bench/proxy.sh does, each under wrk -t1 -c64 in interleaved rounds, with `perf sched record`
# over 3 s in the middle of each run. Per run: wrk's rate and p99, then for the proxy's worker,
# the backend's worker and wrk (and any other task that ran 10 ms or more) how often they were
# put on a CPU, for how long they ran, how long they waited for one when runnable (the
# scheduling delay), how many of those waits were 0.5, 1 and 2 ms or longer, and how often it
# left the CPU asleep (waiting for something) or preempted (still runnable).
#
#   bench/experiments/sched.sh [ROUNDS]     (default 2)
#   env: SYSTEMS=nginx,haproxy,gateway  GATEWAY_BIN=path  KEEP=1
source "$(dirname "${BASH_SOURCE[0]}")/../proxy_common.sh"

ROUNDS="${1:-2}"
case "$ROUNDS" in '' | *[!0-9]*) echo "error: ROUNDS must be a whole number" >&2; exit 2 ;; esac
IFS=, read -r -a SYSTEMS <<<"${SYSTEMS:-nginx,haproxy,gateway}"
command -v perf >/dev/null || { echo "error: perf is needed (apt-get install linux-perf)" >&2; exit 2; }

ensure_peers
build_gateway
make_workdir
start_backend
declare -A PORT PID
for sys in "${SYSTEMS[@]}"; do
    case "$sys" in
        nginx) start_nginx; PORT[$sys]=$NGINX_PORT; PID[$sys]=$NGINX_PID ;;
        haproxy) start_haproxy; PORT[$sys]=$HAPROXY_PORT; PID[$sys]=$HAPROXY_PID ;;
        gateway) start_gateway; PORT[$sys]=$GATEWAY_PORT; PID[$sys]=$GATEWAY_PID ;;
        *) echo "error: '$sys' is not nginx, haproxy or gateway" >&2; exit 2 ;;
    esac
done
print_context
# The gateway's other threads run beside every system (its control plane, mostly
# tokio-rt-worker), since it is started with the others.
echo "command: bench/experiments/sched.sh $ROUNDS  (SYSTEMS=${SYSTEMS[*]})"
# The worker thread of each: the gateway's data plane thread, nginx's and HAProxy's one
# process or thread under their master.
worker_of() {
    local pid=$1 p t
    for p in "$pid" $(pgrep -P "$pid"); do
        for t in /proc/"$p"/task/*; do
            [ "$(cat "$t/comm")" = gateway-http-0 ] && { basename "$t"; return; }
        done
    done
    pgrep -P "$pid" | head -1 | grep . || echo "$pid"
}
BACKEND_WORKER=$(worker_of "$BACKEND_PID")
for sys in "${SYSTEMS[@]}"; do
    run_fg wrk -t1 -c64 -d2s "http://127.0.0.1:${PORT[$sys]}/" >/dev/null
done
for round in $(seq "$ROUNDS"); do
    for sys in "${SYSTEMS[@]}"; do
        out="$WORK/sched-$round-$sys"
        wrk -t1 -c64 -d5s --latency "http://127.0.0.1:${PORT[$sys]}/" >"$out.wrk" &
        wrk_pid=$!
        sleep 1
        perf sched record -o "$out.data" -- sleep 3 >/dev/null 2>&1
        wait "$wrk_pid"
        perf sched timehist --state -i "$out.data" >"$out.txt" 2>/dev/null
        echo "round $round $sys: $(awk '/Requests\/sec/ {r = $2} $1 == "99%" {p = $2} END {printf "%.1fk req/s, p99 %s", r / 1000, p}' "$out.wrk")"
        python3 - "$out.txt" "$(worker_of "${PID[$sys]}")" "$BACKEND_WORKER" <<'PY'
import collections, sys
# perf sched timehist --state: time, cpu, comm[tid] (or [tid/pid]), wait, scheduling delay,
# run (ms), the state it left the CPU in (S, D: asleep; R: preempted)
path, proxy, backend = sys.argv[1:]
runs = collections.defaultdict(list)
for line in open(path):
    f = line.split()
    if len(f) < 6 or not f[0][0].isdigit() or "[" not in f[2]:
        continue
    comm, tid = f[2].rstrip("]").rsplit("[", 1)
    tid = tid.split("/")[0]  # [tid/pid] for threads
    who = {proxy: "proxy worker", backend: "backend worker"}.get(tid, comm)
    try:
        runs[who].append((float(f[4]), float(f[5]), f[6] if len(f) > 6 else ""))
    except ValueError:
        pass
print(f"  {'task':<16} {'runs':>6} {'run ms':>8} {'delay ms':>9} {'>=0.5ms':>8} {'>=1ms':>6} "
      f"{'>=2ms':>6} {'max ms':>7} {'slept':>6} {'preempted':>9}")
for who, v in sorted(runs.items(), key=lambda kv: -sum(r for _, r, _ in kv[1])):
    run = sum(r for _, r, _ in v)
    if who == "<idle>" or (run < 10 and who not in ("proxy worker", "backend worker", "wrk")):
        continue
    d = [s for s, _, _ in v]
    slept = sum(st in ("S", "D", "I") for _, _, st in v)
    preempted = sum(st == "R" for _, _, st in v)
    print(f"  {who:<16} {len(v):6d} {run:8.1f} {sum(d):9.1f} {sum(s >= 0.5 for s in d):8d} "
          f"{sum(s >= 1 for s in d):6d} {sum(s >= 2 for s in d):6d} {max(d):7.2f} {slept:6d} "
          f"{preempted:9d}")
PY
    done
done
