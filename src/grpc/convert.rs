//! Hand-written conversions between protobuf messages and domain types.
//!
//! Conversions from the wire validate shape (oneofs present, numbers in range, timestamps
//! valid) and report the offending field path; semantic validation of events is the codec's.

use std::time::Duration;

use super::pb::io::cloudevents::v1 as ce;
use super::pb::jetwatch::v1 as api;
use crate::admin::{DurableState as ConsumerState, StreamState};
use crate::config::SubscribeSettings;
use crate::engine::{AckMode, Item, OnExpired, OpenRequest, Start, StoredEvent};
use crate::error::Error;
use crate::event::Event;
use crate::filter::{Filter, FilterErrorKind, FilterLimits, FilterSpec};

pub use jetwatch_client::convert::{event_to_pb, timestamp_from_pb, timestamp_to_pb};

/// Converts a protobuf CloudEvent to the domain event. `field` prefixes error paths.
pub fn event_from_pb(pb: ce::CloudEvent, field: &str) -> Result<Event, Error> {
    jetwatch_client::convert::event_from_pb(pb, field)
        .map_err(|e| Error::invalid(e.field, e.reason))
}

fn duration_from_pb(d: &prost_types::Duration, field: &str) -> Result<Duration, Error> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Error::invalid(field, "must not be negative"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// Converts a protobuf `Filter` to its domain form. `depth` guards against nesting beyond
/// what the filter compiler accepts (it reports the limit itself).
fn filter_from_pb(f: api::Filter, field: &str, depth: usize) -> Result<FilterSpec, Error> {
    use api::filter::Filter as F;
    if depth > crate::filter::MAX_DEPTH {
        return Err(Error::invalid(
            field,
            format!(
                "filters nest at most {} levels deep",
                crate::filter::MAX_DEPTH
            ),
        ));
    }
    let list = |l: api::FilterList, name: &str| -> Result<Vec<FilterSpec>, Error> {
        l.filters
            .into_iter()
            .enumerate()
            .map(|(i, f)| filter_from_pb(f, &format!("{field}.{name}[{i}]"), depth + 1))
            .collect()
    };
    Ok(match f.filter {
        None => return Err(Error::invalid(field, "the filter has no dialect set")),
        Some(F::Exact(m)) => FilterSpec::Exact(m.attributes.into_iter().collect()),
        Some(F::Prefix(m)) => FilterSpec::Prefix(m.attributes.into_iter().collect()),
        Some(F::Suffix(m)) => FilterSpec::Suffix(m.attributes.into_iter().collect()),
        Some(F::All(l)) => FilterSpec::All(list(l, "all")?),
        Some(F::Any(l)) => FilterSpec::Any(list(l, "any")?),
        Some(F::Not(inner)) => FilterSpec::Not(Box::new(filter_from_pb(
            *inner,
            &format!("{field}.not"),
            depth + 1,
        )?)),
        Some(F::Sql(sql)) => FilterSpec::Sql(sql),
    })
}

/// Validates an `Open` and fills in defaults. `watch` selects Watch's defaults (AUTO acks).
pub fn open_from_pb(
    open: api::Open,
    default_stream: &str,
    defaults: &SubscribeSettings,
    watch: bool,
) -> Result<OpenRequest, Error> {
    let stream = if open.stream.is_empty() {
        default_stream.to_owned()
    } else {
        open.stream
    };
    if open.subjects.len() > defaults.max_subjects {
        return Err(Error::invalid(
            "open.subjects",
            format!(
                "{} subject patterns; this gateway accepts at most {} per Open \
                 (subscribe.max_subjects)",
                open.subjects.len(),
                defaults.max_subjects
            ),
        ));
    }
    for (i, s) in open.subjects.iter().enumerate() {
        if !crate::wildcard::is_valid_pattern(s) {
            return Err(Error::invalid(
                format!("open.subjects[{i}]"),
                format!("`{s}` is not a valid NATS subject pattern"),
            ));
        }
    }
    let filter = match open.filter {
        None => None,
        Some(f) => {
            let spec = filter_from_pb(f, "open.filter", 0)?;
            let limits = FilterLimits {
                max_depth: defaults.max_filter_depth,
                max_terms: defaults.max_filter_terms,
                max_expression_bytes: defaults.max_expression_bytes,
            };
            let compiled =
                Filter::compile_with(&spec, limits).map_err(|e| Error::InvalidArgument {
                    field: format!("open.{}", e.path()),
                    reason: match e.kind() {
                        FilterErrorKind::TooDeep { .. } => {
                            format!("{e} (subscribe.max_filter_depth)")
                        }
                        FilterErrorKind::TooManyTerms { .. } => {
                            format!("{e} (subscribe.max_filter_terms)")
                        }
                        FilterErrorKind::ExpressionTooLong { .. } => {
                            format!("{e} (subscribe.max_expression_bytes)")
                        }
                        _ => e.to_string(),
                    },
                })?;
            (!compiled.is_match_all()).then_some(compiled)
        }
    };
    let start = match open.start {
        Some(s) if s.position.is_some() => Some(start_from_pb(Some(s), "open.start")?),
        _ => None,
    };
    let durable = if open.durable.is_empty() {
        None
    } else {
        if !open
            .durable
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::invalid(
                "open.durable",
                "use letters, digits, `-` and `_` only",
            ));
        }
        Some(open.durable)
    };
    let ack_mode = match api::AckMode::try_from(open.ack_mode) {
        Ok(api::AckMode::Auto) => AckMode::Auto,
        Ok(api::AckMode::Explicit) => AckMode::Explicit,
        Ok(api::AckMode::Unspecified) if watch => AckMode::Auto,
        Ok(api::AckMode::Unspecified) => AckMode::Explicit,
        Err(_) => return Err(Error::invalid("open.ack_mode", "unknown ack mode")),
    };
    if watch && ack_mode == AckMode::Explicit {
        return Err(Error::invalid(
            "open.ack_mode",
            "Watch acknowledges as sent; use Subscribe for EXPLICIT acks",
        ));
    }
    let max_in_flight = match open.max_in_flight {
        0 => defaults.default_max_in_flight,
        n if n > defaults.max_in_flight_limit => {
            return Err(Error::invalid(
                "open.max_in_flight",
                format!("at most {} on this gateway", defaults.max_in_flight_limit),
            ))
        }
        n => n,
    };
    let heartbeat = match open.heartbeat {
        None => Some(defaults.default_heartbeat),
        Some(d) => {
            let d = duration_from_pb(&d, "open.heartbeat")?;
            if d.is_zero() {
                None
            } else if d < defaults.min_heartbeat {
                return Err(Error::invalid(
                    "open.heartbeat",
                    format!(
                        "at least {:?} (or 0 to disable bookmarks)",
                        defaults.min_heartbeat
                    ),
                ));
            } else {
                Some(d)
            }
        }
    };
    let on_expired = match api::OnExpired::try_from(open.on_expired) {
        Ok(api::OnExpired::Unspecified | api::OnExpired::Fail) => OnExpired::Fail,
        Ok(api::OnExpired::FromEarliest) => OnExpired::FromEarliest,
        Ok(api::OnExpired::FromSnapshot) => OnExpired::FromSnapshot,
        Err(_) => return Err(Error::invalid("open.on_expired", "unknown value")),
    };
    let ack_wait = match open.ack_wait {
        None => defaults.default_ack_wait,
        Some(d) => {
            let d = duration_from_pb(&d, "open.ack_wait")?;
            if d < Duration::from_secs(1) {
                return Err(Error::invalid("open.ack_wait", "at least 1s"));
            }
            d
        }
    };
    Ok(OpenRequest {
        stream,
        subjects: open.subjects,
        filter,
        start,
        durable,
        ack_mode,
        max_in_flight,
        heartbeat,
        on_expired,
        ack_wait,
        caller: None,
    })
}

/// A delivery as sent to clients.
pub fn delivery_to_pb(event: &StoredEvent, delivery_count: u32) -> api::Delivery {
    api::Delivery {
        event: Some(event_to_pb(&event.event)),
        sequence: event.sequence,
        subject: event.subject.clone(),
        delivery_count,
        stored_at: Some(timestamp_to_pb(&event.stored_at)),
    }
}

/// An engine item as a response message.
pub fn item_to_pb(item: &Item) -> api::SubscribeResponse {
    use api::subscribe_response::Response;
    let response = match item {
        Item::Delivery {
            event,
            delivery_count,
        } => Response::Delivery(delivery_to_pb(event, *delivery_count)),
        Item::Bookmark { sequence, pending } => Response::Bookmark(api::Bookmark {
            sequence: *sequence,
            pending: *pending,
        }),
        Item::SnapshotEnd { sequence } => Response::SnapshotEnd(api::SnapshotEnd {
            sequence: *sequence,
        }),
    };
    api::SubscribeResponse {
        response: Some(response),
    }
}

/// A durable's state as the admin API reports it.
pub fn durable_to_pb(s: &ConsumerState) -> api::SubscriptionInfo {
    api::SubscriptionInfo {
        stream: s.stream.clone(),
        durable: s.name.clone(),
        subjects: s.subjects.clone(),
        delivered_sequence: s.delivered_sequence,
        ack_floor_sequence: s.ack_floor_sequence,
        pending: s.pending,
        in_flight: s.in_flight,
        waiting_clients: u32::try_from(s.waiting).unwrap_or(u32::MAX),
        created: Some(timestamp_to_pb(&s.created)),
    }
}

/// Converts a `StartPosition` (which must be set); `field` prefixes error paths.
pub fn start_from_pb(start: Option<api::StartPosition>, field: &str) -> Result<Start, Error> {
    let position = start
        .and_then(|s| s.position)
        .ok_or_else(|| Error::invalid(field, "a start position is required"))?;
    Ok(match position {
        api::start_position::Position::New(()) => Start::New,
        api::start_position::Position::Earliest(()) => Start::Earliest,
        api::start_position::Position::Sequence(s) => Start::Sequence(s),
        api::start_position::Position::Time(t) => Start::Time(
            timestamp_from_pb(&t)
                .ok_or_else(|| Error::invalid(format!("{field}.time"), "invalid timestamp"))?,
        ),
        api::start_position::Position::Snapshot(()) => Start::Snapshot,
        api::start_position::Position::Resume(()) => Start::Resume,
    })
}

/// A stream's state as the admin API reports it.
pub fn stream_to_pb(s: &StreamState) -> api::StreamInfo {
    api::StreamInfo {
        name: s.name.clone(),
        subjects: s.subjects.clone(),
        first_sequence: s.first_sequence,
        last_sequence: s.last_sequence,
        messages: s.messages,
        bytes: s.bytes,
        subject_count: s.subject_count,
        consumer_count: s.consumer_count as u64,
        first_time: Some(timestamp_to_pb(&s.first_time)),
        last_time: Some(timestamp_to_pb(&s.last_time)),
        storage: s.storage.clone(),
        replicas: s.replicas as u32,
    }
}
