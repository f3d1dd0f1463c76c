//! Where log lines go, and in what form.
//!
//! - **Started by systemd with the journal** (`JOURNAL_STREAM` names our
//!   stderr): native journald entries through `tracing-journald`. The
//!   message is `MESSAGE`; our fields become `SLMD_<NAME>` (`device` →
//!   `SLMD_DEVICE`, `event` → `SLMD_EVENT`, `error` → `SLMD_ERROR`, …);
//!   the level becomes `PRIORITY` (error 3, warn 4, info 6, debug and
//!   trace 7, so `journalctl -p info` means what it says). A field tech
//!   filters with `journalctl -u slmd SLMD_DEVICE=m1` or
//!   `SLMD_EVENT=meter_down`.
//! - **Under systemd, journal socket unreachable**: plain text on stderr
//!   (which systemd still forwards to the journal), each line prefixed with
//!   its syslog priority (`<4>`) so journald still files it at the right
//!   `PRIORITY`, and without a timestamp (the journal adds one).
//! - **Anywhere else**: plain text on stderr with timestamps; colours only
//!   on a terminal.
//!
//! `RUST_LOG` overrides the default filter in every case.
//!
//! Every line about one meter carries `device = …`, and lines a field tech
//! may want to find carry `event = "…"` (a stable snake_case name such as
//! `meter_down`, `meter_still_failing`, `meter_recovered`). Messages name
//! the meter in words too: the journal's one-line view shows only
//! `MESSAGE`.

use std::io::IsTerminal;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// Prefix of our journald fields: `device` is stored as `SLMD_DEVICE`.
pub const FIELD_PREFIX: &str = "SLMD";

/// The `SYSLOG_IDENTIFIER` of our journal entries (`journalctl -t slmd`).
pub const SYSLOG_IDENTIFIER: &str = "slmd";

/// Sets up logging for the whole process; call once, first thing.
/// `default_filter` applies unless `RUST_LOG` is set.
pub fn init(default_filter: &str) {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let mut journal_error = None;
    if stderr_is_journal() {
        match journald_layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => journal_error = Some(e),
        }
    }
    init_text(filter(), journal_error.is_some());
    if let Some(error) = journal_error {
        tracing::warn!(
            %error,
            event = "journal_unavailable",
            "cannot reach the journal socket; logging as text on stderr, which systemd still collects"
        );
    }
}

fn journald_layer() -> std::io::Result<tracing_journald::Layer> {
    let mut priorities = tracing_journald::PriorityMappings::new();
    priorities.info = tracing_journald::Priority::Informational;
    priorities.debug = tracing_journald::Priority::Debug;
    priorities.trace = tracing_journald::Priority::Debug;
    Ok(tracing_journald::layer()?
        .with_field_prefix(Some(FIELD_PREFIX.to_owned()))
        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
        .with_priority_mappings(priorities))
}

/// Text on stderr; `to_journal`: stderr is systemd's journal stream.
fn init_text(filter: EnvFilter, to_journal: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if to_journal {
        let format = tracing_subscriber::fmt::format()
            .with_target(false)
            .without_time()
            .with_ansi(false);
        builder
            .with_ansi(false)
            .event_format(SyslogPrefix(format))
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// True when systemd connected our stderr to the journal: `JOURNAL_STREAM`
/// (`<device>:<inode>`) names the file stderr is (systemd.exec(5)). A child
/// that inherited the variable but whose stderr was redirected does not
/// match.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    match stderr_identity() {
        Some((dev, ino)) => journal_stream_matches(&value.to_string_lossy(), dev, ino),
        None => false,
    }
}

/// The device and inode of the file behind stderr.
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let metadata = std::fs::File::from(fd).metadata().ok()?;
    Some((metadata.dev(), metadata.ino()))
}

/// Whether a `JOURNAL_STREAM` value names the file `dev`:`ino`.
pub fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().is_ok_and(|d| d == dev) && i.parse::<u64>().is_ok_and(|i| i == ino)
}

/// The syslog priority journald reads from a `<N>` line prefix.
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// Writes `<N>` (the syslog priority) before each line, for journald's
/// stream reader.
struct SyslogPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_exactly_our_stderr() {
        assert!(journal_stream_matches("64768:123456", 64768, 123_456));
        assert!(journal_stream_matches(" 8:9\n", 8, 9));
        assert!(!journal_stream_matches("64768:123457", 64768, 123_456));
        assert!(!journal_stream_matches("1:123456", 64768, 123_456));
        assert!(!journal_stream_matches("", 1, 2));
        assert!(!journal_stream_matches("1", 1, 2));
        assert!(!journal_stream_matches("a:b", 1, 2));
        assert!(!journal_stream_matches("1:2:3", 1, 2));
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(Level::ERROR), 3);
        assert_eq!(syslog_priority(Level::WARN), 4);
        assert_eq!(syslog_priority(Level::INFO), 6);
        assert_eq!(syslog_priority(Level::DEBUG), 7);
    }

    #[test]
    fn stderr_has_an_identity() {
        // Whatever stderr is under the test harness, it is some file.
        assert!(stderr_identity().is_some());
    }
}
