#!/usr/bin/env bash
# Consumer-group latency and idempotent/transactional produce throughput: Strait and tansu
# side by side in one run (bench/group_txn_bench.py against each).
#
#   bench/group-txn-bench.sh [ROUNDS=5] [N=100000]
#
# Starts `target/release/strait broker` (fsync always) and, if installed by
# ../shared/peers/install-tansu.sh, tansu 0.6.0 (sqlite engine, as in BASELINE-tansu.md), each
# on a free loopback port with a fresh data dir; prints a table. Only the PIDs this script
# started are ever signalled.
set -uo pipefail
ROUNDS=${1:-5}
N=${2:-100000}
ROOT=$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)
KIT=$(cd "$ROOT/../shared/peers" && pwd)
PEERS=${PEERS:-/tmp/peers}
PY=$PEERS/venv/bin/python
STRAIT=${STRAIT:-$ROOT/target/release/strait}
TANSU=$PEERS/cargo-root/bin/tansu
[ -x "$STRAIT" ] || { echo "no $STRAIT (cargo build --release -p linker)"; exit 1; }
[ -x "$PY" ] || { echo "no $PY (run $KIT/install-clients.sh)"; exit 1; }

work=$(mktemp -d /tmp/strait-gtbench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

run() { # name bootstrap
  echo "== $1 ($2)"
  "$PY" "$ROOT/bench/group_txn_bench.py" "$2" "$ROUNDS" "$N" | tee "$work/$1.tsv"
}

port=$(free_port)
"$STRAIT" broker --data-dir "$work/strait" --listen "127.0.0.1:$port" >"$work/strait.out" 2>"$work/strait.err" &
pids+=($!)
wait_port "$port" || { echo "strait did not start"; tail "$work/strait.err"; exit 1; }
run strait "127.0.0.1:$port"

if [ -x "$TANSU" ]; then
  tport=$(free_port)
  mkdir -p "$work/tansu"
  # tansu's own flags, as tansu-ctl.sh uses them for the sqlite engine
  (cd "$work/tansu" && RUST_LOG=warn exec "$TANSU" broker --cluster-id "bench_$tport" \
      --listener-url "tcp://127.0.0.1:$tport" \
      --advertised-listener-url "tcp://127.0.0.1:$tport" \
      --storage-engine "sqlite://tansu.db" --silent >"$work/tansu.out" 2>"$work/tansu.err") &
  pids+=($!)
  if wait_port "$tport"; then
    run tansu "127.0.0.1:$tport"
  else
    echo "tansu did not start:"; tail -5 "$work/tansu.err"
  fi
else
  echo "== tansu not installed ($TANSU): run $KIT/install-tansu.sh for the side-by-side figures"
fi

echo "== summary (median of $ROUNDS rounds; -1 = failed)"
printf '%-20s %12s %12s\n' measurement strait tansu
for m in first_message_ms rebalance3_ms leave_takeover_ms produce_plain produce_idempotent produce_txn100; do
  s=$(awk -F'\t' -v m="$m" '$1==m {print $2}' "$work/strait.tsv" 2>/dev/null)
  t=$(awk -F'\t' -v m="$m" '$1==m {print $2}' "$work/tansu.tsv" 2>/dev/null)
  printf '%-20s %12s %12s\n' "$m" "${s:--}" "${t:--}"
done
