//! `GET /metrics`: the Prometheus text format (version 0.0.4).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `slmd_build_info` | gauge | `version` | always 1 |
//! | `slmd_uptime_seconds` | gauge | | seconds since start |
//! | `slmd_device_info` | gauge | `device`, `protocol`, `model`, `serial`, `firmware` | always 1: the meter's family and identity (as read when its link last opened; empty until then) |
//! | `slmd_device_up` | gauge | `device` | 1 while the meter answers (`connected`), else 0 |
//! | `slmd_device_state` | gauge | `device`, `state` | 1 for the current link state (`connecting`, `connected`, `down`), 0 for the others |
//! | `slmd_device_task_failed` | gauge | `device` | 1 when the device's task stopped on an internal error (the watchdog then lets systemd restart slmd) |
//! | `slmd_device_readings_total` | counter | `device` | readings produced since start |
//! | `slmd_device_errors_total` | counter | `device`, `kind` | `bad_answers`, `timeouts`, `refused` since start |
//! | `slmd_device_run_state` | gauge | `device`, `state` | 1 for the meter's run state (`measuring`, `stopped`, `paused`, `unknown`), 0 for the others |
//! | `slmd_device_battery_info` | gauge | `device`, `battery` | always 1: the battery as the meter words it (absent where unknown) |
//! | `slmd_device_sd_free_percent` | gauge | `device` | free space on the meter's SD card, percent (absent where unknown) |
//! | `slmd_device_clock_offset_seconds` | gauge | `device` | the meter's clock minus the gateway's (absent where unknown) |
//! | `slmd_device_care_total` | counter | `device`, `kind` | meter care since start: `measure_restarts` (keep_measuring), `clock_syncs` (sync_clock) |
//! | `slmd_device_connects_total` | counter | `device` | links opened since start |
//! | `slmd_buffer_open` | gauge | | 1 once the buffer is open; the other buffer metrics appear only then |
//! | `slmd_buffer_records` | gauge | | records stored |
//! | `slmd_buffer_capacity` | gauge | | `max_records` |
//! | `slmd_buffer_unsent` | gauge | | records the fleet has not accepted |
//! | `slmd_buffer_oldest_unsent_timestamp_seconds` | gauge | | `received_at` of the oldest unsent record (absent when none) |
//! | `slmd_buffer_written_total` | counter | | records committed, ever |
//! | `slmd_buffer_evicted_unsent_total` | counter | | records evicted before the fleet had them, ever |
//! | `slmd_buffer_lost_total` | counter | | records that never reached the disk, ever |
//! | `slmd_buffer_queued_in_memory` | gauge | | records waiting for the disk |
//! | `slmd_buffer_commits_total` | counter | | write transactions committed since start (card wear: each writes at least two pages) |
//! | `slmd_buffer_commits_last_minute` | gauge | | of those, in the last 60 s (commits per minute) |
//! | `slmd_buffer_disk_write_bytes_total` | counter | | bytes slmd caused to be written to storage since start (`/proc/self/io` `write_bytes`; the buffer, its WAL and the anchor are its only files); absent where the kernel does not say |
//! | `slmd_buffer_skipped_numbers_total` | counter | | `seq` numbers declared skipped (unclean stops), ever |
//! | `slmd_buffer_epoch` | gauge | | the numbering epoch of new records (0 unless numbering restarted without its anchor) |
//! | `slmd_buffer_salvage_running` | gauge | | 1 while a damaged buffer's rows are salvaged (the fleet push waits) |
//! | `slmd_buffer_salvage_rows_saved` | gauge | | rows the last salvage copied into the buffer (absent without one) |
//! | `slmd_buffer_salvage_rows_doubtful` | gauge | | rows the last salvage found doubtful and quarantined (absent without one) |
//! | `slmd_hub_lost_to_full_sinks_total` | counter | | records a durable consumer's queue could not take |
//! | `slmd_fleet_enabled` | gauge | | 1 when `[fleet].enabled` |
//! | `slmd_fleet_state` | gauge | `state` | 1 for the uplink's state, 0 for the others |
//! | `slmd_fleet_backlog` | gauge | | records waiting to be pushed |
//! | `slmd_fleet_accepted_total` | counter | | records the fleet accepted as new since start |
//! | `slmd_fleet_duplicates_total` | counter | | records the fleet already had since start |
//! | `slmd_fleet_quarantined_total` | counter | | records rejected as malformed and put aside, ever |
//! | `slmd_fleet_last_push_timestamp_seconds` | gauge | | when the fleet last accepted a batch (absent before the first) |
//! | `slmd_fleet_heartbeats_total` | counter | | heartbeats the fleet accepted since start |
//! | `slmd_fleet_heartbeat_failures_total` | counter | | heartbeat tries that failed since start |
//! | `slmd_fleet_last_heartbeat_timestamp_seconds` | gauge | | when the fleet last accepted a heartbeat (absent before the first) |
//! | `slmd_fleet_token_slot` | gauge | | token slot in use (1 preferred, 2 the other, 0 none) |
//! | `slmd_alerts_active` | gauge | | noise-limit episodes active now (with limits configured) |
//! | `slmd_alert_events_total` | counter | | alert events raised since start |
//! | `slmd_interval_levels_total` | counter | | interval levels published since start |
//! | `slmd_alert_deliveries_total` | counter | `consumer` | alert events delivered since start (`fleet`, `channel:<id>`) |
//! | `slmd_alert_delivery_failures_total` | counter | `consumer` | failed delivery tries since start |
//! | `slmd_alert_delivery_rejected_total` | counter | `consumer` | alert events the consumer refused and that were skipped |
//! | `slmd_stream_subscribers` | gauge | | open `/v1/stream` connections |
//! | `slmd_stream_opened_total` | counter | | streams opened since start |
//! | `slmd_stream_lagged_records_total` | counter | | records skipped for streams that fell behind |
//! | `slmd_stream_stuck_disconnects_total` | counter | | streams cut because their client stopped reading |
//! | `slmd_live_subscribers` | gauge | | every live subscriber of the hub (API streams, MQTT, printers) |
//! | `slmd_api_connections` | gauge | | open API connections |
//! | `slmd_api_connections_max` | gauge | | the API's connection cap |
//! | `slmd_api_connections_refused_total` | counter | | connections answered `503` because every slot was busy |
//! | `slmd_api_connections_evicted_total` | counter | | idle connections closed to admit a new one at the cap |
//! | `slmd_api_connections_timed_out_total` | counter | | connections closed for a slow or oversized request head, or idleness |
//!
//! Device health is here, in `/v1/status` and in the fleet heartbeat,
//! never in records.

use super::{ApiError, ApiState, lock_fleet, routes};
use crate::fanout::LinkState;
use crate::record::MeterState;
use crate::uplink::FleetState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::fmt::{Display, Write};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every link state, for the one-hot `slmd_device_state`.
const LINK_STATES: [LinkState; 3] = [LinkState::Connecting, LinkState::Connected, LinkState::Down];

/// Every uplink state, for the one-hot `slmd_fleet_state`.
const FLEET_STATES: [FleetState; 8] = [
    FleetState::Disabled,
    FleetState::Starting,
    FleetState::Ok,
    FleetState::CatchingUp,
    FleetState::Retrying,
    FleetState::AuthFailed,
    FleetState::WaitingForSalvage,
    FleetState::Failed,
];

/// Health the meter reports (a gauge only where it was read) and what
/// meter care did.
fn device_health(page: &mut Page, devices: &[crate::device::DeviceStatus]) {
    page.family(
        "slmd_device_run_state",
        "gauge",
        "1 for the meter's run state as last reported (measuring, stopped, paused, unknown), 0 for the others.",
    );
    for d in devices {
        for state in RUN_STATES {
            page.sample(
                "slmd_device_run_state",
                &[("device", &d.id), ("state", state.as_str())],
                u8::from(d.run_state == state),
            );
        }
    }
    page.family(
        "slmd_device_battery_info",
        "gauge",
        "Always 1: the battery as the meter words it (absent where the family cannot report it or before it is read).",
    );
    for d in devices {
        if let Some(battery) = d.health.battery.value() {
            page.sample(
                "slmd_device_battery_info",
                &[("device", &d.id), ("battery", battery)],
                1,
            );
        }
    }
    page.family(
        "slmd_device_sd_free_percent",
        "gauge",
        "Free space on the meter's SD card, percent (absent where unknown).",
    );
    for d in devices {
        if let Some(percent) = d.health.sd_free_percent.value() {
            page.sample("slmd_device_sd_free_percent", &[("device", &d.id)], percent);
        }
    }
    page.family(
        "slmd_device_clock_offset_seconds",
        "gauge",
        "The meter's clock minus the gateway's, seconds (absent where unknown).",
    );
    for d in devices {
        if let Some(offset) = d.health.clock_offset_s.value() {
            page.sample(
                "slmd_device_clock_offset_seconds",
                &[("device", &d.id)],
                offset,
            );
        }
    }
    page.family(
        "slmd_device_care_total",
        "counter",
        "Meter care since start: measurements started again (measure_restarts, keep_measuring), meter clocks set (clock_syncs, sync_clock).",
    );
    for d in devices {
        for (kind, n) in [
            ("measure_restarts", d.care.measure_restarts),
            ("clock_syncs", d.care.clock_syncs),
        ] {
            page.sample(
                "slmd_device_care_total",
                &[("device", &d.id), ("kind", kind)],
                n,
            );
        }
    }
}

/// Every run state, for `slmd_device_run_state`.
const RUN_STATES: [MeterState; 4] = [
    MeterState::Measuring,
    MeterState::Stopped,
    MeterState::Paused,
    MeterState::Unknown,
];

/// A metrics page being written.
#[derive(Debug, Default)]
pub(crate) struct Page {
    text: String,
}

impl Page {
    /// `# HELP` and `# TYPE` of a family.
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A family with one unlabelled sample.
    pub(crate) fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    pub(crate) fn finish(self) -> String {
        self.text
    }
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
pub(crate) fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str(r#"\""#),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds since the Unix epoch, with milliseconds.
/// The limits part's families, when limits are configured.
fn limits(page: &mut Page, state: &ApiState) {
    let Some(limits) = state.inner.limits.get() else {
        return;
    };
    let counters = limits.counters();
    page.single(
        "slmd_alerts_active",
        "gauge",
        "Noise-limit episodes active now.",
        counters.active,
    );
    page.single(
        "slmd_alert_events_total",
        "counter",
        "Alert events (onset, peak, clear) raised since start.",
        counters.events,
    );
    page.single(
        "slmd_interval_levels_total",
        "counter",
        "Interval levels published since start.",
        counters.intervals,
    );
    let deliveries = limits.deliveries_now();
    for (name, help, value) in [
        (
            "slmd_alert_deliveries_total",
            "Alert events delivered since start, per consumer (fleet, channel:<id>).",
            (|d: &crate::limits::deliver::DeliveryStatus| d.delivered)
                as fn(&crate::limits::deliver::DeliveryStatus) -> u64,
        ),
        (
            "slmd_alert_delivery_failures_total",
            "Failed delivery tries since start, per consumer.",
            |d| d.failures,
        ),
        (
            "slmd_alert_delivery_rejected_total",
            "Alert events a consumer refused (skipped) since start.",
            |d| d.rejected,
        ),
    ] {
        page.family(name, "counter", help);
        for d in &deliveries {
            page.sample(name, &[("consumer", &d.consumer)], value(d));
        }
    }
}

fn unix_seconds(t: &chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let buffer = routes::buffer_status(&state).await?;
    let inner = &state.inner;
    let devices = routes::device_statuses(&state);
    let mut page = Page::default();

    page.family(
        "slmd_build_info",
        "gauge",
        "Always 1; the version is a label.",
    );
    page.sample(
        "slmd_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    page.single(
        "slmd_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        inner.started.elapsed().as_secs(),
    );

    page.family(
        "slmd_device_info",
        "gauge",
        "The meter's family and identity as read when its link last opened; always 1.",
    );
    for d in &devices {
        let identity = d.identity.clone().unwrap_or_default();
        page.sample(
            "slmd_device_info",
            &[
                ("device", &d.id),
                ("protocol", d.protocol),
                ("model", identity.model.as_deref().unwrap_or("")),
                ("serial", identity.serial.as_deref().unwrap_or("")),
                ("firmware", identity.firmware.as_deref().unwrap_or("")),
            ],
            1,
        );
    }
    page.family(
        "slmd_device_up",
        "gauge",
        "1 while the meter answers (state connected), else 0.",
    );
    for d in &devices {
        page.sample(
            "slmd_device_up",
            &[("device", &d.id)],
            u8::from(d.state == LinkState::Connected),
        );
    }
    page.family(
        "slmd_device_state",
        "gauge",
        "1 for the device's current link state, 0 for the others.",
    );
    for d in &devices {
        for s in LINK_STATES {
            page.sample(
                "slmd_device_state",
                &[("device", &d.id), ("state", s.as_str())],
                u8::from(d.state == s),
            );
        }
    }
    page.family(
        "slmd_device_task_failed",
        "gauge",
        "1 when the device's task stopped on an internal error (slmd must restart).",
    );
    for d in &devices {
        page.sample(
            "slmd_device_task_failed",
            &[("device", &d.id)],
            u8::from(d.task_failed),
        );
    }
    page.family(
        "slmd_device_readings_total",
        "counter",
        "Readings produced since start.",
    );
    for d in &devices {
        page.sample(
            "slmd_device_readings_total",
            &[("device", &d.id)],
            d.readings_total,
        );
    }
    page.family(
        "slmd_device_errors_total",
        "counter",
        "Failed exchanges with the meter since start: answers that did not parse (bad_answers), answers that did not arrive (timeouts), commands the meter refused (refused).",
    );
    for d in &devices {
        for (kind, n) in [
            ("bad_answers", d.bad_answers),
            ("timeouts", d.timeouts),
            ("refused", d.refused_commands),
        ] {
            page.sample(
                "slmd_device_errors_total",
                &[("device", &d.id), ("kind", kind)],
                n,
            );
        }
    }
    device_health(&mut page, &devices);
    page.family(
        "slmd_device_connects_total",
        "counter",
        "Links to the meter opened since start.",
    );
    for d in &devices {
        page.sample(
            "slmd_device_connects_total",
            &[("device", &d.id)],
            d.connects,
        );
    }

    page.single(
        "slmd_buffer_open",
        "gauge",
        "1 once the ring buffer is open; the other slmd_buffer_ metrics appear only then.",
        u8::from(buffer.is_some()),
    );
    if let Some(b) = &buffer {
        page.single(
            "slmd_buffer_records",
            "gauge",
            "Records stored in the buffer.",
            b.records,
        );
        page.single(
            "slmd_buffer_capacity",
            "gauge",
            "Most records the buffer keeps (max_records).",
            b.capacity,
        );
        page.single(
            "slmd_buffer_unsent",
            "gauge",
            "Stored records the fleet has not accepted.",
            b.unsent,
        );
        if let Some(t) = &b.oldest_unsent_received_at {
            page.single(
                "slmd_buffer_oldest_unsent_timestamp_seconds",
                "gauge",
                "received_at of the oldest unsent record, Unix seconds.",
                unix_seconds(t),
            );
        }
        page.single(
            "slmd_buffer_written_total",
            "counter",
            "Records committed to the buffer since it was created.",
            b.written,
        );
        page.single(
            "slmd_buffer_evicted_unsent_total",
            "counter",
            "Records evicted before the fleet had them (data the fleet never got), since the buffer was created.",
            b.evicted_unsent,
        );
        page.single(
            "slmd_buffer_lost_total",
            "counter",
            "Records that never reached the disk (memory queue overflow), since the buffer was created.",
            b.lost,
        );
        page.single(
            "slmd_buffer_queued_in_memory",
            "gauge",
            "Records waiting in memory because the disk refused them (as of the last commit attempt).",
            b.queued_in_memory,
        );
        page.single(
            "slmd_buffer_commits_total",
            "counter",
            "Write transactions the buffer committed since start (each writes at least two pages to the disk).",
            b.commits.total,
        );
        page.single(
            "slmd_buffer_commits_last_minute",
            "gauge",
            "Write transactions the buffer committed in the last 60 s (commits per minute).",
            b.commits.last_minute,
        );
        if let Some(bytes) = b.disk_write_bytes {
            page.single(
                "slmd_buffer_disk_write_bytes_total",
                "counter",
                "Bytes slmd caused to be written to storage since start (/proc/self/io write_bytes; the buffer, its write-ahead log and the anchor are the only files it writes).",
                bytes,
            );
        }
        page.single(
            "slmd_buffer_skipped_numbers_total",
            "counter",
            "Seq numbers declared skipped (handed out or reserved, never stored: unclean stops), since the buffer was created.",
            b.skipped,
        );
        page.single(
            "slmd_buffer_epoch",
            "gauge",
            "The numbering epoch of new records (0 unless numbering restarted without its anchor).",
            b.epoch,
        );
        page.single(
            "slmd_buffer_salvage_running",
            "gauge",
            "1 while a damaged buffer's rows are salvaged (the fleet push waits meanwhile).",
            u8::from(b.salvage.as_ref().is_some_and(|s| s.running)),
        );
        if let Some(salvage) = &b.salvage {
            page.single(
                "slmd_buffer_salvage_rows_saved",
                "gauge",
                "Rows the last salvage copied from a damaged buffer.",
                salvage.rows_saved,
            );
            page.single(
                "slmd_buffer_salvage_rows_doubtful",
                "gauge",
                "Rows the last salvage found doubtful and kept in quarantine.",
                salvage.rows_doubtful,
            );
        }
    }
    page.single(
        "slmd_hub_lost_to_full_sinks_total",
        "counter",
        "Records a durable consumer (the buffer writer) could not take because its queue was full.",
        inner.hub.lost_to_full_sinks(),
    );

    let fleet = lock_fleet(&inner.fleet).clone();
    page.single(
        "slmd_fleet_enabled",
        "gauge",
        "1 when pushing to the fleet is configured.",
        u8::from(fleet.enabled),
    );
    page.family(
        "slmd_fleet_state",
        "gauge",
        "1 for the uplink's current state, 0 for the others.",
    );
    for s in FLEET_STATES {
        page.sample(
            "slmd_fleet_state",
            &[("state", s.as_str())],
            u8::from(fleet.state == s),
        );
    }
    page.single(
        "slmd_fleet_backlog",
        "gauge",
        "Records waiting to be pushed.",
        fleet.backlog,
    );
    page.single(
        "slmd_fleet_accepted_total",
        "counter",
        "Records the fleet accepted as new since start.",
        fleet.accepted,
    );
    page.single(
        "slmd_fleet_duplicates_total",
        "counter",
        "Records the fleet already had (re-sends) since start.",
        fleet.duplicates,
    );
    page.single(
        "slmd_fleet_quarantined_total",
        "counter",
        "Records the fleet rejected as malformed, kept in quarantine, since the buffer was created.",
        fleet.quarantined,
    );
    page.single(
        "slmd_fleet_heartbeats_total",
        "counter",
        "Heartbeats the fleet accepted since start.",
        fleet.heartbeat.sent,
    );
    page.single(
        "slmd_fleet_heartbeat_failures_total",
        "counter",
        "Heartbeat tries that failed since start.",
        fleet.heartbeat.failures,
    );
    if let Some(t) = &fleet.heartbeat.last_at {
        page.single(
            "slmd_fleet_last_heartbeat_timestamp_seconds",
            "gauge",
            "When the fleet last accepted a heartbeat, Unix seconds.",
            unix_seconds(t),
        );
    }
    if let Some(t) = &fleet.last_push_at {
        page.single(
            "slmd_fleet_last_push_timestamp_seconds",
            "gauge",
            "When the fleet last accepted a batch, Unix seconds.",
            unix_seconds(t),
        );
    }
    page.single(
        "slmd_fleet_token_slot",
        "gauge",
        "Token slot in use: 1 the preferred token, 2 the other, 0 none.",
        fleet.token_slot.unwrap_or(0),
    );

    limits(&mut page, &state);

    let stats = &inner.stats;
    page.single(
        "slmd_stream_subscribers",
        "gauge",
        "Open /v1/stream connections.",
        stats.open(),
    );
    page.single(
        "slmd_stream_opened_total",
        "counter",
        "/v1/stream connections opened since start.",
        stats.opened_total(),
    );
    page.single(
        "slmd_stream_lagged_records_total",
        "counter",
        "Records skipped for streams whose client fell behind (sum of the missed counts sent).",
        stats.lagged_records(),
    );
    page.single(
        "slmd_stream_stuck_disconnects_total",
        "counter",
        "Streams cut because their client stopped reading.",
        stats.stuck_disconnects(),
    );
    page.single(
        "slmd_live_subscribers",
        "gauge",
        "Live subscribers of the hub: API streams, MQTT, terminal printers.",
        inner.hub.live_subscribers(),
    );
    let connections = state.connections();
    page.single(
        "slmd_api_connections",
        "gauge",
        "Open API connections.",
        connections.open,
    );
    page.single(
        "slmd_api_connections_max",
        "gauge",
        "The API's connection cap.",
        connections.max,
    );
    page.single(
        "slmd_api_connections_refused_total",
        "counter",
        "Connections answered 503 because every slot was busy.",
        connections.refused_total,
    );
    page.single(
        "slmd_api_connections_evicted_total",
        "counter",
        "Idle connections closed to admit a new one at the cap.",
        connections.evicted_total,
    );
    page.single(
        "slmd_api_connections_timed_out_total",
        "counter",
        "Connections closed for a slow or oversized request head, or idleness.",
        connections.timed_out_total,
    );

    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], page.finish()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), r"x\ny");
        let mut page = Page::default();
        page.family("m", "gauge", "Help with \\ and\nnewline.");
        page.sample("m", &[("device", "n\"1"), ("kind", "k")], 2);
        page.sample("n", &[], 1.5);
        assert_eq!(
            page.finish(),
            "# HELP m Help with \\\\ and\\nnewline.\n# TYPE m gauge\nm{device=\"n\\\"1\",kind=\"k\"} 2\nn 1.5\n"
        );
    }
}
