#!/usr/bin/env bash
# Committed Raft config writes/s, p50 and p99 with 16 concurrent clients: a 3-node gateway cluster
# (PUT /v1/pools/{name}) beside a 3-member etcd cluster (POST /v3/kv/put, JSON gateway), both through
# the leader and through a follower, same wrk script, in one run. Prints a table and the ratios.
#
#   bench/raft-writes.sh [DURATION_SECONDS]        (default 20)
#   env: CONNECTIONS=16  WARMUP=2  NAMES=0 (N: rewrite N names per client thread)  SYSTEMS=gateway,etcd  GATEWAY_BIN=path (skips the build)
#        KEEP=1 (keep data dirs and logs)  BENCH_TMPDIR=dir  BENCH_PORT_BASE=21000
source "$(dirname "${BASH_SOURCE[0]}")/cluster_common.sh"

DURATION="${1:-${DURATION:-20}}"
ensure_tools wrk etcd etcdctl python3
build_gateway
make_workdir
print_context
echo "command: ${USER_GATEWAY_BIN:+GATEWAY_BIN=$USER_GATEWAY_BIN }bench/raft-writes.sh $DURATION  (CONNECTIONS=${CONNECTIONS:-16} NAMES=${NAMES:-0} SYSTEMS=$SYSTEMS)"
run_orchestrator "$BENCH_DIR/raft_writes.py" --duration "$DURATION" --connections "${CONNECTIONS:-16}" \
    --warmup "${WARMUP:-2}" --names "${NAMES:-0}" --systems "$SYSTEMS" --gateway-bin "${GATEWAY_BIN:-$REPO/target/release/gateway}" \
    --workdir "$WORK"
