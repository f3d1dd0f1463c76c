//! Printing the live feed on stdout: readable lines for a person (`text`),
//! one JSON object per line for a machine (`jsonl`).
//!
//! A printer is an ordinary live subscriber: if stdout blocks, it falls
//! behind, is told how much it missed, and says so; it never slows a device.

use crate::fanout::{Event, LinkState};
use crate::record::{Record, format_millis};
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

/// The printer task for `mode`, or `None` when nothing is printed.
pub fn start(
    mode: PrintMode,
    mut events: broadcast::Receiver<Event>,
) -> Option<impl Future<Output = ()>> {
    if mode == PrintMode::None {
        return None;
    }
    Some(async move {
        loop {
            let line = match events.recv().await {
                Ok(event) => render(mode, &event),
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
        Event::Record(record) => text_record(record),
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

fn text_record(r: &Record) -> String {
    let time = format_millis(&r.received_at);
    let level = |name: &str| match r.metric(name) {
        Some(v) => format!("{v:5.1}"),
        None => "  -.-".to_owned(),
    };
    let flags = if r.flags.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = r.flags.iter().map(|f| f.as_str()).collect();
        format!("  [{}]", names.join(","))
    };
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
