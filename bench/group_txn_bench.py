#!/usr/bin/env python3
"""Consumer-group latency and idempotent/transactional produce throughput of one broker.

Usage: group_txn_bench.py BOOTSTRAP [ROUNDS=5] [N=100000]
Prints one TSV line per measurement: name, value, unit, note. Run by bench/group-txn-bench.sh,
which starts Strait and tansu and runs this against both in the same invocation.

Measurements (confluent-kafka / librdkafka 2.16, session.timeout.ms=6000, heartbeat 3 s default):
  first_message_ms     subscribe() of a lone consumer in a new group -> first message (median)
  rebalance3_ms        three consumers subscribe together -> all three hold a share (median)
  leave_takeover_ms    one of the three closes (LeaveGroup) -> the other two cover all partitions
  produce_plain        acks=all, 100-byte records                 msg/s
  produce_idempotent   enable.idempotence=true                     msg/s (ratio to plain)
  produce_txn100       transactions of 100 records, committed      msg/s (ratio to plain)
Every loop is bounded in time; a measurement that fails prints value -1 and the error.
"""
import statistics
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

BOOT = sys.argv[1]
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
N = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
PARTS = 6


def out(name, value, unit, note=""):
    print(f"{name}\t{value}\t{unit}\t{note}", flush=True)


def create(topic, parts):
    a = AdminClient({"bootstrap.servers": BOOT})
    a.create_topics([NewTopic(topic, num_partitions=parts, replication_factor=1)])[topic].result(20)


def consumer(group, extra=None):
    conf = {"bootstrap.servers": BOOT, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "session.timeout.ms": 6000}
    conf.update(extra or {})
    return Consumer(conf)


def fill(topic, n):
    p = Producer({"bootstrap.servers": BOOT, "acks": "all", "linger.ms": 5})
    for i in range(n):
        p.produce(topic, key=str(i).encode(), value=b"x" * 100)
    p.flush(60)


def first_message(topic):
    times = []
    for _ in range(ROUNDS):
        c = consumer(f"bench-first-{uuid.uuid4()}")
        t0 = time.time()
        c.subscribe([topic])
        got = None
        while got is None and time.time() - t0 < 30:
            m = c.poll(0.05)
            if m is not None and not m.error():
                got = time.time()
        c.close()
        if got is None:
            raise RuntimeError("no message within 30 s")
        times.append((got - t0) * 1000)
    return times


def assigned(c, state):
    return state.get(id(c), [])


def rebalance3(topic):
    joins, leaves = [], []
    for _ in range(ROUNDS):
        group = f"bench-reb-{uuid.uuid4()}"
        state = {}
        members = []

        def on_assign(cons, parts, state=state):
            state[id(cons)] = [p.partition for p in parts]

        def on_revoke(cons, parts, state=state):
            state[id(cons)] = []

        for _ in range(3):
            members.append(consumer(group))
        t0 = time.time()
        for c in members:
            c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)

        def shares(cs):
            parts = [p for c in cs for p in assigned(c, state)]
            return all(assigned(c, state) for c in cs) and sorted(parts) == list(range(PARTS))

        while not shares(members) and time.time() - t0 < 60:
            for c in members:
                c.poll(0.02)
        if not shares(members):
            raise RuntimeError(f"3 members did not share the partitions within 60 s: {state}")
        joins.append((time.time() - t0) * 1000)
        leaving = members.pop()
        t1 = time.time()
        leaving.close()
        while not shares(members) and time.time() - t1 < 60:
            for c in members:
                c.poll(0.02)
        if not shares(members):
            raise RuntimeError("2 members did not take over within 60 s")
        leaves.append((time.time() - t1) * 1000)
        for c in members:
            c.close()
    return joins, leaves


def produce_rate(conf, txn_size=0):
    topic = f"bench-prod-{uuid.uuid4().hex[:8]}"
    create(topic, 3)
    c = {"bootstrap.servers": BOOT, "acks": "all", "linger.ms": 5}
    c.update(conf)
    p = Producer(c)
    errors = []
    done = [0]

    def dr(err, _msg):
        if err:
            errors.append(str(err))
        else:
            done[0] += 1

    payload = b"x" * 100
    # Warm up outside the timed window: connection, metadata, producer id (and for
    # transactions the coordinator), so the figure is steady-state throughput.
    if txn_size:
        p.init_transactions(30)
        p.begin_transaction()
    p.produce(topic, payload)
    if txn_size:
        p.commit_transaction(30)
    p.flush(30)
    t0 = time.time()
    i = 0
    while i < N:
        if txn_size:
            p.begin_transaction()
        for _ in range(txn_size or N):
            while True:
                try:
                    p.produce(topic, payload, on_delivery=dr)
                    break
                except BufferError:
                    p.poll(0.01)
            i += 1
        if txn_size:
            p.commit_transaction(30)
        else:
            p.flush(120)
    p.flush(120)
    dt = time.time() - t0
    if errors or done[0] != N:
        raise RuntimeError(f"delivered {done[0]}/{N}, errors {errors[:3]}")
    return N / dt


def main():
    topic = f"bench-groups-{uuid.uuid4().hex[:8]}"
    try:
        create(topic, PARTS)
        fill(topic, 1000)
    except Exception as e:  # noqa: BLE001 - report and stop
        out("setup", -1, "", repr(e))
        return
    try:
        t = first_message(topic)
        out("first_message_ms", f"{statistics.median(t):.0f}", "ms", f"rounds={[round(x) for x in t]}")
    except Exception as e:  # noqa: BLE001
        out("first_message_ms", -1, "ms", repr(e))
    try:
        j, l = rebalance3(topic)
        out("rebalance3_ms", f"{statistics.median(j):.0f}", "ms", f"rounds={[round(x) for x in j]}")
        out("leave_takeover_ms", f"{statistics.median(l):.0f}", "ms", f"rounds={[round(x) for x in l]}")
    except Exception as e:  # noqa: BLE001
        out("rebalance3_ms", -1, "ms", repr(e))
    rates = {}
    for name, conf, txn in [("produce_plain", {}, 0),
                            ("produce_idempotent", {"enable.idempotence": True}, 0),
                            ("produce_txn100", {"transactional.id": f"bench-{uuid.uuid4()}"}, 100)]:
        try:
            rates[name] = produce_rate(conf, txn)
            ratio = rates[name] / rates["produce_plain"] if "produce_plain" in rates else float("nan")
            out(name, f"{rates[name]:.0f}", "msg/s", f"ratio_to_plain={ratio:.2f}")
        except (KafkaException, RuntimeError) as e:
            out(name, -1, "msg/s", repr(e)[:200])


if __name__ == "__main__":
    main()
