//! The one table from domain errors to gRPC status codes and machine-readable details
//! (`google.rpc.ErrorInfo` with domain `jetwatch`, `google.rpc.BadRequest` for invalid input).

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::Error;

/// The ErrorInfo domain of every jetwatch error.
pub const DOMAIN: &str = "jetwatch";

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        to_status(e, None)
    }
}

/// Converts `e`, adding `last_delivered_sequence` to the details when a subscription ends with
/// it (shutdown, lost NATS).
pub fn to_status(e: Error, last_delivered: Option<u64>) -> Status {
    let message = e.to_string();
    let mut meta: HashMap<String, String> = HashMap::new();
    if let Some(seq) = last_delivered {
        meta.insert("last_delivered_sequence".into(), seq.to_string());
    }
    let mut details = ErrorDetails::new();
    let (code, reason) = match &e {
        Error::InvalidArgument { field, reason } => {
            details.add_bad_request_violation(field.clone(), reason.clone());
            meta.insert("field".into(), field.clone());
            (Code::InvalidArgument, "INVALID_ARGUMENT")
        }
        Error::InvalidEvent(inv) => {
            details
                .add_bad_request_violation(format!("event.{}", inv.attribute), inv.reason.clone());
            meta.insert("attribute".into(), inv.attribute.clone());
            (Code::InvalidArgument, "INVALID_EVENT")
        }
        Error::EventTooLarge { size, limit } => {
            meta.insert("size".into(), size.to_string());
            meta.insert("limit".into(), limit.to_string());
            (Code::ResourceExhausted, "EVENT_TOO_LARGE")
        }
        Error::StreamNotFound(stream) => {
            meta.insert("stream".into(), stream.clone());
            (Code::NotFound, "STREAM_NOT_FOUND")
        }
        Error::DurableNotFound { stream, durable } => {
            meta.insert("stream".into(), stream.clone());
            meta.insert("durable".into(), durable.clone());
            (Code::NotFound, "DURABLE_NOT_FOUND")
        }
        Error::SequenceMismatch { expected, current } => {
            meta.insert("expected_sequence".into(), expected.to_string());
            meta.insert("current_sequence".into(), current.to_string());
            (Code::FailedPrecondition, "SEQUENCE_MISMATCH")
        }
        Error::HistoryExpired {
            requested,
            first_sequence,
        } => {
            meta.insert("requested_sequence".into(), requested.to_string());
            meta.insert("first_sequence".into(), first_sequence.to_string());
            (Code::OutOfRange, "HISTORY_EXPIRED")
        }
        Error::ResourceExhausted(_) => (Code::ResourceExhausted, "LIMIT_EXCEEDED"),
        Error::Unavailable { .. } => (Code::Unavailable, "NATS_UNAVAILABLE"),
        Error::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN"),
        Error::Unimplemented(_) => (Code::Unimplemented, "UNIMPLEMENTED"),
        Error::Internal(_) => (Code::Internal, "INTERNAL"),
    };
    details.set_error_info(reason, DOMAIN, meta);
    Status::with_error_details(code, message, details)
}
