#!/usr/bin/env bash
# HTTPS throughput: requests/s and p99 through the gateway's HTTPS listener beside nginx and
# HAProxy terminating TLS with the same ECDSA P-256 certificate (generated here with openssl),
# in front of the same plain-HTTP backend, under the same wrk load, in two modes:
#
#   keepalive  wrk's connections stay open: TLS is set up once per connection, then it is
#              record encryption and proxying only
#   close      every request carries `Connection: close`: a new TCP connection and a full TLS
#              handshake per request (wrk does not resume sessions)
#
# Rounds are interleaved (round 1: every system in every mode, round 2: ...) and the median of
# the rounds is reported with the ratios gateway/nginx and gateway/haproxy per mode.
#
#   bench/https.sh [ROUNDS]          (default 3)
#   env: SYSTEMS=nginx,haproxy,gateway  MODES=keepalive,close  DURATION=10 (s per run)
#        CONNECTIONS=64  THREADS=1  WARMUP=2 (s per system and mode, before round 1)
#        GATEWAY_BIN=path (skips the release build)  KEEP=1
#
# Every system runs one worker thread (nginx worker_processes 1, haproxy nbthread 1, gateway
# --workers 1) and keeps its backend connections alive; the backend is a separate nginx with
# one worker (bench/proxy_common.sh). TLS 1.3 is what every side negotiates by default. Only
# 127.0.0.1 is used; everything started is ended on exit or Ctrl-C.
source "$(dirname "${BASH_SOURCE[0]}")/proxy_common.sh"

ROUNDS="${1:-${ROUNDS:-3}}"
SYSTEMS="${SYSTEMS:-nginx,haproxy,gateway}"
MODES="${MODES:-keepalive,close}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-1}"
WARMUP="${WARMUP:-2}"
case "$ROUNDS$DURATION$CONNECTIONS$THREADS$WARMUP" in *[!0-9]*) echo "error: ROUNDS, DURATION, CONNECTIONS, THREADS, WARMUP must be whole numbers" >&2; exit 2 ;; esac
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 20 ] || { echo "error: ROUNDS must be 1..20" >&2; exit 2; }
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 120 ] || { echo "error: DURATION must be 1..120" >&2; exit 2; }
IFS=',' read -r -a SYS <<<"$SYSTEMS"
IFS=',' read -r -a MODE_LIST <<<"$MODES"
for m in "${MODE_LIST[@]}"; do
    case "$m" in keepalive | close) ;; *) echo "error: unknown mode '$m' (keepalive, close)" >&2; exit 2 ;; esac
done

ensure_peers
command -v openssl >/dev/null 2>&1 || {
    pinfo "installing openssl"
    apt-get install -y openssl >&2 || { apt-get update >&2 && apt-get install -y openssl >&2; }
}
case ",$SYSTEMS," in *,gateway,*) build_gateway ;; esac
make_workdir
RESULTS="$WORK/results"
mkdir -p "$RESULTS"

# One ECDSA P-256 certificate (self-signed, for bench.test) for every system.
CERT="$WORK/cert.pem"
KEY="$WORK/key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
    -keyout "$KEY" -out "$CERT" 2>"$WORK/openssl.log"
cat "$CERT" "$KEY" >"$WORK/haproxy.pem"

print_context
echo "command: bench/https.sh $ROUNDS  (SYSTEMS=$SYSTEMS MODES=$MODES DURATION=$DURATION CONNECTIONS=$CONNECTIONS THREADS=$THREADS)"
echo "load: wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency https://127.0.0.1:PORT/ (close: -H 'Connection: close'); certificate: ECDSA P-256 ($(openssl x509 -in "$CERT" -noout -text | grep -m1 'ASN1 OID' | awk '{print $3}')); backend: nginx (1 worker) return 200, 13-byte body"

# Fails unless GET https://127.0.0.1:$1/ answers with the backend's body.
check_https() {
    local port=$1 name=$2 body
    body="$(curl -sk -m 5 "https://127.0.0.1:$port/")" || true
    if [ "$body" != "hello, world" ]; then
        pinfo "error: $name on https://127.0.0.1:$port answered '$body' instead of the backend's 'hello, world'"
        tail -20 "$WORK/$name.log" >&2 || true
        return 1
    fi
}

start_nginx_tls() {
    NGINX_TLS_PORT=$(free_port)
    local dir="$WORK/nginx-tls"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
master_process on;
pid $dir/nginx.pid;
$NGINX_COMMON
http {
    $NGINX_HTTP_COMMON
    client_body_temp_path $dir/tmp;
    proxy_temp_path $dir/tmp-proxy;
    upstream bench {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl backlog=4096;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            $NGINX_FORWARD
        }
    }
}
EOF
    start_bg nginx-tls nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    wait_port "$NGINX_TLS_PORT" nginx-tls
    check_https "$NGINX_TLS_PORT" nginx-tls
}

start_haproxy_tls() {
    HAPROXY_TLS_PORT=$(free_port)
    local dir="$WORK/haproxy-tls"
    mkdir -p "$dir"
    cat >"$dir/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    option http-keep-alive
frontend bench
    bind 127.0.0.1:$HAPROXY_TLS_PORT ssl crt $WORK/haproxy.pem
    maxconn 9000
$(haproxy_forward https)
    default_backend bench
backend bench
    http-reuse always
    server b1 127.0.0.1:$BACKEND_PORT maxconn 1000
EOF
    start_bg haproxy-tls haproxy -db -f "$dir/haproxy.cfg"
    wait_port "$HAPROXY_TLS_PORT" haproxy-tls
    check_https "$HAPROXY_TLS_PORT" haproxy-tls
}

start_gateway_tls() {
    GATEWAY_TLS_PORT=$(free_port)
    GATEWAY_EXTRA_ARGS="--https-addr 127.0.0.1:$GATEWAY_TLS_PORT" start_gateway
    # The certificate is the default one: wrk connects to an IP address, so it sends no SNI
    # name the gateway would match.
    local body
    body=$(python3 -c 'import json,sys; print(json.dumps({"cert_pem": open(sys.argv[1]).read(), "key_pem": open(sys.argv[2]).read(), "default": True}))' "$CERT" "$KEY")
    admin_put "/v1/certs/bench" "$body"
    for _ in $(seq 100); do
        [ "$(curl -sk -m 2 "https://127.0.0.1:$GATEWAY_TLS_PORT/")" = "hello, world" ] && break
        sleep 0.1
    done
    check_https "$GATEWAY_TLS_PORT" gateway
}

start_backend
for s in "${SYS[@]}"; do
    case "$s" in
        nginx) start_nginx_tls ;;
        haproxy) start_haproxy_tls ;;
        gateway) start_gateway_tls ;;
        *) echo "error: unknown system '$s' (nginx, haproxy, gateway)" >&2; exit 2 ;;
    esac
done

port_of() {
    case "$1" in
        nginx) echo "$NGINX_TLS_PORT" ;;
        haproxy) echo "$HAPROXY_TLS_PORT" ;;
        gateway) echo "$GATEWAY_TLS_PORT" ;;
    esac
}

# wrk for system $1 in mode $2 for $3 seconds, output to stdout.
load() {
    local extra=()
    [ "$2" = close ] && extra=(-H "Connection: close")
    run_fg wrk -t"$THREADS" -c"$CONNECTIONS" -d"${3}s" --latency "${extra[@]}" "https://127.0.0.1:$(port_of "$1")/"
}

if [ "$WARMUP" -gt 0 ]; then
    for s in "${SYS[@]}"; do
        for m in "${MODE_LIST[@]}"; do load "$s" "$m" "$WARMUP" >/dev/null 2>&1 || true; done
    done
fi

for round in $(seq 1 "$ROUNDS"); do
    for m in "${MODE_LIST[@]}"; do
        line="round $round $m:"
        for s in "${SYS[@]}"; do
            out="$RESULTS/$round-$s-$m.txt"
            load "$s" "$m" "$DURATION" >"$out" 2>&1 || true
            rps=$(awk '/Requests\/sec/ {printf "%.1fk", $2/1000}' "$out")
            p99=$(awk '$1 == "99%" {print $2}' "$out")
            errs=$(grep -E 'Non-2xx|Socket errors' "$out" | tr '\n' ' ' || true)
            line="$line  $s ${rps:-?} p99 ${p99:-?}${errs:+ [$errs]}"
        done
        echo "$line"
    done
done

if [ -n "${GATEWAY_PID:-}" ] && ! kill -0 "$GATEWAY_PID" 2>/dev/null; then
    echo "warning: the gateway exited during the run; see its log" >&2
fi
echo "load at the end:$(uptime | sed 's/.*load average://')"
python3 "$BENCH_DIR/tls_report.py" "$RESULTS" "$ROUNDS" "$MODES" "$SYSTEMS" "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s --latency"
