#!/usr/bin/env bash
# Installs what the end-to-end tests need beyond the Rust toolchain: the third-party Kafka
# clients of the shared peer kit (kcat on Debian's librdkafka, confluent-kafka, kafka-python,
# aiokafka, kafkajs) under PEERS (default /tmp/peers), via ../shared/peers/install-clients.sh
# beside the repository. Idempotent (~30 s cold, ~2 s warm). Needs root for apt on a fresh
# machine; first installs the prerequisites that script assumes (python3 with venv, node+npm)
# if they are missing. Then real Apache Kafka (scripts/kafka.sh fetch: Kafka's jars from Maven
# Central into ~/.cache/strait-kafka, ~125 MB, ~10 s cold, a no-op warm; needs java and mvn,
# installed from Debian if missing).
#
#   usage: scripts/install-test-deps.sh        (env PEERS=/other/prefix to install elsewhere)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || (cd "$here/.." && pwd))
KIT=${PEERS_KIT:-$ROOT/../shared/peers}
export PEERS=${PEERS:-/tmp/peers}
log() { echo "[install-test-deps $(date +%T)] $*" >&2; }

[ -x "$KIT/install-clients.sh" ] || {
  log "no peer kit at $KIT (expected ../shared/peers beside the repository)"
  exit 1
}

# Prerequisites of install-clients.sh that a minimal Debian machine may lack.
missing=()
command -v python3 >/dev/null || missing+=(python3)
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then missing+=(python3-venv); fi
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v timeout >/dev/null || missing+=(coreutils)
command -v java >/dev/null || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    log "missing ${missing[*]} and not root: install them, or rerun as root"
    exit 1
  fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

bash "$KIT/install-clients.sh" "$PEERS"

# Real Apache Kafka for the end-to-end tests (tests/tests/kafka_cluster.rs).
bash "$here/kafka.sh" fetch

# What scripts/peers.sh relies on.
ok=1
command -v kcat >/dev/null || { log "kcat not installed"; ok=0; }
[ -x "$PEERS/venv/bin/python" ] || { log "no $PEERS/venv/bin/python"; ok=0; }
[ -e "$PEERS/lib-rdkafka-bundled/librdkafka.so.1" ] || { log "no $PEERS/lib-rdkafka-bundled/librdkafka.so.1"; ok=0; }
bash "$here/kafka.sh" java-classpath >/dev/null || { log "Kafka not fetched"; ok=0; }
[ "$ok" = 1 ] || exit 1
log "peer clients ready under $PEERS; Apache Kafka in $(bash "$here/kafka.sh" java-classpath)"
