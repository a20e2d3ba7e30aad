//! A push subscription's definition: what it delivers, where, and how.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::PushSettings;
use crate::error::Error;

/// A push subscription: a named durable whose events are POSTed to an HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSpec {
    /// Its name; also the name of its JetStream durable (`push-<name>`).
    pub name: String,
    /// The stream (empty: the default stream).
    #[serde(default)]
    pub stream: String,
    /// NATS subject patterns (empty: the whole stream).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// A CESQL filter; events it does not match are skipped.
    #[serde(default)]
    pub filter: Option<String>,
    /// Where a new subscription starts: `new`, `earliest`, a sequence or an RFC 3339 time.
    #[serde(default = "default_start")]
    pub start: String,
    /// The endpoint (`https://`; `http://` only for loopback unless `push.allow_http`).
    pub url: String,
    /// Headers sent with every delivery (e.g. an API key of the receiver).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Signing secrets (Standard Webhooks, `whsec_<base64>` or any text); each signs every
    /// delivery, so during a rotation the receiver accepts either. One or two.
    pub secrets: Vec<String>,
    /// How long one attempt may take (default `push.default_timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Deliveries in flight at once, across gateways (default 16; 1 with `ordered`).
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// One delivery at a time, in stream order (so per resource, in order).
    #[serde(default)]
    pub ordered: bool,
    /// Attempts before an event is dead-lettered (default `push.default_max_attempts`).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Where events given up on are copied (with the reason, status and body excerpt).
    #[serde(default)]
    pub dead_letter_subject: Option<String>,
    /// CloudEvents structured mode (`application/cloudevents+json`) instead of binary mode.
    #[serde(default)]
    pub structured: bool,
    /// Paused: nothing is delivered; events wait in the durable.
    #[serde(default)]
    pub paused: bool,
}

fn default_start() -> String {
    "new".into()
}

/// Names: what JetStream accepts in a durable name, bounded.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl PushSpec {
    /// The JetStream durable that holds its position.
    pub fn durable(&self) -> String {
        format!("push-{}", self.name)
    }

    /// Attempt timeout in force.
    pub fn timeout(&self, s: &PushSettings) -> Duration {
        self.timeout.unwrap_or(s.default_timeout)
    }

    /// Concurrency in force.
    pub fn concurrency(&self) -> u32 {
        if self.ordered {
            1
        } else {
            self.concurrency.unwrap_or(16)
        }
    }

    /// Attempts in force.
    pub fn max_attempts(&self, s: &PushSettings) -> u32 {
        self.max_attempts.unwrap_or(s.default_max_attempts)
    }

    /// Checks everything that needs no network: names, URL rules, limits. `field` prefixes
    /// error paths.
    pub fn validate(&self, s: &PushSettings, field: &str) -> Result<(), Error> {
        let invalid = |f: &str, why: String| Err(Error::invalid(format!("{field}.{f}"), why));
        if !valid_name(&self.name) {
            return invalid("name", "1 to 64 letters, digits, `-` or `_`".into());
        }
        if let Err(why) = check_url(&self.url, s) {
            return invalid("url", why);
        }
        if self.secrets.is_empty() || self.secrets.len() > 2 {
            return invalid(
                "secrets",
                "one signing secret, or two while rotating".into(),
            );
        }
        for (i, secret) in self.secrets.iter().enumerate() {
            if let Err(why) = super::sign::key(secret) {
                return invalid(&format!("secrets[{i}]"), why);
            }
        }
        let timeout = self.timeout(s);
        if timeout.is_zero() || timeout > s.max_timeout {
            return invalid(
                "timeout",
                format!(
                    "must be positive and at most push.max_timeout ({:?})",
                    s.max_timeout
                ),
            );
        }
        let concurrency = self.concurrency();
        if concurrency == 0 || concurrency > s.max_concurrency {
            return invalid(
                "concurrency",
                format!("must be 1 to push.max_concurrency ({})", s.max_concurrency),
            );
        }
        if self.max_attempts(s) == 0 {
            return invalid("max_attempts", "must be at least 1".into());
        }
        for (name, value) in &self.headers {
            let reserved = name.to_ascii_lowercase();
            if reserved.starts_with("ce-")
                || reserved.starts_with("webhook-")
                || reserved == "content-type"
                || reserved == "host"
                || reserved == "content-length"
            {
                return invalid(
                    &format!("headers[{name}]"),
                    "set by the delivery itself".into(),
                );
            }
            if http::HeaderName::try_from(name.as_str()).is_err()
                || http::HeaderValue::try_from(value.as_str()).is_err()
            {
                return invalid(
                    &format!("headers[{name}]"),
                    "not a valid HTTP header".into(),
                );
            }
        }
        if let Err(e) = self.start.parse::<StartSpec>() {
            return invalid("start", e);
        }
        Ok(())
    }
}

/// Where a push subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartSpec {
    /// Events stored from now on.
    New,
    /// Every retained event.
    Earliest,
    /// From this sequence.
    Sequence(u64),
    /// From this time.
    Time(chrono::DateTime<chrono::Utc>),
}

impl std::str::FromStr for StartSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<StartSpec, String> {
        Ok(match s {
            "new" | "" => StartSpec::New,
            "earliest" => StartSpec::Earliest,
            other => match other.parse::<u64>() {
                Ok(n) => StartSpec::Sequence(n),
                Err(_) => StartSpec::Time(
                    chrono::DateTime::parse_from_rfc3339(other)
                        .map_err(|_| {
                            format!(
                                "`{other}` is not new, earliest, a sequence or an RFC 3339 time"
                            )
                        })?
                        .with_timezone(&chrono::Utc),
                ),
            },
        })
    }
}

/// The URL rules that need no network: a valid http(s) URL, HTTPS unless the host is a
/// loopback address (or `push.allow_http`), no credentials in it.
pub fn check_url(url: &str, s: &PushSettings) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("`{url}` has no host"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL are not allowed; use headers".into());
    }
    match parsed.scheme() {
        "https" => {}
        "http" if s.allow_http || is_loopback(host) => {}
        "http" => {
            return Err(
                "must be https:// (plain http:// only to loopback, or with push.allow_http)".into(),
            )
        }
        other => return Err(format!("scheme `{other}` is not http or https")),
    }
    Ok(parsed)
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `ip` may be connected to under `push.allowed_networks` (empty: any).
pub fn allowed_address(ip: IpAddr, s: &PushSettings) -> bool {
    s.allowed_networks.is_empty()
        || s.allowed_networks
            .iter()
            .any(|net| super::cidr_contains(net, ip))
}
