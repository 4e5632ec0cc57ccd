# Shared by bench/raft-writes.sh and bench/failover.sh (sourced, not run).
# Installs the peers (Debian packages), builds the gateway, makes a fresh work folder, and sets a
# trap that ends every process the benchmark started, on any exit including Ctrl-C.

set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$BENCH_DIR")"
SYSTEMS="${SYSTEMS:-gateway,etcd}"
USER_GATEWAY_BIN="${GATEWAY_BIN:-}"   # echoed in the "command:" line when given

ensure_tools() {
    local missing=()
    for cmd in "$@"; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing wrk etcd-server etcd-client (missing: ${missing[*]})" >&2
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk etcd-server etcd-client >&2; then
        $sudo apt-get update >&2
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y wrk etcd-server etcd-client >&2
    fi
    # Debian's postinst may start a packaged etcd on 2379/2380; the benchmarks never use it
    # (they pick their own ports), and they do not touch it either.
}

build_gateway() {
    case ",$SYSTEMS," in *,gateway,*) ;; *) return 0 ;; esac
    if [ -n "${GATEWAY_BIN:-}" ]; then return 0; fi
    echo "building: cargo build --release -p gateway" >&2
    (cd "$REPO" && cargo build --release -p gateway >&2)
    GATEWAY_BIN="$REPO/target/release/gateway"
}

# A fresh folder for both systems' data dirs and logs: both on the same disk.
make_workdir() {
    WORK="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/gateway-bench.XXXXXX")"
    export BENCH_PIDFILE="$WORK/pids"
    : >"$BENCH_PIDFILE"
    echo "work folder: $WORK on $(df -P "$WORK" | awk 'NR==2 {print $1" ("$6")"}')" >&2
}

PY_PID=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    if [ -n "$PY_PID" ] && kill -0 "$PY_PID" 2>/dev/null; then
        kill -TERM "$PY_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$PY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PY_PID" 2>/dev/null || true
    fi
    # Anything the orchestrator started and did not end: only pids still running one of our
    # commands (their command line names the work folder or put.lua), never by name.
    if [ -n "${BENCH_PIDFILE:-}" ] && [ -f "$BENCH_PIDFILE" ]; then
        while read -r pid; do
            [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || continue
            if tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -e "$WORK" -e "put.lua"; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done <"$BENCH_PIDFILE"
    fi
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        # kept when asked, or when the run failed (its logs say why); not after an interrupt
        if [ "${KEEP:-0}" = 1 ] || { [ "$rc" -ne 0 ] && [ "$rc" -lt 128 ]; }; then
            echo "kept $WORK (data dirs and logs)" >&2
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

# Run the python orchestrator in the background and wait, so that a signal reaches the trap at once.
run_orchestrator() {
    python3 "$@" &
    PY_PID=$!
    local rc=0
    wait "$PY_PID" || rc=$?
    PY_PID=""
    return "$rc"
}

print_context() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  host: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "repo: $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo 'no commit') $(cd "$REPO" && git status --porcelain 2>/dev/null | grep -q . && echo '(dirty tree)')"
    echo "etcd: $(etcd --version 2>/dev/null | head -1)  wrk: $(wrk -v 2>&1 | head -1 | awk '{print $2}')"
    case ",$SYSTEMS," in
        *,gateway,*)
            local bin="${GATEWAY_BIN:-$REPO/target/release/gateway}"
            echo "gateway binary: $bin (built $(date -u -r "$bin" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || echo '?'))" ;;
    esac
}
