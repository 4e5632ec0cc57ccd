#!/usr/bin/env bash
# Runs a local 3-node gateway cluster with a demo backend beside each node, on loopback.
#
#   scripts/cluster.sh [--tls] [DATA_DIR]      (default: ./cluster-data)
#
# --tls: the nodes talk Raft and admin gRPC over mutual TLS, with a throwaway CA and node and
# client certificates made by `gateway tls-gen` into DATA_DIR/tls (once per data folder).
#
# The first run forms a new cluster; later runs restart the same nodes from DATA_DIR (delete it
# for a fresh start). Ctrl-C stops all three nodes and the backends cleanly.
# Needs only bash and the Rust toolchain: it builds the release binary itself.
set -euo pipefail
cd "$(dirname "$0")/.."
TLS=0
if [ "${1:-}" = "--tls" ]; then TLS=1; shift; fi
DATA=${1:-cluster-data}
BIN=target/release/gateway

echo "building the gateway (release)..."
cargo build --release -p gateway --quiet

pids=()
stop() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    echo; echo "stopping the cluster..."
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    echo "stopped; the state stays in $DATA (run again to restart it, delete it to start afresh)"
  fi
}
trap stop EXIT
trap 'exit 130' INT TERM

# req METHOD PORT PATH [BODY]: a plain HTTP/1.0 request on 127.0.0.1 with bash's /dev/tcp.
# Prints the status code, then the body.
req() {
  local method=$1 port=$2 path=$3 body=${4:-} line status
  exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
  printf '%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
    "$method" "$path" "$TOKEN" "${#body}" "$body" >&3
  IFS= read -r line <&3 || { exec 3<&-; return 1; }
  status=$(echo "$line" | cut -d' ' -f2)
  while IFS= read -r line <&3 && [ "${line%$'\r'}" != "" ]; do :; done
  echo "$status"; cat <&3; exec 3<&-
}

wait_ready() { # PORT NAME
  for _ in $(seq 300); do
    if [ "$(req GET "$1" /readyz 2>/dev/null | head -n1)" = 200 ]; then return 0; fi
    sleep 0.1
  done
  echo "error: $2 did not become ready; see $DATA/$2.log" >&2; exit 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in 7101 7102 7103 9101 9102 9103 8101 8102 8103 8441 8442 8443 8201 8202 8203; do
  port_free "$p" || { echo "error: port $p on 127.0.0.1 is in use; stop what holds it (another cluster.sh?) and retry" >&2; exit 1; }
done

mkdir -p "$DATA"
# Admin API tokens: generated once per data folder, never a default.
if [ ! -f "$DATA/admin-tokens" ]; then
  ( umask 077
    echo "write $(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$DATA/admin-tokens"
    echo "read $(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >> "$DATA/admin-tokens" )
fi
TOKEN=$(sed -n 's/^write //p' "$DATA/admin-tokens")
for n in 1 2 3; do
  "$BIN" demo-backend --listen "127.0.0.1:820$n" --name "node$n" >"$DATA/backend$n.log" 2>&1 &
  pids+=($!)
done

node_flags() { echo "--data-dir $DATA/$1 --cluster-addr 127.0.0.1:710$1 --admin-addr 127.0.0.1:910$1 --http-addr 127.0.0.1:810$1 --https-addr 127.0.0.1:844$1"; }
tls_flags() { # NODE
  [ "$TLS" = 1 ] || return 0
  echo "--tls-ca $DATA/tls/ca.pem --tls-cert $DATA/tls/node-$1.pem --tls-key $DATA/tls/node-$1-key.pem"
}
if [ "$TLS" = 1 ] && [ ! -f "$DATA/tls/ca.pem" ]; then
  "$BIN" tls-gen --dir "$DATA/tls" --nodes 3
fi
CLI_TLS=""
if [ "$TLS" = 1 ]; then CLI_TLS=" --tls-ca $DATA/tls/ca.pem --tls-cert $DATA/tls/client.pem --tls-key $DATA/tls/client-key.pem"; fi

if [ -d "$DATA/1/store" ]; then
  echo "restarting the cluster from $DATA..."
  for n in 1 2 3; do
    # shellcheck disable=SC2046
    "$BIN" serve --data-dir "$DATA/$n" $(tls_flags "$n") >>"$DATA/node$n.log" 2>&1 &
    pids+=($!)
  done
  for n in 1 2 3; do wait_ready "910$n" "node$n"; done
else
  echo "forming a new cluster in $DATA..."
  # shellcheck disable=SC2046
  "$BIN" serve --id 1 $(node_flags 1) $(tls_flags 1) --admin-token-file "$DATA/admin-tokens" --init >"$DATA/node1.log" 2>&1 &
  pids+=($!)
  wait_ready 9101 node1
  for n in 2 3; do
    # shellcheck disable=SC2046
    "$BIN" join --id "$n" $(node_flags "$n") $(tls_flags "$n") --admin-token-file "$DATA/admin-tokens" --peers 127.0.0.1:7101 --cluster-secret-file "$DATA/1/cluster-secret" \
      >"$DATA/node$n.log" 2>&1 &
    pids+=($!)
    wait_ready "910$n" "node$n"
  done
  pool='{"balance":"round_robin","prefer_local":true,"backends":[
    {"id":"app1","address":"127.0.0.1:8201","node":1},
    {"id":"app2","address":"127.0.0.1:8202","node":2},
    {"id":"app3","address":"127.0.0.1:8203","node":3}],
    "health_check":{"type":"http","path":"/","interval_ms":1000,"timeout_ms":500},"eject":{}}'
  [ "$(req PUT 9101 /v1/pools/app "$pool" | head -n1)" = 200 ] || { echo "error: could not create the demo pool" >&2; exit 1; }
  [ "$(req PUT 9102 /v1/routes/app '{"pool":"app","path_prefix":"/","writes":"leader"}' | head -n1)" = 200 ] \
    || { echo "error: could not create the demo route" >&2; exit 1; }
fi

leader=$(req GET 9101 /leader | tail -n +2 | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
cat <<TXT

Gateway cluster running: 3 nodes, leader is node $leader. Logs and data in $DATA/.

  node  admin (REST)      data plane (HTTP)  HTTPS            cluster (Raft gRPC)  demo backend
  1     127.0.0.1:9101    127.0.0.1:8101     127.0.0.1:8441   127.0.0.1:7101       127.0.0.1:8201 (node1)
  2     127.0.0.1:9102    127.0.0.1:8102     127.0.0.1:8442   127.0.0.1:7102       127.0.0.1:8202 (node2)
  3     127.0.0.1:9103    127.0.0.1:8103     127.0.0.1:8443   127.0.0.1:7103       127.0.0.1:8203 (node3)
$( [ "$TLS" = 1 ] && echo "
The cluster ports speak mutual TLS (certificates in $DATA/tls); CLI commands below carry the client certificate." )

The admin API wants a token (generated into $DATA/admin-tokens; /leader, /healthz, /readyz are open):
  export GATEWAY_TOKEN=$TOKEN

Try:
  curl 127.0.0.1:9102/leader                      # every node names the same leader
  curl -H "Authorization: Bearer \$GATEWAY_TOKEN" 127.0.0.1:9103/status  # role, term, indexes, members, lag
  curl 127.0.0.1:8102/                            # GET is served by the local backend: "get from node2"
  curl -XPOST 127.0.0.1:8103/                     # writes go to the leader's backend: "post from node$leader"
  curl -H "Authorization: Bearer \$GATEWAY_TOKEN" 127.0.0.1:9101/v1/config   # the replicated config, its revision
  curl -H "Authorization: Bearer \$GATEWAY_TOKEN" -XPUT 127.0.0.1:9103/v1/routes/api -d '{"pool":"app","path_prefix":"/api"}'   # change it from any node
  $BIN route list --server 127.0.0.1:7102$CLI_TLS                 # the CLI (gRPC, any node)
  $BIN cluster status --server 127.0.0.1:7103$CLI_TLS
  $BIN watch --server 127.0.0.1:7101$CLI_TLS                      # every change, live
  $BIN backend list --server 127.0.0.1:7101$CLI_TLS               # each backend's health, as the cluster agreed
  $BIN cert add NAME --cert fullchain.pem --key key.pem --server 127.0.0.1:7101$CLI_TLS   # then HTTPS on 127.0.0.1:844N
  xdg-open http://127.0.0.1:9101/ui                       # the dashboard (log in with \$GATEWAY_TOKEN)
  $BIN top --admin 127.0.0.1:9101                        # the same figures in the terminal
  curl -H "Authorization: Bearer \$GATEWAY_TOKEN" 127.0.0.1:9101/metrics   # Prometheus metrics
  kill -9 \$(pgrep -f "data-dir $DATA/$leader")    # kill the leader: another takes over, usually in under a second

Press Ctrl-C to stop the cluster.
TXT
wait "${pids[@]}" 2>/dev/null || true
