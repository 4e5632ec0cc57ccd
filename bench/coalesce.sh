#!/usr/bin/env bash
# Dog-pile avoidance: many clients asking for the same URL of a slow backend. For each system,
# wrk with 500 connections asks for one URL whose backend answer takes 50 ms; the script
# counts the requests that reach the backend (its /count) and prints upstream requests/s
# beside the clients' requests/s and p99:
#
#   gateway-off        route without a cache: every request goes upstream
#   gateway-coalesce   route with "cache": {} (coalescing only, nothing stored): identical
#                      requests in flight at once share one upstream request
#   gateway-cache      route with "cache": {"max_bytes": 1048576, "stale_while_revalidate_ms":
#                      10000}: also stores the answer for its Cache-Control max-age (1 s
#                      here), then serves it stale while one request refreshes it (as nginx's
#                      proxy_cache_use_stale updating below)
#   nginx-cache-lock   nginx proxy_cache + proxy_cache_lock on + proxy_cache_use_stale updating
#                      (the same max-age=1 honoured)
#
#   bench/coalesce.sh [ROUNDS]        (default 1)
#   env: SYSTEMS=gateway-off,gateway-coalesce,gateway-cache,nginx-cache-lock
#        DURATION=10 (s per run)  CONNECTIONS=500  THREADS=1  DELAY_MS=50  MAX_AGE=1
#        GATEWAY_BIN=path (skips the release build)  KEEP=1
#
# The backend is `gateway demo-backend` (/slow?ms=50&max_age=1 answers after 50 ms with
# Cache-Control: max-age=1; /count tells how many requests it answered). The gateway runs
# one node with --workers 1 and nginx worker_processes 1. Only 127.0.0.1 is used; everything
# started is ended on exit or Ctrl-C (the trap of bench/proxy_common.sh).
source "$(dirname "${BASH_SOURCE[0]}")/proxy_common.sh"

ROUNDS="${1:-${ROUNDS:-1}}"
SYSTEMS="${SYSTEMS:-gateway-off,gateway-coalesce,gateway-cache,nginx-cache-lock}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-500}"
THREADS="${THREADS:-1}"
DELAY_MS="${DELAY_MS:-50}"
MAX_AGE="${MAX_AGE:-1}"
case "$ROUNDS$DURATION$CONNECTIONS$THREADS$DELAY_MS$MAX_AGE" in *[!0-9]*) echo "error: ROUNDS, DURATION, CONNECTIONS, THREADS, DELAY_MS, MAX_AGE must be whole numbers" >&2; exit 2 ;; esac
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || { echo "error: ROUNDS must be 1..20" >&2; exit 2; }
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 120 ] || { echo "error: DURATION must be 1..120" >&2; exit 2; }
[ "$CONNECTIONS" -ge 1 ] && [ "$CONNECTIONS" -le 5000 ] || { echo "error: CONNECTIONS must be 1..5000" >&2; exit 2; }

ensure_tools() {
    local pkgs=()
    command -v wrk >/dev/null 2>&1 || pkgs+=(wrk)
    command -v nginx >/dev/null 2>&1 || pkgs+=(nginx-light)
    command -v curl >/dev/null 2>&1 || pkgs+=(curl)
    [ ${#pkgs[@]} -eq 0 ] && return 0
    pinfo "installing ${pkgs[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >&2; then
        $sudo apt-get update >&2
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >&2
    fi
}

ensure_tools
build_gateway
make_workdir
RESULTS="$WORK/results"
mkdir -p "$RESULTS"
URL_PATH="/slow?ms=$DELAY_MS&max_age=$MAX_AGE"

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(nproc) cores  load:$(uptime | sed 's/.*load average://')"
echo "repo: $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo 'no commit')  gateway: $GATEWAY_BIN  nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"
echo "command: bench/coalesce.sh $ROUNDS  (SYSTEMS=$SYSTEMS DURATION=$DURATION CONNECTIONS=$CONNECTIONS THREADS=$THREADS DELAY_MS=$DELAY_MS MAX_AGE=$MAX_AGE)"
echo "load: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency 'http://127.0.0.1:PORT$URL_PATH'"

# --- the backend: gateway demo-backend, counting ------------------------------------------------
SLOW_PORT=$(free_port)
start_bg demo-backend "$GATEWAY_BIN" demo-backend --listen "127.0.0.1:$SLOW_PORT" --name slow
wait_port "$SLOW_PORT" demo-backend
backend_count() { curl -s -m 5 "http://127.0.0.1:$SLOW_PORT/count" | tr -d '[:space:]'; }
[ -n "$(backend_count)" ] || { pinfo "error: the demo backend has no /count (is GATEWAY_BIN current?)"; exit 1; }

# --- the gateway: one node, three routes (by host) ----------------------------------------------
GATEWAY_PORT=$(free_port)
GATEWAY_ADMIN_PORT=$(free_port)
GW_CLUSTER_PORT=$(free_port)
mkdir -p "$WORK/gateway"
start_bg gateway env RUST_LOG="${GATEWAY_RUST_LOG:-warn}" "$GATEWAY_BIN" serve \
    --id 1 --data-dir "$WORK/gateway/data" --cluster-addr "127.0.0.1:$GW_CLUSTER_PORT" \
    --admin-addr "127.0.0.1:$GATEWAY_ADMIN_PORT" --http-addr "127.0.0.1:$GATEWAY_PORT" \
    --init --workers 1
GATEWAY_PID=$LAST_PID
for _ in $(seq 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$GATEWAY_ADMIN_PORT/readyz")" = 200 ] && break
    kill -0 "$GATEWAY_PID" 2>/dev/null || { pinfo "error: the gateway exited"; tail -20 "$WORK/gateway.log" >&2; exit 1; }
    sleep 0.1
done
admin_put "/v1/pools/slow" "{\"backends\":[{\"id\":\"s1\",\"address\":\"127.0.0.1:$SLOW_PORT\"}]}"
admin_put "/v1/routes/off" '{"pool":"slow","hosts":["off.test"]}'
admin_put "/v1/routes/coalesce" '{"pool":"slow","hosts":["coalesce.test"],"cache":{}}'
admin_put "/v1/routes/cache" '{"pool":"slow","hosts":["cache.test"],"cache":{"max_bytes":1048576,"stale_while_revalidate_ms":10000}}'

# --- nginx with proxy_cache and proxy_cache_lock ------------------------------------------------
NGINX_PORT=$(free_port)
NGX="$WORK/nginx"
mkdir -p "$NGX/cache"
cat >"$NGX/nginx.conf" <<EOF
worker_processes 1;
pid $NGX/nginx.pid;
$NGINX_COMMON
http {
    $NGINX_HTTP_COMMON
    client_body_temp_path $NGX/tmp;
    proxy_temp_path $NGX/tmp-proxy;
    proxy_cache_path $NGX/cache levels=1:2 keys_zone=bench:10m max_size=64m inactive=60s use_temp_path=off;
    upstream slow {
        server 127.0.0.1:$SLOW_PORT;
        keepalive 512;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://slow;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 5s;
            # The lock covers new entries only: an expired one is refreshed by one request
            # while the others get the stale copy (else all of them go upstream each second).
            proxy_cache_use_stale updating;
            add_header X-Cache \$upstream_cache_status;
        }
    }
}
EOF
if ! nginx -t -p "$NGX" -e "$NGX/error.log" -c "$NGX/nginx.conf" >"$NGX/test.out" 2>&1; then
    pinfo "error: this nginx cannot run the proxy_cache config (install nginx-core or nginx):"
    cat "$NGX/test.out" >&2
    exit 1
fi
start_bg nginx nginx -p "$NGX" -e "$NGX/error.log" -c "$NGX/nginx.conf"
wait_port "$NGINX_PORT" nginx

# The port and Host header of each system.
target_of() {
    case "$1" in
        gateway-off) echo "$GATEWAY_PORT off.test" ;;
        gateway-coalesce) echo "$GATEWAY_PORT coalesce.test" ;;
        gateway-cache) echo "$GATEWAY_PORT cache.test" ;;
        nginx-cache-lock) echo "$NGINX_PORT localhost" ;;
        *) echo "error: unknown system '$1' (gateway-off, gateway-coalesce, gateway-cache, nginx-cache-lock)" >&2; return 2 ;;
    esac
}

IFS=',' read -r -a SYS <<<"$SYSTEMS"
for s in "${SYS[@]}"; do
    read -r port host < <(target_of "$s") || exit 2
    got=""
    for _ in $(seq 100); do
        got=$(curl -s -m 5 -H "Host: $host" "http://127.0.0.1:$port$URL_PATH" || true)
        [ "$got" = "get from slow" ] && break
        sleep 0.1
    done
    [ "$got" = "get from slow" ] || { pinfo "error: $s answered '$got'"; exit 1; }
done

printf '%-18s %12s %10s %14s %10s  %s\n' system "client req/s" "p99" "upstream req/s" "upstream" "errors"
for round in $(seq 1 "$ROUNDS"); do
    [ "$ROUNDS" -gt 1 ] && echo "round $round"
    for s in "${SYS[@]}"; do
        read -r port host < <(target_of "$s")
        out="$RESULTS/$round-$s.txt"
        before=$(backend_count)
        run_fg wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Host: $host" \
            "http://127.0.0.1:$port$URL_PATH" >"$out" 2>&1 || true
        after=$(backend_count)
        upstream=$((after - before))
        rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' "$out")
        p99=$(awk '$1 == "99%" {print $2}' "$out")
        errs=$(grep -E 'Non-2xx|Socket errors' "$out" | tr '\n' ' ' || true)
        printf '%-18s %12s %10s %14s %10s  %s\n' "$s" "${rps:-?}" "${p99:-?}" \
            "$(awk -v n="$upstream" -v d="$DURATION" 'BEGIN {printf "%.1f", n / d}')" "$upstream" "${errs:-none}"
    done
done
kill -0 "$GATEWAY_PID" 2>/dev/null || { echo "warning: the gateway exited during the run; see its log" >&2; exit 1; }
echo "load at the end:$(uptime | sed 's/.*load average://')"
