//! Where a last-per-subject read stops being a snapshot.
//!
//! JetStream delivers the last message of every subject (in sequence order) and then whatever
//! is stored afterwards; the pending count it reports at creation may already include a few of
//! those later messages. So a snapshot ends after that count or at the first subject seen
//! twice, whichever comes first: every message before that point is the last event of its
//! subject up to the snapshot's end, and the repeat is a live change, delivered after
//! `SnapshotEnd`. Both subscription paths use this one rule.

use std::hash::BuildHasher;
use std::ops::Range;

use hashbrown::hash_table::{Entry, HashTable};
use hashbrown::DefaultHashBuilder;

/// Room reserved up front for the subjects of a snapshot (more grows the table as usual).
const RESERVED_SUBJECTS: u64 = 1 << 16;

/// The snapshot part of a last-per-subject read.
///
/// Every subject taken is remembered, exactly: a snapshot of a million resources checks a
/// million subjects, one per message, so the set is kept cheap. The subjects are written end to
/// end into one string (no allocation per subject) and found through a table of their ranges in
/// it, hashed with a fast seeded hash (the standard `HashSet<String>` spent 7 % of the gateway's
/// CPU in a snapshot on SipHash, rehashing and one allocation per subject).
#[derive(Debug)]
pub(crate) struct SnapshotBoundary {
    /// Messages the read had pending when it was created, not yet taken.
    remaining: u64,
    /// The subjects taken so far, end to end.
    subjects: String,
    /// Where each subject taken lies in `subjects`.
    seen: HashTable<Range<usize>>,
    /// The hash of `seen`.
    hasher: DefaultHashBuilder,
    /// The snapshot's end: the stream's last sequence at open, or the newest message taken.
    end: u64,
}

impl SnapshotBoundary {
    /// A boundary for a read created with `pending` messages, on a stream whose last sequence
    /// was `last` when the subscription opened.
    pub(crate) fn new(pending: u64, last: u64) -> SnapshotBoundary {
        SnapshotBoundary {
            remaining: pending,
            subjects: String::new(),
            seen: HashTable::with_capacity(pending.min(RESERVED_SUBJECTS) as usize),
            hasher: DefaultHashBuilder::default(),
            end: last,
        }
    }

    /// Takes the next first delivery of the read: `true` while it belongs to the snapshot,
    /// `false` once the snapshot is over (this message, if any, is a live change).
    pub(crate) fn admit(&mut self, subject: &str, sequence: u64) -> bool {
        if self.remaining == 0 || !self.first_sight(subject) {
            self.remaining = 0;
            return false;
        }
        self.count(sequence);
        true
    }

    /// Remembers `subject`: `false` if it was taken before.
    fn first_sight(&mut self, subject: &str) -> bool {
        let SnapshotBoundary {
            subjects,
            seen,
            hasher,
            ..
        } = self;
        let hash = hasher.hash_one(subject);
        let entry = seen.entry(
            hash,
            |at| &subjects[at.clone()] == subject,
            |at| hasher.hash_one(&subjects[at.clone()]),
        );
        match entry {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                let start = subjects.len();
                subjects.push_str(subject);
                slot.insert(start..subjects.len());
                true
            }
        }
    }

    /// Takes a redelivery during the snapshot (its subject was already counted when first
    /// delivered).
    pub(crate) fn count(&mut self, sequence: u64) {
        self.remaining = self.remaining.saturating_sub(1);
        self.end = self.end.max(sequence);
    }

    /// Whether every message of the snapshot has been taken.
    pub(crate) fn complete(&self) -> bool {
        self.remaining == 0
    }

    /// The sequence `SnapshotEnd` names: live changes continue after it.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_ends_after_the_pending_count() {
        let mut b = SnapshotBoundary::new(2, 5);
        assert!(b.admit("a", 3));
        assert!(!b.complete());
        assert!(b.admit("b", 5));
        assert!(b.complete());
        assert!(!b.admit("c", 6), "past the pending count is live");
        assert_eq!(b.end(), 5);
    }

    #[test]
    fn a_subject_seen_twice_is_a_live_change_and_ends_the_snapshot() {
        // Pending counted a message published during the read.
        let mut b = SnapshotBoundary::new(3, 4);
        assert!(b.admit("a", 2));
        assert!(b.admit("b", 4));
        assert!(!b.admit("a", 7));
        assert!(b.complete());
        assert_eq!(b.end(), 4, "the repeat is not part of the snapshot");
    }

    #[test]
    fn many_subjects_are_told_apart_exactly() {
        let n = 100_000u64;
        let mut b = SnapshotBoundary::new(n + 1, n);
        for i in 0..n {
            assert!(b.admit(&format!("w.{i}"), i + 1), "w.{i} is new");
        }
        assert!(
            !b.admit("w.77", n + 1),
            "a subject taken before is a repeat"
        );
        assert!(b.complete());
        assert_eq!(b.end(), n);
    }

    #[test]
    fn the_end_covers_messages_newer_than_the_open() {
        let mut b = SnapshotBoundary::new(2, 4);
        assert!(b.admit("a", 3));
        assert!(b.admit("b", 9));
        assert_eq!(b.end(), 9);
    }

    #[test]
    fn an_empty_stream_has_an_empty_complete_snapshot() {
        let b = SnapshotBoundary::new(0, 0);
        assert!(b.complete());
        assert_eq!(b.end(), 0);
    }
}
