//! Alert rules (SPEC §11): pure state machines, one per rule and device,
//! fed with values and the time, raising `onset`, `peak` and `clear`.
//!
//! # Semantics
//!
//! A rule watches one metric: a reading's (`"lp"`) or an interval level's
//! (`"leq_15m"`), on the devices it lists (every device when it lists
//! none). For each (rule, device) pair:
//!
//! - **condition**: `value > above` (strictly), while inside the schedule.
//! - **hold** (`for`): the condition becomes an onset once it has held
//!   `hold`: at a value with `at − first value above ≥ hold` (hold 0: the
//!   first value above). A value at or below `above` before that resets
//!   the pending state, so a level flapping around the threshold raises
//!   nothing.
//! - **active episode**: tracks its peak (highest value and when). A
//!   `peak` event is raised on a value of the episode when the highest
//!   value so far exceeds the last *reported* peak (the onset value at
//!   first) and at least `peak_every` has passed since the onset or the
//!   last peak event; it carries the episode's highest value and the time
//!   it was seen, so a peak held back by the rate limit is reported by the
//!   next value of the episode even if that one is lower.
//! - **clear**: on a value `< clear_below` (hysteresis: values between
//!   `clear_below` and `above` keep the episode active); `clear_below` above
//!   `above` is taken as `above`.
//! - **cooldown**: after a clear, no new onset for the same rule and device
//!   before `clear at + cooldown`: values before then are ignored (no
//!   pending state), and a condition still holding afterwards must hold
//!   `hold` again, counted from the first value above after the cooldown.
//! - **schedule**: values whose time is outside the schedule are ignored
//!   and reset a pending state. When the schedule window an episode began
//!   in ends, the episode is cleared *at the window's end* with its last
//!   value, by [`Rules::tick`] or by the next value (whichever comes
//!   first); a pending state is dropped likewise. A value whose schedule
//!   time lies in a window already closed this way is ignored.
//! - **non-finite values** (NaN, ±∞) are ignored.
//! - **silence**: states do not time out on their own. A device that stops
//!   sending keeps its episode active until a value clears it or its
//!   schedule window ends (the caller reports the device as offline), and
//!   a pending run resumes with the next value above (`hold` counts
//!   gateway time, not values).
//! - **clock**: times are the caller's (gateway time); a value earlier
//!   than the previous one (clock stepped back) cannot complete `hold` or a
//!   peak interval before the clock has caught up.
//!
//! Every event carries the episode id ([`episode_id`]), rule, device,
//! metric, threshold (`above`), a value and a time: onset — the value that
//! completed `hold`, at its time; peak — the episode's highest value, at
//! the time it was seen; clear — the value that cleared, at its time, or
//! the last value at the schedule window's end. Events come back in the
//! order they happened; within one call, in rule order.
//!
//! # Interval levels and schedules
//!
//! An interval level is known only when its window closes. [`Rules::on_value`]
//! takes one time for everything; [`Rules::on_interval`] takes the window:
//! events are at its end, but the schedule is checked at its start, so with
//! a schedule 07:00–19:00 the 15 min levels of 07:00 ..= 18:45 count and the
//! one of 06:45 does not. Since the last of those arrives after 19:00, a
//! rule on an interval metric (`<metric>_<length>`) waits one length after
//! the schedule window's end before [`Rules::tick`] clears its episode (the
//! clear is still at 19:00); with `on_value` and the interval's end the
//! level of 18:45 would be outside the schedule.
//!
//! # Restart
//!
//! [`Rules::active`] is what to persist (after every event);
//! [`Rules::restore`] takes it back: an episode of a rule and device still
//! configured (same rule id, same metric, device still covered) continues
//! with no second onset, and its clear comes when a value drops (or its
//! schedule window has ended meanwhile: cleared at that end at once). An
//! episode of a rule removed, or whose metric or devices changed, is
//! cleared at once (at `now`, with its last value): `restore` returns those
//! clear events for the caller to deliver like any other. Pending states
//! and cooldowns are not persisted: a restart forgets them.
//!
//! # Memory
//!
//! One small state (about 200 bytes, plus the active episode's strings) per
//! (rule, device) pair that has seen a value: bounded by rules × devices.
//! Nothing grows with time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use jiff::Timestamp;
use jiff::tz::{AmbiguousOffset, TimeZone};
use serde::{Deserialize, Serialize};

use super::interval::split_metric;

/// Minutes in a day.
const DAY_MINUTES: u32 = 24 * 60;

/// When a rule applies: days of the week and a local time window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Monday first.
    pub days: [bool; 7],
    /// Start, minutes after local midnight (0..=1440).
    pub from: u32,
    /// End, exclusive, minutes after local midnight (0..=1440). `to <= from`
    /// crosses midnight (fri 22:00 → sat 06:00 belongs to friday);
    /// `from == to` is the whole day.
    pub to: u32,
}

impl Schedule {
    /// Whether `at` is inside: the local weekday of the day the window
    /// starts is listed and the local time is in `[from, to)`.
    pub fn contains(&self, at: DateTime<Utc>, tz: &TimeZone) -> bool {
        let Some(ts) = to_jiff(at) else {
            return false;
        };
        let local = tz.to_datetime(ts);
        let minute =
            u32::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).unwrap_or(0);
        let day = usize::try_from(local.weekday().to_monday_zero_offset()).unwrap_or(0) % 7;
        let previous = (day + 6) % 7;
        let (from, to) = (self.from.min(DAY_MINUTES), self.to.min(DAY_MINUTES));
        if from == to {
            self.days[day]
        } else if from < to {
            self.days[day] && from <= minute && minute < to
        } else {
            (self.days[day] && minute >= from) || (self.days[previous] && minute < to)
        }
    }

    /// The first instant after `at` that is outside; `None` when there is
    /// none (every day, all day).
    ///
    /// Being inside changes only at local midnight, `from` and `to`, so the
    /// answer is one of those over the next eight days; a time the clock
    /// skips (spring forward) is taken as the instant after the gap.
    pub fn end_after(&self, at: DateTime<Utc>, tz: &TimeZone) -> Option<DateTime<Utc>> {
        let mut date = tz.to_datetime(to_jiff(at)?).date();
        let mut minutes = [0, self.from % DAY_MINUTES, self.to % DAY_MINUTES];
        minutes.sort_unstable();
        for _ in 0..9 {
            for minute in minutes {
                let time = jiff::civil::Time::new(
                    i8::try_from(minute / 60).ok()?,
                    i8::try_from(minute % 60).ok()?,
                    0,
                    0,
                )
                .ok()?;
                let civil = jiff::civil::DateTime::from_parts(date, time);
                let Some(instant) = resolve(tz, civil) else {
                    continue;
                };
                if instant > at && !self.contains(instant, tz) {
                    return Some(instant);
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// The instant of local `civil` time: the first when it happens twice, the
/// end of the gap when it does not happen.
fn resolve(tz: &TimeZone, civil: jiff::civil::DateTime) -> Option<DateTime<Utc>> {
    let ts = match tz.to_ambiguous_timestamp(civil).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(civil).ok()?,
        AmbiguousOffset::Fold { before, .. } => before.to_timestamp(civil).ok()?,
        AmbiguousOffset::Gap { after, .. } => {
            let inside_gap = after.to_timestamp(civil).ok()?;
            tz.following(inside_gap).next()?.timestamp()
        }
    };
    DateTime::from_timestamp_millis(ts.as_millisecond())
}

/// A chrono instant as jiff's, to the millisecond.
fn to_jiff(at: DateTime<Utc>) -> Option<Timestamp> {
    Timestamp::from_millisecond(at.timestamp_millis()).ok()
}

/// One `[[alert]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule's id, in every event and episode id.
    pub id: Arc<str>,
    /// The devices it watches; `None`: every device.
    pub devices: Option<Vec<Arc<str>>>,
    /// A reading's metric (`"lp"`) or an interval level (`"leq_15m"`).
    pub metric: Arc<str>,
    /// The threshold: the condition is `value > above`.
    pub above: f64,
    /// How long the condition must hold before the onset (`for`).
    pub hold: Duration,
    /// An episode clears on a value below this (≤ `above`).
    pub clear_below: f64,
    /// When the rule applies; `None`: always.
    pub schedule: Option<Schedule>,
    /// After a clear, no onset for this long.
    pub cooldown: Duration,
    /// The least time between two peak events of an episode.
    pub peak_every: Duration,
    /// Where its events go (used by the caller).
    pub channels: Vec<Arc<str>>,
}

impl Rule {
    /// Whether the rule watches `device`.
    fn watches(&self, device: &str) -> bool {
        self.devices
            .as_ref()
            .is_none_or(|list| list.iter().any(|d| &**d == device))
    }

    /// The level an episode clears below.
    fn clear_level(&self) -> f64 {
        self.clear_below.min(self.above)
    }
}

/// What happened to an episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The condition held `hold`: the episode begins.
    Onset,
    /// A new highest value.
    Peak,
    /// The episode ended.
    Clear,
}

impl EventKind {
    /// `"onset"`, `"peak"` or `"clear"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Onset => "onset",
            EventKind::Peak => "peak",
            EventKind::Clear => "clear",
        }
    }
}

/// One event, as delivered (SPEC §11 names the webhook's fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    pub kind: EventKind,
    /// The rule's id.
    pub rule: Arc<str>,
    pub device: Arc<str>,
    pub metric: Arc<str>,
    /// Onset: the value that completed `hold`; peak: the episode's highest
    /// value; clear: the value that cleared, or the last value when the
    /// schedule window ended.
    pub value: f64,
    /// The rule's `above` at the onset.
    pub threshold: f64,
    /// When it happened (see `value`).
    #[serde(with = "millis")]
    pub at: DateTime<Utc>,
    /// The episode's id ([`episode_id`]).
    pub episode: Arc<str>,
}

/// An episode between its onset and its clear: persisted as JSON after
/// every event and restored after a restart ([`Rules::restore`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveEpisode {
    pub rule: Arc<str>,
    pub device: Arc<str>,
    /// [`episode_id`] of rule, device and onset.
    pub episode: Arc<str>,
    pub metric: Arc<str>,
    /// The rule's `above` at the onset.
    pub threshold: f64,
    #[serde(with = "millis")]
    pub onset_at: DateTime<Utc>,
    pub onset_value: f64,
    /// The highest value so far, and when.
    pub peak: f64,
    #[serde(with = "millis")]
    pub peak_at: DateTime<Utc>,
    /// The highest value an event has carried (onset or peak).
    pub reported_peak: f64,
    /// The onset's or the last peak event's time, for `peak_every`.
    #[serde(with = "millis")]
    pub last_peak_event_at: DateTime<Utc>,
    /// The latest value and its time (a schedule end clears with it).
    pub last_value: f64,
    #[serde(with = "millis")]
    pub last_at: DateTime<Utc>,
}

/// `"20261202T101500123-day-limit-nl43-north"`: the onset in UTC to the
/// millisecond first, so ids sort by onset; then rule and device.
pub fn episode_id(rule: &str, device: &str, onset_at: DateTime<Utc>) -> String {
    format!("{}-{rule}-{device}", onset_at.format("%Y%m%dT%H%M%S%3f"))
}

/// Every rule's state, per device.
#[derive(Debug)]
pub struct Rules {
    /// As configured; a pair's key holds the index.
    rules: Vec<Rule>,
    /// Per rule: how long after a schedule window's end values of that
    /// window may still come (an interval metric's length, else 0).
    grace: Vec<TimeDelta>,
    /// The distinct metrics the rules watch, sorted.
    metrics: Vec<Arc<str>>,
    /// Schedules are in this zone.
    tz: TimeZone,
    /// (rule index, device) → state, for pairs that have seen a value;
    /// ordered so that `active` and `tick` are deterministic.
    pairs: BTreeMap<(usize, Arc<str>), Pair>,
}

/// One rule on one device.
#[derive(Debug, Default)]
struct Pair {
    /// The time of the first value of an unbroken run above `above`.
    pending_since: Option<DateTime<Utc>>,
    /// The episode, between onset and clear.
    active: Option<ActiveEpisode>,
    /// No onset before this (clear + cooldown).
    cooldown_until: Option<DateTime<Utc>>,
    /// The end of the schedule window the pending or active state began
    /// in; `None` without a schedule (or nothing pending or active).
    window_end: Option<DateTime<Utc>>,
    /// Values whose schedule time is before this belong to a window that
    /// was already closed: ignored.
    closed_until: Option<DateTime<Utc>>,
}

impl Rules {
    /// The rules, with schedules in `tz`.
    pub fn new(rules: Vec<Rule>, tz: TimeZone) -> Self {
        let grace = rules
            .iter()
            .map(|r| {
                split_metric(&r.metric)
                    .and_then(|(_, length)| TimeDelta::from_std(length).ok())
                    .unwrap_or(TimeDelta::zero())
            })
            .collect();
        let mut metrics: Vec<Arc<str>> = rules.iter().map(|r| r.metric.clone()).collect();
        metrics.sort_unstable();
        metrics.dedup();
        Self {
            rules,
            grace,
            metrics,
            tz,
            pairs: BTreeMap::new(),
        }
    }

    /// The rule `id`.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| &*r.id == id)
    }

    /// The distinct metrics the rules watch, so the caller knows what to
    /// feed.
    pub fn metrics_used(&self) -> impl Iterator<Item = &str> + '_ {
        self.metrics.iter().map(|m| &**m)
    }

    /// The active episodes, by rule then device: to persist after every
    /// event, and for `GET /v1/alerts`.
    pub fn active(&self) -> Vec<ActiveEpisode> {
        self.pairs
            .values()
            .filter_map(|pair| pair.active.clone())
            .collect()
    }

    /// Takes back the episodes active when the daemon stopped (see the
    /// module doc); returns the clears of those that no longer apply, and
    /// of those whose schedule window ended meanwhile.
    pub fn restore(&mut self, active: Vec<ActiveEpisode>, now: DateTime<Utc>) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        for episode in active {
            let index = self.rules.iter().position(|r| {
                r.id == episode.rule && r.metric == episode.metric && r.watches(&episode.device)
            });
            let Some(index) = index else {
                out.push(clear(&episode, episode.last_value, now));
                continue;
            };
            let rule = &self.rules[index];
            let window_end = rule.schedule.as_ref().and_then(|s| {
                if s.contains(episode.last_at, &self.tz) {
                    s.end_after(episode.last_at, &self.tz)
                } else {
                    // The last value came at or after the window's end
                    // (an interval level, at its end).
                    Some(episode.last_at)
                }
            });
            let pair = self
                .pairs
                .entry((index, episode.device.clone()))
                .or_default();
            if pair.active.is_some() {
                // The same pair twice: the first one stands.
                out.push(clear(&episode, episode.last_value, now));
                continue;
            }
            pair.pending_since = None;
            pair.window_end = window_end;
            pair.active = Some(episode);
        }
        out.extend(self.tick(now));
        out
    }

    /// A value of `metric` on `device` at `at` (a reading's metric; for an
    /// interval level prefer [`on_interval`](Self::on_interval)).
    pub fn on_value(
        &mut self,
        device: &Arc<str>,
        metric: &str,
        value: f64,
        at: DateTime<Utc>,
    ) -> Vec<AlertEvent> {
        self.evaluate(device, metric, value, at, at)
    }

    /// An interval level (`metric` like `"leq_15m"`) of the window
    /// `[start, end)`: events at `end`, the schedule checked at `start`.
    pub fn on_interval(
        &mut self,
        device: &Arc<str>,
        metric: &str,
        value: f64,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Vec<AlertEvent> {
        self.evaluate(device, metric, value, end, start)
    }

    /// Time passing with no value: a schedule window that has ended (for
    /// an interval metric, one length ago) clears its active episodes at
    /// its end, with their last value, and drops pending states.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        for ((index, _), pair) in &mut self.pairs {
            let rule = &self.rules[*index];
            let grace = self.grace[*index];
            if pair
                .window_end
                .is_some_and(|end| end.checked_add_signed(grace).unwrap_or(end) <= now)
            {
                expire(rule, pair, &mut out);
            }
        }
        out
    }

    /// The state machines for one value: `at` is when it happened,
    /// `schedule_at` the instant its schedule membership is judged at.
    fn evaluate(
        &mut self,
        device: &Arc<str>,
        metric: &str,
        value: f64,
        at: DateTime<Utc>,
        schedule_at: DateTime<Utc>,
    ) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        if !value.is_finite() {
            return out;
        }
        for (index, rule) in self.rules.iter().enumerate() {
            if &*rule.metric != metric || !rule.watches(device) {
                continue;
            }
            let pair = self.pairs.entry((index, device.clone())).or_default();
            if pair.window_end.is_some_and(|end| end <= schedule_at) {
                expire(rule, pair, &mut out);
            }
            if pair.closed_until.is_some_and(|closed| schedule_at < closed) {
                continue;
            }
            let inside = rule
                .schedule
                .as_ref()
                .is_none_or(|s| s.contains(schedule_at, &self.tz));
            if !inside {
                // Only a clock stepped back gets here with an episode
                // active: it is left for its window's end.
                pair.pending_since = None;
                if pair.active.is_none() {
                    pair.window_end = None;
                }
                continue;
            }
            if let Some(episode) = pair.active.as_mut() {
                episode.last_value = value;
                episode.last_at = at;
                if value < rule.clear_level() {
                    out.push(clear(episode, value, at));
                    pair.active = None;
                    pair.window_end = None;
                    pair.cooldown_until = Some(after(at, rule.cooldown));
                    continue;
                }
                if value > episode.peak {
                    episode.peak = value;
                    episode.peak_at = at;
                }
                if episode.peak > episode.reported_peak
                    && at - episode.last_peak_event_at >= delta(rule.peak_every)
                {
                    out.push(AlertEvent {
                        kind: EventKind::Peak,
                        rule: episode.rule.clone(),
                        device: episode.device.clone(),
                        metric: episode.metric.clone(),
                        value: episode.peak,
                        threshold: episode.threshold,
                        at: episode.peak_at,
                        episode: episode.episode.clone(),
                    });
                    episode.reported_peak = episode.peak;
                    episode.last_peak_event_at = at;
                }
                continue;
            }
            if pair.cooldown_until.is_some_and(|until| at < until) {
                pair.pending_since = None;
                continue;
            }
            if value <= rule.above {
                pair.pending_since = None;
                pair.window_end = None;
                continue;
            }
            let since = *pair.pending_since.get_or_insert(at);
            if pair.window_end.is_none() {
                pair.window_end = rule
                    .schedule
                    .as_ref()
                    .and_then(|s| s.end_after(schedule_at, &self.tz));
            }
            if at - since < delta(rule.hold) {
                continue;
            }
            pair.pending_since = None;
            let episode: Arc<str> = Arc::from(episode_id(&rule.id, device, at));
            out.push(AlertEvent {
                kind: EventKind::Onset,
                rule: rule.id.clone(),
                device: device.clone(),
                metric: rule.metric.clone(),
                value,
                threshold: rule.above,
                at,
                episode: episode.clone(),
            });
            pair.active = Some(ActiveEpisode {
                rule: rule.id.clone(),
                device: device.clone(),
                episode,
                metric: rule.metric.clone(),
                threshold: rule.above,
                onset_at: at,
                onset_value: value,
                peak: value,
                peak_at: at,
                reported_peak: value,
                last_peak_event_at: at,
                last_value: value,
                last_at: at,
            });
        }
        out
    }
}

/// Ends the pair's schedule window: clears its episode at the window's end
/// with the last value, drops a pending state.
fn expire(rule: &Rule, pair: &mut Pair, out: &mut Vec<AlertEvent>) {
    let Some(end) = pair.window_end.take() else {
        return;
    };
    pair.pending_since = None;
    if let Some(episode) = pair.active.take() {
        out.push(clear(&episode, episode.last_value, end));
        pair.cooldown_until = Some(after(end, rule.cooldown));
    }
    pair.closed_until = Some(pair.closed_until.map_or(end, |c| c.max(end)));
}

/// The clear event of `episode`.
fn clear(episode: &ActiveEpisode, value: f64, at: DateTime<Utc>) -> AlertEvent {
    AlertEvent {
        kind: EventKind::Clear,
        rule: episode.rule.clone(),
        device: episode.device.clone(),
        metric: episode.metric.clone(),
        value,
        threshold: episode.threshold,
        at,
        episode: episode.episode.clone(),
    }
}

/// A configured duration as chrono's (saturating: "never" for absurd ones).
fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// `at + d`, saturating at chrono's end of time.
fn after(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    at.checked_add_signed(delta(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// RFC 3339 UTC with milliseconds, both ways (chrono has no serde here).
mod millis {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::record::format_millis(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("invalid time {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid time")
    }

    fn secs(s: i64) -> TimeDelta {
        TimeDelta::seconds(s)
    }

    fn rule(id: &str, metric: &str, above: f64) -> Rule {
        Rule {
            id: Arc::from(id),
            devices: None,
            metric: Arc::from(metric),
            above,
            hold: Duration::ZERO,
            clear_below: above,
            schedule: None,
            cooldown: Duration::ZERO,
            peak_every: Duration::ZERO,
            channels: vec![Arc::from("site-office")],
        }
    }

    fn north() -> Arc<str> {
        Arc::from("nl43-north")
    }

    /// Feeds `(second offset, value)` of `lp` on nl43-north.
    fn feed(
        rules: &mut Rules,
        t0: DateTime<Utc>,
        values: impl IntoIterator<Item = (i64, f64)>,
    ) -> Vec<AlertEvent> {
        let device = north();
        let mut out = Vec::new();
        for (s, value) in values {
            out.extend(rules.on_value(&device, "lp", value, t0 + secs(s)));
        }
        out
    }

    fn kinds(events: &[AlertEvent]) -> Vec<(EventKind, f64, DateTime<Utc>)> {
        events.iter().map(|e| (e.kind, e.value, e.at)).collect()
    }

    fn ten_am() -> DateTime<Utc> {
        utc(2026, 12, 2, 10, 0, 0)
    }

    #[test]
    fn hold_must_pass_before_the_onset() {
        let mut r = rule("loud", "lp", 65.0);
        r.hold = Duration::from_secs(30);
        let mut rules = Rules::new(vec![r], TimeZone::UTC);
        let t0 = ten_am();
        // Above from 0 s; 29 s is too early, 30 s completes the hold.
        let events = feed(&mut rules, t0, (0..=29).map(|s| (s, 70.0)));
        assert!(events.is_empty());
        let events = feed(&mut rules, t0, [(30, 71.0)]);
        assert_eq!(
            kinds(&events),
            vec![(EventKind::Onset, 71.0, t0 + secs(30))]
        );
        let onset = &events[0];
        assert_eq!(&*onset.episode, "20261202T100030000-loud-nl43-north");
        assert_eq!((onset.threshold, &*onset.metric), (65.0, "lp"));
        assert_eq!(rules.active().len(), 1);
        // A dip at or below the threshold resets a pending run.
        let mut r = rule("loud", "lp", 65.0);
        r.hold = Duration::from_secs(30);
        let mut rules = Rules::new(vec![r], TimeZone::UTC);
        let events = feed(
            &mut rules,
            t0,
            (0..=60).map(|s| (s, if s == 20 { 65.0 } else { 70.0 })),
        );
        assert_eq!(
            kinds(&events),
            vec![(EventKind::Onset, 70.0, t0 + secs(51))]
        );
        // Hold 0: the first value above.
        let mut rules = Rules::new(vec![rule("loud", "lp", 65.0)], TimeZone::UTC);
        let events = feed(&mut rules, t0, [(0, 65.0), (1, 65.1)]);
        assert_eq!(kinds(&events), vec![(EventKind::Onset, 65.1, t0 + secs(1))]);
    }

    #[test]
    fn hysteresis_gives_one_onset_and_one_clear() {
        let mut r = rule("loud", "lp", 65.0);
        r.clear_below = 63.0;
        let mut rules = Rules::new(vec![r], TimeZone::UTC);
        let t0 = ten_am();
        let series = [
            64.0, 65.5, 64.8, 65.2, 64.9, 63.0, 65.1, 63.5, 64.0, 62.9, 64.0, 64.9,
        ];
        let events = feed(
            &mut rules,
            t0,
            series.iter().enumerate().map(|(i, v)| (i as i64, *v)),
        );
        assert_eq!(
            kinds(&events),
            vec![
                (EventKind::Onset, 65.5, t0 + secs(1)),
                (EventKind::Clear, 62.9, t0 + secs(9)),
            ]
        );
        assert_eq!(events[0].episode, events[1].episode);
        assert!(rules.active().is_empty());
    }

    #[test]
    fn schedule_crossing_midnight() {
        // Fridays 22:00 → 06:00 (2026-12-04 is a Friday), UTC.
        let friday_night = Schedule {
            days: [false, false, false, false, true, false, false],
            from: 22 * 60,
            to: 6 * 60,
        };
        let tz = TimeZone::UTC;
        assert!(friday_night.contains(utc(2026, 12, 4, 22, 0, 0), &tz));
        assert!(friday_night.contains(utc(2026, 12, 5, 5, 59, 59), &tz));
        assert!(!friday_night.contains(utc(2026, 12, 5, 6, 0, 0), &tz));
        assert!(!friday_night.contains(utc(2026, 12, 4, 21, 59, 0), &tz));
        // Thursday 23:00 is not friday's night; friday 05:00 belongs to thursday.
        assert!(!friday_night.contains(utc(2026, 12, 3, 23, 0, 0), &tz));
        assert!(!friday_night.contains(utc(2026, 12, 4, 5, 0, 0), &tz));
        assert_eq!(
            friday_night.end_after(utc(2026, 12, 4, 23, 0, 0), &tz),
            Some(utc(2026, 12, 5, 6, 0, 0))
        );
        // from == to: the whole listed day.
        let saturdays = Schedule {
            days: [false, false, false, false, false, true, false],
            from: 0,
            to: 0,
        };
        assert!(saturdays.contains(utc(2026, 12, 5, 23, 59, 0), &tz));
        assert!(!saturdays.contains(utc(2026, 12, 6, 0, 0, 0), &tz));
        assert_eq!(
            saturdays.end_after(utc(2026, 12, 5, 12, 0, 0), &tz),
            Some(utc(2026, 12, 6, 0, 0, 0))
        );
        let always = Schedule {
            days: [true; 7],
            from: 0,
            to: 24 * 60,
        };
        assert_eq!(always.end_after(utc(2026, 12, 5, 12, 0, 0), &tz), None);
    }

    #[test]
    fn schedule_in_local_time() {
        // Weekdays 07:00–19:00 in Zurich (CET, UTC+1 in December).
        let tz = TimeZone::get("Europe/Zurich").expect("zone");
        let day = Schedule {
            days: [true, true, true, true, true, false, false],
            from: 7 * 60,
            to: 19 * 60,
        };
        assert!(!day.contains(utc(2026, 12, 2, 5, 59, 0), &tz));
        assert!(day.contains(utc(2026, 12, 2, 6, 0, 0), &tz));
        assert!(!day.contains(utc(2026, 12, 2, 18, 0, 0), &tz));
        assert_eq!(
            day.end_after(utc(2026, 12, 2, 10, 0, 0), &tz),
            Some(utc(2026, 12, 2, 18, 0, 0))
        );
        // An end inside the spring-forward gap (02:30 on 2026-03-29, a
        // Sunday) is the end of the gap: 03:00 CEST, 01:00 UTC.
        let sunday_night = Schedule {
            days: [false, false, false, false, false, false, true],
            from: 60,
            to: 150,
        };
        assert_eq!(
            sunday_night.end_after(utc(2026, 3, 29, 0, 10, 0), &tz),
            Some(utc(2026, 3, 29, 1, 0, 0))
        );
    }

    #[test]
    fn an_episode_ends_with_its_schedule_window() {
        // 07:00–19:00 every day, UTC. Loud from 18:59:58 on.
        let mut r = rule("day", "lp", 65.0);
        r.schedule = Some(Schedule {
            days: [true; 7],
            from: 7 * 60,
            to: 19 * 60,
        });
        let mut rules = Rules::new(vec![r], TimeZone::UTC);
        let t0 = utc(2026, 12, 2, 18, 59, 58);
        let events = feed(&mut rules, t0, [(0, 70.0), (1, 72.0)]);
        assert_eq!(
            kinds(&events),
            vec![
                (EventKind::Onset, 70.0, t0),
                (EventKind::Peak, 72.0, t0 + secs(1))
            ]
        );
        // Values outside the window are ignored; tick clears at 19:00 with
        // the last value.
        assert!(rules.tick(utc(2026, 12, 2, 18, 59, 59)).is_empty());
        let events = rules.tick(utc(2026, 12, 2, 19, 0, 0));
        assert_eq!(
            kinds(&events),
            vec![(EventKind::Clear, 72.0, utc(2026, 12, 2, 19, 0, 0))]
        );
        assert!(feed(&mut rules, t0, [(10, 80.0)]).is_empty());
        // Without a tick, the next value clears it first (at 19:00), then
        // counts for the next day's window.
        let mut r = rule("day", "lp", 65.0);
        r.schedule = Some(Schedule {
            days: [true; 7],
            from: 7 * 60,
            to: 19 * 60,
        });
        let mut rules = Rules::new(vec![r], TimeZone::UTC);
        feed(&mut rules, t0, [(0, 70.0)]);
        let next_morning = utc(2026, 12, 3, 7, 0, 0);
        let events = rules.on_value(&north(), "lp", 71.0, next_morning);
        assert_eq!(
            kinds(&events),
            vec![
                (EventKind::Clear, 70.0, utc(2026, 12, 2, 19, 0, 0)),
                (EventKind::Onset, 71.0, next_morning),
            ]
        );
    }

    #[test]
    fn cooldown_holds_back_a_new_onset() {
        let mut r = rule("loud", "lp", 65.0);
        r.cooldown = Duration::from_secs(600);
        r.hold = Duration::from_secs(10);
        let mut rules = Rules::new(vec![r], TimeZone::UTC);
        let t0 = ten_am();
        let mut events = feed(&mut rules, t0, [(0, 70.0), (10, 70.0), (20, 60.0)]);
        // Cleared at 20 s: loud again at once, but no onset before 620 s;
        // from then it must hold 10 s: onset at 630 s.
        events.extend(feed(&mut rules, t0, (21..=640).map(|s| (s, 70.0))));
        assert_eq!(
            kinds(&events),
            vec![
                (EventKind::Onset, 70.0, t0 + secs(10)),
                (EventKind::Clear, 60.0, t0 + secs(20)),
                (EventKind::Onset, 70.0, t0 + secs(630)),
            ]
        );
        assert_ne!(events[0].episode, events[2].episode);
    }

    #[test]
    fn peaks_are_rate_limited() {
        let mut r = rule("loud", "lp", 65.0);
        r.peak_every = Duration::from_secs(60);
        let mut rules = Rules::new(vec![r], TimeZone::UTC);
        let t0 = ten_am();
        let events = feed(
            &mut rules,
            t0,
            [
                (0, 70.0),  // onset
                (10, 75.0), // higher, but too soon
                (30, 78.0), // higher, too soon
                (60, 72.0), // lower, but 78 at 30 s is due: peak
                (70, 80.0), // too soon after the peak event at 60 s
                (90, 79.0),
                (120, 76.0), // 80 at 70 s is due
                (180, 77.0), // nothing higher than reported
            ],
        );
        assert_eq!(
            kinds(&events),
            vec![
                (EventKind::Onset, 70.0, t0),
                (EventKind::Peak, 78.0, t0 + secs(30)),
                (EventKind::Peak, 80.0, t0 + secs(70)),
            ]
        );
        let active = rules.active();
        assert_eq!((active[0].peak, active[0].reported_peak), (80.0, 80.0));
        assert_eq!(active[0].last_value, 77.0);
    }

    #[test]
    fn restore_continues_without_a_second_onset() {
        let mut r = rule("loud", "lp", 65.0);
        r.clear_below = 63.0;
        let rules_config = vec![r, rule("gone-metric", "lp", 80.0)];
        let mut rules = Rules::new(rules_config.clone(), TimeZone::UTC);
        let t0 = ten_am();
        feed(&mut rules, t0, [(0, 70.0), (5, 72.0)]);
        let persisted = serde_json::to_string(&rules.active()).expect("json");
        assert!(
            persisted.contains(r#""onset_at":"2026-12-02T10:00:00.000Z""#),
            "{persisted}"
        );
        let mut restored: Vec<ActiveEpisode> = serde_json::from_str(&persisted).expect("parse");
        assert_eq!(restored, rules.active());
        // An episode of a rule that is gone, and one of a device no longer
        // watched: cleared at once.
        let mut orphan = restored[0].clone();
        orphan.rule = Arc::from("removed");
        orphan.episode = Arc::from(episode_id("removed", "nl43-north", t0));
        restored.push(orphan);

        let mut rules = Rules::new(rules_config, TimeZone::UTC);
        let now = t0 + secs(60);
        let events = rules.restore(restored, now);
        assert_eq!(kinds(&events), vec![(EventKind::Clear, 72.0, now)]);
        assert_eq!(&*events[0].rule, "removed");
        assert_eq!(rules.active().len(), 1);
        // Still loud: no onset; then the clear of the original episode.
        let events = feed(&mut rules, t0, [(61, 71.0), (62, 64.0), (63, 62.0)]);
        assert_eq!(
            kinds(&events),
            vec![(EventKind::Clear, 62.0, t0 + secs(63))]
        );
        assert_eq!(&*events[0].episode, "20261202T100000000-loud-nl43-north");
    }

    #[test]
    fn restore_clears_an_episode_whose_schedule_ended_meanwhile() {
        let mut r = rule("day", "lp", 65.0);
        r.schedule = Some(Schedule {
            days: [true; 7],
            from: 7 * 60,
            to: 19 * 60,
        });
        let mut rules = Rules::new(vec![r.clone()], TimeZone::UTC);
        feed(&mut rules, utc(2026, 12, 2, 18, 0, 0), [(0, 70.0)]);
        let mut rules_after = Rules::new(vec![r], TimeZone::UTC);
        let events = rules_after.restore(rules.active(), utc(2026, 12, 2, 21, 0, 0));
        assert_eq!(
            kinds(&events),
            vec![(EventKind::Clear, 70.0, utc(2026, 12, 2, 19, 0, 0))]
        );
        assert!(rules_after.active().is_empty());
    }

    #[test]
    fn devices_filter() {
        let mut r = rule("north-only", "lp", 65.0);
        r.devices = Some(vec![north()]);
        let mut rules = Rules::new(vec![r, rule("everyone", "lp", 65.0)], TimeZone::UTC);
        let south: Arc<str> = Arc::from("nl43-south");
        let t0 = ten_am();
        let events = rules.on_value(&south, "lp", 70.0, t0);
        assert_eq!(events.len(), 1);
        assert_eq!(&*events[0].rule, "everyone");
        let events = rules.on_value(&north(), "lp", 70.0, t0);
        let ids: Vec<_> = events.iter().map(|e| &*e.rule).collect();
        assert_eq!(ids, vec!["north-only", "everyone"]);
        // Another metric is not watched.
        assert!(rules.on_value(&north(), "leq", 90.0, t0).is_empty());
        let used: Vec<_> = rules.metrics_used().collect();
        assert_eq!(used, vec!["lp"]);
        assert_eq!(rules.rule("everyone").map(|r| r.above), Some(65.0));
    }

    #[test]
    fn interval_level_rule_fires_at_the_end_of_the_first_breaking_interval() {
        let mut rules = Rules::new(vec![rule("day-limit", "leq_15m", 65.0)], TimeZone::UTC);
        let device = north();
        let start = ten_am();
        let quarter = secs(900);
        let mut events = Vec::new();
        for (i, leq) in [62.0, 64.9, 66.2, 67.0, 61.0].into_iter().enumerate() {
            let s = start + quarter * i as i32;
            events.extend(rules.on_interval(&device, "leq_15m", leq, s, s + quarter));
        }
        assert_eq!(
            kinds(&events),
            vec![
                (EventKind::Onset, 66.2, utc(2026, 12, 2, 10, 45, 0)),
                (EventKind::Peak, 67.0, utc(2026, 12, 2, 11, 0, 0)),
                (EventKind::Clear, 61.0, utc(2026, 12, 2, 11, 15, 0)),
            ]
        );
        // Fed through on_value at the interval's end: the same onset.
        let mut rules = Rules::new(vec![rule("day-limit", "leq_15m", 65.0)], TimeZone::UTC);
        let events = rules.on_value(&device, "leq_15m", 66.2, utc(2026, 12, 2, 10, 45, 0));
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn interval_rule_schedule_takes_the_window_start() {
        // 07:00–19:00: the 18:45 level counts (it arrives after 19:00), the
        // 06:45 one does not; the episode clears at 19:00.
        let mut r = rule("day-limit", "leq_15m", 65.0);
        r.schedule = Some(Schedule {
            days: [true; 7],
            from: 7 * 60,
            to: 19 * 60,
        });
        let mut rules = Rules::new(vec![r], TimeZone::UTC);
        let device = north();
        let quarter = secs(900);
        let s = utc(2026, 12, 2, 6, 45, 0);
        assert!(
            rules
                .on_interval(&device, "leq_15m", 70.0, s, s + quarter)
                .is_empty()
        );
        let s = utc(2026, 12, 2, 18, 30, 0);
        let events = rules.on_interval(&device, "leq_15m", 70.0, s, s + quarter);
        assert_eq!(kinds(&events), vec![(EventKind::Onset, 70.0, s + quarter)]);
        // 19:00:02: the 18:45 window closes; the tick before it clears
        // nothing (grace of one length).
        assert!(rules.tick(utc(2026, 12, 2, 19, 0, 1)).is_empty());
        let s = utc(2026, 12, 2, 18, 45, 0);
        let events = rules.on_interval(&device, "leq_15m", 72.0, s, s + quarter);
        assert_eq!(kinds(&events), vec![(EventKind::Peak, 72.0, s + quarter)]);
        let events = rules.tick(utc(2026, 12, 2, 19, 15, 0));
        assert_eq!(
            kinds(&events),
            vec![(EventKind::Clear, 72.0, utc(2026, 12, 2, 19, 0, 0))]
        );
        // A straggler of the closed window changes nothing.
        assert!(
            rules
                .on_interval(&device, "leq_15m", 90.0, s, s + quarter)
                .is_empty()
        );
        assert!(rules.active().is_empty());
    }

    #[test]
    fn clock_step_back_and_bad_values() {
        let mut r = rule("loud", "lp", 65.0);
        r.hold = Duration::from_secs(10);
        let mut rules = Rules::new(vec![r], TimeZone::UTC);
        let t0 = ten_am();
        // The clock steps back after the first value: no onset until 10 s
        // after the first value above in gateway time.
        let events = feed(
            &mut rules,
            t0,
            [
                (100, 70.0),
                (50, 70.0),
                (105, f64::NAN),
                (109, 70.0),
                (110, 70.0),
            ],
        );
        assert_eq!(
            kinds(&events),
            vec![(EventKind::Onset, 70.0, t0 + secs(110))]
        );
    }

    #[test]
    fn events_serialise_for_the_webhook() {
        let mut rules = Rules::new(vec![rule("loud", "lp", 65.0)], TimeZone::UTC);
        let events = feed(&mut rules, ten_am(), [(0, 70.0)]);
        let json = serde_json::to_value(&events[0]).expect("json");
        assert_eq!(json["kind"], "onset");
        assert_eq!(json["at"], "2026-12-02T10:00:00.000Z");
        assert_eq!(EventKind::Peak.as_str(), "peak");
        let back: AlertEvent = serde_json::from_value(json).expect("parse");
        assert_eq!(back, events[0]);
    }
}
