#!/usr/bin/env bash
# Peer check: Apache Kafka's own VerifiableProducer and VerifiableConsumer (kafka-tools 4.1, the
# tools Kafka's ducktape system tests drive), run from the classpath scripts/kafka.sh fetched,
# against the broker at BOOTSTRAP. Prints `PASS check` / `FAIL check reason` lines for
# scripts/peers.sh:
#   verifiable_create_topic         TopicCommand --create (3 partitions; FAIL only if it failed)
#   verifiable_produce              acks=all, idempotent: every record acknowledged, no send
#                                   error, tool_data sent == acked == N, distinct offsets
#   verifiable_consume_exactly_once VerifiableConsumer (classic group, auto offset reset
#                                   earliest, --verbose): every acknowledged record consumed
#                                   exactly once at its acknowledged (partition, offset) with
#                                   its key and value; nothing else consumed
#   verifiable_group_commit         every offsets_committed event succeeded, and the last
#                                   committed offset of each partition is its end offset
#
# The three record checks run twice: uncompressed, and with compression.type=zstd (the same
# names with the suffix _zstd).
#
#   usage: scripts/peer-clients/ak_verifiable.sh BOOTSTRAP [N]     (N default 20000)
set -euo pipefail
B=${1:?usage: ak_verifiable.sh BOOTSTRAP [N]}
N=${2:-20000}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CP=$(bash "$here/../kafka.sh" java-classpath) || {
  echo "FAIL verifiable_create_topic Kafka not fetched (run scripts/kafka.sh fetch)"
  exit 1
}
work=$(mktemp -d /tmp/ak-verifiable.XXXXXX)
trap 'rm -rf "$work"' EXIT
J=(java -Xmx256m -cp "$CP")
TOPIC=verifiable-$$-$RANDOM
PY=$(command -v python3)

# One round: topic TOPIC+SFX (3 partitions), produce N records with CODEC, consume, check.
round() {
  local sfx=$1 codec=$2 prc=0 crc=0
  if ! timeout 60 "${J[@]}" org.apache.kafka.tools.TopicCommand --bootstrap-server "$B" --create \
    --topic "$TOPIC$sfx" --partitions 3 --replication-factor 1 >"$work/topic$sfx.out" 2>&1; then
    echo "FAIL verifiable_create_topic $(tr '\n' ' ' <"$work/topic$sfx.out" | cut -c1-200)"
    return 0
  fi
  [ -n "$sfx" ] || echo "PASS verifiable_create_topic"
  : >"$work/producer$sfx.jsonl"
  : >"$work/consumer$sfx.jsonl"
  : >"$work/consumer$sfx.err"
  # VerifiableProducer sets retries=0 itself (the ducktape tests pass their own); idempotence
  # needs retries, so the config file sets them.
  printf 'enable.idempotence=true\nacks=all\nretries=2147483647\nlinger.ms=5\ncompression.type=%s\n' "$codec" >"$work/producer$sfx.properties"
  timeout 180 "${J[@]}" org.apache.kafka.tools.VerifiableProducer --bootstrap-server "$B" \
    --topic "$TOPIC$sfx" --max-messages "$N" --throughput -1 --acks -1 --repeating-keys 1000 \
    --producer.config "$work/producer$sfx.properties" >"$work/producer$sfx.jsonl" 2>"$work/producer$sfx.err" || prc=$?

  # Skip the consumer when nothing was produced (it would wait for N records until the timeout).
  grep -q producer_send_success "$work/producer$sfx.jsonl" || crc=125
  [ "$crc" != 0 ] || timeout 180 "${J[@]}" org.apache.kafka.tools.VerifiableConsumer --bootstrap-server "$B" \
    --topic "$TOPIC$sfx" --group-id "$TOPIC$sfx-g" --group-protocol classic --reset-policy earliest \
    --max-messages "$N" --verbose >"$work/consumer$sfx.jsonl" 2>"$work/consumer$sfx.err" || crc=$?

  "$PY" - "$N" "$prc" "$crc" "$work" "$sfx" <<'PYEOF'
import json, sys, collections
n, prc, crc, work, sfx = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def events(path):
    out = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out
def tail(path):
    return " ".join(open(path).read().split()[-30:])[:200]
pe, ce = events(f"{work}/producer{sfx}.jsonl"), events(f"{work}/consumer{sfx}.jsonl")
acked = [e for e in pe if e["name"] == "producer_send_success"]
errors = [e for e in pe if e["name"] == "producer_send_error"]
tool = [e for e in pe if e["name"] == "tool_data"]
pos = collections.Counter((e["partition"], e["offset"]) for e in acked)
twice = [p for p, c in pos.items() if c > 1]
prob = []
if prc != 0: prob.append(f"VerifiableProducer exit {prc} ({tail(work + f'/producer{sfx}.err')})")
if errors: prob.append(f"{len(errors)} send errors, first {errors[0]}")
if len(acked) != n: prob.append(f"{len(acked)} of {n} acknowledged")
if not tool or tool[-1].get("sent") != n or tool[-1].get("acked") != n: prob.append(f"tool_data {tool[-1] if tool else None}")
if twice: prob.append(f"{len(twice)} (partition, offset) acknowledged twice, e.g. {twice[:3]}")
print(f"PASS verifiable_produce{sfx}" if not prob else f"FAIL verifiable_produce{sfx} " + "; ".join(prob))

want = {(e["partition"], e["offset"]): (e["key"], e["value"]) for e in acked}
got = collections.Counter()
wrong = []
for e in ce:
    if e["name"] != "record_data":
        continue
    k = (e["partition"], e["offset"])
    got[k] += 1
    if k not in want:
        wrong.append(("not acknowledged", k, e["value"]))
    elif want[k] != (e["key"], e["value"]):
        wrong.append(("other data", k, want[k], (e["key"], e["value"])))
dups = [k for k, c in got.items() if c > 1]
missing = [k for k in want if k not in got]
prob = []
if crc != 0: prob.append(f"VerifiableConsumer exit {crc} ({tail(work + f'/consumer{sfx}.err')})")
if missing: prob.append(f"{len(missing)} acknowledged records never consumed, e.g. {sorted(missing)[:3]}")
if dups: prob.append(f"{len(dups)} records consumed more than once, e.g. {sorted(dups)[:3]}")
if wrong: prob.append(f"{len(wrong)} records consumed wrong, e.g. {wrong[:2]}")
if not want: prob.append("nothing acknowledged to check")
print(f"PASS verifiable_consume_exactly_once{sfx}" if not prob else f"FAIL verifiable_consume_exactly_once{sfx} " + "; ".join(prob))

commits = [e for e in ce if e["name"] == "offsets_committed"]
last = {}
bad = [e for e in commits if not e.get("success")]
for e in commits:
    if e.get("success"):
        for o in e["offsets"]:
            last[o["partition"]] = o["offset"]
end = collections.defaultdict(lambda: -1)
for (p, o) in want:
    end[p] = max(end[p], o)
prob = []
if not commits: prob.append("no offsets_committed events")
if bad: prob.append(f"{len(bad)} failed commits, e.g. {bad[0]}")
for p, o in end.items():
    if last.get(p) != o + 1:
        prob.append(f"partition {p}: last committed {last.get(p)}, end offset {o + 1}")
print(f"PASS verifiable_group_commit{sfx}" if not prob else f"FAIL verifiable_group_commit{sfx} " + "; ".join(prob))
PYEOF
}

round "" none
round _zstd zstd
