#!/usr/bin/env bash
# CPU per proxied request of each proxy and of the backend behind it, and how the traffic
# looks on the wire, under the bench/proxy.sh load (wrk -t1 -c64): nginx, HAProxy and the
# gateway (same configs as bench/proxy.sh), alternated ROUNDS times, 6 s each after 2 s of
# warm-up. Per request it prints:
#   proxy cpu / backend cpu   utime+stime of the process (nginx: master and workers) from /proc
#   segs                      TCP segments sent on the machine (nstat TcpOutSegs; 4 = one per hop)
#   proxy / backend wakeups   voluntary context switches (how often the process went to sleep)
#
#   bench/proxy_cpu.sh [ROUNDS]      (default 3)
#   env: SYSTEMS=nginx,haproxy,gateway  CONNECTIONS=64  SECONDS_EACH=6  GATEWAY_BIN=path  KEEP=1
source "$(dirname "${BASH_SOURCE[0]}")/proxy_common.sh"

ROUNDS="${1:-3}"
SYSTEMS="${SYSTEMS:-nginx,haproxy,gateway}"
CONNECTIONS="${CONNECTIONS:-64}"
SECONDS_EACH="${SECONDS_EACH:-6}"
USER_GATEWAY_BIN="${GATEWAY_BIN:-}"
ensure_peers
command -v nstat >/dev/null 2>&1 || { pinfo "error: nstat (Debian package iproute2) is needed"; exit 1; }
build_gateway
make_workdir
start_backend
IFS=, read -r -a systems <<<"$SYSTEMS"
for s in "${systems[@]}"; do
    case "$s" in
        nginx) start_nginx ;;
        haproxy) start_haproxy ;;
        gateway) start_gateway ;;
        *) pinfo "error: unknown system '$s' (use nginx, haproxy, gateway)"; exit 2 ;;
    esac
done

echo "command: ${USER_GATEWAY_BIN:+GATEWAY_BIN=$USER_GATEWAY_BIN }bench/proxy_cpu.sh $ROUNDS (SYSTEMS=$SYSTEMS)"
printf '%-6s %-8s %8s %16s %18s %6s %16s %18s\n' round system 'req/s' 'proxy cpu us' 'backend cpu us' segs 'proxy wakeups' 'backend wakeups'
hz=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
    for s in "${systems[@]}"; do
        case "$s" in
            nginx) port=$NGINX_PORT pid=$NGINX_PID ;;
            haproxy) port=$HAPROXY_PORT pid=$HAPROXY_PID ;;
            gateway) port=$GATEWAY_PORT pid=$GATEWAY_PID ;;
        esac
        run_fg wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null
        nstat -n >/dev/null
        c0=$(ticks "$pid"); b0=$(ticks "$BACKEND_PID"); w0=$(wakeups "$pid"); v0=$(wakeups "$BACKEND_PID")
        out=$(run_fg wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_EACH}s" "http://127.0.0.1:$port/")
        c1=$(ticks "$pid"); b1=$(ticks "$BACKEND_PID"); w1=$(wakeups "$pid"); v1=$(wakeups "$BACKEND_PID")
        segs=$(nstat 2>/dev/null | awk '$1=="TcpOutSegs" {print $2}')
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        python3 - "$round" "$s" "$reqs" "$SECONDS_EACH" "$hz" "$c0" "$c1" "$b0" "$b1" "${segs:-0}" "$w0" "$w1" "$v0" "$v1" <<'PY'
import sys
round_, name, reqs, secs, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
c0, c1, b0, b1, segs, w0, w1, v0, v1 = map(int, sys.argv[6:15])
us = 1e6 / hz / reqs
print(f"{round_:<6} {name:<8} {reqs / secs:8.0f} {(c1 - c0) * us:16.1f} {(b1 - b0) * us:18.1f} "
      f"{segs / reqs:6.2f} {(w1 - w0) / reqs:16.3f} {(v1 - v0) / reqs:18.3f}")
PY
    done
done
