#!/usr/bin/env bash
# The project's test command (what CI runs through .ci/run). Stages, in order:
#   1 deps    scripts/install-test-deps.sh   (peer Kafka clients; needs root + Debian/PyPI/npm;
#             and Apache Kafka from Maven Central via scripts/kafka.sh fetch)
#   2 fmt     cargo fmt --all --check
#   3 clippy  cargo clippy --workspace --all-targets --release -- -D warnings
#   4 build   cargo build --release --workspace --bins
#   5 test    cargo test --release --workspace --no-fail-fast   (STRAIT_BIN=target/release/strait)
#   6 peers   scripts/peers.sh                   (third-party clients against the broker)
# Every stage runs even if an earlier one failed, except `peers`, which needs the binary from
# `build`. Ends with one line `N passed, M failed` counting stages; exits non-zero if any failed.
#   usage: scripts/test.sh [stage ...]     (default: all stages; e.g. `scripts/test.sh test`)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
export STRAIT_BIN="$ROOT/target/release/strait"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

ALL_STAGES=(deps fmt clippy build test peers)
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=("${ALL_STAGES[@]}")

stage_deps() { bash scripts/install-test-deps.sh; }
stage_fmt() { cargo fmt --all --check; }
stage_clippy() { cargo clippy --workspace --all-targets --release -- -D warnings; }
stage_build() { cargo build --release --workspace --bins; }
stage_test() { cargo test --release --workspace --no-fail-fast; }
stage_peers() { bash scripts/peers.sh; }

passed=0
failed=0
results=()
build_failed=0
for s in "${STAGES[@]}"; do
  if ! declare -F "stage_$s" >/dev/null; then
    echo "unknown stage $s (stages: ${ALL_STAGES[*]})" >&2
    exit 2
  fi
  echo
  echo "=============== stage $s"
  t0=$SECONDS
  if [ "$s" = peers ] && [ "$build_failed" = 1 ]; then
    echo "skipped: the build stage failed"
    rc=1
  else
    # `if` keeps set -e from aborting the script when a stage fails.
    if "stage_$s"; then rc=0; else rc=$?; fi
  fi
  dt=$((SECONDS - t0))
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    results+=("PASS $s (${dt}s)")
  else
    failed=$((failed + 1))
    results+=("FAIL $s (exit $rc, ${dt}s)")
    [ "$s" != build ] || build_failed=1
  fi
  echo "=============== stage $s: $([ "$rc" = 0 ] && echo PASS || echo "FAIL (exit $rc)") in ${dt}s"
done

echo
echo "=============== summary"
printf '%s\n' "${results[@]}"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
