#!/usr/bin/env bash
# Where the gateway's time goes under the bench/proxy.sh load: a one-node gateway (--workers 1)
# in front of the nginx backend, wrk -t1 -c64, profiled with perf (cpu-clock samples, DWARF call
# graphs; the release binary carries debug line tables: profile.release debug=1) or, with
# PROFILER=callgrind, run under valgrind's callgrind for a bounded load (instruction counts).
# Prints the top functions by inclusive ("children") cost, then by self cost, and the split
# between the kernel and user space.
#
#   bench/proxy_profile.sh [SECONDS]     (default 10: perf's sampling time)
#   env: PROFILER=perf|callgrind  TOP=40 (rows)  CONNECTIONS=64  GATEWAY_BIN=path  KEEP=1
#        SYSCALLS=1 (also count syscalls per proxied request for nginx, haproxy and the gateway)
#        CALLGRIND_SECONDS=10 and CALLGRIND_CONNECTIONS=8 (the load under callgrind)
#        CALLGRIND_SYSTEMS=gateway,nginx,haproxy (user-space instructions per request of each)
source "$(dirname "${BASH_SOURCE[0]}")/proxy_common.sh"

SECONDS_="${1:-${SECONDS_:-10}}"
PROFILER="${PROFILER:-perf}"
TOP="${TOP:-40}"
CONNECTIONS="${CONNECTIONS:-64}"
case "$SECONDS_$TOP$CONNECTIONS" in *[!0-9]*) echo "error: SECONDS, TOP, CONNECTIONS must be whole numbers" >&2; exit 2 ;; esac
[ "$SECONDS_" -ge 1 ] && [ "$SECONDS_" -le 60 ] || { echo "error: SECONDS must be 1..60" >&2; exit 2; }

ensure_peers
case "$PROFILER" in
    perf)
        command -v perf >/dev/null 2>&1 || {
            pinfo "installing linux-perf"
            apt-get install -y linux-perf >&2 || { apt-get update >&2 && apt-get install -y linux-perf >&2; }
        }
        # Hardware counters are often missing in VMs; the cpu-clock software event is enough.
        perf record -e cpu-clock -o /dev/null -- true >/dev/null 2>&1 || {
            echo "error: perf cannot sample here (perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid)); try PROFILER=callgrind" >&2
            exit 1
        }
        ;;
    callgrind)
        command -v valgrind >/dev/null 2>&1 || apt-get install -y valgrind >&2 || { apt-get update >&2 && apt-get install -y valgrind >&2; }
        ;;
    *) echo "error: PROFILER must be perf or callgrind" >&2; exit 2 ;;
esac
build_gateway
make_workdir
print_context
echo "command: bench/proxy_profile.sh $SECONDS_  (PROFILER=$PROFILER CONNECTIONS=$CONNECTIONS)"

start_backend
if [ "$PROFILER" = perf ]; then
    start_gateway
    run_fg wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$GATEWAY_PORT/" >/dev/null
    wrk -t1 -c"$CONNECTIONS" -d"$((SECONDS_ + 4))s" --latency "http://127.0.0.1:$GATEWAY_PORT/" >"$WORK/wrk.txt" 2>&1 &
    wrk_pid=$!
    STARTED_PIDS+=("$wrk_pid")
    sleep 2
    run_fg perf record -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$GATEWAY_PID" \
        -o "$WORK/perf.data" -- sleep "$SECONDS_" 2>"$WORK/perf-record.log" >&2
    wait "$wrk_pid" || true
    echo "load: $(grep -E 'Requests/sec' "$WORK/wrk.txt")  (wrk -t1 -c$CONNECTIONS, while sampling at 999 Hz)"
    perf report -i "$WORK/perf.data" --no-children --sort dso,sym --stdio -g none --percent-limit 0 \
        >"$WORK/self.txt" 2>/dev/null
    perf report -i "$WORK/perf.data" --children --sort sym --stdio -g none --percent-limit 0.5 \
        >"$WORK/children.txt" 2>/dev/null
    echo "samples: $(grep -m1 -E '^# Samples' "$WORK/self.txt" | sed 's/^# //')"
    echo
    echo "== where the samples fall (by shared object)"
    perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep -E '^ +[0-9]' | head -8 || true
    echo
    echo "== self cost by component"
    send=$(awk '$NF == "tcp_sendmsg" && $3 == "[k]" {gsub("%", "", $1); print $1; exit}' "$WORK/children.txt")
    python3 "$BENCH_DIR/proxy_perf.py" components "$WORK/self.txt" ${send:+"$send"}
    echo
    echo "== top $TOP functions by inclusive cost (children = self + callees; inlined frames and"
    echo "   the runtime's own scaffolding left out), % of the gateway's samples"
    grep -E '^ +[0-9]' "$WORK/children.txt" | grep -v '(inlined)' |
        grep -vE 'tokio::runtime::(scheduler|context|task::(core|harness|raw)|blocking)|std::panic|core::panic|__rust_begin_short_backtrace|call_once|thread_start|start_thread|clone3|0xffffffffffffffff|entry_SYSCALL|do_syscall_64' |
        head -"$TOP" | cut -c1-200 || true
    echo
    echo "== top $TOP functions by self cost"
    grep -E '^ +[0-9]' "$WORK/self.txt" | head -"$TOP" | cut -c1-200 || true
    if [ "${SYSCALLS:-1}" = 1 ]; then
        echo
        echo "== CPU time and syscalls per proxied request (perf stat: task-clock and syscall tracepoints"
        echo "   on the proxy's processes, wrk -t1 -c$CONNECTIONS -d5s; CPU time includes the kernel's work for its sockets)"
        events=""
        avail=$(perf list 2>/dev/null | grep -oE 'syscalls:sys_enter_[a-z0-9_]+' | sort -u)
        for sc in read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl \
            accept accept4 futex close connect socket setsockopt getsockopt getsockname getpeername \
            sched_yield ioctl fcntl shutdown splice timerfd_settime; do
            grep -qx "syscalls:sys_enter_$sc" <<<"$avail" && events="$events,syscalls:sys_enter_$sc"
        done
        events="task-clock$events"
        # "utime stime" in clock ticks, summed over the processes (all their threads).
        cpu_ticks() {
            local u=0 t=0 p f
            for p in ${1//,/ }; do
                f=$(sed 's/.*) //' "/proc/$p/stat")
                u=$((u + $(awk '{print $12}' <<<"$f")))
                t=$((t + $(awk '{print $13}' <<<"$f")))
            done
            echo "$u $t"
        }
        start_nginx
        start_haproxy
        for s in nginx haproxy gateway; do
            case "$s" in
                nginx) pids=$(pids_of "$NGINX_PID" | tr ' ' '\n' | grep . | paste -sd,); port=$NGINX_PORT ;;
                haproxy) pids=$HAPROXY_PID; port=$HAPROXY_PORT ;;
                gateway) pids=$GATEWAY_PID; port=$GATEWAY_PORT ;;
            esac
            run_fg wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$port/" >/dev/null
            perf stat -e "$events" -p "$pids" -o "$WORK/stat-$s.txt" &
            stat_pid=$!
            STARTED_PIDS+=("$stat_pid")
            sleep 0.5
            ticks_before=$(cpu_ticks "$pids")
            run_fg wrk -t1 -c"$CONNECTIONS" -d5s "http://127.0.0.1:$port/" >"$WORK/wrk-$s.txt" 2>&1
            ticks_after=$(cpu_ticks "$pids")
            kill -INT "$stat_pid" 2>/dev/null || true
            wait "$stat_pid" 2>/dev/null || true
            python3 "$BENCH_DIR/proxy_perf.py" syscalls "$s" "$WORK/stat-$s.txt" "$WORK/wrk-$s.txt" \
                "$ticks_before" "$ticks_after" "$(getconf CLK_TCK)"
        done
    fi
else
    # Each system runs under callgrind with instrumentation off; it is switched on once the
    # system is configured and warmed up (start-up and the Raft bootstrap are not counted), the
    # same bounded wrk load runs, and the count is divided by the requests wrk saw answered.
    # User-space instructions only: the kernel's share is in the perf mode (and syscalls/request).
    # --fair-sched=yes: valgrind runs one thread at a time, and with its default lock a node
    # whose threads wait on one another never got ready.
    CG="valgrind --tool=callgrind --instr-atstart=no --fair-sched=yes"
    CGC="${CALLGRIND_CONNECTIONS:-8}"
    IFS=',' read -r -a CG_SYS <<<"${CALLGRIND_SYSTEMS:-gateway,nginx,haproxy}"
    for s in "${CG_SYS[@]}"; do
        case "$s" in
            gateway) GATEWAY_WRAP="$CG --callgrind-out-file=$WORK/callgrind-$s.out" start_gateway
                pid=$GATEWAY_PID; port=$GATEWAY_PORT ;;
            nginx) NGINX_MASTER=off NGINX_WRAP="$CG --callgrind-out-file=$WORK/callgrind-$s.out" start_nginx
                pid=$NGINX_PID; port=$NGINX_PORT ;;
            haproxy) HAPROXY_WRAP="$CG --callgrind-out-file=$WORK/callgrind-$s.out" start_haproxy
                pid=$HAPROXY_PID; port=$HAPROXY_PORT ;;
            *) echo "error: CALLGRIND_SYSTEMS takes gateway, nginx, haproxy" >&2; exit 2 ;;
        esac
        run_fg wrk -t1 -c"$CGC" -d2s "http://127.0.0.1:$port/" >/dev/null
        callgrind_control -i on "$pid" >/dev/null
        sleep 1
        run_fg wrk -t1 -c"$CGC" -d"${CALLGRIND_SECONDS:-10}s" --latency "http://127.0.0.1:$port/" \
            >"$WORK/wrk-$s.txt" 2>&1
        callgrind_control -i off "$pid" >/dev/null
        # callgrind writes its output when the process exits (each system ends on SIGTERM;
        # writing the profile can take a while under valgrind).
        stop_pid "$pid" 120
        requests=$(awk '/requests in/ {print $1}' "$WORK/wrk-$s.txt")
        if ! callgrind_annotate --inclusive=yes "$WORK/callgrind-$s.out" >"$WORK/inclusive-$s.txt" 2>&1 ||
            ! callgrind_annotate "$WORK/callgrind-$s.out" >"$WORK/self-$s.txt" 2>&1; then
            echo "$s: callgrind wrote no profile; see $WORK/$s.log"
            KEEP=1
            continue
        fi
        echo "$s: $(python3 "$BENCH_DIR/proxy_perf.py" callgrind "$WORK/inclusive-$s.txt" "$requests" 0 | sed 's/^ *//')  (wrk -t1 -c$CGC -d${CALLGRIND_SECONDS:-10}s under callgrind)"
    done
    if [ -f "$WORK/inclusive-gateway.txt" ]; then
        requests=$(awk '/requests in/ {print $1}' "$WORK/wrk-gateway.txt")
        echo
        echo "== gateway: top $TOP functions by inclusive cost (instructions; runtime scaffolding left out)"
        python3 "$BENCH_DIR/proxy_perf.py" callgrind "$WORK/inclusive-gateway.txt" "$requests" "$TOP" | tail -n +2 || true
        echo
        echo "== gateway: top $TOP functions by self cost"
        python3 "$BENCH_DIR/proxy_perf.py" callgrind "$WORK/self-gateway.txt" "$requests" "$TOP" | tail -n +2 || true
    fi
fi
