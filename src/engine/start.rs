//! Start resolution: the one place where a requested start position meets the stream's
//! retained history.
//!
//! Every path that positions a reader (the shared path at `Open`, consumer-backed
//! subscriptions, an admin seek of a durable) resolves its start here first, so "sequence 0 is
//! invalid" and "a start older than the retained history is HISTORY_EXPIRED unless `on_expired`
//! recovers" hold the same way everywhere.

use super::{OnExpired, Start};
use crate::error::Error;
use crate::store::{ConsumerStart, StartAt};

/// Resolves `start` against a stream whose first retained sequence is `first_sequence`:
/// a sequence older than that becomes `Earliest` or `Snapshot` as `on_expired` says, or fails
/// with [`Error::HistoryExpired`]; sequence 0 is [`Error::InvalidArgument`] on `field`.
pub(crate) fn resolve(
    start: Start,
    on_expired: OnExpired,
    first_sequence: u64,
    field: &str,
) -> Result<Start, Error> {
    match start {
        Start::Sequence(0) => Err(Error::invalid(
            format!("{field}.sequence"),
            "stream sequences start at 1",
        )),
        Start::Sequence(s) if s < first_sequence => match on_expired {
            OnExpired::Fail => Err(Error::HistoryExpired {
                requested: s,
                first_sequence,
            }),
            OnExpired::FromEarliest => Ok(Start::Earliest),
            OnExpired::FromSnapshot => Ok(Start::Snapshot),
        },
        other => Ok(other),
    }
}

/// Where a JetStream consumer positioned at a resolved `start` begins (`Resume` keeps a
/// durable's position, so it creates nothing new: it maps to `New` for creation).
pub(crate) fn consumer_start(start: Start) -> ConsumerStart {
    match start {
        Start::New | Start::Resume => ConsumerStart::New,
        Start::Earliest => ConsumerStart::All,
        Start::Sequence(s) => ConsumerStart::At(StartAt::Sequence(s)),
        Start::Time(t) => ConsumerStart::At(StartAt::Time(t)),
        Start::Snapshot => ConsumerStart::At(StartAt::LastPerSubject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_sequence_fails_or_recovers_as_asked() {
        let resolve = |s, policy| resolve(Start::Sequence(s), policy, 10, "open.start");
        assert!(matches!(
            resolve(3, OnExpired::Fail),
            Err(Error::HistoryExpired {
                requested: 3,
                first_sequence: 10
            })
        ));
        assert_eq!(
            resolve(3, OnExpired::FromEarliest).unwrap(),
            Start::Earliest
        );
        assert_eq!(
            resolve(3, OnExpired::FromSnapshot).unwrap(),
            Start::Snapshot
        );
        assert_eq!(resolve(10, OnExpired::Fail).unwrap(), Start::Sequence(10));
    }

    #[test]
    fn sequence_zero_is_invalid_whatever_the_policy() {
        for policy in [
            OnExpired::Fail,
            OnExpired::FromEarliest,
            OnExpired::FromSnapshot,
        ] {
            match resolve(Start::Sequence(0), policy, 1, "start") {
                Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "start.sequence"),
                other => panic!("expected InvalidArgument, got {other:?}"),
            }
        }
    }

    #[test]
    fn other_starts_pass_unchanged() {
        for start in [Start::New, Start::Earliest, Start::Snapshot, Start::Resume] {
            assert_eq!(
                resolve(start, OnExpired::Fail, 100, "start").unwrap(),
                start
            );
        }
    }
}
