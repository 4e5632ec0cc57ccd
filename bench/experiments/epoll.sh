#!/usr/bin/env bash
# How each proxy takes its events from the kernel under the bench/proxy.sh load (wrk -t1 -c64
# against the same backend, set up as bench/proxy.sh does): per proxied request, how many
# epoll_wait calls its processes made and how many events those returned, and the events per
# call, from perf's syscalls:sys_exit_epoll_wait tracepoint (the return value is the count).
#
#   bench/experiments/epoll.sh [ROUNDS]     (default 1; the systems' order is the same each round)
#   env: GATEWAY_BIN=path (else built)  DURATION=3  CONNECTIONS=64  KEEP=1
source "$(dirname "${BASH_SOURCE[0]}")/../proxy_common.sh"

ROUNDS="${1:-1}"
case "$ROUNDS" in '' | *[!0-9]*) echo "usage: bench/experiments/epoll.sh [ROUNDS]" >&2; exit 2 ;; esac
DURATION="${DURATION:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
command -v perf >/dev/null || { echo "error: perf is needed (apt-get install linux-perf)" >&2; exit 2; }

ensure_peers
build_gateway
start_backend_and_proxies
print_context
echo "command: bench/experiments/epoll.sh $ROUNDS  (DURATION=$DURATION CONNECTIONS=$CONNECTIONS)"

measure() {
    local name=$1 port=$2 pids
    pids=$(pids_of "$3" | xargs | tr ' ' ',')
    wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null 2>&1
    perf record -q -e syscalls:sys_exit_epoll_wait -p "$pids" -o "$WORK/epoll-$name.data" \
        -- sleep "$DURATION" >/dev/null 2>&1 &
    local rec=$!
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$port/" >"$WORK/wrk-epoll-$name.txt" 2>&1
    wait "$rec"
    local requests
    requests=$(awk '/requests in/ {print $1}' "$WORK/wrk-epoll-$name.txt")
    perf script -i "$WORK/epoll-$name.data" 2>/dev/null | python3 -c '
import sys
name, requests = sys.argv[1], int(sys.argv[2])
counts = [int(line.split()[-1], 16) for line in sys.stdin if "sys_exit_epoll_wait" in line]
calls, events = len(counts), sum(counts)
print("%-8s %9d requests  epoll_wait/req %.4f  events/req %.3f  events per call %.1f  empty calls %d"
      % (name, requests, calls / requests, events / requests, events / max(calls, 1),
         sum(1 for c in counts if c == 0)))' "$name" "$requests"
}

for r in $(seq "$ROUNDS"); do
    echo "round $r:"
    measure nginx "$NGINX_PORT" "$NGINX_PID"
    measure haproxy "$HAPROXY_PORT" "$HAPROXY_PID"
    measure gateway "$GATEWAY_PORT" "$GATEWAY_PID"
done
