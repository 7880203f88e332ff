#!/usr/bin/env bash
# Broker benchmark: Strait vs tansu vs the raw disk, side by side in one run.
#
#   bench/broker-bench.sh            # ~3.5 min on 2 cores (ROUNDS=3); summary printed at the end
#
# What it measures (method: research/anchors-quality.md §B.3 -- all variants in the same
# invocation, interleaved per round in a shuffled order, ratios reported next to absolutes):
#   (b) raw sequential write speed of the disk holding the data dirs:
#       dd if=/dev/zero of=FILE bs=1M count=1024 conv=fdatasync
#       (and dd bs=2M count=512 oflag=dsync: the disk with a sync every 2 MiB)
#   per broker (strait --fsync always, strait --fsync interval:5, tansu sqlite if installed):
#     rdkafka_performance (kit binary, on librdkafka 2.16 from the confluent-kafka wheel;
#       tansu 0.6.0 cannot talk to librdkafka 2.0.2, see peers/BASELINE-tansu.md):
#       produce -s 100 and -s 1024, acks=-1 (= all), 3-partition topic, linger.ms=5
#       consume the same topics from the beginning, partition-assign mode (-p 0 -p 1 -p 2 -e)
#     strait only: the same 100-byte produce on the kit's default librdkafka 2.0.2, and once
#       more with the tool's own default linger.ms=1000
#     ck_perf.py (confluent-kafka, one Python process) 100-byte and 1 KiB
#     RSS of a fresh broker holding 1 000 idle partitions (100 topics x 10)
#   per run: client CPU (utime+stime), broker CPU (/proc/PID/stat delta), wall time, and
#   the broker's fdatasync/fsync calls and time (perf trace, if perf works here).
#
# Same-run comparisons of two Strait builds and of codecs (issue 18's record validation):
#   STRAIT_BASE=/path/to/older/strait adds the variant strait_base (that binary, --fsync always),
#   so VARIANTS="strait strait_base" compares two builds interleaved in one run (strait_base_i5:
#   that binary with --fsync interval:5, beside strait_i5; strait_nofsync and
#   strait_base_nofsync: --fsync never, the CPU path without the disk's noise);
#   CODECS="none lz4 zstd" adds produce runs with rdkafka_performance -z CODEC (tests
#   rdk_p100_CODEC, rdk_p1k_CODEC); SKIP="consume rdk202 ck idle" leaves out those stages.
# Env knobs: ROUNDS (3) SEED (random) N100 (2000000) N1K (1000000) CK_N100 (1000000)
#   CK_N1K (300000) TANSU_N100 (200000) TANSU_N1K (100000) TANSU_CK_N100 (200000)
#   TANSU_CK_N1K (50000) STRAIT (target/release/strait) PEERS (/tmp/peers)
#   VARIANTS ("strait strait_i5 tansu"; also strait_mt = fsync always with glibc malloc's
#   mmap threshold raised to 32 MiB, a diagnostic for the fetch path) TANSU_ENGINE (sqlite, as in BASELINE-tansu.md)
#   KEEP=1 keeps the data too. OUT (work dir/results.tsv).
# Output: /tmp/strait-bench.XXXXXX/ keeps results.tsv, summary.md (bench/summarize.py),
#   machine.txt and every client/broker/perf log; the broker data dirs are deleted at exit.
# Only processes this script started are ever signalled (by PID, trap on EXIT).
set -uo pipefail

ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
KIT=$(cd "$ROOT/../shared/peers" && pwd)
PEERS=${PEERS:-/tmp/peers}
STRAIT=${STRAIT:-$ROOT/target/release/strait}
RDK=$PEERS/bin/rdkafka_performance
RDK_LIB216=$PEERS/lib-rdkafka-bundled
PY=$PEERS/venv/bin/python
TANSU_BIN=$PEERS/cargo-root/bin/tansu
TANSU_ENGINE=${TANSU_ENGINE:-sqlite}
ADMIN="$ROOT/bench/bench_admin.py"

ROUNDS=${ROUNDS:-3}
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
N100=${N100:-2000000}; N1K=${N1K:-1000000}
CK_N100=${CK_N100:-1000000}; CK_N1K=${CK_N1K:-300000}
TANSU_N100=${TANSU_N100:-200000}; TANSU_N1K=${TANSU_N1K:-100000}
TANSU_CK_N100=${TANSU_CK_N100:-200000}; TANSU_CK_N1K=${TANSU_CK_N1K:-50000}
PARTS=3
CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-180}   # seconds, per client command
TCK=$(getconf CLK_TCK)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# ---------------------------------------------------------------- prerequisites
[ -x "$STRAIT" ] || die "no strait binary at $STRAIT (cargo build --release -p linker)"
[ -x "$RDK" ] || die "no $RDK (run $KIT/install-clients.sh)"
[ -x "$PY" ] || die "no $PY (run $KIT/install-clients.sh)"
[ -r "$RDK_LIB216/librdkafka.so.1" ] || die "no $RDK_LIB216/librdkafka.so.1 (install-clients.sh)"
newer=$(find "$ROOT/broker-core/src" "$ROOT/linker/src" -name '*.rs' -newer "$STRAIT" | head -3)
[ -z "$newer" ] || log "WARNING: sources newer than $STRAIT: $newer (rebuild: cargo build --release -p linker)"

WORK=$(mktemp -d /tmp/strait-bench.XXXXXX)
# Pin the binary: other people rebuild target/release while this runs.
cp "$STRAIT" "$WORK/strait" || die "cannot copy $STRAIT"
STRAIT_SRC=$STRAIT; STRAIT=$WORK/strait
if [ -n "${STRAIT_BASE:-}" ]; then
  cp "$STRAIT_BASE" "$WORK/strait-base" || die "cannot copy $STRAIT_BASE"
fi
CODECS=${CODECS:-none}
SKIP=" ${SKIP:-} "
skipped() { [[ "$SKIP" == *" $1 "* ]]; }
OUT=${OUT:-$WORK/results.tsv}
printf 'variant\ttest\tround\tmsgs_s\tmb_s\twall_s\tclient_cpu_s\tbroker_cpu_s\tbroker_sys_s\tbroker_minflt\tfsync_n\tfsync_ms\tok\tnote\n' >"$OUT"

# ---------------------------------------------------------------- process bookkeeping
declare -A BPID BOOT KIND            # variant -> broker pid / bootstrap / strait|tansu
declare -a STARTED_PIDS=()           # every long-lived pid we started (strait brokers, perf)
declare -a TANSU_PORTS=()

alive() { # pid: running and not a zombie
  local st; st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st##*) }; [ "${st:0:1}" != Z ]
}
forget_pid() { local p keep=(); for p in "${STARTED_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done; STARTED_PIDS=("${keep[@]}"); }
STOP_S=0
stop_pid() { # pid [grace_s]: SIGTERM, wait (bounded), SIGKILL. Sets STOP_S (seconds to exit, -1 = killed).
  local pid=$1 grace=${2:-30} t0=$EPOCHREALTIME i
  STOP_S=0
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < grace * 20; i++)); do alive "$pid" || break; sleep 0.05; done
    if alive "$pid"; then
      log "pid $pid ignored SIGTERM for ${grace}s: SIGKILL"; kill -KILL "$pid" 2>/dev/null; STOP_S=-1
    else
      STOP_S=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}')
    fi
  fi
  wait "$pid" 2>/dev/null
  forget_pid "$pid"
}
cleanup() {
  local p port
  for p in "${STARTED_PIDS[@]}"; do stop_pid "$p" 20; done
  for port in "${TANSU_PORTS[@]}"; do
    PEERS=$PEERS "$KIT/tansu-ctl.sh" stop "$port" >/dev/null 2>&1
    rm -rf "$PEERS/run/tansu-$port" "$PEERS/run/tansu-$port.log"
  done
  if [ "${KEEP:-0}" = 1 ]; then log "work dir kept: $WORK"
  else
    # keep the results and logs, drop the data
    rm -rf "$WORK"/data-* "$WORK"/dd.tmp "$WORK/strait"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cpu_ticks() { # pid -> utime+stime in ticks ("" if gone). Fields after "comm)" start at 3.
  local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo ""; return; }
  s=${s##*) }; set -- $s; echo $(( ${12} + ${13} ))
}
bstat() { # pid -> "cpu_ticks sys_ticks minflt" ("0 0 0" if gone)
  local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo "0 0 0"; return; }
  s=${s##*) }; set -- $s; echo "$(( ${12} + ${13} )) ${13} $8"
}
bdelta() { # "t s f" "t s f" -> "cpu_s sys_s minflt" (tab-free, 3 words)
  awk -v a="$1" -v b="$2" -v k="$TCK" 'BEGIN{split(a, x, " "); split(b, y, " ");
    printf "%.2f %.2f %d", (y[1]-x[1])/k, (y[2]-x[2])/k, y[3]-x[3]}'
}
ticks_to_s() { awk -v t="${1:-0}" -v k="$TCK" 'BEGIN{printf "%.2f", t/k}'; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null; }
hwm_kib() { awk '/^VmHWM:/{print $2}' "/proc/$1/status" 2>/dev/null; }
freeport() { "$PY" "$ADMIN" freeport; }
result() { # variant test round msgs_s mb_s wall client broker_cpu broker_sys broker_minflt fsync_n fsync_ms ok note
  local IFS=$'\t'; echo "$*" >>"$OUT"
}

start_strait() { # variant fsync_policy [ENV=VALUE...]
  local v=$1 fs=$2 port dir pid i bin=$STRAIT; shift 2
  local -a envs=(STRAIT_BENCH=1 "$@")
  [[ "$v" == strait_base* ]] && bin=$WORK/strait-base
  port=$(freeport); dir="$WORK/data-$v"; mkdir -p "$dir"
  env "${envs[@]}" "$bin" broker --data-dir "$dir/log" --listen "127.0.0.1:$port" --fsync "$fs" \
    >"$WORK/broker-$v.log" 2>&1 </dev/null &
  pid=$!; STARTED_PIDS+=("$pid")
  for ((i = 0; i < 300; i++)); do
    grep -q '^strait broker listening on' "$WORK/broker-$v.log" 2>/dev/null && break
    alive "$pid" || { log "strait ($v) exited at start:"; tail -20 "$WORK/broker-$v.log" >&2; return 1; }
    sleep 0.05
  done
  grep -q '^strait broker listening on' "$WORK/broker-$v.log" || { log "strait ($v) not ready in 15 s"; return 1; }
  BPID[$v]=$pid; BOOT[$v]="127.0.0.1:$port"; KIND[$v]=strait
  log "started $v: pid $pid on 127.0.0.1:$port --fsync $fs (data $dir) env: ${envs[*]}"
}

start_tansu() { # variant
  local v=$1 port out
  port=$(freeport); TANSU_PORTS+=("$port")
  out=$(PEERS=$PEERS TANSU_FRESH=1 "$KIT/tansu-ctl.sh" start "$TANSU_ENGINE" "$port" 2>&1) || {
    log "tansu start failed: $out"; return 1; }
  BPID[$v]=$(cat "$PEERS/run/tansu-$port.pid"); BOOT[$v]="127.0.0.1:$port"; KIND[$v]=tansu
  log "started $v: $out"
}

stop_variant() { # variant -> sets STOP_S (seconds from SIGTERM to exit)
  local v=$1 port t0
  if [ "${KIND[$v]}" = tansu ]; then
    port=${BOOT[$v]##*:}; t0=$EPOCHREALTIME
    PEERS=$PEERS "$KIT/tansu-ctl.sh" stop "$port" >/dev/null 2>&1
    STOP_S=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.2f", b-a}')
    rm -rf "$PEERS/run/tansu-$port"
  else
    stop_pid "${BPID[$v]}" 60
  fi
}

# ---------------------------------------------------------------- fsync tracing (optional)
PERF_OK=0
if command -v perf >/dev/null && [ "${NO_PERF:-0}" != 1 ]; then
  timeout -s INT 3 perf trace -a -s -e fdatasync,fsync -o "$WORK/perf-probe.out" >/dev/null 2>&1 &
  pp=$!; sleep 0.5; dd if=/dev/zero of="$WORK/probe.tmp" bs=4k count=1 conv=fdatasync 2>/dev/null
  wait "$pp"; rm -f "$WORK/probe.tmp"
  grep -q fdatasync "$WORK/perf-probe.out" 2>/dev/null && PERF_OK=1
fi
PERF_PID=""
trace_start() { # name
  PERF_PID=""; [ "$PERF_OK" = 1 ] || return 0
  timeout -s INT 300 perf trace -a -s -e fdatasync,fsync -o "$WORK/perf-$1.out" >/dev/null 2>&1 &
  PERF_PID=$!; STARTED_PIDS+=("$PERF_PID"); sleep 0.7
}
TR="- -"; TIDS_OVERRIDE=""; COMMS_OVERRIDE=""
trace_stop() { # name broker_pid -> sets TR="calls total_ms" over the broker's threads ("- -" if no perf)
  # Threads are the broker's tids now (or TIDS_OVERRIDE, taken before a shutdown); with
  # COMMS_OVERRIDE also threads born later (tid >= smallest known) with one of the broker's
  # thread names, which catches blocking-pool threads spawned during shutdown.
  local name=$1 bpid=$2 tids i
  TR="- -"
  [ -n "$PERF_PID" ] || return 0
  tids=${TIDS_OVERRIDE:-$(ls "/proc/$bpid/task" 2>/dev/null | tr '\n' ' ')}
  kill -INT "$PERF_PID" 2>/dev/null
  for ((i = 0; i < 100; i++)); do alive "$PERF_PID" || break; sleep 0.05; done
  wait "$PERF_PID" 2>/dev/null; forget_pid "$PERF_PID"; PERF_PID=""
  # summary blocks: " comm (TID), N events, P%" then rows "fdatasync CALLS ERRS TOTAL_MS ..."
  TR=$(awk -v tids=" $tids " -v comms="|$COMMS_OVERRIDE|" '
    BEGIN { n = split(tids, a, " "); lo = 0; for (i = 1; i <= n; i++) if (lo == 0 || a[i] + 0 < lo) lo = a[i] + 0 }
    /^ .*\([0-9]+\), [0-9]+ events/ {
      match($0, /\(([0-9]+)\)/); t = substr($0, RSTART + 1, RLENGTH - 2)
      c = substr($0, 2, RSTART - 3)
      mine = index(tids, " " t " ") > 0 || (comms != "||" && t + 0 >= lo && index(comms, "|" c "|") > 0) }
    mine && ($1 == "fdatasync" || $1 == "fsync") { n2 += $2; ms += $4 }
    END { printf "%d %.1f\n", n2, ms }' "$WORK/perf-$name.out")
}

# ---------------------------------------------------------------- one rdkafka_performance run
# rdk variant test round lib(216|202) mode(P|C) size count topic [extra args...]
rdk() {
  local v=$1 test=$2 r=$3 lib=$4 mode=$5 size=$6 count=$7 topic=$8; shift 8
  local bpid=${BPID[$v]} name="$v-$test-r$r" b0 b1 tr="- -" line ok=1 msgs_s mb_s n bytes ms
  local -a env=()
  [ "$lib" = 216 ] && env=(LD_LIBRARY_PATH="$RDK_LIB216")
  local -a args=(-b "${BOOT[$v]}" -t "$topic")
  if [ "$mode" = P ]; then args+=(-P -s "$size" -c "$count" -a -1 "$@")
  else args+=(-C -p 0 -p 1 -p 2 -o beginning -e -c "$count" "$@"); fi
  [ "$mode" = P ] && trace_start "$name"
  b0=$(bstat "$bpid")
  env "${env[@]}" timeout "$CLIENT_TIMEOUT" /usr/bin/time -f '%e %U %S' -o "$WORK/time-$name" \
    "$RDK" "${args[@]}" >"$WORK/rdk-$name.out" 2>&1
  local rc=$?
  b1=$(bstat "$bpid")
  [ "$mode" = P ] && { trace_stop "$name" "$bpid"; tr=$TR; }
  read -r wall cu cs < <(tail -1 "$WORK/time-$name" 2>/dev/null) || true
  local client_cpu; client_cpu=$(awk -v u="${cu:-0}" -v s="${cs:-0}" 'BEGIN{printf "%.2f", u+s}')
  if [ "$mode" = P ]; then
    # "% N messages produced (B bytes), D delivered (offset O, F failed) in Tms: R msgs/s and M MB/s, ..."
    line=$(grep ' delivered ' "$WORK/rdk-$name.out" | tail -1)
    n=$(sed -E 's/.*, ([0-9]+) delivered .*/\1/' <<<"$line")
    local failed; failed=$(sed -E 's/.*, ([0-9]+) failed\).*/\1/' <<<"$line")
    ms=$(sed -E 's/.* in ([0-9]+)ms.*/\1/' <<<"$line")
    [ "$n" = "$count" ] && [ "$failed" = 0 ] || ok=0
    bytes=$((n * size))
  else
    # "% N messages (B bytes) consumed in Tms: R msgs/s (M MB/s)"
    line=$(grep ' consumed in ' "$WORK/rdk-$name.out" | tail -1)
    n=$(sed -E 's/^% ([0-9]+) messages.*/\1/' <<<"$line")
    bytes=$(sed -E 's/.*\(([0-9]+) bytes\).*/\1/' <<<"$line")
    ms=$(sed -E 's/.* in ([0-9]+)ms.*/\1/' <<<"$line")
    [ "$n" = "$count" ] || ok=0
  fi
  [ "$rc" = 0 ] || ok=0
  if [[ "$n" =~ ^[0-9]+$ && "$ms" =~ ^[0-9]+$ && "$ms" -gt 0 ]]; then
    msgs_s=$(awk -v n="$n" -v t="$ms" 'BEGIN{printf "%.0f", n*1000/t}')
    mb_s=$(awk -v b="$bytes" -v t="$ms" 'BEGIN{printf "%.2f", b/1000/t}')   # MB = 1e6 bytes
  else msgs_s=0; mb_s=0; ok=0; fi
  local note="rc=$rc n=${n:-?}/$count lib=$lib"
  [ "$ok" = 1 ] || { note="$note FAILED: $(grep -v CONFWARN "$WORK/rdk-$name.out" | grep -iE 'error|fail|timed out' | head -2 | tr '\n\t' '  ')"; log "run $name FAILED ($note)"; }
  local bd; bd=$(bdelta "$b0" "$b1")
  result "$v" "$test" "$r" "$msgs_s" "$mb_s" "${wall:-0}" "$client_cpu" $bd ${tr% *} ${tr#* } "$ok" "$note"
  log "$name: $msgs_s msg/s $mb_s MB/s wall=${wall}s client_cpu=${client_cpu}s broker(cpu sys minflt)=$bd fsync(n ms)=$tr"
}

# ---------------------------------------------------------------- one ck_perf.py run
# ck variant size count -> two rows: ck_p<size>, ck_c<size>.
# Client CPU: sampled from the python process when ck_perf prints its create_topic and
# perf_produce lines; the consume phase is the rest of /usr/bin/time's total. Rates and phase
# times are ck_perf's own figures.
ck() {
  local v=$1 size=$2 count=$3 bpid=${BPID[$v]} name="$v-ck$2" out tp py="" i
  out="$WORK/ck-$name.out"; : >"$out"
  trace_start "$name"
  /usr/bin/time -f '%e %U %S' -o "$WORK/time-$name" \
    "$PY" "$KIT/clients/ck_perf.py" "${BOOT[$v]}" "$count" "$size" "$PARTS" >"$out" 2>&1 &
  tp=$!
  local s_c="" s_b="" p_c="" p_b="" tr="- -" done=0
  for ((i = 0; i < CLIENT_TIMEOUT * 20; i++)); do
    [ -n "$py" ] || py=$(cat "/proc/$tp/task/$tp/children" 2>/dev/null | awk '{print $1}')
    if [ -z "$s_c" ] && [ -n "$py" ] && grep -q 'create_topic' "$out"; then
      s_c=$(cpu_ticks "$py"); s_b=$(bstat "$bpid"); fi
    if [ -z "$p_c" ] && [ -n "$py" ] && grep -q 'perf_produce' "$out"; then
      p_c=$(cpu_ticks "$py"); p_b=$(bstat "$bpid"); trace_stop "$name" "$bpid"; tr=$TR; fi
    alive "$tp" || { done=1; break; }
    sleep 0.05
  done
  if [ "$done" = 0 ]; then
    log "ck_perf $name still running after ${CLIENT_TIMEOUT}s: killing it (pid ${py:-$tp})"
    [ -n "$py" ] && kill -TERM "$py" 2>/dev/null
  fi
  wait "$tp"; local rc=$?
  local e_b; e_b=$(bstat "$bpid")
  [ -n "$PERF_PID" ] && { trace_stop "$name" "$bpid"; tr=$TR; }
  local tot_c; tot_c=$(tail -1 "$WORK/time-$name" 2>/dev/null | awk -v k="$TCK" '{printf "%d", ($2+$3)*k}')
  local phase line ok msgs_s mb_s t_s cpu_c cpu_b ftr
  for phase in produce consume; do
    line=$(grep "perf_$phase" "$out" | tail -1); ok=0
    [[ "$line" == PASS* ]] && ok=1
    msgs_s=$(sed -nE 's/.*rate=([0-9,]+) msg\/s.*/\1/p' <<<"$line" | tr -d ,)
    mb_s=$(sed -nE 's/.* ([0-9.]+) MB\/s.*/\1/p' <<<"$line")
    t_s=$(sed -nE 's/.* time=([0-9.]+)s .*/\1/p' <<<"$line")
    if [ "$phase" = produce ] && [ -n "$s_c" ] && [ -n "$p_c" ]; then
      cpu_c=$(ticks_to_s $((p_c - s_c))); cpu_b=$(bdelta "$s_b" "$p_b"); ftr=$tr
    elif [ "$phase" = consume ] && [ -n "$p_c" ] && [ -n "$tot_c" ]; then
      cpu_c=$(ticks_to_s $((tot_c - p_c))); cpu_b=$(bdelta "$p_b" "$e_b"); ftr="- -"
    else
      ok=0; cpu_c=0; cpu_b="0 0 0"; ftr="- -"
    fi
    local note="rc=$rc n=$count"
    [ "$ok" = 1 ] || { note="$note FAILED: $(grep -E 'FAIL|Error|rror' "$out" | head -2 | tr '\n\t' '  ')"; log "ck_perf $name $phase FAILED: $(tail -3 "$out" | tr '\n' ' ')"; }
    result "$v" "ck_${phase:0:1}$size" 1 "${msgs_s:-0}" "${mb_s:-0}" "${t_s:-0}" "$cpu_c" $cpu_b ${ftr% *} ${ftr#* } "$ok" "$note"
  done
  log "$name: $(grep -E 'perf_(produce|consume)' "$out" | sed -E 's/ conf=.*//; s/^(PASS|FAIL) perf_/\1 /' | tr '\n' ';')"
}

dd_run() { # round
  local r=$1 line bytes secs mbs
  line=$(dd if=/dev/zero of="$WORK/dd.tmp" bs=1M count=1024 conv=fdatasync 2>&1 | tail -1)
  rm -f "$WORK/dd.tmp"
  # "1073741824 bytes (1.1 GB, 1.0 GiB) copied, 3.70665 s, 290 MB/s"
  bytes=$(awk '{print $1}' <<<"$line"); secs=$(sed -E 's/.* copied, ([0-9.]+) s,.*/\1/' <<<"$line")
  mbs=$(awk -v b="$bytes" -v s="$secs" 'BEGIN{ if (s > 0) printf "%.1f", b/s/1e6; else print 0 }')
  result dd dd_write "$r" 0 "$mbs" "$secs" 0 0 0 0 - - 1 "$line"
  log "dd round $r: $mbs MB/s ($line)"
  # the disk when a sync follows every 2 MiB (Strait's fsync-always produce syncs every ~2 MB)
  line=$(dd if=/dev/zero of="$WORK/dd.tmp" bs=2M count=512 oflag=dsync 2>&1 | tail -1)
  rm -f "$WORK/dd.tmp"
  bytes=$(awk '{print $1}' <<<"$line"); secs=$(sed -E 's/.* copied, ([0-9.]+) s,.*/\1/' <<<"$line")
  mbs=$(awk -v b="$bytes" -v s="$secs" 'BEGIN{ if (s > 0) printf "%.1f", b/s/1e6; else print 0 }')
  result dd dd_dsync2M "$r" 0 "$mbs" "$secs" 0 0 0 0 - - 1 "$line"
  log "dd oflag=dsync bs=2M round $r: $mbs MB/s"
}

# ---------------------------------------------------------------- machine / noise record
{
  echo "date: $(date -u +%FT%TZ)  host: $(uname -srm)  cpus: $(nproc)  mem: $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "strait: $STRAIT_SRC (built $(stat -c %y "$STRAIT_SRC" | cut -d. -f1), sha256 $(sha256sum "$STRAIT" | cut -c1-12)), git $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet HEAD -- broker-core linker || echo ' +uncommitted changes in broker-core/linker')"
  [ -n "${STRAIT_BASE:-}" ] && echo "strait_base: $STRAIT_BASE (built $(stat -c %y "$STRAIT_BASE" | cut -d. -f1), sha256 $(sha256sum "$STRAIT_BASE" | cut -c1-12))"
  echo "codecs: $CODECS  skip:$SKIP"
  echo "tansu: $([ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version 2>/dev/null || echo 'not installed')"
  echo "librdkafka: 2.16 ($RDK_LIB216) and 2.0.2 (system); rounds=$ROUNDS seed=$SEED perf_trace=$PERF_OK"
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg); other busy processes (>10% CPU):"
  ps -eo pid,ni,pcpu,comm --sort=-pcpu | awk 'NR>1 && $3>10 {printf "  pid %s nice %s %s%% %s\n", $1, $2, $3, $4}' | head -5
} >"$WORK/machine.txt"
cat "$WORK/machine.txt" >&2

# ---------------------------------------------------------------- start brokers
declare -a VLIST=()
for v in ${VARIANTS:-strait strait_i5 tansu}; do
  [[ "$v" != strait_base* || -n "${STRAIT_BASE:-}" ]] || die "variant $v needs STRAIT_BASE=/path/to/strait"
done
for v in ${VARIANTS:-strait strait_i5 tansu}; do
  case $v in
    strait) start_strait strait always && VLIST+=(strait) ;;
    strait_base) start_strait strait_base always && VLIST+=(strait_base) ;;
    strait_base_i5) start_strait strait_base_i5 interval:5 && VLIST+=(strait_base_i5) ;;
    # no fsync at all: the broker's own CPU path without the disk's noise (diagnostic)
    strait_nofsync) start_strait strait_nofsync never && VLIST+=(strait_nofsync) ;;
    strait_base_nofsync) start_strait strait_base_nofsync never && VLIST+=(strait_base_nofsync) ;;
    strait_i5) start_strait strait_i5 interval:5 && VLIST+=(strait_i5) ;;
    # diagnostic: glibc malloc told to keep big buffers on the heap (no mmap/munmap per fetch)
    strait_mt) start_strait strait_mt always GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456 && VLIST+=(strait_mt) ;;
    tansu)
      if [ -x "$TANSU_BIN" ]; then start_tansu tansu && VLIST+=(tansu)
      else log "tansu NOT INSTALLED ($TANSU_BIN missing): tansu column will be empty (build: $KIT/install-tansu.sh, ~21 min)"
        echo "tansu: not installed at run time" >>"$WORK/machine.txt"; fi ;;
  esac
done
[ "${#VLIST[@]}" -gt 0 ] || die "no broker started"

n_of() { # variant size(100|1k) kind(rdk|ck)
  if [ "${KIND[$1]}" = tansu ]; then
    case $3$2 in rdk100) echo "$TANSU_N100" ;; rdk1k) echo "$TANSU_N1K" ;; ck100) echo "$TANSU_CK_N100" ;; ck1k) echo "$TANSU_CK_N1K" ;; esac
  else
    case $3$2 in rdk100) echo "$N100" ;; rdk1k) echo "$N1K" ;; ck100) echo "$CK_N100" ;; ck1k) echo "$CK_N1K" ;; esac
  fi
}

# topics: per variant and round, one for each size (+ strait's extra 2.0.2 runs), + warm-up
for v in "${VLIST[@]}"; do
  topics=("warm-$v")
  for ((r = 1; r <= ROUNDS; r++)); do
    topics+=("p100-$v-r$r" "p1k-$v-r$r")
    for c in $CODECS; do [ "$c" = none ] || topics+=("p100$c-$v-r$r" "p1k$c-$v-r$r"); done
    [ "${KIND[$v]}" = strait ] && topics+=("p100v202-$v-r$r" "p100v202dl-$v-r$r")
  done
  out=$(timeout 120 "$PY" "$ADMIN" create "${BOOT[$v]}" "$PARTS" "${topics[@]}" 2>&1) ||
    die "creating topics on $v failed: $out"
  log "$v: $out"
done

# warm-up (discarded)
for v in "${VLIST[@]}"; do
  env LD_LIBRARY_PATH="$RDK_LIB216" timeout 60 "$RDK" -P -b "${BOOT[$v]}" -t "warm-$v" -s 100 \
    -c "$(( $(n_of "$v" 100 rdk) / 10 ))" -a -1 -X linger.ms=5 >"$WORK/warm-$v.out" 2>&1 ||
    log "warm-up on $v failed: $(tail -2 "$WORK/warm-$v.out" | tr '\n' ' ')"
done

# ---------------------------------------------------------------- interleaved rounds
order_for_round() { # round -> shuffled "dd v1 v2 ..." (deterministic from SEED)
  printf '%s\n' dd "${VLIST[@]}" | awk -v s="$((SEED + $1))" 'BEGIN{srand(s)} {print rand() "\t" $0}' | sort -n | cut -f2 | tr '\n' ' '
}
T_START=$EPOCHREALTIME
for ((r = 1; r <= ROUNDS; r++)); do
  order=$(order_for_round "$r"); log "round $r/$ROUNDS order: $order"
  for v in $order; do
    if [ "$v" = dd ]; then dd_run "$r"; continue; fi
    n100=$(n_of "$v" 100 rdk); n1k=$(n_of "$v" 1k rdk)
    rdk "$v" rdk_p100 "$r" 216 P 100 "$n100" "p100-$v-r$r" -X linger.ms=5
    rdk "$v" rdk_p1k "$r" 216 P 1024 "$n1k" "p1k-$v-r$r" -X linger.ms=5
    for c in $CODECS; do
      [ "$c" = none ] && continue
      rdk "$v" "rdk_p100_$c" "$r" 216 P 100 "$n100" "p100$c-$v-r$r" -X linger.ms=5 -z "$c"
      rdk "$v" "rdk_p1k_$c" "$r" 216 P 1024 "$n1k" "p1k$c-$v-r$r" -X linger.ms=5 -z "$c"
    done
    if ! skipped consume; then
      rdk "$v" rdk_c1k "$r" 216 C 1024 "$n1k" "p1k-$v-r$r"
      rdk "$v" rdk_c100 "$r" 216 C 100 "$n100" "p100-$v-r$r"
    fi
    if [ "${KIND[$v]}" = strait ] && ! skipped rdk202; then
      rdk "$v" rdk202_p100 "$r" 202 P 100 "$n100" "p100v202-$v-r$r" -X linger.ms=5
      rdk "$v" rdk202dl_p100 "$r" 202 P 100 "$n100" "p100v202dl-$v-r$r"   # tool default linger.ms=1000
    fi
  done
done

# ck_perf: one round, shuffled order
for v in $(printf '%s\n' "${VLIST[@]}" | awk -v s="$SEED" 'BEGIN{srand(s)} {print rand() "\t" $0}' | sort -n | cut -f2); do
  skipped ck && break
  ck "$v" 100 "$(n_of "$v" 100 ck)"
  ck "$v" 1024 "$(n_of "$v" 1k ck)"
done

# after-load memory of the long-running brokers, then stop them
for v in "${VLIST[@]}"; do
  rss=$(rss_kib "${BPID[$v]}"); hwm=$(hwm_kib "${BPID[$v]}")
  result "$v" rss_after_load_MiB 1 0 "$(awk -v k="${rss:-0}" 'BEGIN{printf "%.1f", k/1024}')" 0 0 0 0 0 - - 1 "VmHWM=$(awk -v k="${hwm:-0}" 'BEGIN{printf "%.1f", k/1024}')MiB"
  trace_start "stop-$v"
  TIDS_OVERRIDE=$(ls "/proc/${BPID[$v]}/task" 2>/dev/null | tr '\n' ' ')
  COMMS_OVERRIDE=$(cat /proc/${BPID[$v]}/task/*/comm 2>/dev/null | sort -u | tr '\n' '|')
  stop_variant "$v"; s=$STOP_S
  trace_stop "stop-$v" "${BPID[$v]}"; tr=$TR; TIDS_OVERRIDE=""; COMMS_OVERRIDE=""
  log "stopped $v in ${s}s (rss after load ${rss} KiB, hwm ${hwm} KiB)"
  result "$v" stop_s 1 0 "$s" "$s" 0 0 0 0 ${tr% *} ${tr#* } 1 "SIGTERM to exit, after the throughput runs; fsyncs during shutdown (n ms): $tr"
  if [ "${KIND[$v]}" = strait ]; then
    grep -E ' (ERROR|WARN) |panicked' "$WORK/broker-$v.log" | head -5 | sed "s/^/[broker $v log] /" >&2
    rm -rf "$WORK/data-$v"
  fi
done

# ---------------------------------------------------------------- RSS with 1 000 idle partitions
for v in "${VLIST[@]}"; do
  skipped idle && break
  [[ "$v" == strait_i5 || "$v" == strait_mt || "$v" == strait_base* || "$v" == strait_nofsync ]] && continue   # only the default build/config
  iv="idle_$v"
  if [ "${KIND[$v]}" = strait ]; then start_strait "$iv" always || continue; else start_tansu "$iv" || continue; fi
  rss0=$(rss_kib "${BPID[$iv]}")
  t0=$EPOCHREALTIME
  out=$(timeout 300 "$PY" "$ADMIN" idle "${BOOT[$iv]}" 100 10 2>&1); rc=$?
  setup_s=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')
  sleep 5
  rss=$(rss_kib "${BPID[$iv]}"); hwm=$(hwm_kib "${BPID[$iv]}")
  fds=$(ls "/proc/${BPID[$iv]}/fd" 2>/dev/null | wc -l); thr=$(awk '/^Threads:/{print $2}' "/proc/${BPID[$iv]}/status")
  ok=0; [ "$rc" = 0 ] && ok=1
  result "$v" rss_idle1000_MiB 1 0 "$(awk -v k="${rss:-0}" 'BEGIN{printf "%.1f", k/1024}')" "$setup_s" 0 0 0 0 - - "$ok" \
    "empty=$((${rss0:-0} / 1024))MiB hwm=$((${hwm:-0} / 1024))MiB fds=$fds threads=$thr setup: ${out//$'\n'/; }"
  log "$v idle 1000 partitions: rss ${rss} KiB (empty ${rss0} KiB) fds=$fds threads=$thr; $out"
  trace_start "stop-$iv"
  TIDS_OVERRIDE=$(ls "/proc/${BPID[$iv]}/task" 2>/dev/null | tr '\n' ' ')
  COMMS_OVERRIDE=$(cat /proc/${BPID[$iv]}/task/*/comm 2>/dev/null | sort -u | tr '\n' '|')
  stop_variant "$iv"; s=$STOP_S
  trace_stop "stop-$iv" "${BPID[$iv]}"; tr=$TR; TIDS_OVERRIDE=""; COMMS_OVERRIDE=""
  result "$v" stop_idle1000_s 1 0 "$s" "$s" 0 0 0 0 ${tr% *} ${tr#* } 1 "SIGTERM to exit with 1000 partitions; fsyncs during shutdown (n ms): $tr"
  log "stopped $iv in ${s}s"
done

log "total measured time: $(awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}') s"
cp "$OUT" "$WORK/results.tsv" 2>/dev/null
"$PY" "$ROOT/bench/summarize.py" "$OUT" "$WORK/machine.txt" | tee "$WORK/summary.md"
log "results: $OUT  summary: $WORK/summary.md  logs: $WORK"
