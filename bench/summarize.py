#!/usr/bin/env python3
"""Summarise bench/broker-bench.sh results: results.tsv [machine.txt] -> markdown on stdout.

Cells are `median (min-max)` over rounds. Ratios are computed per round (strait round r vs
tansu round r, strait round r vs dd round r) and then summarised the same way (B.3 method).
"""
import csv
import re
import statistics
import sys

VARIANTS = [("strait", "strait (fsync always)"), ("strait_i5", "strait (fsync interval:5)"),
            ("strait_mt", "strait (fsync always, malloc mmap threshold 32 MiB)"),
            ("strait_base", "strait_base (STRAIT_BASE build, fsync always)"),
            ("strait_base_i5", "strait_base (STRAIT_BASE build, fsync interval:5)"),
            ("strait_nofsync", "strait (fsync never)"),
            ("strait_base_nofsync", "strait_base (STRAIT_BASE build, fsync never)"),
            ("tansu", "tansu 0.6.0 (sqlite)")]
# (test, field, label)
ROWS = [
    ("rdk_p100", "msgs_s", "rdkafka_performance produce 100 B, msg/s (librdkafka 2.16)"),
    ("rdk_p100", "mb_s", "rdkafka_performance produce 100 B, MB/s (librdkafka 2.16)"),
    ("rdk202_p100", "msgs_s", "rdkafka_performance produce 100 B, msg/s (librdkafka 2.0.2)"),
    ("rdk202dl_p100", "msgs_s", "same, 2.0.2 with the tool's default linger.ms=1000, msg/s"),
    ("rdk_p1k", "msgs_s", "rdkafka_performance produce 1 KiB, msg/s"),
    ("rdk_p1k", "mb_s", "rdkafka_performance produce 1 KiB, MB/s"),
    ("rdk_p100_lz4", "msgs_s", "rdkafka_performance produce 100 B lz4, msg/s"),
    ("rdk_p1k_lz4", "msgs_s", "rdkafka_performance produce 1 KiB lz4, msg/s"),
    ("rdk_p100_zstd", "msgs_s", "rdkafka_performance produce 100 B zstd, msg/s"),
    ("rdk_p1k_zstd", "msgs_s", "rdkafka_performance produce 1 KiB zstd, msg/s"),
    ("rdk_p100_gzip", "msgs_s", "rdkafka_performance produce 100 B gzip, msg/s"),
    ("rdk_p1k_gzip", "msgs_s", "rdkafka_performance produce 1 KiB gzip, msg/s"),
    ("rdk_p100_snappy", "msgs_s", "rdkafka_performance produce 100 B snappy, msg/s"),
    ("rdk_p1k_snappy", "msgs_s", "rdkafka_performance produce 1 KiB snappy, msg/s"),
    ("rdk_c1k", "mb_s", "rdkafka_performance consume 1 KiB (page cache), MB/s"),
    ("rdk_c100", "msgs_s", "rdkafka_performance consume 100 B (page cache), msg/s"),
    ("ck_p100", "msgs_s", "ck_perf.py produce 100 B, msg/s"),
    ("ck_c100", "msgs_s", "ck_perf.py consume 100 B, msg/s"),
    ("ck_p1024", "mb_s", "ck_perf.py produce 1 KiB, MB/s"),
    ("ck_c1024", "mb_s", "ck_perf.py consume 1 KiB, MB/s"),
    ("rss_idle1000_MiB", "mb_s", "RSS with 1 000 idle partitions, MiB"),
    ("rss_after_load_MiB", "mb_s", "RSS after all throughput runs, MiB"),
    ("stop_s", "mb_s", "SIGTERM to exit after the throughput runs, s"),
    ("stop_idle1000_s", "mb_s", "SIGTERM to exit with 1 000 partitions, s"),
]
DD = ("dd_write", "mb_s")
DD_DSYNC = ("dd_dsync2M", "mb_s")
THROUGHPUT = {"rdk_p100", "rdk202_p100", "rdk202dl_p100", "rdk_p1k", "rdk_c1k", "rdk_c100",
              "ck_p100", "ck_c100", "ck_p1024", "ck_c1024"}


def load(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def by_round(rows, variant, test, field, ok_only=True):
    out = {}
    for r in rows:
        if r["variant"] == variant and r["test"] == test and (r["ok"] == "1" or not ok_only):
            v = num(r[field])
            if v is not None:
                out[int(r["round"])] = v
    return out


def fmt(v):
    if v is None:
        return "—"
    if abs(v) >= 10000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—", None
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt(m), m
    return f"{fmt(m)} ({fmt(min(vals))}–{fmt(max(vals))})", m


def ratio_cell(a, b):
    common = sorted(set(a) & set(b))
    rs = [a[k] / b[k] for k in common if b[k]]
    if not rs:
        return "—", None
    m = statistics.median(rs)
    f = (lambda x: f"{x:.2f}") if m < 10 else (lambda x: f"{x:.0f}")
    if len(rs) == 1:
        return f"{f(m)}×", m
    return f"{f(m)}× ({f(min(rs))}–{f(max(rs))})", m


def failures(rows):
    return [r for r in rows if r["ok"] != "1"]


def main():
    rows = load(sys.argv[1])
    if len(sys.argv) > 2:
        print("```")
        print(open(sys.argv[2]).read().rstrip())
        print("```\n")
    present = [(v, lab) for v, lab in VARIANTS if any(r["variant"] == v for r in rows)]
    missing = [lab for v, lab in VARIANTS if v == "tansu" and (v, lab) not in present]
    dd = by_round(rows, "dd", *DD)
    hdr = ["measurement"] + [lab for _, lab in present] + ["dd (raw disk)", "strait/tansu", "strait/dd"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    med = {}
    for test, field, label in ROWS:
        cells = []
        for v, _ in present:
            d = by_round(rows, v, test, field)
            c, m = cell(list(d.values()))
            med[(v, test, field)] = m
            cells.append(c)
        if all(c == "—" for c in cells):
            continue
        st = by_round(rows, "strait", test, field)
        ta = by_round(rows, "tansu", test, field)
        rt = ratio_cell(st, ta)[0] if test in THROUGHPUT else "—"
        rd = ratio_cell(st, dd)[0] if (test == "rdk_p1k" and field == "mb_s") else "—"
        print(f"| {label} | " + " | ".join(cells) + f" | — | {rt} | {rd} |")
    ddc, ddm = cell(list(dd.values()))
    print("| dd bs=1M count=1024 conv=fdatasync, MB/s | " + " | ".join("—" for _ in present)
          + f" | {ddc} | — | — |")
    dds = by_round(rows, "dd", *DD_DSYNC)
    if dds:
        c2, _ = cell(list(dds.values()))
        r2, _ = ratio_cell(by_round(rows, "strait", "rdk_p1k", "mb_s"), dds)
        print("| dd bs=2M count=512 oflag=dsync (a sync every 2 MiB), MB/s | "
              + " | ".join("—" for _ in present) + f" | {c2} | — | {r2} (1 KiB produce) |")
    if missing:
        print(f"\nNot measured in this run: {', '.join(missing)}.")

    # ---------------------------------------------------------------- two builds, one run
    for new, base in (("strait", "strait_base"), ("strait_i5", "strait_base_i5"),
                      ("strait_nofsync", "strait_base_nofsync")):
        if not any(r["variant"] == base for r in rows):
            continue
        print(f"\n### {new} vs {base} (same run, ratio per round: median (min-max))\n")
        print(f"| produce run | {new} msg/s | {base} msg/s | msg/s ratio | broker CPU-s ratio "
              "| broker user CPU-s ratio |")
        print("|---|---|---|---|---|---|")
        tests = sorted({r["test"] for r in rows if r["test"].startswith(("rdk_p", "ck_p"))})
        for test in tests:
            a = by_round(rows, new, test, "msgs_s")
            b = by_round(rows, base, test, "msgs_s")
            if not a or not b:
                continue
            ca = by_round(rows, new, test, "broker_cpu_s")
            cb = by_round(rows, base, test, "broker_cpu_s")
            sa = by_round(rows, new, test, "broker_sys_s")
            sb = by_round(rows, base, test, "broker_sys_s")
            ua = {k: ca[k] - sa.get(k, 0) for k in ca}
            ub = {k: cb[k] - sb.get(k, 0) for k in cb}
            print(f"| {test} | {cell(list(a.values()))[0]} | {cell(list(b.values()))[0]} | "
                  f"{ratio_cell(a, b)[0]} | {ratio_cell(ca, cb)[0]} | {ratio_cell(ua, ub)[0]} |")

    # ---------------------------------------------------------------- targets
    print("\n### Targets (strait, fsync always)\n")
    print("| target | measured | verdict |")
    print("|---|---|---|")

    def verdict(ok):
        return "—" if ok is None else ("met" if ok else "**missed**")

    for test, lib in (("rdk_p100", "2.16"), ("rdk202_p100", "2.0.2")):
        m = med.get(("strait", test, "msgs_s"))
        print(f"| ≥ 500k msg/s produce, 100 B, rdkafka_performance (librdkafka {lib}) | "
              f"{fmt(m)} msg/s | {verdict(None if m is None else m >= 500_000)} |")
    r, rm = ratio_cell(by_round(rows, "strait", "rdk_p1k", "mb_s"), dd)
    print(f"| produce 1 KiB MB/s ≥ ½ raw disk write (dd) | {fmt(med.get(('strait', 'rdk_p1k', 'mb_s')))} MB/s vs dd "
          f"{fmt(ddm)} MB/s = {r} | {verdict(None if rm is None else rm >= 0.5)} |")
    m = med.get(("strait", "rdk_c1k", "mb_s"))
    print(f"| consume 1 KiB from page cache > 1 GB/s | {fmt(m)} MB/s | "
          f"{verdict(None if m is None else m > 1000)} |")
    m = med.get(("strait", "rss_idle1000_MiB", "mb_s"))
    print(f"| RSS < 200 MB with 1 000 idle partitions | {fmt(m)} MiB | "
          f"{verdict(None if m is None else m * 1.048576 < 200)} |")

    # ---------------------------------------------------------------- resources
    print("\n### Resources per run (medians over rounds)\n")
    print("cores = CPU-seconds / wall-seconds: the client process over its whole run (incl. start-up), "
          "the broker process over the same interval (2 cores in the machine). CPU-s/GB = the broker's "
          "CPU-seconds per GB moved; sys = kernel share of it; minflt = broker minor page faults. "
          "fsyncs = the broker's fdatasync+fsync calls in the run (perf trace); busy = summed fsync "
          "time / wall time.\n")
    print("| variant | run | wall s | client cores | broker cores | broker CPU-s/GB (sys %) | broker minflt | fsyncs | avg fsync ms | fsync busy | binding (heuristic) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for v, _ in present:
        for test in ["rdk_p100", "rdk202_p100", "rdk202dl_p100", "rdk_p1k", "rdk_c1k", "rdk_c100",
                     "ck_p100", "ck_c100", "ck_p1024", "ck_c1024"]:
            rs = [r for r in rows if r["variant"] == v and r["test"] == test and r["ok"] == "1"]
            if not rs:
                continue

            def med_of(f):
                return statistics.median([f(r) for r in rs])

            wall = med_of(lambda r: num(r["wall_s"]) or 0)
            cc = med_of(lambda r: (num(r["client_cpu_s"]) or 0) / max(num(r["wall_s"]) or 0, 1e-9))
            bc = med_of(lambda r: (num(r["broker_cpu_s"]) or 0) / max(num(r["wall_s"]) or 0, 1e-9))
            size = 100 if test.endswith("100") else 1024
            m = re.search(r"n=(\d+)", rs[0]["note"])
            gb = int(m.group(1)) * size / 1e9 if m else 0
            bcpu = med_of(lambda r: num(r["broker_cpu_s"]) or 0)
            bsys = med_of(lambda r: num(r["broker_sys_s"]) or 0)
            per_gb = f"{bcpu / gb:.2f} ({100 * bsys / bcpu:.0f}%)" if gb > 0 and bcpu > 0 else "—"
            flt = f"{med_of(lambda r: num(r['broker_minflt']) or 0):,.0f}"
            fn = [num(r["fsync_n"]) for r in rs if num(r["fsync_n"]) is not None]
            fm = [num(r["fsync_ms"]) for r in rs if num(r["fsync_ms"]) is not None]
            busy_v = 0
            if fn:
                n = statistics.median(fn)
                ms = statistics.median(fm)
                avg = f"{ms / n:.2f}" if n else "—"
                busy_v = ms / 1000 / wall if wall else 0
                busy = f"{busy_v * 100:.0f}%"
                fns = f"{n:.0f}"
            else:
                avg = busy = fns = "—"
            consume = "_c" in test
            if cc >= 0.85 and cc >= bc:
                bind = "client CPU"
            elif cc + bc >= 1.7:
                bind = "machine CPU (both cores)"
            elif bc >= 0.85:
                bind = "broker CPU (about one core)"
            elif busy_v >= 0.6:
                bind = "fsync"
            elif consume and cc + bc >= 0.7:
                bind = "client+broker CPU in turn (one fetch in flight)"
            else:
                bind = "nothing saturated (latency / client pacing)"
            print(f"| {v} | {test} | {wall:.2f} | {cc:.2f} | {bc:.2f} | {per_gb} | {flt} | {fns} | {avg} | {busy} | {bind} |")

    bad = failures(rows)
    if bad:
        print("\n### Failed runs\n")
        for r in bad:
            print(f"- {r['variant']} {r['test']} round {r['round']}: {r['note']}")


if __name__ == "__main__":
    main()
