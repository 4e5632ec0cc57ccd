#!/usr/bin/env bash
# Each proxy's rate under the bench/proxy.sh load by where the processes run (taskset): `alone`
# (the proxy on CPU 1, wrk and the backend on CPU 0), `backend` (the backend beside the proxy),
# `wrk` (wrk beside the proxy), `free` (the scheduler's choice).
#   bench/experiments/placement.sh [ROUNDS]   # default 2; env: GATEWAY_BIN=path  DURATION=4
source "$(dirname "${BASH_SOURCE[0]}")/../proxy_common.sh"
ROUNDS="${1:-2}"
DURATION="${DURATION:-4}"
ensure_peers
make_workdir
start_backend
start_haproxy
start_nginx
start_gateway
pin() { local p; for p in $(pgrep -P "$2") "$2"; do taskset -a -p -c "$1" "$p" >/dev/null; done; }
for round in $(seq "$ROUNDS"); do
    for place in alone backend wrk free; do
        for sys in gateway nginx haproxy; do
            case $sys in
                haproxy) port=$HAPROXY_PORT pid=$HAPROXY_PID ;;
                nginx) port=$NGINX_PORT pid=$NGINX_PID ;;
                gateway) port=$GATEWAY_PORT pid=$GATEWAY_PID ;;
            esac
            case $place in
                alone) pin 1 "$pid"; pin 0 "$BACKEND_PID"; cpus=0 ;;
                backend) pin 1 "$pid"; pin 1 "$BACKEND_PID"; cpus=0 ;;
                wrk) pin 1 "$pid"; pin 0 "$BACKEND_PID"; cpus=1 ;;
                free) pin 0-1 "$pid"; pin 0-1 "$BACKEND_PID"; cpus=0-1 ;;
            esac
            out="$WORK/$round-$place-$sys.txt"
            run_fg taskset -c "$cpus" wrk -t1 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$port/" >"$out"
            printf "round %s  %-8s %-8s %6.1fk  p99 %s\n" "$round" "$place" "$sys" \
                "$(awk '/Requests\/sec/ {print $2 / 1000}' "$out")" "$(awk '$1 == "99%" {print $2}' "$out")"
        done
    done
done
