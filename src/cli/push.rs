//! `subscriptions create|update|pause|resume` and the `--push` views: push subscriptions.

use clap::Args;
use jetwatch_client::admin::{self, PushInfo, PushSubscription};
use jetwatch_client::Connection;

use super::attribute_value;
use super::output::{self, Format};

/// The definition of a push subscription, as flags.
#[derive(Debug, Clone, Args)]
pub struct PushFlags {
    /// The subscription's name.
    pub name: String,
    /// The endpoint: https:// (http:// only to loopback unless the gateway allows it).
    #[arg(long = "push", value_name = "URL")]
    pub url: Option<String>,
    /// A Standard Webhooks signing secret (`whsec_<base64>`); twice while rotating.
    #[arg(
        long = "secret",
        value_name = "SECRET",
        env = "JETWATCH_PUSH_SECRET",
        hide_env_values = true
    )]
    pub secrets: Vec<String>,
    /// NATS subject patterns (repeatable; default: the whole stream).
    #[arg(long = "subject", value_name = "PATTERN")]
    pub subjects: Vec<String>,
    /// A CESQL filter.
    #[arg(long, value_name = "EXPRESSION")]
    pub filter: Option<String>,
    /// Where a new subscription starts: new, earliest, a sequence or an RFC 3339 time.
    #[arg(long, value_name = "POSITION")]
    pub from: Option<String>,
    /// A header sent with every delivery (repeatable), e.g. `--header x-api-key=...`.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = attribute_value)]
    pub headers: Vec<(String, String)>,
    /// Per-attempt timeout, e.g. `5s`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Deliveries in flight at once (default 16).
    #[arg(long, value_name = "N")]
    pub concurrency: Option<u32>,
    /// One delivery at a time, in stream order.
    #[arg(long)]
    pub ordered: Option<bool>,
    /// Attempts before an event is dead-lettered.
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Where events given up on are copied.
    #[arg(long, value_name = "SUBJECT")]
    pub dead_letter_subject: Option<String>,
    /// CloudEvents structured mode instead of binary mode.
    #[arg(long)]
    pub structured: Option<bool>,
}

impl PushFlags {
    /// The flags given, applied over `base`.
    fn apply(&self, mut sub: PushSubscription) -> PushSubscription {
        sub.name.clone_from(&self.name);
        if let Some(url) = &self.url {
            sub.url.clone_from(url);
        }
        if !self.secrets.is_empty() {
            sub.secrets.clone_from(&self.secrets);
        }
        if !self.subjects.is_empty() {
            sub.subjects.clone_from(&self.subjects);
        }
        if let Some(f) = &self.filter {
            sub.filter.clone_from(f);
        }
        if let Some(from) = &self.from {
            sub.start.clone_from(from);
        }
        if !self.headers.is_empty() {
            sub.headers = self.headers.iter().cloned().collect();
        }
        if let Some(t) = self.timeout {
            sub.timeout = Some(prost_types::Duration {
                seconds: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(t.subsec_nanos()).unwrap_or(0),
            });
        }
        if let Some(c) = self.concurrency {
            sub.concurrency = c;
        }
        if let Some(o) = self.ordered {
            sub.ordered = o;
        }
        if let Some(m) = self.max_attempts {
            sub.max_attempts = m;
        }
        if let Some(d) = &self.dead_letter_subject {
            sub.dead_letter_subject.clone_from(d);
        }
        if let Some(s) = self.structured {
            sub.structured = s;
        }
        sub
    }
}

/// `subscriptions create NAME --push URL --secret S ...`.
pub(super) async fn create(
    conn: &Connection,
    stream: &str,
    flags: &PushFlags,
) -> anyhow::Result<PushInfo> {
    if flags.url.is_none() {
        anyhow::bail!(super::Usage(
            "--push URL is required to create a push subscription".into()
        ));
    }
    if flags.secrets.is_empty() {
        anyhow::bail!(super::Usage(
            "--secret is required: deliveries are signed (Standard Webhooks)".into()
        ));
    }
    let sub = flags.apply(PushSubscription {
        stream: stream.to_owned(),
        ..Default::default()
    });
    Ok(admin::push_create(conn, sub).await?)
}

/// `subscriptions update NAME ...`: the flags given change the current definition.
pub(super) async fn update(conn: &Connection, flags: &PushFlags) -> anyhow::Result<PushInfo> {
    let current = admin::push_get(conn, &flags.name)
        .await?
        .subscription
        .unwrap_or_default();
    let sub = flags.apply(current);
    Ok(admin::push_update(conn, sub).await?)
}

/// Prints push subscriptions.
pub(super) fn print(
    infos: &[PushInfo],
    format: Format,
    no_headers: bool,
    one: bool,
) -> anyhow::Result<()> {
    let json = |p: &PushInfo| {
        let s = p.subscription.clone().unwrap_or_default();
        let position = p.position.clone().unwrap_or_default();
        let time = |t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .and_then(jetwatch_client::convert::timestamp_from_pb)
                .map(|t| jetwatch_client::event::format_timestamp(&t))
                .unwrap_or_default()
        };
        serde_json::json!({
            "name": s.name, "stream": s.stream, "url": s.url, "subjects": s.subjects,
            "filter": s.filter, "ordered": s.ordered, "concurrency": s.concurrency,
            "max_attempts": s.max_attempts, "dead_letter_subject": s.dead_letter_subject,
            "structured": s.structured, "paused": s.paused, "secrets": p.secret_count,
            "delivered_sequence": position.delivered_sequence,
            "acked_sequence": position.ack_floor_sequence,
            "pending": position.pending, "in_flight": position.in_flight,
            "last_success": time(&p.last_success), "last_error": p.last_error,
            "last_error_time": time(&p.last_error_time),
        })
    };
    match format {
        Format::Json | Format::Yaml => {
            for p in infos {
                output::print_value(format, &json(p))?;
            }
        }
        _ if one => {
            for p in infos {
                super::admin::print_fields(&json(p))?;
            }
        }
        _ if infos.is_empty() => eprintln!("no push subscriptions found"),
        _ => {
            let rows = infos
                .iter()
                .map(|p| {
                    let v = json(p);
                    let s = |k: &str| match &v[k] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let state = if v["paused"] == true {
                        "paused"
                    } else {
                        "active"
                    };
                    vec![
                        s("name"),
                        s("stream"),
                        state.to_owned(),
                        s("acked_sequence"),
                        (v["pending"].as_u64().unwrap_or(0) + v["in_flight"].as_u64().unwrap_or(0))
                            .to_string(),
                        s("url"),
                        s("last_error"),
                    ]
                })
                .collect();
            output::print_table(
                &[
                    "NAME",
                    "STREAM",
                    "STATE",
                    "ACKED",
                    "LAG",
                    "URL",
                    "LAST ERROR",
                ],
                rows,
                no_headers,
            )?;
        }
    }
    Ok(())
}
