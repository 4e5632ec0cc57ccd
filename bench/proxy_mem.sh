#!/usr/bin/env bash
# Memory per idle keep-alive client connection: CONNS connections (default 8,000) are opened to
# each proxy, each sends one request and then stays open and idle; the proxy's RSS (VmRSS from
# /proc/PID/status, master and workers summed for nginx) before and after, divided by the number
# of connections still open. Systems are measured one after the other, each freshly started and
# then stopped, in front of the same backend as bench/proxy.sh (see bench/proxy_common.sh).
#
#   bench/proxy_mem.sh [CONNS]        (default 8000; the open-file limit must allow about 2x)
#   env: SYSTEMS=nginx,haproxy,gateway (caddy also works)  ROUNDS=1  WINDOW=64 (connections
#        being opened at once)  SETTLE=3 (s)  GATEWAY_BIN=path (skips the build)  KEEP=1
source "$(dirname "${BASH_SOURCE[0]}")/proxy_common.sh"

CONNS="${1:-${CONNS:-8000}}"
SYSTEMS="${SYSTEMS:-nginx,haproxy,gateway}"
ROUNDS="${ROUNDS:-1}"
WINDOW="${WINDOW:-64}"
SETTLE="${SETTLE:-3}"
case "$CONNS$ROUNDS$WINDOW" in *[!0-9]*) echo "error: CONNS, ROUNDS, WINDOW must be whole numbers" >&2; exit 2 ;; esac
[ "$CONNS" -ge 1 ] && [ "$CONNS" -le 9000 ] || { echo "error: CONNS must be 1..9000 (haproxy is given maxconn 9000)" >&2; exit 2; }
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 10 ] || { echo "error: ROUNDS must be 1..10" >&2; exit 2; }
need=$((CONNS * 2 + 200))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
    ulimit -n "$need" 2>/dev/null || { echo "error: ulimit -n is $(ulimit -n); $need open files are needed for $CONNS connections" >&2; exit 2; }
fi

ensure_peers
case ",$SYSTEMS," in *,gateway,*) build_gateway ;; esac
make_workdir
print_context
echo "command: bench/proxy_mem.sh $CONNS  (SYSTEMS=$SYSTEMS ROUNDS=$ROUNDS WINDOW=$WINDOW SETTLE=$SETTLE; ulimit -n $(ulimit -n))"

IFS=',' read -r -a SYS <<<"$SYSTEMS"
start_backend
declare -A PER_CONN
for round in $(seq 1 "$ROUNDS"); do
    for s in "${SYS[@]}"; do
        case "$s" in
            nginx) start_nginx; pid=$NGINX_PID; port=$NGINX_PORT ;;
            haproxy) start_haproxy; pid=$HAPROXY_PID; port=$HAPROXY_PORT ;;
            caddy) start_caddy; pid=$CADDY_PID; port=$CADDY_PORT ;;
            gateway) start_gateway; pid=$GATEWAY_PID; port=$GATEWAY_PORT ;;
            *) echo "error: unknown system '$s' (nginx, haproxy, caddy, gateway)" >&2; exit 2 ;;
        esac
        out="$WORK/mem-$round-$s.out"
        run_fg python3 "$BENCH_DIR/proxy_mem.py" --port "$port" --pid "$pid" --conns "$CONNS" \
            --window "$WINDOW" --settle "$SETTLE" --name "$s" >"$out" 2>&1 || true
        line=$(sed -n 's/^MEM //p' "$out")
        if [ -z "$line" ]; then
            echo "error: the memory probe of $s failed:" >&2
            cat "$out" >&2
            exit 1
        fi
        grep -v '^MEM ' "$out" | sed "s/^/round $round: /"
        # A round in which the proxy closed idle connections before the measurement is not
        # counted (their memory may be freed, or kept by the allocator: no sound figure).
        PER_CONN[$s]="${PER_CONN[$s]:-} $(python3 -c 'import json,sys; m=json.loads(sys.argv[1]); print(m.get("kb_per_conn") if not m.get("closed_by_proxy") and not m.get("failures") else None)' "$line")"
        stop_pid "$pid"
    done
done

echo
echo "| system | KB per idle keep-alive connection ($CONNS open, median of the $ROUNDS rounds) |"
echo "|---|---:|"
for s in "${SYS[@]}"; do
    med=$(python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:] if x != "None"]; print(f"{statistics.median(v):.1f}" if v else "-")' ${PER_CONN[$s]})
    n=$(tr ' ' '\n' <<<"${PER_CONN[$s]}" | grep -cvE '^(None)?$' || true)
    echo "| $s | $med$([ "$n" = "$ROUNDS" ] || echo " ($n of $ROUNDS rounds counted)") |"
done
