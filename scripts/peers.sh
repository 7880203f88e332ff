#!/usr/bin/env bash
# Runs real third-party Kafka clients from the shared peer kit (../shared/peers beside the
# repository) against a freshly started release `strait broker` and checks the results.
#
#   usage: scripts/peers.sh            (builds nothing: run `cargo build --release -p linker`)
#
# Starts target/release/strait (or $STRAIT_BIN) on a free 127.0.0.1 port with a temporary data
# dir, runs the clients listed in CLIENTS below, and requires PASS for every `client check`
# pair in scripts/peers-required.txt (or $PEERS_REQUIRED). Other FAIL lines are printed as
# expected-to-fail-for-now. Exits non-zero if a required check failed or was never reported,
# if the broker died, or if it did not shut down cleanly (SIGTERM -> exit 0).
# Needs the clients installed by scripts/install-test-deps.sh (PEERS, default /tmp/peers), and
# for ak_verifiable (scripts/peer-clients/) Apache Kafka fetched by scripts/kafka.sh.
# Logs: $PEERS_LOGS (default: a temp dir, printed).
set -uo pipefail

# ---- what to run (extend as the broker gains features) -----------------------------------
CLIENTS=(ck_smoke kp_smoke ak_smoke kjs_smoke ck_perf kcat_smoke kcat_bundled ak_verifiable)
CK_SMOKE_TESTS=${CK_SMOKE_TESTS:-"admin produce consume group idempotent txn"}
PERF_N=${PERF_N:-200000}
CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-900}   # seconds per client, a hard cap against hangs
# -------------------------------------------------------------------------------------------

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || (cd "$here/.." && pwd))
KIT=${PEERS_KIT:-$ROOT/../shared/peers}
PEERS=${PEERS:-/tmp/peers}
BIN=${STRAIT_BIN:-$ROOT/target/release/strait}
REQUIRED_FILE=${PEERS_REQUIRED:-$here/peers-required.txt}
PY="$PEERS/venv/bin/python"

die() { echo "peers.sh: $*" >&2; echo "peers: 0 passed, 1 failed"; exit 1; }
[ -x "$BIN" ] || die "no broker binary $BIN (run: cargo build --release -p linker)"
[ -d "$KIT/clients" ] || die "no peer kit at $KIT (expected ../shared/peers beside the repository)"
[ -x "$PY" ] && command -v kcat >/dev/null ||
  die "peer clients missing under $PEERS (run: scripts/install-test-deps.sh)"
[ -f "$REQUIRED_FILE" ] || die "no required-checks file $REQUIRED_FILE"

work=$(mktemp -d /tmp/strait-peers.XXXXXX)
LOGS=${PEERS_LOGS:-$work/logs}
mkdir -p "$LOGS" "$work/data"
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
B="127.0.0.1:$PORT"
BROKER_PID=""
broker_rc=""

stop_broker() { # SIGTERM our broker (by PID), wait up to 30 s, then SIGKILL; sets broker_rc
  [ -n "$BROKER_PID" ] || return 0
  if kill -0 "$BROKER_PID" 2>/dev/null; then
    kill -TERM "$BROKER_PID" 2>/dev/null
    for _ in $(seq 300); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
      echo "peers.sh: broker $BROKER_PID ignored SIGTERM for 30 s; SIGKILL" >&2
      kill -KILL "$BROKER_PID" 2>/dev/null
    fi
  fi
  wait "$BROKER_PID" 2>/dev/null; broker_rc=$?
  BROKER_PID=""
}
cleanup() { stop_broker; [ -n "${PEERS_LOGS:-}" ] || [ "${KEEP:-0}" = 1 ] || rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== strait broker $BIN on $B (data $work/data, logs $LOGS)"
"$BIN" broker --data-dir "$work/data" --listen "$B" </dev/null >"$LOGS/broker.stdout" 2>"$LOGS/broker.stderr" &
BROKER_PID=$!
for _ in $(seq 300); do
  grep -q "^strait broker listening on " "$LOGS/broker.stdout" 2>/dev/null && break
  kill -0 "$BROKER_PID" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q "^strait broker listening on " "$LOGS/broker.stdout" 2>/dev/null; then
  echo "--- broker stdout"; cat "$LOGS/broker.stdout"; echo "--- broker stderr"; tail -50 "$LOGS/broker.stderr"
  die "broker did not print its startup line within 30 s"
fi
head -1 "$LOGS/broker.stdout"

declare -A CMD=(
  [ck_smoke]="$PY $KIT/clients/ck_smoke.py $B $CK_SMOKE_TESTS"
  [kp_smoke]="$PY $KIT/clients/kp_smoke.py $B"
  [ak_smoke]="$PY $KIT/clients/ak_smoke.py $B"
  [kjs_smoke]="env NODE_PATH=$PEERS/node/node_modules node $KIT/clients/kjs_smoke.js $B"
  [ck_perf]="$PY $KIT/clients/ck_perf.py $B $PERF_N"
  [kcat_smoke]="env PEERS=$PEERS $KIT/clients/kcat_smoke.sh $B"
  [kcat_bundled]="env PEERS=$PEERS KCAT_LIBRDKAFKA=bundled $KIT/clients/kcat_smoke.sh $B"
  # Apache Kafka's VerifiableProducer/VerifiableConsumer (this repository, via scripts/kafka.sh)
  [ak_verifiable]="bash $here/peer-clients/ak_verifiable.sh $B"
)
broker_died=0
summary=()
for c in "${CLIENTS[@]}"; do
  echo "### $c: ${CMD[$c]}"
  t0=$(date +%s)
  # shellcheck disable=SC2086  # CMD entries are word lists
  timeout "$CLIENT_TIMEOUT" ${CMD[$c]} </dev/null 2>"$LOGS/$c.stderr" | tee "$LOGS/$c.log" | sed "s/^/[$c] /"
  rc=${PIPESTATUS[0]}
  summary+=("$(printf '%-13s rc=%-3s %4ss  %s' "$c" "$rc" "$(($(date +%s) - t0))" "$(tail -1 "$LOGS/$c.log")")")
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then
    echo "!!! broker died during $c; stderr tail:"; tail -30 "$LOGS/broker.stderr"
    broker_died=1
    break
  fi
done

stop_broker
echo "### client summary ($B)"
printf '%s\n' "${summary[@]}"

# ---- evaluate required checks ---------------------------------------------------------------
passed=0; failed=0
echo "### required checks ($REQUIRED_FILE)"
while read -r client check _; do
  case "$client" in ''|'#'*) continue ;; esac
  log="$LOGS/$client.log"
  if [ -f "$log" ] && grep -q "^FAIL $check\( \|$\)" "$log"; then
    st=FAIL; detail=$(grep -m1 "^FAIL $check\( \|$\)" "$log" | cut -c1-250)
  elif [ -f "$log" ] && grep -q "^PASS $check\( \|$\)" "$log"; then
    st=PASS; detail=""
  else
    st=FAIL; detail="(check not reported: client not run, crashed or timed out)"
  fi
  if [ $st = PASS ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
  printf '%s %s %s %s\n' "$st" "$client" "$check" "$detail"
done < "$REQUIRED_FILE"

echo "### not required (expected to fail for now)"
for c in "${CLIENTS[@]}"; do
  [ -f "$LOGS/$c.log" ] || continue
  grep '^FAIL ' "$LOGS/$c.log" | while read -r _ check rest; do
    grep -qE "^$c[[:space:]]+$check([[:space:]]|$)" "$REQUIRED_FILE" ||
      echo "XFAIL $c $check $(echo "$rest" | cut -c1-200)"
  done
done

if [ "$broker_died" = 1 ]; then
  echo "FAIL broker died during the run"; failed=$((failed + 1))
elif [ "${broker_rc:-x}" != 0 ]; then
  echo "FAIL broker clean_shutdown: exit status ${broker_rc:-unknown} after SIGTERM (want 0)"
  tail -20 "$LOGS/broker.stderr"
  failed=$((failed + 1))
else
  echo "PASS broker clean_shutdown"; passed=$((passed + 1))
fi
echo "peers: $passed passed, $failed failed"
[ "$failed" = 0 ]
