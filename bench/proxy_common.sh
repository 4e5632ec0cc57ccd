# Shared by bench/proxy.sh, bench/proxy_mem.sh and bench/proxy_profile.sh (sourced, not run).
#
# Installs the peers from Debian's packages when missing (nginx, haproxy, caddy, wrk), builds the
# gateway, makes a fresh work folder, and starts each system on loopback ports of its own:
#
#   backend  a separate nginx instance, one worker, `return 200 "hello, world\n"` (13 bytes),
#            keep-alive without a request limit: the same fast backend behind every proxy
#   nginx    worker_processes 1, upstream keepalive 256
#   haproxy  nbthread 1, http-reuse always
#   caddy    GOMAXPROCS=1, reverse_proxy with keep-alive
#   gateway  one-node cluster (--init --workers 1), one pool "bench" with the backend, route "/"
#
# Every proxy forwards the same headers (the client's Host as sent, X-Forwarded-For/-Proto/-Host,
# and Forwarded as the gateway writes it: for=IP;host="HOST";proto=http) and logs no access lines.
# Every process started here is recorded and ended by the EXIT trap, on any exit including
# Ctrl-C; nothing is ever bound or targeted outside 127.0.0.1.

set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH_DIR")"

STARTED_PIDS=()

pinfo() { echo "$*" >&2; }

ensure_peers() {
    local missing=() pkgs=()
    command -v wrk >/dev/null 2>&1 || { missing+=(wrk); pkgs+=(wrk); }
    command -v nginx >/dev/null 2>&1 || { missing+=(nginx); pkgs+=(nginx-light); }
    command -v haproxy >/dev/null 2>&1 || { missing+=(haproxy); pkgs+=(haproxy); }
    command -v caddy >/dev/null 2>&1 || { missing+=(caddy); pkgs+=(caddy); }
    command -v curl >/dev/null 2>&1 || { missing+=(curl); pkgs+=(curl); }
    [ ${#pkgs[@]} -eq 0 ] && return 0
    pinfo "installing ${pkgs[*]} (missing: ${missing[*]})"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >&2; then
        $sudo apt-get update >&2
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" >&2
    fi
    # Debian's packages may start their own nginx/haproxy/caddy service on port 80; we never
    # use or touch those (every instance here has its own config and port).
}

build_gateway() {
    if [ -n "${GATEWAY_BIN:-}" ]; then return 0; fi
    pinfo "building: cargo build --release -p gateway"
    (cd "$REPO" && cargo build --release -p gateway >&2)
    GATEWAY_BIN="$REPO/target/release/gateway"
}

make_workdir() {
    WORK="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/gateway-proxy-bench.XXXXXX")"
    pinfo "work folder: $WORK"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        if [ "${KEEP:-0}" = 1 ] || { [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ]; }; then
            pinfo "kept $WORK (configs and logs)"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Starts "$@" in the background with output to $WORK/$name.log; sets LAST_PID.
start_bg() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    STARTED_PIDS+=("$LAST_PID")
}

# Runs "$@" in the background and waits for it, so that a signal reaches the trap at once
# (and the trap ends it). Output goes where the caller redirects this function's.
run_fg() {
    "$@" &
    local pid=$!
    STARTED_PIDS+=("$pid")
    local rc=0
    wait "$pid" || rc=$?
    return "$rc"
}

# Ends one process this script started (and waits for it): SIGTERM, then SIGKILL after
# $2 seconds (default 5).
stop_pid() {
    local pid=$1 grace=${2:-5}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq $((grace * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# A port below the ephemeral range (32768 and up here): a port the kernel handed out could be
# handed out again, to an outgoing connection, before the server that was to listen on it binds.
free_port() {
    python3 -c '
import random, socket
for _ in range(200):
    port = random.randrange(20000, 32768)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    break
else:
    raise SystemExit("error: no free port found in 20000-32767")'
}

# Waits (up to 10 s) until 127.0.0.1:$1 accepts connections, or fails naming $2's log.
wait_port() {
    local port=$1 name=$2
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    pinfo "error: $name did not listen on 127.0.0.1:$port; its log:"
    tail -20 "$WORK/$name.log" >&2 || true
    return 1
}

# Fails unless GET http://127.0.0.1:$1/ answers 200 with the backend's body.
check_proxy() {
    local port=$1 name=$2 body
    body="$(curl -s -m 5 "http://127.0.0.1:$port/")" || true
    if [ "$body" != "hello, world" ]; then
        pinfo "error: $name on 127.0.0.1:$port answered '$body' instead of the backend's 'hello, world'"
        tail -20 "$WORK/$name.log" >&2 || true
        return 1
    fi
}

# --- the systems ------------------------------------------------------------------------------

NGINX_COMMON="worker_rlimit_nofile 20000;
daemon off;
user root;
events { worker_connections 20000; multi_accept on; }"

NGINX_HTTP_COMMON="access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;"

# The request headers every proxy sends the backend, as the gateway writes them: the client's
# Host as sent, X-Forwarded-For/-Proto/-Host, and Forwarded (for=IP;host="HOST";proto=SCHEME).
# For nginx's `location` (also bench/https.sh's), and HAProxy's frontend (its scheme in $1).
NGINX_FORWARD='proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header Forwarded "for=$remote_addr;host=\"$http_host\";proto=$scheme";'
haproxy_forward() {
    cat <<EOF
    option forwardfor
    http-request set-header X-Forwarded-Proto $1
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header Forwarded 'for=%[src];host="%[req.hdr(host)]";proto=$1'
EOF
}

start_backend() {
    BACKEND_PORT=$(free_port)
    local dir="$WORK/backend"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
master_process on;
pid $dir/nginx.pid;
$NGINX_COMMON
http {
    $NGINX_HTTP_COMMON
    client_body_temp_path $dir/tmp;
    server {
        listen 127.0.0.1:$BACKEND_PORT backlog=4096;
        default_type text/plain;
        location / { return 200 "hello, world\n"; }
    }
}
EOF
    start_bg backend nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    BACKEND_PID=$LAST_PID
    wait_port "$BACKEND_PORT" backend
    check_proxy "$BACKEND_PORT" backend
}

start_nginx() {
    NGINX_PORT=$(free_port)
    local dir="$WORK/nginx"
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
master_process ${NGINX_MASTER:-on};
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
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            $NGINX_FORWARD
        }
    }
}
EOF
    # shellcheck disable=SC2086
    start_bg nginx ${NGINX_WRAP:-} nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    NGINX_PID=$LAST_PID
    wait_port "$NGINX_PORT" nginx
    check_proxy "$NGINX_PORT" nginx
}

start_haproxy() {
    HAPROXY_PORT=$(free_port)
    local dir="$WORK/haproxy"
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
    bind 127.0.0.1:$HAPROXY_PORT
    maxconn 9000
$(haproxy_forward http)
    default_backend bench
backend bench
    http-reuse always
    server b1 127.0.0.1:$BACKEND_PORT maxconn 1000
EOF
    # shellcheck disable=SC2086
    start_bg haproxy ${HAPROXY_WRAP:-} haproxy -db -f "$dir/haproxy.cfg"
    HAPROXY_PID=$LAST_PID
    wait_port "$HAPROXY_PORT" haproxy
    check_proxy "$HAPROXY_PORT" haproxy
}

start_caddy() {
    CADDY_PORT=$(free_port)
    local dir="$WORK/caddy"
    mkdir -p "$dir"
    cat >"$dir/Caddyfile" <<EOF
{
    admin off
    auto_https off
}
http://:$CADDY_PORT {
    bind 127.0.0.1
    reverse_proxy 127.0.0.1:$BACKEND_PORT {
        header_up Forwarded "for={remote_host};host=\"{hostport}\";proto={scheme}"
        transport http {
            keepalive 300s
            keepalive_idle_conns 256
            keepalive_idle_conns_per_host 256
        }
    }
}
EOF
    # Caddy sets X-Forwarded-For/-Proto/-Host and passes Host by default; Forwarded is set above.
    start_bg caddy env GOMAXPROCS=1 HOME="$dir" XDG_DATA_HOME="$dir/data" XDG_CONFIG_HOME="$dir/config" \
        caddy run --adapter caddyfile --config "$dir/Caddyfile"
    CADDY_PID=$LAST_PID
    wait_port "$CADDY_PORT" caddy
    check_proxy "$CADDY_PORT" caddy
}

# GATEWAY_WRAP (and NGINX_WRAP, HAPROXY_WRAP; e.g. "valgrind --tool=callgrind") runs the
# system under a tool.
# GATEWAY_EXTRA_ARGS adds flags to `gateway serve` (bench/https.sh: --https-addr).
# $1 names the instance (default "gateway": its folder and log under $WORK).
start_gateway() {
    local name=${1:-gateway}
    GATEWAY_PORT=$(free_port)
    GATEWAY_ADMIN_PORT=$(free_port)
    local cluster_port dir="$WORK/$name"
    cluster_port=$(free_port)
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    start_bg "$name" env RUST_LOG="${GATEWAY_RUST_LOG:-warn}" ${GATEWAY_WRAP:-} "$GATEWAY_BIN" serve \
        --id 1 --data-dir "$dir/data" --cluster-addr "127.0.0.1:$cluster_port" \
        --admin-addr "127.0.0.1:$GATEWAY_ADMIN_PORT" --http-addr "127.0.0.1:$GATEWAY_PORT" \
        --init --workers "${WORKERS:-1}" ${GATEWAY_EXTRA_ARGS:-}
    GATEWAY_PID=$LAST_PID
    local ready=""
    for _ in $(seq 600); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$GATEWAY_ADMIN_PORT/readyz")" = 200 ]; then
            ready=1
            break
        fi
        kill -0 "$GATEWAY_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$ready" ]; then
        pinfo "error: the gateway did not become ready; its log:"
        tail -20 "$WORK/$name.log" >&2
        return 1
    fi
    admin_put "/v1/pools/bench" "{\"backends\":[{\"id\":\"b1\",\"address\":\"127.0.0.1:$BACKEND_PORT\"}]}"
    admin_put "/v1/routes/bench" '{"pool":"bench","path_prefix":"/"}'
    for _ in $(seq 100); do
        [ "$(curl -s -m 2 "http://127.0.0.1:$GATEWAY_PORT/")" = "hello, world" ] && break
        sleep 0.1
    done
    check_proxy "$GATEWAY_PORT" "$name"
}

# A fresh work folder with the backend, and nginx, HAProxy and the gateway in front of it.
start_backend_and_proxies() {
    make_workdir
    start_backend
    start_nginx
    start_haproxy
    start_gateway
}

admin_put() {
    local path=$1 body=$2 code
    code=$(curl -s -o "$WORK/admin.out" -w '%{http_code}' -m 10 -XPUT "http://127.0.0.1:$GATEWAY_ADMIN_PORT$path" -d "$body")
    if [ "$code" != 200 ]; then
        pinfo "error: PUT $path answered $code: $(cat "$WORK/admin.out")"
        return 1
    fi
}

# Over a process and its children: ticks = CPU time (utime+stime, clock ticks, from
# /proc/PID/stat); wakeups = voluntary context switches of all their threads (how often they slept).
ticks() { local t=0 p; for p in $(pgrep -P "$1") "$1"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
# The user-space part of ticks (utime).
user_ticks() { local t=0 p; for p in $(pgrep -P "$1") "$1"; do t=$((t + $(awk '{print $14}' "/proc/$p/stat"))); done; echo "$t"; }
# Voluntary context switches (wake-ups) of every thread of PID and its children; with a second
# argument, of the threads whose name matches that pattern only (e.g. 'gateway-http-*').
wakeups() {
    local t=0 p task
    for p in $(pgrep -P "$1") "$1"; do
        for task in /proc/"$p"/task/*; do
            # shellcheck disable=SC2053
            [ -z "${2:-}" ] || [[ $(cat "$task/comm") == $2 ]] || continue
            t=$((t + $(awk '/^voluntary_ctxt/ {print $2}' "$task/status")))
        done
    done
    echo "$t"
}
# CPU ticks (user + system) of PID's threads whose name matches the pattern $2.
thread_ticks() {
    local t=0 task
    for task in /proc/"$1"/task/*; do
        # shellcheck disable=SC2053
        [[ $(cat "$task/comm") == $2 ]] && t=$((t + $(awk '{print $14 + $15}' "$task/stat")))
    done
    echo "$t"
}

# "PID ..." of every process of a system (nginx: master and workers).
pids_of() {
    local pid=$1
    echo "$pid $(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ')"
}

versions() {
    echo "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')  haproxy $(haproxy -v | head -1 | awk '{print $3}')  caddy $(caddy version | awk '{print $1}')  wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
}

print_context() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)  load:$(uptime | sed 's/.*load average://')"
    echo "repo: $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo 'no commit') $(cd "$REPO" && git status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null | grep -q . && echo '(crates/ modified)')"
    echo "peers: $(versions)"
}
