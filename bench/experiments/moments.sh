#!/usr/bin/env bash
# When the slow requests come: the backend straight, then the gateway, nginx and HAProxy in
# front of it, set up as bench/proxy.sh does, each loaded by bench/experiments/moments (a
# closed-loop client that times every request; built here with cargo) in interleaved rounds.
# Per run it prints the rate, p50, p99, and for the requests slower than p99: in how many 10 ms
# windows of the run they started, the largest groups in one window, and the range per
# connection.
#
#   bench/experiments/moments.sh [ROUNDS]     (default 2)
#   env: DURATION=3 (s per run)  CONNECTIONS=64  GATEWAY_BIN=path  KEEP=1
source "$(dirname "${BASH_SOURCE[0]}")/../proxy_common.sh"

ROUNDS="${1:-2}"
DURATION="${DURATION:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
case "$ROUNDS$DURATION$CONNECTIONS" in *[!0-9]*) echo "error: ROUNDS, DURATION, CONNECTIONS must be whole numbers" >&2; exit 2 ;; esac

ensure_peers
build_gateway
pinfo "building the client: cargo build --release (bench/experiments/moments)"
CARGO_TARGET_DIR="$REPO/target/moments" cargo build --release -q \
    --manifest-path "$BENCH_DIR/experiments/moments/Cargo.toml" >&2
CLIENT="$REPO/target/moments/release/moments"
start_backend_and_proxies
print_context
for round in $(seq "$ROUNDS"); do
    for sys in direct:$BACKEND_PORT gateway:$GATEWAY_PORT nginx:$NGINX_PORT haproxy:$HAPROXY_PORT; do
        echo "round $round ${sys%%:*}: $(run_fg "$CLIENT" "127.0.0.1:${sys#*:}" "$CONNECTIONS" "$DURATION")"
    done
done
