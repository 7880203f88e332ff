#!/usr/bin/env bash
# Real Apache Kafka for Strait's test kit, from Maven Central (no tarball, no Docker).
#
#   scripts/kafka.sh fetch                      download Kafka's jars once into the cache
#   scripts/kafka.sh start NAME [--nodes 1|3] [--base-port P] [--owner-pid PID]
#                                               start a KRaft cluster on 127.0.0.1 (each node a
#                                               combined broker+controller) and wait until every
#                                               node has started; prints the bootstrap list.
#                                               With --owner-pid, a watcher stops the cluster
#                                               once process PID is gone (a killed test)
#   scripts/kafka.sh stop NAME                  SIGTERM the nodes this script started for NAME
#                                               (PIDs from its pid files), bounded wait, SIGKILL
#   scripts/kafka.sh bootstrap NAME             print host:port,host:port,... of NAME's brokers
#   scripts/kafka.sh pid NAME NODE              print the PID recorded for node NODE (1-based)
#   scripts/kafka.sh java-classpath             print the classpath for Kafka's tools (`java -cp`)
#
# Cache: ${STRAIT_KAFKA_CACHE:-$HOME/.cache/strait-kafka}/$STRAIT_KAFKA_VERSION/lib (the jars of
# kafka_2.13, kafka-tools, kafka-clients, kafka-streams and connect-mirror with their runtime
# dependencies, plus the log4j2 SLF4J binding so Kafka logs), written by a generated pom and
# `mvn dependency:copy-dependencies`, and marked complete only when it succeeded; `fetch` is a
# no-op when the marker is there. Runs: ${STRAIT_KAFKA_RUN:-${TMPDIR:-/tmp}/strait-kafka}/NAME
# holds each node's server.properties, data directory, log (`nN/kafka.log`) and pid file.
#
# Node i (1-based) listens for clients on BASE+2(i-1) and for the controller quorum on
# BASE+2(i-1)+1. Without --base-port a free range is picked. Replication factors of the internal
# topics follow the node count (3 nodes: RF 3, min ISR 2).
#
# Environment: STRAIT_KAFKA_VERSION (default 4.1.2), STRAIT_KAFKA_CACHE, STRAIT_KAFKA_RUN,
# STRAIT_KAFKA_START_TIMEOUT (seconds, default 180), STRAIT_KAFKA_STOP_TIMEOUT (default 30),
# STRAIT_KAFKA_HEAP (default 512m). --security sasl_ssl is not implemented yet (it fails
# clearly). This script signals only PIDs it recorded itself, after checking each is still the
# Kafka JVM it started (never by process name).
set -euo pipefail

VERSION=${STRAIT_KAFKA_VERSION:-4.1.2}
# The log4j2 that kafka-server 4.1.2 itself brings (2.24.3 was 4.1.1's); the SLF4J binding must
# match it, so log4j-api, log4j-core and log4j-slf4j-impl are pinned together.
LOG4J_VERSION=${STRAIT_KAFKA_LOG4J_VERSION:-2.25.3}
CACHE_ROOT=${STRAIT_KAFKA_CACHE:-${HOME:-/tmp}/.cache/strait-kafka}
CACHE=$CACHE_ROOT/$VERSION
LIB=$CACHE/lib
RUN_ROOT=${STRAIT_KAFKA_RUN:-${TMPDIR:-/tmp}/strait-kafka}
START_TIMEOUT=${STRAIT_KAFKA_START_TIMEOUT:-180}
STOP_TIMEOUT=${STRAIT_KAFKA_STOP_TIMEOUT:-30}
HEAP=${STRAIT_KAFKA_HEAP:-512m}

log() { echo "[kafka.sh $(date +%T)] $*" >&2; }
die() {
  log "error: $*"
  exit 1
}
usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ------------------------------------------------------------------------------------------
# fetch

write_pom() {
  cat >"$1" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>strait.testkit</groupId><artifactId>kafka-lib</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-clients</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-streams</artifactId><version>$VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>connect-mirror</artifactId><version>$VERSION</version></dependency>
    <!-- Kafka 4.1 is built against SLF4J 1.7; the binding is log4j2's 1.x one (the tarball's). -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>1.7.36</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId><version>3.6.1</version>
    <configuration><outputDirectory>\${project.basedir}/lib</outputDirectory><includeScope>runtime</includeScope></configuration>
  </plugin></plugins></build>
</project>
EOF
}

write_log_config() {
  cat >"$1" <<'EOF'
# log4j2 for Kafka nodes and tools started by scripts/kafka.sh: INFO to stdout (the node's log file).
appender.o.type = Console
appender.o.name = O
appender.o.layout.type = PatternLayout
appender.o.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.o.ref = O
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
}

# The cache is complete when its marker names the pom it was fetched with (a changed pom, e.g.
# another log4j version, fetches again).
pom_sum() {
  local t
  t=$(mktemp)
  write_pom "$t"
  sha256sum <"$t" | cut -c1-16
  rm -f "$t"
}
fetched() {
  [ -f "$CACHE/complete" ] && [ -f "$LIB/kafka_2.13-$VERSION.jar" ] &&
    [ "$(cat "$CACHE/complete")" = "$(pom_sum)" ]
}

cmd_fetch() {
  if fetched; then
    log "Kafka $VERSION already in $LIB"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (Maven is needed to fetch Kafka from Maven Central)"
  command -v java >/dev/null || die "java not found (a JDK 17+ is needed to run Kafka)"
  mkdir -p "$CACHE_ROOT"
  # One fetch at a time per machine; a second caller waits (bounded) and then finds the marker.
  exec 8>"$CACHE_ROOT/.lock-$VERSION"
  flock -w 900 8 || die "timed out waiting for another fetch of Kafka $VERSION (lock $CACHE_ROOT/.lock-$VERSION)"
  if fetched; then
    flock -u 8
    return 0
  fi
  local work t0 files size
  work=$(mktemp -d "$CACHE_ROOT/.fetch-$VERSION.XXXXXX")
  write_pom "$work/pom.xml"
  t0=$SECONDS
  log "fetching Kafka $VERSION from Maven Central (mvn dependency:copy-dependencies)"
  if ! timeout 900 mvn -B -q -f "$work/pom.xml" dependency:copy-dependencies >"$work/mvn.log" 2>&1; then
    tail -n 30 "$work/mvn.log" >&2
    rm -rf "$work"
    die "mvn failed to fetch Kafka $VERSION (output above)"
  fi
  # Exactly one SLF4J binding, or Kafka logs nothing (NOP) or SLF4J picks one at random.
  local bindings
  bindings=$(find "$work/lib" -name 'log4j-slf4j-impl-*.jar' -o -name 'slf4j-reload4j-*.jar' \
    -o -name 'logback-classic-*.jar' -o -name 'log4j-slf4j2-impl-*.jar' -o -name 'slf4j-simple-*.jar' | wc -l)
  [ "$bindings" = 1 ] || {
    rm -rf "$work"
    die "expected exactly one SLF4J binding among the fetched jars, found $bindings"
  }
  mkdir -p "$work/config"
  write_log_config "$work/config/log4j2.properties"
  rm -rf "$CACHE"
  mv "$work" "$CACHE"
  pom_sum >"$CACHE/complete"
  files=$(find "$LIB" -name '*.jar' | wc -l)
  size=$(du -sh "$LIB" | cut -f1)
  log "Kafka $VERSION ready in $LIB ($files jars, $size, $((SECONDS - t0)) s)"
  flock -u 8
}

# ------------------------------------------------------------------------------------------
# clusters

classpath() { echo "$LIB/*"; }

# The Java command for node/tool runs (Kafka's own scripts add these same basics).
java_cmd() {
  echo java "-Xms128m" "-Xmx$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$CACHE/config/log4j2.properties"
}

check_name() {
  [[ "$1" =~ ^[A-Za-z0-9_.-]+$ ]] || die "bad cluster name '$1' (letters, digits, _ . - only)"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A free range of 2*N ports (checked by connecting: nothing listens there now).
pick_base_port() {
  local n=$1 tries base p ok
  for tries in $(seq 1 50); do
    # Below Linux's ephemeral range (32768+), where the OS picks ports for clients and for
    # other tests' "bind port 0" listeners.
    base=$((20000 + (RANDOM % 1200) * 10))
    ok=1
    for p in $(seq "$base" $((base + 2 * n - 1))); do
      if port_in_use "$p"; then
        ok=0
        break
      fi
    done
    [ "$ok" = 1 ] && {
      echo "$base"
      return 0
    }
  done
  die "no free port range found after $tries tries"
}

# A Kafka cluster id: 16 random bytes, base64url without padding (22 characters), not starting
# with '-' (Kafka's Uuid.randomUuid avoids those too; they look like options on command lines).
new_cluster_id() {
  local id i
  for i in $(seq 1 100); do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [ "${id:0:1}" != - ] && {
      echo "$id"
      return 0
    }
  done
  die "could not make a cluster id"
}

# Is PID still the Kafka JVM started for this node config (not a reused PID)?
is_our_node() {
  local pid=$1 conf=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "kafka.Kafka $conf"
}

# Alive and not a zombie (a reparented zombie still answers kill -0).
proc_alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

node_pids_alive() {
  local dir=$1 f i conf pid
  for f in "$dir"/n*/pid; do
    [ -f "$f" ] || continue
    i=$(dirname "$f")
    conf=$i/server.properties
    pid=$(cat "$f")
    if is_our_node "$pid" "$conf"; then echo "$pid"; fi
  done
}

cmd_start() {
  local name="" nodes=1 base="" security=plaintext owner=""
  while [ $# -gt 0 ]; do
    case $1 in
      --nodes)
        nodes=${2:?--nodes needs a value}
        shift 2
        ;;
      --base-port)
        base=${2:?--base-port needs a value}
        shift 2
        ;;
      --owner-pid)
        owner=${2:?--owner-pid needs a value}
        [[ "$owner" =~ ^[0-9]+$ ]] || die "bad --owner-pid '$owner'"
        shift 2
        ;;
      --security)
        security=${2:?--security needs a value}
        shift 2
        ;;
      -*) die "unknown option $1" ;;
      *)
        [ -z "$name" ] || die "one cluster name only (got '$name' and '$1')"
        name=$1
        shift
        ;;
    esac
  done
  [ -n "$name" ] || usage
  check_name "$name"
  case $nodes in 1 | 3) ;; *) die "--nodes must be 1 or 3 (got '$nodes')" ;; esac
  case $security in
    plaintext) ;;
    sasl_ssl | ssl | sasl_plaintext) die "--security $security is not implemented yet in scripts/kafka.sh (issue 12: only PLAINTEXT for now)" ;;
    *) die "unknown --security '$security'" ;;
  esac
  fetched || cmd_fetch
  command -v java >/dev/null || die "java not found"

  local dir=$RUN_ROOT/$name
  if [ -d "$dir" ] && [ -n "$(node_pids_alive "$dir")" ]; then
    die "cluster '$name' is already running (PIDs $(node_pids_alive "$dir" | tr '\n' ' ')); stop it first: $0 stop $name"
  fi
  [ -n "$base" ] || base=$(pick_base_port "$nodes")
  if ! [[ "$base" =~ ^[0-9]+$ ]] || [ "$base" -lt 1024 ] || [ $((base + 2 * nodes)) -gt 65535 ]; then
    die "bad --base-port '$base'"
  fi
  local p
  for p in $(seq "$base" $((base + 2 * nodes - 1))); do
    ! port_in_use "$p" || die "port $p is already in use (choose another --base-port)"
  done

  rm -rf "$dir"
  mkdir -p "$dir"
  local cid rf isr voters="" bootstrap="" i
  cid=$(new_cluster_id)
  if [ "$nodes" -ge 3 ]; then rf=3 isr=2; else rf=1 isr=1; fi
  for i in $(seq 1 "$nodes"); do
    voters="$voters${voters:+,}$i@127.0.0.1:$((base + 2 * (i - 1) + 1))"
    bootstrap="$bootstrap${bootstrap:+,}127.0.0.1:$((base + 2 * (i - 1)))"
  done
  echo "$cid" >"$dir/cluster-id"
  echo "$bootstrap" >"$dir/bootstrap"
  echo "$nodes" >"$dir/nodes"

  local t0=$SECONDS
  # Write every node's config and format its storage (in parallel: one JVM each).
  local fmt_pids=()
  for i in $(seq 1 "$nodes"); do
    local nd=$dir/n$i
    mkdir -p "$nd/data"
    cat >"$nd/server.properties" <<EOF
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$((base + 2 * (i - 1))),CONTROLLER://127.0.0.1:$((base + 2 * (i - 1) + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$((base + 2 * (i - 1)))
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$nd/data
num.partitions=1
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
EOF
    # shellcheck disable=SC2046
    timeout 120 $(java_cmd) -cp "$(classpath)" kafka.tools.StorageTool format --ignore-formatted \
      -t "$cid" -c "$nd/server.properties" >"$nd/format.log" 2>&1 &
    fmt_pids+=($!)
  done
  for i in $(seq 1 "$nodes"); do
    if ! wait "${fmt_pids[$((i - 1))]}"; then
      cat "$dir/n$i/format.log" >&2
      die "StorageTool format failed for node $i of '$name' (output above)"
    fi
  done

  # Start every node before waiting: a 3-node quorum needs 2 voters up.
  for i in $(seq 1 "$nodes"); do
    local nd=$dir/n$i
    # shellcheck disable=SC2046
    nohup $(java_cmd) -cp "$(classpath)" kafka.Kafka "$nd/server.properties" \
      </dev/null >"$nd/kafka.log" 2>&1 &
    echo $! >"$nd/pid"
  done

  # Every node logs "Kafka Server started" once its broker is unfenced and serving.
  local deadline=$((SECONDS + START_TIMEOUT)) ready
  while :; do
    ready=0
    for i in $(seq 1 "$nodes"); do
      local nd=$dir/n$i pid
      pid=$(cat "$nd/pid")
      # Our own child: alive-or-zombie is enough here (right after the fork its command line is
      # still this script's, so is_our_node would race with the exec).
      if ! proc_alive "$pid"; then
        tail -n 40 "$nd/kafka.log" >&2
        cmd_stop "$name" >/dev/null 2>&1 || true
        die "node $i of '$name' (PID $pid) exited during start-up (log $nd/kafka.log, tail above)"
      fi
      if grep -q 'Kafka Server started' "$nd/kafka.log" && port_in_use $((base + 2 * (i - 1))); then
        ready=$((ready + 1))
      fi
    done
    [ "$ready" = "$nodes" ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for i in $(seq 1 "$nodes"); do
        log "--- tail of node $i's log"
        tail -n 15 "$dir/n$i/kafka.log" >&2
      done
      cmd_stop "$name" >/dev/null 2>&1 || true
      die "cluster '$name' not ready after ${START_TIMEOUT} s ($ready of $nodes nodes started); stopped it"
    fi
    sleep 0.5
  done
  if [ -n "$owner" ]; then
    nohup bash "${BASH_SOURCE[0]}" _watch "$name" "$owner" </dev/null >"$dir/watch.log" 2>&1 &
    echo $! >"$dir/watch.pid"
  fi
  log "cluster '$name' ($nodes node(s), id $cid) ready in $((SECONDS - t0)) s at $bootstrap"
  echo "$bootstrap"
}

cmd_stop() {
  local name=${1:-} pid
  [ -n "$name" ] || usage
  check_name "$name"
  local dir=$RUN_ROOT/$name
  [ -d "$dir" ] || {
    log "no cluster '$name' under $RUN_ROOT (nothing to stop)"
    return 0
  }
  # The owner watcher first (our recorded PID, checked by its command line), unless we are it.
  if [ -f "$dir/watch.pid" ]; then
    pid=$(cat "$dir/watch.pid")
    if [ "$pid" != "${STRAIT_KAFKA_WATCHER:-}" ] && [ -r "/proc/$pid/cmdline" ] &&
      tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "_watch $name "; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/watch.pid"
  fi
  local pids=() f nd
  for f in "$dir"/n*/pid; do
    [ -f "$f" ] || continue
    nd=$(dirname "$f")
    pid=$(cat "$f")
    if is_our_node "$pid" "$nd/server.properties"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  if [ ${#pids[@]} -eq 0 ]; then
    log "cluster '$name': no node running"
  else
    local deadline=$((SECONDS + STOP_TIMEOUT)) alive
    while :; do
      alive=()
      for pid in "${pids[@]}"; do
        proc_alive "$pid" && alive+=("$pid")
      done
      [ ${#alive[@]} -eq 0 ] && break
      if [ "$SECONDS" -ge "$deadline" ]; then
        log "cluster '$name': PIDs ${alive[*]} still up after SIGTERM and ${STOP_TIMEOUT} s: SIGKILL"
        for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
        break
      fi
      sleep 0.2
    done
    log "cluster '$name' stopped (PIDs ${pids[*]})"
  fi
  for f in "$dir"/n*/pid; do [ -f "$f" ] && mv "$f" "$f.stopped"; done
  return 0
}

cmd_bootstrap() {
  local name=${1:-}
  [ -n "$name" ] || usage
  check_name "$name"
  [ -f "$RUN_ROOT/$name/bootstrap" ] || die "no cluster '$name' under $RUN_ROOT"
  cat "$RUN_ROOT/$name/bootstrap"
}

cmd_pid() {
  local name=${1:-} node=${2:-}
  if [ -z "$name" ] || ! [[ "$node" =~ ^[0-9]+$ ]]; then usage; fi
  check_name "$name"
  local f=$RUN_ROOT/$name/n$node/pid
  [ -f "$f" ] || die "no running node $node of cluster '$name' (no $f)"
  cat "$f"
}

# Internal: stop cluster NAME once process OWNER is gone (polls once a second; exits by itself
# when the cluster was stopped some other way).
cmd_watch() {
  local name=$1 owner=$2 dir=$RUN_ROOT/$1
  while kill -0 "$owner" 2>/dev/null; do
    compgen -G "$dir/n*/pid" >/dev/null || exit 0
    sleep 1
  done
  log "owner PID $owner of cluster '$name' is gone: stopping it"
  STRAIT_KAFKA_WATCHER=$BASHPID cmd_stop "$name"
}

cmd_java_classpath() {
  fetched || die "Kafka $VERSION not fetched yet: run $0 fetch"
  classpath
}

[ $# -ge 1 ] || usage
sub=$1
shift
case $sub in
  fetch) cmd_fetch ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  bootstrap) cmd_bootstrap "$@" ;;
  pid) cmd_pid "$@" ;;
  java-classpath) cmd_java_classpath ;;
  _watch) cmd_watch "$@" ;;
  -h | --help | help) usage ;;
  *)
    log "unknown subcommand '$sub'"
    usage
    ;;
esac
