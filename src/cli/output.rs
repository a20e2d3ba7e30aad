//! How the client commands print: table, wide, JSON lines or YAML documents; colour only on a
//! terminal (and never with `NO_COLOR`); a progress bar on a terminal's stderr.

use std::io::{IsTerminal, Write};

use anstyle::{AnsiColor, Style};
use chrono::{DateTime, Utc};
use jetwatch_client::Event;

/// `println!` to standard output that returns the write's error instead of panicking, so a
/// closed output (`jetwatch ... | head -1`) ends the command quietly (see `main`). Colour codes
/// are dropped when the output is not a terminal.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(anstream::stdout(), $($arg)*)?
    }};
}
pub(crate) use out;

/// `-o`: how deliveries and lists are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    /// One JSON object per line.
    Json,
    /// YAML documents.
    Yaml,
}

/// Table column header style.
const HEADER: Style = Style::new().bold();

/// Prints JSON `value` as a line or a YAML document.
pub(super) fn print_value(format: Format, value: &serde_json::Value) -> anyhow::Result<()> {
    match format {
        Format::Yaml => {
            let yaml = serde_yaml_ng::to_string(value)?;
            out!("---\n{}", yaml.trim_end());
        }
        _ => out!("{value}"),
    }
    Ok(())
}

/// Columns of a delivery row: SEQ, AGE, TYPE, SOURCE, SUBJECT; wide adds ID, TIME, DATA.
/// Widths are fixed because a watch prints rows as they arrive and cannot measure ahead.
pub(super) fn print_delivery_header(format: Format) -> anyhow::Result<()> {
    match format {
        Format::Table => out!(
            "{HEADER}{:>10}  {:<6}  {:<36}  {:<28}  SUBJECT{HEADER:#}",
            "SEQ",
            "AGE",
            "TYPE",
            "SOURCE"
        ),
        Format::Wide => out!(
            "{HEADER}{:>10}  {:<6}  {:<36}  {:<28}  {:<24}  {:<36}  {:<30}  DATA{HEADER:#}",
            "SEQ",
            "AGE",
            "TYPE",
            "SOURCE",
            "SUBJECT",
            "ID",
            "TIME"
        ),
        Format::Json | Format::Yaml => {}
    }
    Ok(())
}

/// One delivery in `format`.
pub(super) fn print_delivery(
    format: Format,
    sequence: u64,
    subject: &str,
    stored_at: Option<DateTime<Utc>>,
    event: &Event,
) -> anyhow::Result<()> {
    let age = stored_at.map(age).unwrap_or_else(|| "-".into());
    let style = type_style(&event.ty);
    let ty = format!("{style}{:<36}{style:#}", event.ty);
    match format {
        Format::Table => out!(
            "{sequence:>10}  {age:<6}  {ty}  {:<28}  {}",
            event.source,
            event.subject().unwrap_or("")
        ),
        Format::Wide => {
            let time = event
                .attributes
                .get("time")
                .map(|t| t.to_canonical_string())
                .unwrap_or_default();
            out!(
                "{sequence:>10}  {age:<6}  {ty}  {:<28}  {:<24}  {:<36}  {time:<30}  {}",
                event.source,
                event.subject().unwrap_or(""),
                event.id,
                data_excerpt(event)
            )
        }
        Format::Json | Format::Yaml => {
            let json = crate::codec::event_to_json(event)?;
            print_value(
                format,
                &serde_json::json!({ "sequence": sequence, "subject": subject, "event": json }),
            )?
        }
    }
    Ok(())
}

/// Green for creations, red for deletions (by the type's last word), else plain.
fn type_style(ty: &str) -> Style {
    let last = ty
        .rsplit(['.', ':', '/'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match last.as_str() {
        "created" | "added" => Style::new().fg_color(Some(AnsiColor::Green.into())),
        "deleted" | "removed" => Style::new().fg_color(Some(AnsiColor::Red.into())),
        _ => Style::new(),
    }
}

/// The first 40 characters of the data on one line.
fn data_excerpt(event: &Event) -> String {
    use jetwatch_client::Data;
    let text = match &event.data {
        None => return String::new(),
        Some(Data::Text(t)) => t.clone(),
        Some(Data::Binary(b)) => match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => format!("<{} bytes>", b.len()),
        },
        Some(Data::Proto { type_url, value }) => format!("<{type_url}, {} bytes>", value.len()),
    };
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut chars = one_line.chars();
    let head: String = chars.by_ref().take(40).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// How long ago, as kubectl says it: `45s`, `12m`, `3h`, `5d`.
pub(super) fn age(at: DateTime<Utc>) -> String {
    let secs = (Utc::now() - at).num_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A borderless table like kubectl's: a header row, then aligned rows.
pub(super) fn print_table(
    headers: &[&str],
    rows: Vec<Vec<String>>,
    no_headers: bool,
) -> anyhow::Result<()> {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    if !no_headers {
        table.set_header(headers.to_vec());
    }
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    for line in table.lines() {
        out!("{}", line.trim_end());
    }
    Ok(())
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
pub(super) fn progress_bar(length: Option<u64>, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let rate = |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.0}/s", state.per_sec());
    };
    let bar = match length {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {human_pos}/{human_len} {rate} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .with_key("rate", rate)
            .progress_chars("=> "),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg}: {human_pos} {rate}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
                .with_key("rate", rate),
        ),
    };
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Runs `print` (a write to standard output) without garbling `bar`: when both are on the
/// terminal, the bar is cleared first and drawn again after; otherwise they do not meet.
pub(super) fn print_under<T>(bar: &indicatif::ProgressBar, print: impl FnOnce() -> T) -> T {
    if !bar.is_hidden() && std::io::stdout().is_terminal() {
        bar.suspend(print)
    } else {
        print()
    }
}

/// Flushes standard output (before a durable acknowledges what it printed).
pub(super) fn flush() -> std::io::Result<()> {
    anstream::stdout().flush()
}
