//! One delivery to an endpoint: the CloudEvents HTTP binding (binary mode, or structured),
//! signed, through an HTTP client that follows no redirect to another host and connects only
//! to allowed addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::config::PushSettings;
use crate::event::{AttributeValue, Data, Event};

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Attempt {
    /// 2xx: acknowledged.
    Delivered {
        /// The status.
        status: u16,
    },
    /// 429, 5xx, a timeout or a connection error: try again (after `after`, when the
    /// endpoint said so with `Retry-After`).
    Retry {
        /// The status, when there was a response.
        status: Option<u16>,
        /// Why, for the status and the dead letter.
        reason: String,
        /// The endpoint's `Retry-After`.
        after: Option<Duration>,
    },
    /// Another status: the endpoint refuses this event; it is dead-lettered at once.
    Refused {
        /// The status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
}

impl Attempt {
    /// The status class label of the metrics: `2xx`, `4xx`, `5xx`, `timeout`, `error`.
    pub(super) fn class(&self) -> &'static str {
        match self {
            Attempt::Delivered { .. } => "2xx",
            Attempt::Retry {
                status: Some(429), ..
            }
            | Attempt::Refused { .. } => "4xx",
            Attempt::Retry {
                status: Some(_), ..
            } => "5xx",
            Attempt::Retry { reason, .. } if reason.contains("timed out") => "timeout",
            Attempt::Retry { .. } => "error",
        }
    }
}

/// A resolver that keeps only the addresses `push.allowed_networks` allows, so a name cannot
/// lead the client to an internal address (checked on every connection, which also defeats
/// a name re-pointed after validation).
struct AllowedResolver {
    settings: Arc<PushSettings>,
}

impl reqwest::dns::Resolve for AllowedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let settings = self.settings.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| super::spec::allowed_address(a.ip(), &settings))
                .collect();
            if addrs.is_empty() {
                return Err(format!(
                    "`{}` resolves to no address push.allowed_networks allows",
                    name.as_str()
                )
                .into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client of push deliveries (one per gateway: connections are pooled per host).
pub(super) fn client(settings: &Arc<PushSettings>) -> reqwest::Client {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        // A redirect within the same host is followed (up to 5); to another host, never.
        let same_host = attempt
            .previous()
            .first()
            .is_some_and(|first| first.host_str() == attempt.url().host_str());
        if same_host && attempt.previous().len() < 5 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    reqwest::Client::builder()
        .redirect(policy)
        .dns_resolver(Arc::new(AllowedResolver {
            settings: settings.clone(),
        }))
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("jetwatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// What a delivery sends: the request built from an event.
pub(super) struct Request {
    /// The headers (CloudEvents, signature, the subscription's own).
    pub(super) headers: http::HeaderMap,
    /// The body.
    pub(super) body: Vec<u8>,
}

/// Builds the signed request for `event` with the stable `id` (the same on every attempt,
/// so receivers deduplicate).
pub(super) fn request(
    event: &Event,
    id: &str,
    structured: bool,
    secrets: &[Vec<u8>],
    extra: &std::collections::BTreeMap<String, String>,
) -> Result<Request, String> {
    let mut headers = http::HeaderMap::new();
    let header = |v: &str| {
        http::HeaderValue::try_from(crate::codec::http_header_value(v).as_ref())
            .map_err(|e| e.to_string())
    };
    let body = if structured {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
        );
        serde_json::to_vec(&crate::codec::event_to_json(event).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?
    } else {
        headers.insert("ce-specversion", header(&event.spec_version)?);
        headers.insert("ce-id", header(&event.id)?);
        headers.insert("ce-source", header(&event.source)?);
        headers.insert("ce-type", header(&event.ty)?);
        for (name, value) in &event.attributes {
            if name == "datacontenttype" {
                continue;
            }
            let name = http::HeaderName::try_from(format!("ce-{name}"))
                .map_err(|e| format!("attribute `{name}`: {e}"))?;
            headers.insert(name, header(&value.to_canonical_string())?);
        }
        if let Some(AttributeValue::String(ct)) = event.attributes.get("datacontenttype") {
            headers.insert(http::header::CONTENT_TYPE, header(ct)?);
        }
        match &event.data {
            None => Vec::new(),
            Some(Data::Text(t)) => t.as_bytes().to_vec(),
            Some(d) => d.as_bytes().to_vec(),
        }
    };
    for (name, value) in extra {
        headers.insert(
            http::HeaderName::try_from(name.as_str()).map_err(|e| e.to_string())?,
            http::HeaderValue::try_from(value.as_str()).map_err(|e| e.to_string())?,
        );
    }
    let timestamp = chrono::Utc::now().timestamp();
    // Standard Webhooks headers are plain values (not the CloudEvents percent-encoding).
    let plain = |v: String| http::HeaderValue::try_from(v).map_err(|e| e.to_string());
    headers.insert("webhook-id", plain(id.to_owned())?);
    headers.insert("webhook-timestamp", plain(timestamp.to_string())?);
    headers.insert(
        "webhook-signature",
        plain(super::sign::signature(secrets, id, timestamp, &body))?,
    );
    Ok(Request { headers, body })
}

/// Sends one attempt and classifies the answer.
pub(super) async fn attempt(
    client: &reqwest::Client,
    url: &url::Url,
    request: Request,
    timeout: Duration,
    settings: &PushSettings,
) -> Attempt {
    // A literal address in the URL is not resolved: check it here.
    if let Some(ip) = url.host_str().and_then(|h| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
    }) {
        if !super::spec::allowed_address(ip, settings) {
            return Attempt::Refused {
                status: 0,
                body: format!("{ip} is outside push.allowed_networks"),
            };
        }
    }
    let sent = client
        .post(url.clone())
        .headers(request.headers)
        .body(request.body)
        .timeout(timeout)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            let reason = if e.is_timeout() {
                format!("timed out after {timeout:?}")
            } else {
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    reason = format!("{reason}: {cause}");
                    source = cause.source();
                }
                reason
            };
            return Attempt::Retry {
                status: None,
                reason,
                after: None,
            };
        }
    };
    let status = response.status().as_u16();
    if response.status().is_success() {
        return Attempt::Delivered { status };
    }
    let after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after);
    let excerpt = excerpt(response, settings.body_excerpt_bytes).await;
    if status == 429 || response_is_server_error(status) {
        Attempt::Retry {
            status: Some(status),
            reason: format!("HTTP {status}: {excerpt}"),
            after,
        }
    } else {
        Attempt::Refused {
            status,
            body: excerpt,
        }
    }
}

fn response_is_server_error(status: u16) -> bool {
    (500..600).contains(&status)
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

/// The first `max` bytes of the body, as text.
async fn excerpt(response: reqwest::Response, max: usize) -> String {
    let bytes = response.bytes().await.unwrap_or_default();
    let cut = &bytes[..bytes.len().min(max)];
    String::from_utf8_lossy(cut).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            None,
            "in the past"
        );
        assert_eq!(retry_after("soon"), None);
    }
}
