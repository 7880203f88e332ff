#!/usr/bin/env python3
"""Admin helper for bench/broker-bench.sh (confluent-kafka, librdkafka 2.16).

  bench_admin.py create BOOT PARTITIONS TOPIC...   create topics, wait for all of them
  bench_admin.py idle BOOT TOPICS PARTITIONS        create idle-000.. topics and put one
                                                    100-byte record in every partition
  bench_admin.py freeport                           print a free TCP port on 127.0.0.1

Prints one `ok ...` line on success; on failure prints `FAIL ...` and exits 1.
Every call is bounded by timeouts (60 s per admin/flush step).
"""
import socket
import sys
import time

STEP_S = 60


def admin(boot):
    from confluent_kafka.admin import AdminClient
    return AdminClient({"bootstrap.servers": boot, "socket.timeout.ms": STEP_S * 1000})


def create(boot, parts, names):
    from confluent_kafka.admin import NewTopic
    a = admin(boot)
    t0 = time.time()
    # Batches of 50 keep each CreateTopics request small for brokers that handle it serially.
    errors = []
    for i in range(0, len(names), 50):
        chunk = [NewTopic(n, num_partitions=parts, replication_factor=1)
                 for n in names[i:i + 50]]
        fs = a.create_topics(chunk, request_timeout=STEP_S, operation_timeout=STEP_S)
        for name, f in fs.items():
            try:
                f.result(STEP_S)
            except Exception as e:  # noqa: BLE001 - report every failure verbatim
                errors.append(f"{name}: {e}")
    dt = time.time() - t0
    if errors:
        print(f"FAIL create {len(errors)} errors in {dt:.1f}s: {errors[:3]}")
        sys.exit(1)
    # Wait until metadata shows every partition (bounded).
    want = set(names)
    deadline = time.time() + STEP_S
    while time.time() < deadline:
        md = a.list_topics(timeout=10)
        ready = {t for t in want if t in md.topics and md.topics[t].error is None
                 and len(md.topics[t].partitions) == parts}
        if ready == want:
            print(f"ok created {len(names)} topics x {parts} partitions in {dt:.1f}s")
            return
        time.sleep(0.2)
    print(f"FAIL metadata shows {len(ready)}/{len(want)} topics after {STEP_S}s")
    sys.exit(1)


def idle(boot, ntopics, parts):
    from confluent_kafka import Producer
    names = [f"idle-{i:03d}" for i in range(ntopics)]
    create(boot, parts, names)
    p = Producer({"bootstrap.servers": boot, "acks": "all", "linger.ms": 5})
    errs = []

    def dr(err, _msg):
        if err:
            errs.append(str(err))

    for n in names:
        for q in range(parts):
            p.produce(n, b"x" * 100, partition=q, on_delivery=dr)
    left = p.flush(STEP_S)
    if left or errs:
        print(f"FAIL idle produce: unflushed={left} errors={len(errs)} {errs[:3]}")
        sys.exit(1)
    print(f"ok one record in each of {ntopics * parts} partitions")


def freeport():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "create":
        create(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    elif cmd == "idle":
        idle(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "freeport":
        freeport()
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
