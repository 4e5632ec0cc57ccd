#!/usr/bin/env bash
# Leader failover under write load: kill -9 the Raft leader of a 3-node gateway cluster, and of a
# 3-member etcd cluster (etcd defaults), KILLS times each; time from the kill until a write is
# acknowledged again through a survivor. Prints every kill, then median and max per system.
#
#   bench/failover.sh [KILLS]        (default 10)
#   env: SYSTEMS=gateway,etcd  TIMEOUT=0.2 (client timeout, s)  WRITERS=3 (per node)
#        GATEWAY_BIN=path (skips the build)  KEEP=1 (keep data dirs and logs)  BENCH_TMPDIR=dir
source "$(dirname "${BASH_SOURCE[0]}")/cluster_common.sh"

KILLS="${1:-${KILLS:-10}}"
ensure_tools etcd etcdctl python3
build_gateway
make_workdir
print_context
echo "command: ${USER_GATEWAY_BIN:+GATEWAY_BIN=$USER_GATEWAY_BIN }bench/failover.sh $KILLS  (SYSTEMS=$SYSTEMS TIMEOUT=${TIMEOUT:-0.2} WRITERS=${WRITERS:-3})"
run_orchestrator "$BENCH_DIR/failover.py" --kills "$KILLS" --systems "$SYSTEMS" \
    --timeout "${TIMEOUT:-0.2}" --writers-per-node "${WRITERS:-3}" \
    --gateway-bin "${GATEWAY_BIN:-$REPO/target/release/gateway}" --workdir "$WORK"
