#!/usr/bin/env bash
# TCP proxy throughput: the gateway's TCP routes beside HAProxy in `mode tcp` (and straight to
# the backends, the ceiling), same backends, same load, in two modes:
#
#   bulk   MB/s of one long transfer: iperf3 -c through the proxy to an iperf3 server
#          (PARALLEL streams, default 1), client to server, for DURATION seconds
#   conns  connections/s of short ones: wrk with `Connection: close` through the proxy to an
#          HTTP backend (nginx, one worker, 13-byte answer), so every request is a new client
#          connection and a new backend connection through the proxy
#
# Rounds are interleaved and the median of the rounds is reported with the ratios
# gateway/haproxy and gateway/direct per mode.
#
#   bench/tcp.sh [ROUNDS]          (default 3)
#   env: SYSTEMS=direct,haproxy,gateway  MODES=bulk,conns  DURATION=10 (s per run)
#        CONNECTIONS=64 (conns)  THREADS=1 (conns)  PARALLEL=1 (bulk streams)  WARMUP=2
#        GATEWAY_BIN=path (skips the release build)  KEEP=1
#
# HAProxy runs nbthread 1, the gateway --workers 1. Only 127.0.0.1 is used; everything started
# is ended on exit or Ctrl-C.
source "$(dirname "${BASH_SOURCE[0]}")/proxy_common.sh"

ROUNDS="${1:-${ROUNDS:-3}}"
SYSTEMS="${SYSTEMS:-direct,haproxy,gateway}"
MODES="${MODES:-bulk,conns}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
PARALLEL="${PARALLEL:-1}"
WARMUP="${WARMUP:-2}"
case "$ROUNDS$DURATION$CONNECTIONS$THREADS$PARALLEL$WARMUP" in *[!0-9]*) echo "error: ROUNDS, DURATION, CONNECTIONS, THREADS, PARALLEL, WARMUP must be whole numbers" >&2; exit 2 ;; esac
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || { echo "error: ROUNDS must be 1..20" >&2; exit 2; }
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 120 ] || { echo "error: DURATION must be 1..120" >&2; exit 2; }
[ "$PARALLEL" -ge 1 ] && [ "$PARALLEL" -le 16 ] || { echo "error: PARALLEL must be 1..16" >&2; exit 2; }
IFS=',' read -r -a SYS <<<"$SYSTEMS"
IFS=',' read -r -a MODE_LIST <<<"$MODES"
for m in "${MODE_LIST[@]}"; do
    case "$m" in bulk | conns) ;; *) echo "error: unknown mode '$m' (bulk, conns)" >&2; exit 2 ;; esac
done

ensure_peers
command -v iperf3 >/dev/null 2>&1 || {
    pinfo "installing iperf3"
    # Debian asks whether to run iperf3 as a daemon; non-interactive installs say no.
    env DEBIAN_FRONTEND=noninteractive apt-get install -y iperf3 >&2 ||
        { apt-get update >&2 && env DEBIAN_FRONTEND=noninteractive apt-get install -y iperf3 >&2; }
}
case ",$SYSTEMS," in *,gateway,*) build_gateway ;; esac
make_workdir
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
print_context
echo "iperf3: $(iperf3 --version | head -1)"
echo "command: bench/tcp.sh $ROUNDS  (SYSTEMS=$SYSTEMS MODES=$MODES DURATION=$DURATION CONNECTIONS=$CONNECTIONS THREADS=$THREADS PARALLEL=$PARALLEL)"
echo "load: bulk: iperf3 -c 127.0.0.1 -p PORT -t $DURATION -P $PARALLEL -J ; conns: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency -H 'Connection: close' http://127.0.0.1:PORT/"

start_iperf() {
    IPERF_PORT=$(free_port)
    start_bg iperf3 iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
    wait_port "$IPERF_PORT" iperf3
}

start_haproxy_tcp() {
    HAPROXY_BULK_PORT=$(free_port)
    HAPROXY_CONNS_PORT=$(free_port)
    local dir="$WORK/haproxy-tcp"
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend bulk
    bind 127.0.0.1:$HAPROXY_BULK_PORT
    default_backend bulk
frontend conns
    bind 127.0.0.1:$HAPROXY_CONNS_PORT
    maxconn 9000
    default_backend conns
backend bulk
    server i1 127.0.0.1:$IPERF_PORT
backend conns
    server b1 127.0.0.1:$BACKEND_PORT maxconn 9000
EOF
    start_bg haproxy-tcp haproxy -db -f "$dir/haproxy.cfg"
    wait_port "$HAPROXY_CONNS_PORT" haproxy-tcp
    check_proxy "$HAPROXY_CONNS_PORT" haproxy-tcp
}

start_gateway_tcp() {
    start_gateway
    GATEWAY_BULK_PORT=$(free_port)
    GATEWAY_CONNS_PORT=$(free_port)
    admin_put "/v1/pools/tcp-bulk" "{\"backends\":[{\"id\":\"i1\",\"address\":\"127.0.0.1:$IPERF_PORT\"}]}"
    admin_put "/v1/pools/tcp-conns" "{\"backends\":[{\"id\":\"b1\",\"address\":\"127.0.0.1:$BACKEND_PORT\"}]}"
    admin_put "/v1/tcp-routes/bulk" "{\"listen\":\"127.0.0.1:$GATEWAY_BULK_PORT\",\"pool\":\"tcp-bulk\"}"
    admin_put "/v1/tcp-routes/conns" "{\"listen\":\"127.0.0.1:$GATEWAY_CONNS_PORT\",\"pool\":\"tcp-conns\"}"
    wait_port "$GATEWAY_BULK_PORT" gateway
    wait_port "$GATEWAY_CONNS_PORT" gateway
    check_proxy "$GATEWAY_CONNS_PORT" gateway
}

start_backend
start_iperf
for s in "${SYS[@]}"; do
    case "$s" in
        direct) ;;
        haproxy) start_haproxy_tcp ;;
        gateway) start_gateway_tcp ;;
        *) echo "error: unknown system '$s' (direct, haproxy, gateway)" >&2; exit 2 ;;
    esac
done

port_of() {
    case "$1-$2" in
        direct-bulk) echo "$IPERF_PORT" ;;
        direct-conns) echo "$BACKEND_PORT" ;;
        haproxy-bulk) echo "$HAPROXY_BULK_PORT" ;;
        haproxy-conns) echo "$HAPROXY_CONNS_PORT" ;;
        gateway-bulk) echo "$GATEWAY_BULK_PORT" ;;
        gateway-conns) echo "$GATEWAY_CONNS_PORT" ;;
    esac
}

# iperf3 through system $1 for $2 seconds, its JSON to stdout. The iperf3 server takes one test
# at a time; a test refused because the previous one is still closing is tried again.
bulk() {
    local port out
    port=$(port_of "$1" bulk)
    for _ in $(seq 20); do
        out=$(run_fg iperf3 -c 127.0.0.1 -p "$port" -t "$2" -P "$PARALLEL" -J 2>&1) || true
        case "$out" in *"server is busy"*) sleep 0.5 ;; *) break ;; esac
    done
    printf '%s\n' "$out"
}

conns() {
    run_fg wrk -t"$THREADS" -c"$CONNECTIONS" -d"${2}s" --latency -H "Connection: close" "http://127.0.0.1:$(port_of "$1" conns)/"
}

if [ "$WARMUP" -gt 0 ]; then
    for s in "${SYS[@]}"; do
        for m in "${MODE_LIST[@]}"; do "$m" "$s" "$WARMUP" >/dev/null 2>&1 || true; done
    done
fi

for round in $(seq 1 "$ROUNDS"); do
    for m in "${MODE_LIST[@]}"; do
        line="round $round $m:"
        for s in "${SYS[@]}"; do
            if [ "$m" = bulk ]; then
                out="$RESULTS/$round-$s-bulk.json"
                bulk "$s" "$DURATION" >"$out"
                fig=$(python3 -c 'import json,sys
try:
    d = json.load(open(sys.argv[1]))
except ValueError:
    print("? (no JSON from iperf3)")
else:
    e = d.get("end", {}).get("sum_received")
    print("%.0f MB/s" % (e["bits_per_second"] / 8e6) if e else "? (%s)" % d.get("error", "no result"))' "$out")
                line="$line  $s $fig"
            else
                out="$RESULTS/$round-$s-conns.txt"
                conns "$s" "$DURATION" >"$out" 2>&1 || true
                rps=$(awk '/Requests\/sec/ {printf "%.1fk", $2/1000}' "$out")
                p99=$(awk '$1 == "99%" {print $2}' "$out")
                errs=$(grep -E 'Non-2xx|Socket errors' "$out" | tr '\n' ' ' || true)
                line="$line  $s ${rps:-?} conn/s p99 ${p99:-?}${errs:+ [$errs]}"
            fi
        done
        echo "$line"
    done
done

if [ -n "${GATEWAY_PID:-}" ] && ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
    echo "warning: the gateway exited during the run; see its log" >&2
fi
echo "load at the end:$(uptime | sed 's/.*load average://')"
python3 "$BENCH_DIR/tls_report.py" "$RESULTS" "$ROUNDS" "$MODES" "$SYSTEMS" "conns: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s -H 'Connection: close'; bulk: iperf3 -t $DURATION -P $PARALLEL"
