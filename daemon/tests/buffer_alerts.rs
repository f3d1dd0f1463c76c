//! Alert events and episodes in a real buffer file: they survive a reopen
//! (an active episode stays active), acks keep the first time and the
//! latest note, and the stated bounds hold: the newest
//! [`alerts::EVENTS_KEEP`] events and [`alerts::EPISODES_KEEP`] finished
//! episodes, with what a lagging consumer missed counted `lost`.

use serde_json::{Value, json};
use slmd::buffer::alerts::{self, AckError};
use slmd::buffer::{self, Buffer, Settings};
use slmd::config::Durability;
use std::path::Path;

fn open(path: &Path) -> Buffer {
    let settings = Settings {
        path: path.to_owned(),
        max_records: 1_000,
        max_bytes: None,
        durability: Durability::Normal,
        memory_queue: 1_000,
        batch_max: 100,
        commit_interval: std::time::Duration::ZERO,
        exclusive: true,
    };
    buffer::open(settings).expect("buffer opens").0
}

fn event(kind: &str, episode: &str, value: f64) -> Value {
    json!({"gateway": "gw", "alert": "day-limit", "event": kind, "device": "north",
           "metric": "leq_15m", "value": value, "threshold": 65.0,
           "at": "2026-12-02T10:15:00.000Z", "episode": episode})
}

fn summary(episode: &str, state: &str) -> Value {
    json!({"episode": episode, "alert": "day-limit", "device": "north", "state": state})
}

/// Stores a `kind` event of rule `day-limit` in `episode`, with the
/// episode's summary in state `kind`; returns its `event_seq`.
fn store(buffer: &Buffer, episode: &str, kind: &str, value: f64, active: bool) -> u64 {
    buffer
        .record_alert_event(
            episode,
            "day-limit",
            &event(kind, episode, value),
            &summary(episode, kind),
            active,
        )
        .expect("stored")
}

#[test]
fn an_active_episode_and_its_events_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("buffer.db");
    {
        let buffer = open(&path);
        let first = store(&buffer, "e1", "onset", 67.0, true);
        let second = store(&buffer, "e1", "peak", 71.5, true);
        assert!(second > first, "{first} then {second}");
    }
    let buffer = open(&path);
    let (active, recent) = buffer.episodes(10).expect("episodes");
    assert_eq!(active, [summary("e1", "peak")]);
    assert!(recent.is_empty());
    let events = buffer.alert_events_after(0, 100).expect("events");
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| e.body["event"].as_str())
        .collect();
    assert_eq!(kinds, ["onset", "peak"]);
    // Each body carries its own number, as the consumers deliver it.
    for stored in &events {
        assert_eq!(stored.body["event_seq"].as_u64(), Some(stored.event_seq));
        assert_eq!(stored.rule, "day-limit");
    }
    assert_eq!(buffer.last_event_seq().expect("seq"), events[1].event_seq);

    // The clear ends it: listed as recent from then on.
    store(&buffer, "e1", "clear", 60.0, false);
    let (active, recent) = buffer.episodes(10).expect("episodes");
    assert!(active.is_empty());
    assert_eq!(recent, [summary("e1", "clear")]);
}

#[test]
fn an_ack_keeps_its_first_time_takes_the_latest_note_and_an_unknown_episode_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let buffer = open(&dir.path().join("buffer.db"));
    store(&buffer, "e1", "onset", 67.0, true);
    let first = buffer
        .ack_episode("e1", "crane work", "2026-12-02T10:20:00Z")
        .expect("acked");
    assert_eq!(first["ack"]["at"], "2026-12-02T10:20:00Z");
    let second = buffer
        .ack_episode("e1", "crane gone, still loud", "2026-12-02T10:40:00Z")
        .expect("acked");
    assert_eq!(second["ack"]["at"], "2026-12-02T10:20:00Z");
    assert_eq!(second["ack"]["last_at"], "2026-12-02T10:40:00Z");
    assert_eq!(second["ack"]["note"], "crane gone, still loud");
    let (stored, active) = buffer.episode("e1").expect("read").expect("there");
    assert_eq!(stored, second);
    assert!(active);

    match buffer.ack_episode("e9", "?", "2026-12-02T10:40:00Z") {
        Err(AckError::Unknown(episode)) => assert_eq!(episode, "e9"),
        other => panic!("an unknown episode: {other:?}"),
    }
}

#[test]
fn the_file_keeps_the_newest_events_and_episodes_and_counts_what_a_lagging_consumer_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let buffer = open(&dir.path().join("buffer.db"));
    // A consumer that delivered the first three, then stopped (a channel
    // down for days under a flapping limit).
    assert_eq!(
        buffer
            .event_delivery("channel:site", false)
            .expect("registered"),
        (0, 0)
    );
    let extra = 5;
    let total = alerts::EVENTS_KEEP as u64 + extra;
    for n in 1..=total {
        let episode = format!("e{n}");
        store(&buffer, &episode, "clear", 60.0, false);
        if n == 3 {
            buffer
                .mark_events_delivered("channel:site", 3)
                .expect("noted");
        }
    }
    assert_eq!(buffer.last_event_seq().expect("seq"), total);
    let kept = buffer.alert_events_after(0, usize::MAX).expect("events");
    assert_eq!(kept.len() as i64, alerts::EVENTS_KEEP);
    assert_eq!(kept.first().map(|e| e.event_seq), Some(extra + 1));
    // Pruned before it delivered them: events 4 and 5.
    assert_eq!(
        buffer.event_delivery("channel:site", false).expect("read"),
        (extra, extra - 3)
    );
    // A consumer added now starts after everything stored so far...
    assert_eq!(
        buffer.event_delivery("fleet", true).expect("registered"),
        (total, 0)
    );
    // ...and numbers are never reused, also after pruning.
    let next = store(&buffer, "late", "onset", 70.0, true);
    assert_eq!(next, total + 1);

    let (active, recent) = buffer.episodes(usize::MAX).expect("episodes");
    assert_eq!(active.len(), 1);
    assert_eq!(recent.len() as i64, alerts::EPISODES_KEEP);
    assert_eq!(recent[0]["episode"], format!("e{total}"), "newest first");
}
