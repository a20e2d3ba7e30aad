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
        Error::RequestTooLarge { size, limit } => {
            meta.insert("size".into(), size.to_string());
            meta.insert("limit".into(), limit.to_string());
            (Code::ResourceExhausted, "REQUEST_TOO_LARGE")
        }
        Error::MalformedRequest(reason) => {
            details.add_bad_request_violation("request", reason.clone());
            (Code::InvalidArgument, "MALFORMED_REQUEST")
        }
        Error::Unauthenticated { expired, .. } => (
            Code::Unauthenticated,
            if *expired {
                "TOKEN_EXPIRED"
            } else {
                "UNAUTHENTICATED"
            },
        ),
        Error::PermissionDenied {
            action,
            stream,
            subject,
        } => {
            meta.insert("action".into(), action.clone());
            meta.insert("stream".into(), stream.clone());
            if let Some(subject) = subject {
                meta.insert("subject".into(), subject.clone());
            }
            (Code::PermissionDenied, "PERMISSION_DENIED")
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
        Error::RateLimited { retry_after, .. } => {
            details.set_retry_info(Some(*retry_after));
            meta.insert("retry_after_ms".into(), retry_after.as_millis().to_string());
            (Code::ResourceExhausted, "RATE_LIMITED")
        }
        Error::Unavailable { .. } => (Code::Unavailable, "NATS_UNAVAILABLE"),
        Error::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN"),
        Error::PushNotFound(name) => {
            meta.insert("push_subscription".into(), name.clone());
            (Code::NotFound, "PUSH_SUBSCRIPTION_NOT_FOUND")
        }
        Error::AlreadyExists { name, .. } => {
            meta.insert("name".into(), name.clone());
            (Code::AlreadyExists, "ALREADY_EXISTS")
        }
        Error::FailedPrecondition(_) => (Code::FailedPrecondition, "FAILED_PRECONDITION"),
        Error::Unimplemented(_) => (Code::Unimplemented, "UNIMPLEMENTED"),
        Error::Internal(_) => (Code::Internal, "INTERNAL"),
    };
    details.set_error_info(reason, DOMAIN, meta);
    Status::with_error_details(code, message, details)
}

/// What a failure to read a request message means, for statuses that tonic makes before a
/// handler sees the message: a message over `server.max_request_bytes` (tonic says
/// OUT_OF_RANGE, which the contract keeps for expired history) and a message that is not
/// protobuf or nests deeper than protobuf decoding allows (tonic says INTERNAL, but it is the
/// client's mistake). `None` for any other status (e.g. the client went away).
pub fn request_read_error(status: &Status) -> Option<Error> {
    const TOO_LARGE: &str = "Error, decoded message length too large: found ";
    const UNDECODABLE: &str = "failed to decode Protobuf message";
    let message = status.message();
    match status.code() {
        Code::OutOfRange if message.starts_with(TOO_LARGE) => {
            // "...: found {len} bytes, the limit is: {limit} bytes"
            let mut numbers = message[TOO_LARGE.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .filter(|n| !n.is_empty())
                .map(|n| n.parse::<usize>().unwrap_or(0));
            let size = numbers.next().unwrap_or(0);
            let limit = numbers.next().unwrap_or(0);
            Some(Error::RequestTooLarge { size, limit })
        }
        Code::Internal if message.starts_with(UNDECODABLE) => {
            Some(Error::MalformedRequest(undecodable_reason(message)))
        }
        _ => None,
    }
}

/// [`request_read_error`] for a status on its way out: the mapped status, or `status` as is.
pub fn from_request_read(status: Status) -> Status {
    match request_read_error(&status) {
        Some(e) => e.into(),
        None => status,
    }
}

/// The status for a request message that prost cannot decode.
pub fn undecodable_request(e: prost::DecodeError) -> Status {
    Error::MalformedRequest(undecodable_reason(&e.to_string())).into()
}

fn undecodable_reason(message: &str) -> String {
    if message.contains("recursion limit reached") {
        "it nests messages more than 100 levels deep, the protobuf decoding limit (filters may \
         nest at most subscribe.max_filter_depth levels)"
            .to_owned()
    } else {
        message.to_owned()
    }
}

/// Rewrites a response that tonic made on its own for a request it could not read (see
/// [`request_read_error`]); such a response carries its status in its headers. Every other
/// response passes untouched. Installed as a layer on the whole server.
pub fn rewrite_request_read_errors(
    response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    if !response.headers().contains_key("grpc-status") {
        return response;
    }
    match Status::from_header_map(response.headers()).and_then(|s| request_read_error(&s)) {
        Some(e) => Status::from(e).into_http(),
        None => response,
    }
}
