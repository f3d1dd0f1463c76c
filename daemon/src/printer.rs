//! Printing the live feed on stdout: readable lines for a person (`text`),
//! one JSON object per line for a machine (`jsonl`).
//!
//! A printer is an ordinary live subscriber: if stdout blocks, it falls
//! behind, is told how much it missed, and says so; it never slows a device.

use crate::fanout::{Event, LinkState};
use crate::record::{Record, format_millis};
use crate::uplink::UplinkEvent;
use std::future::Future;
use std::io::Write;
use tokio::sync::broadcast::{self, error::RecvError};

/// What `slmd run --print` writes on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrintMode {
    /// Nothing (logs still go to stderr or the journal).
    None,
    /// One readable line per reading and per state change.
    Text,
    /// One JSON object per line: `{"type":"record",...}` and
    /// `{"type":"device_state",...}`; `{"type":"lagged","missed":N}` when
    /// the printer fell behind.
    Jsonl,
}

/// The printer task for `mode`, or `None` when nothing is printed. It
/// prints the live feed and, when the uplink runs, its push progress.
pub fn start(
    mode: PrintMode,
    mut events: broadcast::Receiver<Event>,
    mut uplink: Option<broadcast::Receiver<UplinkEvent>>,
) -> Option<impl Future<Output = ()>> {
    if mode == PrintMode::None {
        return None;
    }
    Some(async move {
        loop {
            let received = tokio::select! {
                event = events.recv() => event.map(Printed::Live),
                Some(event) = next_uplink(&mut uplink) => event.map(Printed::Uplink),
            };
            let line = match received {
                Ok(Printed::Live(event)) => render(mode, &event),
                Ok(Printed::Uplink(event)) => render_uplink(mode, &event),
                Err(RecvError::Lagged(missed)) => match mode {
                    PrintMode::Jsonl => format!(r#"{{"type":"lagged","missed":{missed}}}"#),
                    _ => format!("… printer fell behind, {missed} events not shown"),
                },
                Err(RecvError::Closed) => return,
            };
            let mut out = std::io::stdout().lock();
            // stdout closed (e.g. `slmd run | head`): stop printing, keep running.
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return;
            }
        }
    })
}

/// One thing to print.
enum Printed {
    Live(Event),
    Uplink(UplinkEvent),
}

/// The next uplink event; never ready when there is no uplink or it ended.
async fn next_uplink(
    uplink: &mut Option<broadcast::Receiver<UplinkEvent>>,
) -> Option<Result<UplinkEvent, RecvError>> {
    let Some(receiver) = uplink else {
        return std::future::pending().await;
    };
    match receiver.recv().await {
        Err(RecvError::Closed) => {
            *uplink = None;
            std::future::pending().await
        }
        other => Some(other),
    }
}

fn render_uplink(mode: PrintMode, event: &UplinkEvent) -> String {
    if mode == PrintMode::Jsonl {
        return serde_json::to_string(event).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","error":"cannot serialise event: {e}"}}"#)
        });
    }
    let now = format_millis(&chrono::Utc::now());
    let time = now.get(11..23).unwrap_or("");
    let what = match event {
        UplinkEvent::Push {
            first_seq,
            last_seq,
            records,
            accepted,
            duplicates,
            bytes,
            token,
            backlog,
            ..
        } => format!(
            "pushed #{first_seq}..#{last_seq}: {records} records, {accepted} new, {duplicates} re-sent, {bytes} bytes (token {token}), backlog {backlog}"
        ),
        UplinkEvent::TokenRejected { token, slot } => {
            format!("token {token} (slot {slot}) rejected")
        }
        UplinkEvent::PushFailed {
            error, retry_in_ms, ..
        } => format!("push failed: {error}; retry in {retry_in_ms} ms"),
        UplinkEvent::AuthFailed { tokens, .. } => {
            format!(
                "every token rejected ({}); pushing paused",
                tokens.join(", ")
            )
        }
        UplinkEvent::Quarantined { seq, reason } => format!("record #{seq} quarantined: {reason}"),
        UplinkEvent::TokensReloaded { tokens } => {
            format!("tokens reloaded: {}", tokens.join(", "))
        }
    };
    format!("{time}  fleet        {what}")
}

fn render(mode: PrintMode, event: &Event) -> String {
    match mode {
        PrintMode::Jsonl => serde_json::to_string(event).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","error":"cannot serialise event: {e}"}}"#)
        }),
        _ => render_text(event),
    }
}

fn render_text(event: &Event) -> String {
    let now = chrono::Utc::now();
    match event {
        Event::Record(record) if record.is_interval() => text_interval(record),
        Event::Record(record) => text_record(record),
        Event::Alert(alert) => text_alert(alert, &now),
        Event::DeviceState {
            device,
            state,
            error,
        } => {
            let what = match state {
                LinkState::Connected => "connected".to_owned(),
                LinkState::Connecting => "connecting".to_owned(),
                LinkState::Down => format!("down: {}", error.as_deref().unwrap_or("unknown")),
            };
            format!(
                "{}  {device:<12} {what}",
                format_millis(&now).get(11..23).unwrap_or("")
            )
        }
    }
}

fn text_interval(r: &Record) -> String {
    let time = format_millis(&r.received_at);
    let level = |name: &str| level(r, name);
    let (length, start, coverage) = r.interval.map_or((String::new(), String::new(), 0.0), |i| {
        (
            crate::limits::interval::length_suffix(i.length),
            format_millis(&i.start).get(11..16).unwrap_or("").to_owned(),
            i.coverage,
        )
    });
    let flags = flags(r);
    format!(
        "{}  {:<12} #{:<6} {length} from {start}Z  Leq {}  Lmax {}  Lmin {}  L10 {}  L90 {} dB  coverage {:.0}%{}",
        time.get(11..23).unwrap_or(&time),
        r.device,
        r.seq,
        level("leq"),
        level("lmax"),
        level("lmin"),
        level("l10"),
        level("l90"),
        coverage * 100.0,
        flags
    )
}

fn text_alert(alert: &serde_json::Value, now: &chrono::DateTime<chrono::Utc>) -> String {
    let field = |name: &str| {
        alert
            .get(name)
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default()
    };
    format!(
        "{}  {:<12} ALERT {} {}: {} {} dB (limit {}), episode {}",
        format_millis(now).get(11..23).unwrap_or(""),
        field("device"),
        field("event"),
        field("alert"),
        field("metric"),
        field("value"),
        field("threshold"),
        field("episode")
    )
}

/// A level as the text feed shows it: `58.3`, or `-.-` for none.
fn level(r: &Record, name: &str) -> String {
    match r.metric(name) {
        Some(v) => format!("{v:5.1}"),
        None => "  -.-".to_owned(),
    }
}

/// `  [overload,replayed]`, or nothing.
fn flags(r: &Record) -> String {
    if r.flags.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = r.flags.iter().map(|f| f.as_str()).collect();
    format!("  [{}]", names.join(","))
}

fn text_record(r: &Record) -> String {
    let time = format_millis(&r.received_at);
    let level = |name: &str| level(r, name);
    let flags = flags(r);
    format!(
        "{}  {:<12} #{:<6} Lp {}  Leq {}  Lmax {}  Lmin {}  L90 {} dB  {}{}",
        time.get(11..23).unwrap_or(&time),
        r.device,
        r.seq,
        level("lp"),
        level("leq"),
        level("lmax"),
        level("lmin"),
        level("l90"),
        r.state.as_str(),
        flags
    )
}
