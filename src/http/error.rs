//! Errors over HTTP: the same table as gRPC ([`crate::grpc::status::to_status`] makes the
//! status and its details), written as JSON with the HTTP status that goes with the gRPC code.
//!
//! ```json
//! {"error": {"code": "PERMISSION_DENIED", "reason": "PERMISSION_DENIED", "domain": "jetwatch",
//!            "message": "...", "metadata": {"action": "subscribe", "stream": "widgets"}}}
//! ```
//!
//! `field_violations` (from `google.rpc.BadRequest`) and `retry_after_ms` (from
//! `google.rpc.RetryInfo`, also sent as a `Retry-After` header) appear when the status has them.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::error::Error;

/// The HTTP status for a gRPC code: Google's API mapping, with 413 for the size limits
/// (`EVENT_TOO_LARGE`, `REQUEST_TOO_LARGE`), which are RESOURCE_EXHAUSTED in gRPC.
pub(crate) fn http_status(code: Code, reason: &str) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            if reason == "SEQUENCE_MISMATCH" {
                StatusCode::CONFLICT
            } else {
                StatusCode::BAD_REQUEST
            }
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => match reason {
            "EVENT_TOO_LARGE" | "REQUEST_TOO_LARGE" => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::TOO_MANY_REQUESTS,
        },
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of an error (`{"error": {...}}`'s inner object) and its HTTP status.
pub(crate) fn error_json(status: &Status) -> (StatusCode, Value) {
    let details = status.get_error_details();
    let mut error = Map::new();
    error.insert(
        "code".into(),
        crate::grpc::metrics::code_name(status.code() as i32).into(),
    );
    let mut reason = String::new();
    if let Some(info) = details.error_info() {
        reason = info.reason.clone();
        error.insert("reason".into(), info.reason.clone().into());
        error.insert("domain".into(), info.domain.clone().into());
    }
    error.insert("message".into(), status.message().into());
    if let Some(info) = details.error_info() {
        let metadata: Map<String, Value> = info
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        error.insert("metadata".into(), Value::Object(metadata));
    }
    if let Some(bad) = details.bad_request() {
        let violations: Vec<Value> = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        error.insert("field_violations".into(), violations.into());
    }
    if let Some(delay) = details.retry_info().and_then(|r| r.retry_delay) {
        error.insert("retry_after_ms".into(), (delay.as_millis() as u64).into());
    }
    (http_status(status.code(), &reason), Value::Object(error))
}

/// An error as an HTTP response.
pub(crate) fn respond(e: Error) -> Response {
    let (code, error) = error_json(&Status::from(e));
    let retry = error
        .get("retry_after_ms")
        .and_then(Value::as_u64)
        .map(|ms| ms.div_ceil(1000).max(1));
    let mut response = (
        code,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json!({ "error": error }).to_string(),
    )
        .into_response();
    if let Some(seconds) = retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}
