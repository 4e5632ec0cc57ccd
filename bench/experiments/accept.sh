#!/usr/bin/env bash
# New connections through gateways with several data plane workers: wrk with
# `Connection: close` (a new connection for every request) against the bench backend, set up
# as bench/proxy.sh does, in interleaved rounds. Per build and round: connections (requests)
# a second, accept4 calls per connection (those beyond one found nothing to accept: a worker
# woken for a connection another took), and the data plane threads' wake-ups (voluntary
# context switches) and CPU time per connection. Medians of the rounds at the end.
#
#   bench/experiments/accept.sh ROUNDS NAME=BINARY...
#   env: WORKERS=4 (--workers of every gateway)  DURATION=5  CONNECTIONS=16  KEEP=1
source "$(dirname "${BASH_SOURCE[0]}")/../proxy_common.sh"

ROUNDS="${1:-}"
shift || true
case "$ROUNDS" in '' | *[!0-9]*) echo "usage: bench/experiments/accept.sh ROUNDS NAME=BINARY..." >&2; exit 2 ;; esac
[ $# -ge 1 ] || { echo "error: name at least one build (NAME=BINARY)" >&2; exit 2; }
WORKERS="${WORKERS:-4}"
DURATION="${DURATION:-5}"
CONNECTIONS="${CONNECTIONS:-16}"
command -v perf >/dev/null || { echo "error: perf is needed (apt-get install linux-perf)" >&2; exit 2; }

ensure_peers
make_workdir
start_backend
names=()
declare -A PORT PID
for v in "$@"; do
    case "$v" in *=*) ;; *) echo "error: '$v' is not NAME=BINARY" >&2; exit 2 ;; esac
    name=${v%%=*} bin=${v#*=}
    [ -x "$bin" ] || { echo "error: $bin ($name) is not an executable" >&2; exit 2; }
    GATEWAY_BIN=$bin WORKERS=$WORKERS start_gateway "gw-$name"
    names+=("$name")
    PORT[$name]=$GATEWAY_PORT
    PID[$name]=$GATEWAY_PID
done
print_context
echo "command: bench/experiments/accept.sh $ROUNDS $*  (WORKERS=$WORKERS DURATION=$DURATION CONNECTIONS=$CONNECTIONS)"

HZ=$(getconf CLK_TCK)

for name in "${names[@]}"; do
    run_fg wrk -t1 -c"$CONNECTIONS" -d2s -H "Connection: close" "http://127.0.0.1:${PORT[$name]}/" >/dev/null
done
for round in $(seq "$ROUNDS"); do
    line="round $round:"
    for name in "${names[@]}"; do
        pid=${PID[$name]} out="$WORK/accept-$round-$name"
        s0=$(wakeups "$pid" "gateway-http-*") t0=$(thread_ticks "$pid" "gateway-http-*")
        perf stat -x, -e syscalls:sys_enter_accept4 -p "$pid" -o "$out.perf" -- \
            wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "Connection: close" \
            "http://127.0.0.1:${PORT[$name]}/" >"$out.wrk" 2>&1
        s1=$(wakeups "$pid" "gateway-http-*") t1=$(thread_ticks "$pid" "gateway-http-*")
        conns=$(awk '/requests in/ {print $1}' "$out.wrk")
        accepts=$(awk -F, '/accept4/ {print $1}' "$out.perf")
        errors=$(awk '/Socket errors|Non-2xx/ {print}' "$out.wrk" | tr -s ' ')
        echo "$name $conns $accepts $((s1 - s0)) $((t1 - t0)) $DURATION $HZ" >>"$WORK/rows"
        line+="  $name $(awk -v c="$conns" -v d="$DURATION" 'BEGIN {printf "%.1fk conn/s", c / d / 1000}')${errors:+ ($errors)}"
    done
    echo "$line"
done
echo
python3 - "$WORK/rows" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, conns, accepts, switches, ticks, secs, hz = line.split()
    c = int(conns)
    rows[name].append((c / float(secs), int(accepts) / c, int(switches) / c, int(ticks) / int(hz) / c * 1e6))
print(f"{'median of rounds':<18} {'conn/s':>9} {'accept4/conn':>13} {'wake-ups/conn':>14} {'CPU us/conn':>12}")
for name, v in rows.items():
    m = [statistics.median(x[i] for x in v) for i in range(4)]
    print(f"{name:<18} {m[0] / 1000:8.1f}k {m[1]:13.2f} {m[2]:14.2f} {m[3]:12.1f}")
PY
