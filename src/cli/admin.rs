//! `streams`, `subscriptions`, `health`, `version` and `context`.

use clap::{Args, Subcommand};
use jetwatch_client::admin::{self, DurableInfo, StreamInfo};
use jetwatch_client::StartFrom;

use super::output::{self, out, Format};
use super::{ClientArgs, Contexts, HealthArgs, NotFound, NotServing, Usage};

/// Flags of `streams`.
#[derive(Debug, Args)]
pub struct StreamsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    /// Leave out the table's header row.
    #[arg(long, global = true)]
    pub no_headers: bool,
    /// `info NAME` for one stream's details; none lists them all.
    #[command(subcommand)]
    pub command: Option<StreamsCommand>,
}

/// `streams` sub-commands.
#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// One stream's details.
    Info {
        /// The stream.
        name: String,
    },
}

/// Flags of `subscriptions`.
#[derive(Debug, Args)]
pub struct SubscriptionsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The stream (default: every stream when listing, the default stream otherwise).
    #[arg(long, default_value = "", global = true)]
    pub stream: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    /// Leave out the table's header row.
    #[arg(long, global = true)]
    pub no_headers: bool,
    /// List push subscriptions instead of durables.
    #[arg(long)]
    pub push: bool,
    /// What to do; none lists the durable subscriptions.
    #[command(subcommand)]
    pub command: Option<SubscriptionsCommand>,
}

/// `subscriptions` sub-commands.
#[derive(Debug, Subcommand)]
pub enum SubscriptionsCommand {
    /// One durable's position and counts.
    Info {
        /// The durable (or push subscription).
        name: String,
        /// A push subscription's definition, position and last outcome.
        #[arg(long)]
        push: bool,
    },
    /// Delete a durable: its position is gone and its clients' streams end.
    Delete {
        /// The durable (or push subscription).
        name: String,
        /// Delete a push subscription (and its position).
        #[arg(long)]
        push: bool,
    },
    /// Create a push subscription: events POSTed to a webhook, signed, retried and
    /// dead-lettered (`--push URL --secret S`, plus the filters and policy flags).
    Create(super::push::PushFlags),
    /// Change a push subscription (the flags given replace what it has; a new URL is
    /// validated, `--secret` twice rotates).
    Update(super::push::PushFlags),
    /// Pause a push subscription: events wait in its durable.
    Pause {
        /// The push subscription.
        name: String,
    },
    /// Resume a paused push subscription.
    Resume {
        /// The push subscription.
        name: String,
    },
    /// Move a durable to another position; its clients continue from there.
    Seek {
        /// The durable.
        name: String,
        /// earliest, new, a sequence number, or an RFC 3339 time.
        #[arg(long, value_name = "POSITION", value_parser = start_from)]
        to: StartFrom,
    },
}

/// `context` sub-commands.
#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List the contexts (`*` marks the current one).
    List,
    /// Create or replace a context from the connection flags given, e.g.
    /// `context set prod --server gw.example.com:443 --token-file ~/.jetwatch-token`.
    Set {
        /// The context's name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
        /// Make it the current context too.
        #[arg(long = "use")]
        select: bool,
    },
    /// Make a context the current one.
    Use {
        /// The context's name.
        name: String,
    },
    /// Show a context's settings (default: the current one).
    Show {
        /// The context's name.
        name: Option<String>,
    },
    /// Delete a context.
    Delete {
        /// The context's name.
        name: String,
    },
}

fn start_from(s: &str) -> Result<StartFrom, String> {
    s.parse()
}

/// `jetwatch streams [info NAME]`.
pub(super) async fn streams(args: StreamsArgs) -> anyhow::Result<()> {
    let conn = args.client.connection()?;
    let streams = match &args.command {
        None => admin::streams(&conn).await?,
        Some(StreamsCommand::Info { name }) => vec![admin::stream(&conn, name)
            .await
            .map_err(|e| not_found(e, format!("no stream named `{name}`")))?],
    };
    match args.output {
        Format::Json | Format::Yaml => {
            for s in &streams {
                output::print_value(args.output, &stream_json(s))?;
            }
        }
        Format::Table | Format::Wide if args.command.is_some() => {
            for s in &streams {
                print_fields(&stream_json(s))?;
            }
        }
        Format::Table | Format::Wide if streams.is_empty() => eprintln!("no streams found"),
        Format::Table | Format::Wide => {
            let wide = args.output == Format::Wide;
            let mut headers = vec!["STREAM", "FIRST", "LAST", "MESSAGES", "BYTES", "CONSUMERS"];
            if wide {
                headers.extend(["RESOURCES", "STORAGE", "REPLICAS", "LAST STORED"]);
            }
            headers.push("SUBJECTS");
            let rows = streams
                .iter()
                .map(|s| {
                    let mut row = vec![
                        s.name.clone(),
                        s.first_sequence.to_string(),
                        s.last_sequence.to_string(),
                        s.messages.to_string(),
                        s.bytes.to_string(),
                        s.consumer_count.to_string(),
                    ];
                    if wide {
                        row.extend([
                            s.subject_count.to_string(),
                            s.storage.clone(),
                            s.replicas.to_string(),
                            time(s.last_time.as_ref()),
                        ]);
                    }
                    row.push(s.subjects.join(","));
                    row
                })
                .collect();
            output::print_table(&headers, rows, args.no_headers)?;
        }
    }
    Ok(())
}

/// `jetwatch subscriptions [info|delete|seek] ...`.
pub(super) async fn subscriptions(args: SubscriptionsArgs) -> anyhow::Result<()> {
    let conn = args.client.connection()?;
    let push_missing = |name: &str| format!("no push subscription `{name}`");
    let (format, no_headers) = (args.output, args.no_headers);
    match &args.command {
        Some(SubscriptionsCommand::Create(flags)) => {
            let info = super::push::create(&conn, &args.stream, flags).await?;
            eprintln!("push subscription `{}` created", flags.name);
            return super::push::print(&[info], format, no_headers, true);
        }
        Some(SubscriptionsCommand::Update(flags)) => {
            let info = super::push::update(&conn, flags).await.map_err(|e| {
                match e.downcast::<jetwatch_client::ClientError>() {
                    Ok(c) => not_found(c, push_missing(&flags.name)),
                    Err(e) => e,
                }
            })?;
            eprintln!("push subscription `{}` updated", flags.name);
            return super::push::print(&[info], format, no_headers, true);
        }
        Some(SubscriptionsCommand::Pause { name } | SubscriptionsCommand::Resume { name }) => {
            let pause = matches!(args.command, Some(SubscriptionsCommand::Pause { .. }));
            let info = admin::push_pause(&conn, name, pause)
                .await
                .map_err(|e| not_found(e, push_missing(name)))?;
            eprintln!(
                "push subscription `{name}` {}",
                if pause { "paused" } else { "resumed" }
            );
            return super::push::print(&[info], format, no_headers, true);
        }
        Some(SubscriptionsCommand::Delete { name, push: true }) => {
            admin::push_delete(&conn, name)
                .await
                .map_err(|e| not_found(e, push_missing(name)))?;
            eprintln!("push subscription `{name}` deleted");
            return Ok(());
        }
        Some(SubscriptionsCommand::Info { name, push: true }) => {
            let info = admin::push_get(&conn, name)
                .await
                .map_err(|e| not_found(e, push_missing(name)))?;
            return super::push::print(&[info], format, no_headers, true);
        }
        None if args.push => {
            let list = admin::push_list(&conn).await?;
            return super::push::print(&list, format, no_headers, false);
        }
        _ => {}
    }
    let missing = |name: &str| {
        let stream = if args.stream.is_empty() {
            "the default stream".to_owned()
        } else {
            format!("stream `{}`", args.stream)
        };
        format!("no durable subscription `{name}` on {stream}")
    };
    let durables = match &args.command {
        None => admin::durables(&conn, &args.stream).await?,
        Some(SubscriptionsCommand::Info { name, .. }) => {
            vec![admin::durable(&conn, &args.stream, name)
                .await
                .map_err(|e| not_found(e, missing(name)))?]
        }
        Some(SubscriptionsCommand::Delete { name, .. }) => {
            admin::delete_durable(&conn, &args.stream, name)
                .await
                .map_err(|e| not_found(e, missing(name)))?;
            eprintln!("durable subscription `{name}` deleted");
            return Ok(());
        }
        Some(
            SubscriptionsCommand::Create(_)
            | SubscriptionsCommand::Update(_)
            | SubscriptionsCommand::Pause { .. }
            | SubscriptionsCommand::Resume { .. },
        ) => unreachable!("handled above"),
        Some(SubscriptionsCommand::Seek { name, to }) => {
            if *to == StartFrom::Snapshot {
                return Err(Usage("a durable cannot seek to a snapshot".into()).into());
            }
            let d = admin::seek_durable(&conn, &args.stream, name, *to)
                .await
                .map_err(|e| not_found(e, missing(name)))?;
            eprintln!(
                "durable subscription `{name}` moved: its next event is after sequence {}",
                d.ack_floor_sequence
            );
            vec![d]
        }
    };
    match args.output {
        Format::Json | Format::Yaml => {
            for d in &durables {
                output::print_value(args.output, &durable_json(d))?;
            }
        }
        Format::Table | Format::Wide if args.command.is_some() => {
            for d in &durables {
                print_fields(&durable_json(d))?;
            }
        }
        Format::Table | Format::Wide if durables.is_empty() => {
            eprintln!("no durable subscriptions found")
        }
        Format::Table | Format::Wide => {
            let wide = args.output == Format::Wide;
            let mut headers = vec![
                "STREAM",
                "DURABLE",
                "DELIVERED",
                "ACKED",
                "PENDING",
                "IN-FLIGHT",
            ];
            if wide {
                headers.extend(["CLIENTS", "CREATED", "SUBJECTS"]);
            }
            let rows = durables
                .iter()
                .map(|d| {
                    let mut row = vec![
                        d.stream.clone(),
                        d.durable.clone(),
                        d.delivered_sequence.to_string(),
                        d.ack_floor_sequence.to_string(),
                        d.pending.to_string(),
                        d.in_flight.to_string(),
                    ];
                    if wide {
                        row.extend([
                            d.waiting_clients.to_string(),
                            time(d.created.as_ref()),
                            d.subjects.join(","),
                        ]);
                    }
                    row
                })
                .collect();
            output::print_table(&headers, rows, args.no_headers)?;
        }
    }
    Ok(())
}

/// A NOT_FOUND answer as [`NotFound`] with a clearer message; other errors as they are.
fn not_found(e: jetwatch_client::ClientError, message: String) -> anyhow::Error {
    if e.is_not_found() {
        NotFound(message).into()
    } else {
        e.into()
    }
}

/// `jetwatch health`: exit 0 when serving, 4 when not or unreachable.
pub(super) async fn health(args: HealthArgs) -> anyhow::Result<()> {
    let conn = args.client.connection()?;
    if admin::healthy(&conn, "").await? {
        out!("SERVING");
        Ok(())
    } else {
        out!("NOT_SERVING");
        Err(NotServing(conn.addr).into())
    }
}

/// `jetwatch version`: the client's version, then the gateway's.
pub(super) async fn version(args: HealthArgs) -> anyhow::Result<()> {
    out!("client:  jetwatch {}", env!("CARGO_PKG_VERSION"));
    let conn = args.client.connection()?;
    let info = admin::server_info(&conn).await?;
    out!(
        "gateway: jetwatch {} ({}) at {}",
        info.version,
        info.api,
        conn.addr
    );
    Ok(())
}

/// `jetwatch context ...`.
pub(super) fn context(command: ContextCommand) -> anyhow::Result<()> {
    let mut contexts = Contexts::load()?;
    match command {
        ContextCommand::List => {
            if contexts.contexts.is_empty() {
                eprintln!(
                    "no contexts in {}; `jetwatch context set NAME --server HOST:PORT` adds one",
                    Contexts::path()?.display()
                );
            }
            let rows = contexts
                .contexts
                .iter()
                .map(|(name, c)| {
                    let current = contexts.current.as_deref() == Some(name.as_str());
                    vec![
                        if current { "*" } else { "" }.to_owned(),
                        name.clone(),
                        c.server.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            output::print_table(&["CURRENT", "NAME", "SERVER"], rows, false)?;
        }
        ContextCommand::Set {
            name,
            client,
            select,
        } => {
            contexts.contexts.insert(name.clone(), client.to_context());
            if select {
                contexts.current = Some(name.clone());
            }
            let path = contexts.save()?;
            eprintln!("context `{name}` saved in {}", path.display());
        }
        ContextCommand::Use { name } => {
            contexts.select(Some(&name))?;
            contexts.current = Some(name.clone());
            contexts.save()?;
            eprintln!("using context `{name}`");
        }
        ContextCommand::Show { name } => match contexts.select(name.as_deref())? {
            Some((name, c)) => {
                out!("# context `{name}`");
                out!("{}", toml::to_string_pretty(&c)?.trim_end());
            }
            None => {
                return Err(NotFound(
                    "no current context; `jetwatch context use NAME` sets one".into(),
                )
                .into())
            }
        },
        ContextCommand::Delete { name } => {
            if contexts.contexts.remove(&name).is_none() {
                return Err(NotFound(format!("no context named `{name}`")).into());
            }
            if contexts.current.as_deref() == Some(name.as_str()) {
                contexts.current = None;
            }
            contexts.save()?;
            eprintln!("context `{name}` deleted");
        }
    }
    Ok(())
}

/// `name: value` lines (a `... info` in table form).
pub(super) fn print_fields(value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(map) = value.as_object() {
        for (k, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(", "),
                other => other.to_string(),
            };
            out!("{:<20} {text}", format!("{k}:"));
        }
    }
    Ok(())
}

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(jetwatch_client::convert::timestamp_from_pb)
        .map(|t| jetwatch_client::event::format_timestamp(&t))
        .unwrap_or_default()
}

fn stream_json(s: &StreamInfo) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "subjects": s.subjects,
        "first_sequence": s.first_sequence,
        "last_sequence": s.last_sequence,
        "messages": s.messages,
        "bytes": s.bytes,
        "resources": s.subject_count,
        "consumers": s.consumer_count,
        "first_time": time(s.first_time.as_ref()),
        "last_time": time(s.last_time.as_ref()),
        "storage": s.storage,
        "replicas": s.replicas,
    })
}

fn durable_json(d: &DurableInfo) -> serde_json::Value {
    serde_json::json!({
        "stream": d.stream,
        "durable": d.durable,
        "subjects": d.subjects,
        "delivered_sequence": d.delivered_sequence,
        "ack_floor_sequence": d.ack_floor_sequence,
        "pending": d.pending,
        "in_flight": d.in_flight,
        "clients": d.waiting_clients,
        "created": time(d.created.as_ref()),
    })
}
