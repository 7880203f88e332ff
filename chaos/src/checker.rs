//! The delivery checker: a pure function (no I/O) from what producers had acknowledged and
//! what a consumer read back to a [`Report`] of every anomaly, in the spirit of Jepsen's
//! checkers.
//!
//! Records are identified by ([`RecordId`]: writer, sequence). Definitions:
//! * **lost**: acknowledged (and, if transactional, committed) but never read.
//! * **duplicated**: the same writer+seq read more than once.
//! * **out of order**: within a partition, in offset order, a writer's seq decreased.
//! * **offset mismatch** (only with [`CheckOptions::offsets_preserved`]): read, but at none
//!   of the occurrences at the offset the producer was told.
//! * **aborted visible** (transactions): a record of an aborted transaction was read (with
//!   [`CheckOptions::read_committed`]; under read_uncommitted aborted records are expected).
//! * **committed missing** (transactions): a record of a committed transaction was not read.
//! * **unacknowledged read** (informational, not a failure): a record read that no producer
//!   saw acknowledged, e.g. written just before a crash whose reply was lost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A record's identity: who wrote it and its sequence number for that writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordId {
    pub writer: u32,
    pub seq: u64,
}

/// A record a producer saw acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
    pub id: RecordId,
    /// The transaction it was written in (transactional mode), else `None`.
    pub transaction: Option<u64>,
}

/// A record a consumer read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub partition: i32,
    pub offset: i64,
    pub id: RecordId,
}

/// Outcomes of transactions (ids as in [`Acked::transaction`]). A transaction in neither set
/// is in doubt (its commit or abort failed) and its records may or may not be visible.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionOutcomes {
    pub committed: HashSet<u64>,
    pub aborted: HashSet<u64>,
}

/// What the check may assume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckOptions {
    /// Records must be read at the offset they were acknowledged at (single broker, or an
    /// offset-preserving link).
    pub offsets_preserved: bool,
    /// The consumer used `isolation.level=read_committed`.
    pub read_committed: bool,
}

/// A record read more than once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Duplicate {
    pub id: RecordId,
    /// (partition, offset) of every occurrence.
    pub occurrences: Vec<(i32, i64)>,
}

/// A writer's sequence going backwards within a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutOfOrder {
    pub partition: i32,
    pub writer: u32,
    /// The highest seq read before, and where.
    pub previous_seq: u64,
    pub previous_offset: i64,
    /// The smaller seq read after it, and where.
    pub seq: u64,
    pub offset: i64,
}

/// A record read at another offset than acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetMismatch {
    pub id: RecordId,
    pub partition: i32,
    pub acknowledged_offset: i64,
    pub observed_offset: i64,
}

/// Everything the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Records the check requires to be present (acknowledged, not aborted, not in doubt).
    pub required: usize,
    pub acknowledged: usize,
    pub observed: usize,
    pub lost: Vec<Acked>,
    pub duplicated: Vec<Duplicate>,
    pub out_of_order: Vec<OutOfOrder>,
    pub offset_mismatches: Vec<OffsetMismatch>,
    pub aborted_visible: Vec<Observed>,
    pub committed_missing: Vec<Acked>,
    /// Informational: read but never acknowledged.
    pub unacknowledged_reads: usize,
}

impl Report {
    /// No anomaly (unacknowledged reads are allowed).
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.out_of_order.is_empty()
            && self.offset_mismatches.is_empty()
            && self.aborted_visible.is_empty()
            && self.committed_missing.is_empty()
    }

    /// A one-line summary with counts.
    pub fn summary(&self) -> String {
        format!(
            "{}: acknowledged {}, required {}, observed {}, lost {}, duplicated {}, out of order {}, \
             offset mismatches {}, aborted visible {}, committed missing {}, unacknowledged reads {}",
            if self.is_clean() { "CLEAN" } else { "ANOMALIES" },
            self.acknowledged,
            self.required,
            self.observed,
            self.lost.len(),
            self.duplicated.len(),
            self.out_of_order.len(),
            self.offset_mismatches.len(),
            self.aborted_visible.len(),
            self.committed_missing.len(),
            self.unacknowledged_reads
        )
    }
}

/// How many examples of each anomaly [`Report`]'s `Display` lists.
const EXAMPLES: usize = 5;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        let id = |r: &RecordId| format!("w{}#{}", r.writer, r.seq);
        for a in self.lost.iter().take(EXAMPLES) {
            writeln!(
                f,
                "  lost {} (acked at {}/{})",
                id(&a.id),
                a.partition,
                a.offset
            )?;
        }
        for d in self.duplicated.iter().take(EXAMPLES) {
            writeln!(f, "  duplicated {} at {:?}", id(&d.id), d.occurrences)?;
        }
        for o in self.out_of_order.iter().take(EXAMPLES) {
            writeln!(
                f,
                "  out of order in partition {}: writer {} seq {} at offset {} after seq {} at offset {}",
                o.partition, o.writer, o.seq, o.offset, o.previous_seq, o.previous_offset
            )?;
        }
        for m in self.offset_mismatches.iter().take(EXAMPLES) {
            writeln!(
                f,
                "  offset mismatch {} in partition {}: acked {}, read at {}",
                id(&m.id),
                m.partition,
                m.acknowledged_offset,
                m.observed_offset
            )?;
        }
        for o in self.aborted_visible.iter().take(EXAMPLES) {
            writeln!(
                f,
                "  aborted but visible {} at {}/{}",
                id(&o.id),
                o.partition,
                o.offset
            )?;
        }
        for a in self.committed_missing.iter().take(EXAMPLES) {
            writeln!(
                f,
                "  committed but missing {} (acked at {}/{})",
                id(&a.id),
                a.partition,
                a.offset
            )?;
        }
        Ok(())
    }
}

/// Checks `observed` against `acknowledged`. `transactions` gives the outcome of every
/// transaction named in `acknowledged` (pass the default for non-transactional runs).
pub fn check(
    acknowledged: &[Acked],
    observed: &[Observed],
    transactions: &TransactionOutcomes,
    options: CheckOptions,
) -> Report {
    let mut report = Report {
        acknowledged: acknowledged.len(),
        observed: observed.len(),
        ..Report::default()
    };

    let mut acked_by_id: HashMap<RecordId, &Acked> = HashMap::with_capacity(acknowledged.len());
    for a in acknowledged {
        acked_by_id.entry(a.id).or_insert(a);
    }

    // Occurrences of each id, in (partition, offset) order.
    let mut sorted: Vec<&Observed> = observed.iter().collect();
    sorted.sort_by_key(|o| (o.partition, o.offset));
    let mut occurrences: HashMap<RecordId, Vec<&Observed>> = HashMap::with_capacity(sorted.len());
    for o in &sorted {
        occurrences.entry(o.id).or_default().push(o);
    }

    // Order per (partition, writer).
    let mut highest: HashMap<(i32, u32), (u64, i64)> = HashMap::new();
    for o in &sorted {
        let key = (o.partition, o.id.writer);
        match highest.get(&key) {
            Some(&(previous_seq, previous_offset)) if o.id.seq < previous_seq => {
                report.out_of_order.push(OutOfOrder {
                    partition: o.partition,
                    writer: o.id.writer,
                    previous_seq,
                    previous_offset,
                    seq: o.id.seq,
                    offset: o.offset,
                });
            }
            Some(&(previous_seq, _)) if o.id.seq == previous_seq => {}
            _ => {
                highest.insert(key, (o.id.seq, o.offset));
            }
        }
    }

    // Duplicates, in a stable order.
    let mut duplicated: BTreeMap<RecordId, Vec<(i32, i64)>> = BTreeMap::new();
    for (id, list) in &occurrences {
        if list.len() > 1 {
            duplicated.insert(*id, list.iter().map(|o| (o.partition, o.offset)).collect());
        }
    }
    report.duplicated = duplicated
        .into_iter()
        .map(|(id, occurrences)| Duplicate { id, occurrences })
        .collect();

    // Per acknowledged record: required, lost, mismatched, aborted-visible.
    for a in acknowledged {
        if acked_by_id
            .get(&a.id)
            .is_some_and(|first| !std::ptr::eq(*first, a))
        {
            continue; // the same id acknowledged twice: judged once
        }
        let seen = occurrences.get(&a.id);
        let outcome = a.transaction.map(|t| {
            if transactions.committed.contains(&t) {
                TxnOutcome::Committed
            } else if transactions.aborted.contains(&t) {
                TxnOutcome::Aborted
            } else {
                TxnOutcome::InDoubt
            }
        });
        match outcome {
            Some(TxnOutcome::Aborted) => {
                if options.read_committed {
                    if let Some(list) = seen {
                        report.aborted_visible.extend(list.iter().map(|o| **o));
                    }
                }
                continue;
            }
            Some(TxnOutcome::InDoubt) => continue,
            Some(TxnOutcome::Committed) | None => {}
        }
        report.required += 1;
        let Some(list) = seen else {
            if outcome.is_some() {
                report.committed_missing.push(*a);
            } else {
                report.lost.push(*a);
            }
            continue;
        };
        if options.offsets_preserved
            && !list
                .iter()
                .any(|o| o.partition == a.partition && o.offset == a.offset)
        {
            if let Some(first) = list.first() {
                report.offset_mismatches.push(OffsetMismatch {
                    id: a.id,
                    partition: a.partition,
                    acknowledged_offset: a.offset,
                    observed_offset: first.offset,
                });
            }
        }
    }
    report.unacknowledged_reads = occurrences
        .keys()
        .filter(|id| !acked_by_id.contains_key(id))
        .count();
    report.lost.sort_by_key(|a| a.id);
    report.committed_missing.sort_by_key(|a| a.id);
    report.offset_mismatches.sort_by_key(|m| m.id);
    report
        .aborted_visible
        .sort_by_key(|o| (o.partition, o.offset));
    report
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TxnOutcome {
    Committed,
    Aborted,
    InDoubt,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(writer: u32, seq: u64) -> RecordId {
        RecordId { writer, seq }
    }

    fn acked(partition: i32, offset: i64, writer: u32, seq: u64, txn: Option<u64>) -> Acked {
        Acked {
            partition,
            offset,
            id: id(writer, seq),
            transaction: txn,
        }
    }

    fn read(partition: i32, offset: i64, writer: u32, seq: u64) -> Observed {
        Observed {
            partition,
            offset,
            id: id(writer, seq),
        }
    }

    const STRICT: CheckOptions = CheckOptions {
        offsets_preserved: true,
        read_committed: true,
    };

    /// Writer 1 wrote seq 0..10 at offsets 0..10 of partition 0; writer 2 seq 0..5 at
    /// offsets 0, 2, 4, 6, 8 of partition 1.
    fn clean_run() -> (Vec<Acked>, Vec<Observed>) {
        let mut a = Vec::new();
        let mut o = Vec::new();
        for s in 0..10 {
            a.push(acked(0, s as i64, 1, s, None));
            o.push(read(0, s as i64, 1, s));
        }
        for s in 0..5 {
            a.push(acked(1, 2 * s as i64, 2, s, None));
            o.push(read(1, 2 * s as i64, 2, s));
        }
        (a, o)
    }

    #[test]
    fn a_clean_log_reports_clean() {
        let (a, o) = clean_run();
        let r = check(&a, &o, &TransactionOutcomes::default(), STRICT);
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.required, 15);
        assert_eq!(r.observed, 15);
        assert_eq!(r.unacknowledged_reads, 0);
        assert!(r.summary().starts_with("CLEAN"));
    }

    #[test]
    fn each_anomaly_is_reported_exactly() {
        let (mut a, mut o) = clean_run();
        // Lost: writer 1 seq 3 never read.
        o.retain(|x| x.id != id(1, 3));
        // Duplicated: writer 2 seq 4 (offset 8) read again at offset 9.
        o.push(read(1, 9, 2, 4));
        // Reordered: writer 4's seq 1 was stored (and acknowledged) before its seq 0.
        a.push(acked(3, 10, 4, 1, None));
        a.push(acked(3, 11, 4, 0, None));
        o.push(read(3, 10, 4, 1));
        o.push(read(3, 11, 4, 0));
        // Offset-shifted: writer 2 seq 2 acknowledged at 4 but read at 5 (order still fine).
        for x in o.iter_mut() {
            if x.id == id(2, 2) {
                x.offset = 5;
            }
        }
        // Aborted visible: transaction 42 (writer 3 seq 0) aborted, yet read.
        a.push(acked(2, 0, 3, 0, Some(42)));
        o.push(read(2, 0, 3, 0));
        // Committed transaction 43 (writer 3 seq 1) read fine; in-doubt 44 (seq 2) absent.
        a.push(acked(2, 2, 3, 1, Some(43)));
        o.push(read(2, 2, 3, 1));
        a.push(acked(2, 4, 3, 2, Some(44)));
        let outcomes = TransactionOutcomes {
            committed: [43].into_iter().collect(),
            aborted: [42].into_iter().collect(),
        };

        let r = check(&a, &o, &outcomes, STRICT);
        println!("{r}");
        assert!(!r.is_clean());
        assert_eq!(r.lost, vec![acked(0, 3, 1, 3, None)]);
        assert_eq!(
            r.duplicated,
            vec![Duplicate {
                id: id(2, 4),
                occurrences: vec![(1, 8), (1, 9)]
            }]
        );
        assert_eq!(
            r.out_of_order,
            vec![OutOfOrder {
                partition: 3,
                writer: 4,
                previous_seq: 1,
                previous_offset: 10,
                seq: 0,
                offset: 11
            }]
        );
        assert_eq!(
            r.offset_mismatches,
            vec![OffsetMismatch {
                id: id(2, 2),
                partition: 1,
                acknowledged_offset: 4,
                observed_offset: 5
            }]
        );
        assert_eq!(r.aborted_visible, vec![read(2, 0, 3, 0)]);
        assert!(r.committed_missing.is_empty());
        assert_eq!(r.unacknowledged_reads, 0);
        // 15 plain + 2 of writer 4 + 1 committed; the aborted and in-doubt ones are not required.
        assert_eq!(r.required, 18);
    }

    #[test]
    fn committed_missing_and_read_uncommitted_aborted_are_distinguished() {
        let a = vec![acked(0, 0, 1, 0, Some(1)), acked(0, 1, 1, 1, Some(2))];
        let o = vec![read(0, 1, 1, 1), read(0, 5, 9, 9)];
        let outcomes = TransactionOutcomes {
            committed: [1].into_iter().collect(),
            aborted: [2].into_iter().collect(),
        };
        let relaxed = CheckOptions {
            offsets_preserved: true,
            read_committed: false,
        };
        let r = check(&a, &o, &outcomes, relaxed);
        assert_eq!(r.committed_missing, vec![a[0]]);
        assert!(
            r.aborted_visible.is_empty(),
            "read_uncommitted sees aborted records"
        );
        assert!(r.lost.is_empty());
        assert_eq!(r.unacknowledged_reads, 1);
        let r = check(&a, &o, &outcomes, STRICT);
        assert_eq!(r.aborted_visible, vec![o[0]]);
    }
}
