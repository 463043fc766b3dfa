//! How every nekms program logs: [`tracing`] events, filtered by `RUST_LOG`
//! (default `info`), each line with an RFC 3339 time and a level, written to
//! stderr as text or as one JSON object per line (`--log-format`,
//! `NEKMS_LOG_FORMAT`).
//!
//! No event carries a secret: key material, PINs, tokens, credentials and
//! plaintexts are never a field or part of a message, at any level; the
//! tests scan a whole run's logs for the ones they used.
//!
//! With the `stream` feature the enclave's lines also go to the parent
//! ([`Stream`]): a production enclave has no console, so what it says
//! reaches the parent over vsock, and only there.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

#[cfg(feature = "stream")]
mod stream;
#[cfg(feature = "stream")]
pub use stream::Stream;

/// How lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `TIME LEVEL program: message field=value ...`
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's fields
    Json,
}

/// The flag every program takes.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LogArgs {
    /// Log lines as text or as JSON objects, one per line; levels come from
    /// RUST_LOG [default: text, and RUST_LOG=info]
    #[arg(long, value_enum, value_name = "FORMAT", global = true, env = "NEKMS_LOG_FORMAT")]
    pub log_format: Option<Format>,
}

impl LogArgs {
    pub fn format(&self) -> Format {
        self.log_format.unwrap_or_default()
    }
}

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Install the process's logger, writing to stderr. Later calls change nothing.
pub fn init(program: &'static str, format: Format) {
    install(program, format, None, false);
}

/// Whether a logger is installed (so a fatal error goes through it).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Report the error that ends the program: as a log line when a logger is
/// installed (an enclave's stream carries it to the parent), else on stderr.
pub fn fatal(program: &str, error: &dyn fmt::Display) {
    if installed() {
        tracing::error!("{error}");
    } else {
        eprintln!("{program}: {error}");
    }
}

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

/// A formatted line as it may be shown: every control character (C0, DEL,
/// C1) but the final newline becomes `\uXXXX` (valid in JSON strings too),
/// so no field a caller chose can start a line of its own or drive a
/// terminal.
pub(crate) fn clean(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let mut out = String::with_capacity(body.len() + 1);
    for c in body.chars() {
        if c.is_control() && c != '\t' {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push('\n');
    out.into_bytes()
}

/// Each event to stderr whole, cleaned ([`clean`]).
struct CleanStderr;

struct StderrLine(Vec<u8>);

impl<'a> MakeWriter<'a> for CleanStderr {
    type Writer = StderrLine;

    fn make_writer(&'a self) -> StderrLine {
        StderrLine(Vec::new())
    }
}

impl std::io::Write for StderrLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for StderrLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), &clean(&self.0));
        }
    }
}

fn install(program: &'static str, format: Format, to: Option<Boxed>, foreign_info_only: bool) {
    let filter = EnvFilter::builder().with_default_directive(LevelFilter::INFO.into()).from_env_lossy();
    // Only nekms's own events below info: no dependency's debug output (a TLS
    // library's, an HTTP stack's) ever reaches a log the parent reads.
    let foreign = foreign_info_only.then(|| filter_fn(|m| m.target().starts_with("nekms") || *m.level() <= Level::INFO));
    let layers: Vec<Boxed> = std::iter::once(layer(program, format, CleanStderr)).chain(to).collect();
    if tracing_subscriber::registry().with(layers).with(filter).with(foreign).try_init().is_ok() {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

fn layer<W>(program: &'static str, format: Format, writer: W) -> Boxed
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    match format {
        Format::Text => tracing_subscriber::fmt::layer().event_format(TextLine { program }).with_writer(writer).boxed(),
        Format::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    }
}

/// `2026-12-06T21:56:34.123456Z  INFO nekms-enclave: RPC on ... field=value`
struct TextLine {
    program: &'static str,
}

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        SystemTime.format_time(&mut w)?;
        write!(w, " {:>5} {}: ", event.metadata().level(), self.program)?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn a_field_cannot_start_a_line_or_drive_a_terminal() {
        let forged = "refused: bad\n2026-12-06T00:00:00Z  INFO nekms-enclave: ok\r\u{1b}[2J\u{9b}31m\ttab\n";
        let out = String::from_utf8(clean(forged.as_bytes())).unwrap();
        assert_eq!(out.matches('\n').count(), 1, "{out}");
        assert!(out.ends_with('\n') && out.contains("\\u000a2026") && out.contains("\\u000d\\u001b[2J\\u009b31m\ttab"), "{out}");
        // In a JSON line the escapes keep it JSON.
        let json = clean("{\"message\":\"a\u{9b}b\"}\n".as_bytes());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["message"], "a\u{9b}b");
    }
}
