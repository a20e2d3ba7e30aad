//! `publish`: from flags, or JSON events from a file or standard input.

use std::path::PathBuf;

use clap::Args;
use jetwatch_client::{AttributeValue, Data, Event, Publisher};

use super::output::out;
use super::{attribute_value, ClientArgs, Refused, Usage};

/// Flags of `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The stream (default: the gateway's default stream).
    #[arg(long, default_value = "")]
    pub stream: String,
    /// Read JSON events from this file (`-`: standard input, the default without `--type`).
    #[arg(long, short = 'f', value_name = "FILE", conflicts_with = "ty")]
    pub file: Option<PathBuf>,
    /// One event from flags: its `type` (with `--source`).
    #[arg(long = "type", value_name = "TYPE", requires = "source")]
    pub ty: Option<String>,
    /// The event's `source` (with `--type`).
    #[arg(long, value_name = "URI-REFERENCE", requires = "ty")]
    pub source: Option<String>,
    /// The event's `subject`: the resource it is about.
    #[arg(long, value_name = "SUBJECT", requires = "ty")]
    pub subject: Option<String>,
    /// The event's `id` [default: a new UUID].
    #[arg(long, value_name = "ID", requires = "ty")]
    pub id: Option<String>,
    /// The data: text, `@FILE` for a file's contents, or `-` for standard input.
    #[arg(long, value_name = "TEXT|@FILE|-", requires = "ty")]
    pub data: Option<String>,
    /// The data's media type [default: application/json when the data is JSON, else
    /// text/plain].
    #[arg(long, value_name = "MEDIA-TYPE", requires = "data")]
    pub data_content_type: Option<String>,
    /// An extension attribute (repeatable), as a string, e.g. `--ext tenant=acme`.
    #[arg(long, value_name = "NAME=VALUE", value_parser = attribute_value, requires = "ty")]
    pub ext: Vec<(String, String)>,
    /// Store the event only if its resource's last stored sequence is this one (0: the
    /// resource has no event yet); otherwise it is refused (FAILED_PRECONDITION).
    #[arg(long, value_name = "N", requires = "ty")]
    pub expect_sequence: Option<u64>,
}

/// `jetwatch publish`: publishes every event, one JSON line per result on standard output and
/// a one-line summary on standard error.
pub(super) async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let events = match &args.ty {
        Some(_) => vec![event_from_flags(&args)?],
        None => {
            let (text, from) = match &args.file {
                Some(path) if path.as_os_str() != "-" => (
                    std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
                    path.display().to_string(),
                ),
                _ => (
                    std::io::read_to_string(std::io::stdin())?,
                    "standard input".to_owned(),
                ),
            };
            let events = parse_events(&text)?;
            if events.is_empty() {
                return Err(Usage(format!(
                    "no events to publish: {from} is empty (give JSON events, or one event with \
                     --type and --source)"
                ))
                .into());
            }
            events
        }
    };
    let mut publisher = Publisher::connect(args.client.connection()?).await?;
    let results = match args.expect_sequence {
        Some(expected) => vec![match publisher
            .publish_expecting(&args.stream, &events[0], Some(expected))
            .await
        {
            Ok(p) => Ok(p),
            // A refusal is a result like the others: printed, counted, exit code 5.
            Err(jetwatch_client::ClientError::Status(s)) => Err(s),
            Err(e) => return Err(e.into()),
        }],
        None => publisher.publish_all(&args.stream, &events).await?,
    };
    let (mut stored, mut duplicates, mut refused) = (0usize, 0usize, 0usize);
    for r in results {
        let line = match r {
            Ok(p) => {
                if p.duplicate {
                    duplicates += 1;
                } else {
                    stored += 1;
                }
                serde_json::json!({
                    "stream": p.stream, "subject": p.subject, "sequence": p.sequence,
                    "duplicate": p.duplicate
                })
            }
            Err(status) => {
                refused += 1;
                let reason = jetwatch_client::ClientError::Status(status.clone()).reason();
                serde_json::json!({ "error": {
                    "code": format!("{:?}", status.code()),
                    "reason": reason,
                    "message": status.message(),
                } })
            }
        };
        out!("{line}");
    }
    eprintln!("{stored} stored, {duplicates} duplicate(s), {refused} refused");
    if refused > 0 {
        return Err(Refused(refused).into());
    }
    Ok(())
}

/// The event `--type`, `--source` and the other flags describe.
fn event_from_flags(args: &PublishArgs) -> anyhow::Result<Event> {
    let mut event = Event {
        id: args
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        source: args.source.clone().unwrap_or_default(),
        spec_version: jetwatch_client::event::SPEC_VERSION.to_owned(),
        ty: args.ty.clone().unwrap_or_default(),
        ..Event::default()
    };
    event.set("time", AttributeValue::Timestamp(chrono::Utc::now()));
    if let Some(subject) = &args.subject {
        event.set("subject", AttributeValue::String(subject.clone()));
    }
    for (name, value) in &args.ext {
        event.set(name.clone(), AttributeValue::String(value.clone()));
    }
    if let Some(data) = &args.data {
        let bytes = match data.as_str() {
            "-" => {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                buf
            }
            d if d.starts_with('@') => std::fs::read(&d[1..])
                .map_err(|e| anyhow::anyhow!("--data {d}: cannot read {}: {e}", &d[1..]))?,
            d => d.as_bytes().to_vec(),
        };
        let json = serde_json::from_slice::<serde_json::Value>(&bytes).is_ok();
        let content_type = args.data_content_type.clone().unwrap_or_else(|| {
            if json {
                "application/json"
            } else {
                "text/plain"
            }
            .to_owned()
        });
        event.set("datacontenttype", AttributeValue::String(content_type));
        event.data = Some(match String::from_utf8(bytes) {
            Ok(text) => Data::Text(text),
            Err(e) => Data::Binary(e.into_bytes().into()),
        });
    }
    Ok(event)
}

/// Parses a JSON object, a JSON array of objects, or one object per line.
fn parse_events(text: &str) -> anyhow::Result<Vec<Event>> {
    let trimmed = text.trim_start();
    let values: Vec<serde_json::Value> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed)?
    } else {
        serde_json::Deserializer::from_str(trimmed)
            .into_iter::<serde_json::Value>()
            .collect::<Result<_, _>>()?
    };
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            crate::codec::event_from_json(v.to_string().as_bytes())
                .map_err(|e| anyhow::anyhow!("event #{}: {e}", i + 1))
        })
        .collect()
}
