#!/usr/bin/env bash
# Data-plane throughput: requests/s and p99 through the gateway, nginx, HAProxy and Caddy in
# front of the same backend, and straight to the backend (the ceiling), under the same wrk load.
# Rounds are interleaved (round 1: every system, round 2: every system, ...) and the median of
# the rounds is reported, with the ratios gateway/nginx and gateway/haproxy.
#
# "gateway-churn" is the same load through the same gateway while its routes change 10 times a
# second (bench/proxy_churn.py: committed Raft writes, each swapping the route table); its wrk
# errors (non-2xx responses, socket errors) should be zero.
#
#   bench/proxy.sh [ROUNDS]          (default 3)
#   env: SYSTEMS=direct,nginx,haproxy,caddy,gateway,gateway-churn   DURATION=10 (s per run)
#        CONNECTIONS=64  THREADS=1  WARMUP=2 (s per system, before round 1)
#        CHURN_RATE=10 (route changes/s)  GATEWAY_BIN=path (skips the build)  KEEP=1
#
# Every system runs one worker thread: nginx worker_processes 1, haproxy nbthread 1, caddy
# GOMAXPROCS=1, gateway --workers 1; the backend is a separate nginx with one worker (see
# bench/proxy_common.sh). Only 127.0.0.1 is used; everything started is ended on exit or Ctrl-C.
source "$(dirname "${BASH_SOURCE[0]}")/proxy_common.sh"

ROUNDS="${1:-${ROUNDS:-3}}"
SYSTEMS="${SYSTEMS:-direct,nginx,haproxy,caddy,gateway,gateway-churn}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
WARMUP="${WARMUP:-2}"
CHURN_RATE="${CHURN_RATE:-10}"
case "$ROUNDS$DURATION$CONNECTIONS$THREADS$WARMUP" in *[!0-9]*) echo "error: ROUNDS, DURATION, CONNECTIONS, THREADS, WARMUP must be whole numbers" >&2; exit 2 ;; esac
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || { echo "error: ROUNDS must be 1..20" >&2; exit 2; }
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 120 ] || { echo "error: DURATION must be 1..120" >&2; exit 2; }

ensure_peers
case ",$SYSTEMS," in *,gateway*) build_gateway ;; esac
make_workdir
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
print_context
echo "command: bench/proxy.sh $ROUNDS  (SYSTEMS=$SYSTEMS DURATION=$DURATION CONNECTIONS=$CONNECTIONS THREADS=$THREADS CHURN_RATE=$CHURN_RATE)"
echo "load: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency http://127.0.0.1:PORT/ ; backend: nginx (1 worker) return 200, 13-byte body"

IFS=',' read -r -a SYS <<<"$SYSTEMS"
start_backend
for s in "${SYS[@]}"; do
    case "$s" in
        direct) ;;
        nginx) start_nginx ;;
        haproxy) start_haproxy ;;
        caddy) start_caddy ;;
        gateway) [ -n "${GATEWAY_PID:-}" ] || start_gateway ;;
        gateway-churn) [ -n "${GATEWAY_PID:-}" ] || start_gateway ;;
        *) echo "error: unknown system '$s' (direct, nginx, haproxy, caddy, gateway, gateway-churn)" >&2; exit 2 ;;
    esac
done

port_of() {
    case "$1" in
        direct) echo "$BACKEND_PORT" ;;
        nginx) echo "$NGINX_PORT" ;;
        haproxy) echo "$HAPROXY_PORT" ;;
        caddy) echo "$CADDY_PORT" ;;
        gateway | gateway-churn) echo "$GATEWAY_PORT" ;;
    esac
}

if [ "$WARMUP" -gt 0 ]; then
    for s in "${SYS[@]}"; do
        [ "$s" = gateway-churn ] && continue
        run_fg wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" "http://127.0.0.1:$(port_of "$s")/" >/dev/null
    done
fi

rss_mib() { awk '/^VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$1/status" 2>/dev/null; }
[ -n "${GATEWAY_PID:-}" ] && GATEWAY_RSS_START=$(rss_mib "$GATEWAY_PID")

for round in $(seq 1 "$ROUNDS"); do
    line="round $round:"
    for s in "${SYS[@]}"; do
        out="$RESULTS/$round-$s.txt"
        churn_pid=""
        if [ "$s" = gateway-churn ]; then
            python3 "$BENCH_DIR/proxy_churn.py" --admin-port "$GATEWAY_ADMIN_PORT" --rate "$CHURN_RATE" \
                --duration "$DURATION" >"$RESULTS/$round-churn.out" 2>&1 &
            churn_pid=$!
            STARTED_PIDS+=("$churn_pid")
        fi
        run_fg wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$(port_of "$s")/" >"$out" 2>&1 || true
        if [ -n "$churn_pid" ]; then
            wait "$churn_pid" || true
            sed -n 's/^CHURN //p' "$RESULTS/$round-churn.out" >"$RESULTS/$round-churn.json"
        fi
        rps=$(awk '/Requests\/sec/ {printf "%.1fk", $2/1000}' "$out")
        p99=$(awk '$1 == "99%" {print $2}' "$out")
        errs=$(grep -E 'Non-2xx|Socket errors' "$out" | tr '\n' ' ' || true)
        line="$line  $s ${rps:-?} p99 ${p99:-?}${errs:+ [$errs]}"
    done
    echo "$line"
done

for pid in ${GATEWAY_PID:-}; do
    if kill -0 "$pid" 2>/dev/null; then
        echo "gateway RSS: $GATEWAY_RSS_START after the warm-up, $(rss_mib "$pid") at the end"
    else
        echo "warning: the gateway exited during the run; see its log" >&2
    fi
done
echo "load at the end:$(uptime | sed 's/.*load average://')"
python3 "$BENCH_DIR/proxy_report.py" "$RESULTS" "$SYSTEMS" "$ROUNDS" "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency"
