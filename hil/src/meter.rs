//! The meter itself: its state and how it answers one command line.
//!
//! No I/O and no faults here: [`Meter::handle`] takes a received line and
//! its arrival time and returns the [`Reply`]; the session layer
//! (`session.rs`) writes it and injects faults. The meter's state outlives
//! connections (measuring, echo, clock, the `DOD?` pacing clock, the stored
//! records); what belongs to one connection is in [`LinkState`].
//!
//! Rules kept here (facts from `protocols/nl43.md`):
//! - Pacing: a command arriving less than 200 ms after the end of the
//!   previous answer on the link, or a `DOD?` less than 1 s after the
//!   previous answered `DOD?` (arrival to arrival), gets `R+0004`; each with
//!   [`PACING_TOLERANCE`] for transport jitter. A busy `DOD?` does not move
//!   the 1 s window: a host retrying 1 s after its last answered poll is served.
//! - Result codes: unknown or `$`-prefixed command `R+0001`, bad parameter
//!   `R+0002`, designation `R+0003`, not possible now `R+0004` (stop while
//!   stopped, start while started, `Sleep Mode,On|Off` while measuring,
//!   pause while stopped, and `Clock,...` while measuring unless
//!   `clock_set_while_measuring`: a guess).
//! - The clock ([`Rtc`]) runs at `1 + clock_drift_ppm·1e-6` times real time
//!   from power-up (UTC + `clock_offset_secs`) and from each accepted
//!   `Clock,...`; a power cycle keeps it (it has a battery).
//! - Sleep: with sleep mode On the meter falls asleep `sleep_after` after
//!   the latest of power-up, a wake ("a key press") and sleep mode being
//!   turned on, whatever the traffic (commands are not key presses: a
//!   guess). `Sleep Mode,Off` before then cancels it. Falling asleep is
//!   lazy, like sampling: [`Meter::fall_asleep_if_due`] makes it happen
//!   for whoever looks first (the session before a command, the
//!   simulator's sleep task at the deadline), and the caller announces it.
//! - A power cycle stops the meter and forgets the measurement (no last
//!   result, dashes), the `DOD?` pacing and a sleep; settings (echo, sleep
//!   mode), the clock and the stored records are kept.
//! - Levels are sampled at 10 Hz in (tokio) time, lazily: the samples since
//!   the last command are generated when the next one arrives. Two `DOD?`
//!   answers in a row never show the same Lp.
//! - `DOD?` shows live Lp; integrated values come from the running
//!   measurement, or after `Measure,Stop` from the last one (the display
//!   holds them), dashes when there is none or it is younger than 1 s.
//!   Channels 1..3 are off (dashes).
//! - Stored records (the `replay` fault) are generated on demand from their
//!   own seeded walk, one second apart starting an hour before the
//!   simulator was created, and each is served once. While a link's replay
//!   lasts, `Clock?` answers the time of the record served last on it (before
//!   the first, the time of the record to come); the first live `DOD?`
//!   answer ends it.

use crate::config::SimConfig;
use crate::levels::{Integrator, LevelSource, SAMPLE_PERIOD, SAMPLES_PER_SECOND, not_integrated};
use firmware_bridge::Deci;
use firmware_bridge::nl43::dod::DodLine;
use firmware_bridge::nl43::{
    ChannelValues, Command, DodReading, Item, MeasureState, MeterClock, ResultCode,
};
use std::time::Duration;
use tokio::time::Instant;

/// Minimum quiet time after an answer before the next command.
pub const ANSWER_GAP: Duration = Duration::from_millis(200);
/// Minimum time between two `DOD?` polls.
pub const DOD_INTERVAL: Duration = Duration::from_secs(1);
/// `SD Card Percentage?` (and the `DRD?status` field): free space, a plain
/// integer percentage.
pub const SD_CARD_PERCENTAGE: u8 = 87;
/// Slack on both pacing rules for transport jitter.
pub const PACING_TOLERANCE: Duration = Duration::from_millis(25);
/// The longest gap between commands for which samples are generated one by
/// one; a longer idle meter resumes sampling from the last day.
const MAX_CATCH_UP: Duration = Duration::from_secs(24 * 3600);
/// Whether `Sleep Mode,On|Off` is refused (`R+0004`) while measuring; the
/// note's "sleep while measuring → R+0004" [device] is read as both.
const SLEEP_SETTING_REFUSED_WHILE_MEASURING: bool = true;
/// How old the first stored record is, relative to the simulator's start.
const REPLAY_AGE_SECS: i64 = 3600;
/// Seconds of measurement already integrated in the first stored record.
const REPLAY_WARMUP_SECS: u64 = 60;

/// What the meter answers to one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A result line alone (settings, errors, busy).
    Result(ResultCode),
    /// `R+0000` and one data line (without CR LF).
    Data(String),
    /// `R+0000` and a `DOD?` data line (without CR LF).
    Dod {
        /// The 64-field line.
        line: String,
        /// Whether it came from a stored record.
        replayed: bool,
    },
    /// `R+0000`, then continuous output until SUB.
    Drd {
        /// `DRD?status` rather than `DRD?`.
        status: bool,
    },
}

impl Reply {
    /// The result code the answer starts with.
    pub fn code(&self) -> ResultCode {
        match self {
            Reply::Result(code) => *code,
            Reply::Data(_) | Reply::Dod { .. } | Reply::Drd { .. } => ResultCode::Ok,
        }
    }
}

/// What the meter keeps about one link (one connection).
#[derive(Debug, Clone)]
pub struct LinkState {
    /// When the last answer on this link was completely written; the 200 ms
    /// rule counts from here.
    pub last_answer_end: Option<Instant>,
    /// Stored records still to be served on this link.
    replay_left: u32,
    /// The old time of the stored record served last on this link, while
    /// the replay lasts (until a live `DOD?` answer).
    replay_clock: Option<i64>,
}

impl LinkState {
    /// A fresh link: the first `replay` `DOD?` answers come from stored records.
    pub fn new(replay: u32) -> LinkState {
        LinkState {
            last_answer_end: None,
            replay_left: replay,
            replay_clock: None,
        }
    }
}

/// A measurement in progress.
#[derive(Debug, Clone)]
struct Run {
    /// What has been integrated since `Measure,Start`.
    integrator: Integrator,
    /// `Pause,On`: samples are not integrated until `Pause,Off`.
    paused: bool,
}

/// The meter's stored records (the `replay` fault).
#[derive(Debug, Clone)]
struct Store {
    /// The old measurement's levels (its own seed: replay never disturbs the
    /// live walk).
    source: LevelSource,
    /// The old measurement, integrated up to the next record.
    integrator: Integrator,
    /// Meter-local epoch seconds of the next record.
    next_time: i64,
}

impl Store {
    fn new(seed: u64, first_time: i64) -> Store {
        let mut source = LevelSource::new(seed ^ 0x7265_706c_6179_2121);
        let mut integrator = Integrator::default();
        for _ in 0..REPLAY_WARMUP_SECS * SAMPLES_PER_SECOND {
            integrator.add(source.next_sample());
        }
        Store {
            source,
            integrator,
            next_time: first_time,
        }
    }

    /// The next record: its time and values, one second after the last.
    fn next_record(&mut self, avoid_lp: Option<i16>) -> (i64, ChannelValues) {
        let mut lp = 0;
        for _ in 0..SAMPLES_PER_SECOND {
            let sample = self.source.next_sample();
            lp = sample.lp;
            self.integrator.add(sample);
        }
        if avoid_lp == Some(lp) {
            lp = self.source.nudge(lp);
        }
        let time = self.next_time;
        self.next_time += 1;
        (time, self.integrator.values(Deci::from_tenths(lp)))
    }
}

/// A recorded measurement, one record per second, from the same level model
/// as the live meter: for benchmarks and rigs that need many realistic
/// records at once (no link, no pacing). Each item is the record's
/// meter-local epoch second and its main-channel values.
#[derive(Debug, Clone)]
pub struct Recording {
    /// The walk and integration behind the records.
    store: Store,
}

impl Recording {
    /// A recording whose first record is at `first_time` (epoch seconds).
    pub fn new(seed: u64, first_time: i64) -> Recording {
        Recording {
            store: Store::new(seed, first_time),
        }
    }
}

impl Iterator for Recording {
    type Item = (i64, ChannelValues);

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.store.next_record(None))
    }
}

/// A meter's real-time clock: set to some meter-local time at some real
/// moment, it runs at `rate` times real time from then on. Times are Unix
/// seconds with a fraction; meter-local ones carry no zone (the meter
/// shows them as they are).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rtc {
    /// Real UTC when it was last set (power-up or `Clock,...`).
    set_at: f64,
    /// The meter-local time it was set to then.
    set_to: f64,
    /// Meter seconds per real second: `1 + ppm·1e-6`, never negative.
    rate: f64,
}

impl Rtc {
    /// The clock of a meter powered up now as `config` says.
    pub(crate) fn new(config: &SimConfig) -> Rtc {
        let now = utc_now();
        Rtc::starting(
            now,
            now + config.clock_offset_secs as f64,
            config.clock_drift_ppm,
        )
    }

    /// A clock showing `local` at real time `utc`, drifting by `ppm`.
    fn starting(utc: f64, local: f64, ppm: f64) -> Rtc {
        Rtc {
            set_at: utc,
            set_to: local,
            rate: (1.0 + ppm * 1e-6).max(0.0),
        }
    }

    /// What it shows at real time `utc`.
    fn local_at(&self, utc: f64) -> f64 {
        self.set_to + (utc - self.set_at) * self.rate
    }

    /// What it shows now, in whole seconds (as the meter displays it).
    pub(crate) fn now_secs(&self) -> i64 {
        // `as` saturates: a clock beyond i64 seconds cannot be shown anyway.
        self.local_at(utc_now()).floor() as i64
    }

    /// Sets it to `local` (whole seconds) now; the drift goes on from there.
    /// Returns the offsets before and after.
    pub(crate) fn set(&mut self, local: i64) -> (f64, f64) {
        self.set_at_utc(utc_now(), local)
    }

    fn set_at_utc(&mut self, utc: f64, local: i64) -> (f64, f64) {
        let before = self.local_at(utc) - utc;
        self.set_at = utc;
        self.set_to = local as f64;
        (before, self.set_to - utc)
    }
}

/// The simulated NL-43.
#[derive(Debug)]
pub struct Meter {
    /// The live levels.
    source: LevelSource,
    /// When the next 10 Hz sample is due.
    next_sample: Instant,
    /// The latest Lp (tenths).
    lp: i16,
    /// The Lp of the last `DOD?` answer, so the next one differs.
    last_dod_lp: Option<i16>,
    /// The measurement in progress, if measuring.
    run: Option<Run>,
    /// The result of the last finished measurement (`DLC?`, and what the
    /// display holds after `Measure,Stop`).
    last_result: Option<ChannelValues>,
    /// Echo each command line before its result.
    echo: bool,
    /// `Sleep Mode` setting.
    sleep: bool,
    /// Whether the meter is asleep (it then answers nothing).
    asleep: bool,
    /// When the sleep timer last started: power-up, a wake, or sleep mode
    /// turned on; with sleep mode On it falls asleep `sleep_after` later.
    awake_since: Instant,
    /// How long it stays awake with sleep mode On.
    sleep_after: Duration,
    /// Accept `Clock,...` while measuring (else `R+0004`).
    clock_set_while_measuring: bool,
    /// The clock.
    clock: Rtc,
    /// The offsets before and after the last accepted `Clock,...`, until
    /// the session takes them to announce.
    clock_set: Option<(f64, f64)>,
    /// Arrival of the last answered `DOD?`, for the 1 s rule.
    last_dod_at: Option<Instant>,
    /// `Serial Number?` answer, derived from the seed.
    serial: String,
    /// The stored records.
    store: Store,
}

impl Meter {
    /// A meter powered up at `now` as `config` says.
    pub fn new(config: &SimConfig, now: Instant) -> Meter {
        let mut source = LevelSource::with_control(config.seed, config.levels.clone());
        let lp = source.next_sample().lp;
        let clock = Rtc::new(config);
        let meter_now = clock.now_secs();
        let mut meter = Meter {
            source,
            next_sample: now + SAMPLE_PERIOD,
            lp,
            last_dod_lp: None,
            run: None,
            last_result: None,
            echo: config.faults.echo,
            sleep: config.sleep_mode,
            asleep: false,
            awake_since: now,
            sleep_after: config.sleep_after,
            clock_set_while_measuring: config.clock_set_while_measuring,
            clock,
            clock_set: None,
            last_dod_at: None,
            serial: format!("{:08}", config.seed % 100_000_000),
            store: Store::new(config.seed, meter_now.saturating_sub(REPLAY_AGE_SECS)),
        };
        if config.start_measuring {
            meter.run = Some(Run {
                integrator: Integrator::default(),
                paused: false,
            });
        }
        meter
    }

    /// Whether a measurement runs.
    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    /// The offsets (seconds, before and after) of a `Clock,...` accepted
    /// since the last call.
    pub fn take_clock_set(&mut self) -> Option<(f64, f64)> {
        self.clock_set.take()
    }

    /// When the meter will fall asleep, if sleep mode is On and it is awake.
    pub fn sleep_due(&self) -> Option<Instant> {
        (self.sleep && !self.asleep).then(|| self.awake_since + self.sleep_after)
    }

    /// Falls asleep if that is due at `now`; `true` if it just did.
    pub fn fall_asleep_if_due(&mut self, now: Instant) -> bool {
        let due = self.sleep_due().is_some_and(|at| at <= now);
        if due {
            self.asleep = true;
        }
        due
    }

    /// Whether the meter is asleep (as of the last look).
    pub fn is_asleep(&self) -> bool {
        self.asleep
    }

    /// A key press at `now`: wakes the meter and restarts the sleep timer.
    /// `true` if it was asleep.
    pub fn wake(&mut self, now: Instant) -> bool {
        self.awake_since = now;
        std::mem::replace(&mut self.asleep, false)
    }

    /// Power off and on at `now`: stopped, nothing integrated, awake (sleep
    /// mode On if `sleep_on`, else as it was), clock and settings kept.
    /// `true` if it was asleep.
    pub fn power_cycle(&mut self, now: Instant, sleep_on: bool) -> bool {
        self.advance(now);
        self.run = None;
        self.last_result = None;
        self.last_dod_at = None;
        self.sleep |= sleep_on;
        self.wake(now)
    }

    /// Whether echo is on.
    pub fn echo(&self) -> bool {
        self.echo
    }

    /// Answers `line` (without CR LF) that arrived at `arrival` on `link`.
    pub fn handle(&mut self, line: &[u8], arrival: Instant, link: &mut LinkState) -> Reply {
        self.advance(arrival);
        if let Some(end) = link.last_answer_end {
            if arrival.saturating_duration_since(end) + PACING_TOLERANCE < ANSWER_GAP {
                return Reply::Result(ResultCode::StatusError);
            }
        }
        let command = match Command::parse(line) {
            Ok(command) => command,
            Err(firmware_bridge::Error::BadParameter) => {
                return Reply::Result(ResultCode::ParameterError);
            }
            Err(firmware_bridge::Error::Designation) => {
                return Reply::Result(ResultCode::DesignationError);
            }
            Err(_) => return Reply::Result(ResultCode::CommandError),
        };
        match command {
            Command::Request(item) => self.request(item, arrival, link),
            Command::Set(item, param) => Reply::Result(self.set(item, param, arrival)),
        }
    }

    fn request(&mut self, item: Item, arrival: Instant, link: &mut LinkState) -> Reply {
        let on_off = |on: bool| Reply::Data(if on { "On" } else { "Off" }.to_owned());
        match item {
            Item::Dod => self.dod(arrival, link),
            Item::Dlc => {
                let values = self.last_result.unwrap_or_else(|| not_integrated(None));
                Reply::Data(encode_dod(ChannelValues { lp: None, ..values }))
            }
            Item::Drd => Reply::Drd { status: false },
            Item::DrdStatus => Reply::Drd { status: true },
            Item::Measure => Reply::Data(self.measure_state().word().to_owned()),
            Item::Pause => on_off(self.run.as_ref().is_some_and(|r| r.paused)),
            Item::Clock => {
                let secs = match (link.replay_clock, link.replay_left) {
                    (Some(old), _) => old,
                    (None, left) if left > 0 => self.store.next_time,
                    (None, _) => self.clock.now_secs(),
                };
                match MeterClock::from_local_epoch_seconds(secs) {
                    Some(clock) => Reply::Data(clock.to_string()),
                    // A clock set outside years 0..=9999 cannot be shown.
                    None => Reply::Result(ResultCode::StatusError),
                }
            }
            Item::BatteryLevel => Reply::Data("Full".to_owned()),
            Item::SdCardPercentage => Reply::Data(SD_CARD_PERCENTAGE.to_string()),
            Item::SdCardFreeSize => Reply::Data("27812".to_owned()),
            Item::SleepMode => on_off(self.sleep),
            Item::Echo => on_off(self.echo),
            Item::SerialNumber => Reply::Data(self.serial.clone()),
            Item::Type => Reply::Data("NL-43".to_owned()),
            Item::SystemVersion => Reply::Data("1.8.0".to_owned()),
            Item::FrequencyWeightingMain => Reply::Data("A".to_owned()),
            Item::TimeWeightingMain => Reply::Data("S".to_owned()),
        }
    }

    fn dod(&mut self, arrival: Instant, link: &mut LinkState) -> Reply {
        if let Some(previous) = self.last_dod_at {
            if arrival.saturating_duration_since(previous) + PACING_TOLERANCE < DOD_INTERVAL {
                return Reply::Result(ResultCode::StatusError);
            }
        }
        self.last_dod_at = Some(arrival);
        if link.replay_left > 0 {
            link.replay_left -= 1;
            let (time, values) = self.store.next_record(self.last_dod_lp);
            link.replay_clock = Some(time);
            self.last_dod_lp = values.lp.map(Deci::tenths);
            return Reply::Dod {
                line: encode_dod(values),
                replayed: true,
            };
        }
        link.replay_clock = None;
        if self.last_dod_lp == Some(self.lp) {
            self.lp = self.source.nudge(self.lp);
        }
        self.last_dod_lp = Some(self.lp);
        Reply::Dod {
            line: encode_dod(self.display(self.lp)),
            replayed: false,
        }
    }

    fn set(&mut self, item: Item, param: &str, now: Instant) -> ResultCode {
        let word = param.trim();
        let on_off = || {
            if word.eq_ignore_ascii_case("On") {
                Some(true)
            } else if word.eq_ignore_ascii_case("Off") {
                Some(false)
            } else {
                None
            }
        };
        match item {
            Item::Measure => match MeasureState::parse(word.as_bytes()) {
                Err(_) => ResultCode::ParameterError,
                Ok(wanted) if wanted == self.measure_state() => ResultCode::StatusError,
                Ok(MeasureState::Measuring) => {
                    self.run = Some(Run {
                        integrator: Integrator::default(),
                        paused: false,
                    });
                    ResultCode::Ok
                }
                Ok(MeasureState::Stopped) => {
                    if let Some(run) = self.run.take() {
                        self.last_result = Some(run.integrator.values(None));
                    }
                    ResultCode::Ok
                }
            },
            Item::Pause => match (on_off(), self.run.as_mut()) {
                (None, _) => ResultCode::ParameterError,
                (Some(_), None) => ResultCode::StatusError,
                (Some(on), Some(run)) if run.paused == on => ResultCode::StatusError,
                (Some(on), Some(run)) => {
                    run.paused = on;
                    ResultCode::Ok
                }
            },
            Item::SleepMode => match on_off() {
                None => ResultCode::ParameterError,
                Some(_) if SLEEP_SETTING_REFUSED_WHILE_MEASURING && self.run.is_some() => {
                    ResultCode::StatusError
                }
                Some(on) => {
                    if on && !self.sleep {
                        // The timer counts from the moment eco mode is on.
                        self.awake_since = now;
                    }
                    self.sleep = on;
                    ResultCode::Ok
                }
            },
            Item::Echo => match on_off() {
                None => ResultCode::ParameterError,
                Some(on) => {
                    self.echo = on;
                    ResultCode::Ok
                }
            },
            Item::Clock => match MeterClock::parse(param.as_bytes()) {
                Err(_) => ResultCode::ParameterError,
                Ok(_) if self.run.is_some() && !self.clock_set_while_measuring => {
                    ResultCode::StatusError
                }
                Ok(clock) => {
                    self.clock_set = Some(self.clock.set(clock.local_epoch_seconds()));
                    ResultCode::Ok
                }
            },
            // `Command::parse` only builds settings for settable items.
            _ => ResultCode::DesignationError,
        }
    }

    /// One `DRD?` line (with CR LF) for the moment `now`: counter, Lp, Leq,
    /// Lmax, Lmin, Lpeak, the three sub-channels' Lp (off: dashes), the
    /// overload and under-range flags; `DRD?status` appends the meter time,
    /// power source, battery, SD card percentage and run state (a guess at
    /// the order, which `protocols/nl43.md` leaves open).
    pub fn drd_line(&mut self, now: Instant, counter: u16, status: bool) -> String {
        self.advance(now);
        let v = self.display(self.lp);
        let level = |d: Option<Deci>| match d {
            Some(d) => format!("{d:>5}"),
            None => "  -.-".to_owned(),
        };
        let flag = |f: Option<bool>| if f == Some(true) { "1" } else { "0" };
        let mut line = format!(
            "{counter:>4},{},{},{},{},{},  -.-,  -.-,  -.-,{},{}",
            level(v.lp),
            level(v.leq),
            level(v.lmax),
            level(v.lmin),
            level(v.lpeak),
            flag(v.overload),
            flag(v.under_range),
        );
        if status {
            let clock = MeterClock::from_local_epoch_seconds(self.clock.now_secs())
                .map(|c| c.to_string())
                .unwrap_or_else(|| "----/--/-- --:--:--".to_owned());
            line.push_str(&format!(
                ",{clock},Battery,Full,{SD_CARD_PERCENTAGE},{}",
                self.measure_state().word()
            ));
        }
        line.push_str("\r\n");
        line
    }

    fn measure_state(&self) -> MeasureState {
        if self.run.is_some() {
            MeasureState::Measuring
        } else {
            MeasureState::Stopped
        }
    }

    /// The main channel as displayed, with `lp` as Lp.
    fn display(&self, lp: i16) -> ChannelValues {
        let lp = Deci::from_tenths(lp);
        match (&self.run, &self.last_result) {
            (Some(run), _) => run.integrator.values(lp),
            (None, Some(result)) => ChannelValues { lp, ..*result },
            (None, None) => not_integrated(lp),
        }
    }

    /// Generates the samples due up to `now`.
    fn advance(&mut self, now: Instant) {
        if now.saturating_duration_since(self.next_sample) > MAX_CATCH_UP {
            self.next_sample = now - MAX_CATCH_UP;
        }
        while self.next_sample <= now {
            let sample = self.source.next_sample();
            self.lp = sample.lp;
            if let Some(run) = self.run.as_mut().filter(|r| !r.paused) {
                run.integrator.add(sample);
            }
            self.next_sample += SAMPLE_PERIOD;
        }
    }
}

/// The 64-field line (without CR LF) with `main` on channel 0 and the other
/// channels off.
fn encode_dod(main: ChannelValues) -> String {
    let reading = DodReading {
        channels: [
            main,
            ChannelValues::default(),
            ChannelValues::default(),
            ChannelValues::default(),
        ],
    };
    let mut out = DodLine::new();
    // A DOD line always fits MAX_LINE (64 × 6 bytes + CR LF); on the
    // impossible overflow the line is cut, never a panic.
    let _ = reading.encode(&mut out);
    out.trim_end_matches(['\r', '\n']).to_owned()
}

/// UTC now as Unix seconds.
#[cfg(test)]
fn utc_now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// UTC now as Unix seconds with a fraction (microseconds).
fn utc_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 * 1e-6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_SLEEP_AFTER;
    use firmware_bridge::nl43::DrdLine;

    fn meter() -> (Meter, LinkState, Instant) {
        let now = Instant::now();
        (
            Meter::new(&SimConfig::default(), now),
            LinkState::new(0),
            now,
        )
    }

    fn answer(m: &mut Meter, link: &mut LinkState, line: &str, at: Instant) -> Reply {
        let reply = m.handle(line.as_bytes(), at, link);
        link.last_answer_end = Some(at);
        reply
    }

    #[test]
    fn result_codes_follow_the_protocol() {
        let (mut m, mut link, t0) = meter();
        let mut t = t0;
        let mut next = |m: &mut Meter, line: &str| {
            t += Duration::from_millis(300);
            answer(m, &mut link, line, t).code()
        };
        assert_eq!(next(&mut m, "Foo?"), ResultCode::CommandError);
        assert_eq!(next(&mut m, "$Measure,Start"), ResultCode::CommandError);
        assert_eq!(next(&mut m, "Measure,Go"), ResultCode::ParameterError);
        assert_eq!(next(&mut m, "DOD,1"), ResultCode::DesignationError);
        assert_eq!(next(&mut m, "Measure,Start"), ResultCode::StatusError);
        assert_eq!(next(&mut m, "Sleep Mode,On"), ResultCode::StatusError);
        assert_eq!(next(&mut m, "Measure,Stop"), ResultCode::Ok);
        assert_eq!(next(&mut m, "Measure,Stop"), ResultCode::StatusError);
        assert_eq!(next(&mut m, "Pause,On"), ResultCode::StatusError);
        assert_eq!(
            next(&mut m, "Clock,2025/12/24,02:10:55"),
            ResultCode::ParameterError
        );
        assert_eq!(next(&mut m, "Clock,2025/12/24 02:10:55"), ResultCode::Ok);
    }

    #[test]
    fn pacing_rules() {
        let (mut m, mut link, t0) = meter();
        assert!(matches!(
            answer(&mut m, &mut link, "DOD?", t0),
            Reply::Dod { .. }
        ));
        // 100 ms after an answer: busy, whatever the command.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            answer(&mut m, &mut link, "Type?", t1),
            Reply::Result(ResultCode::StatusError)
        );
        // 300 ms later a DOD? is still within the second.
        let t2 = t1 + Duration::from_millis(300);
        assert_eq!(
            answer(&mut m, &mut link, "DOD?", t2),
            Reply::Result(ResultCode::StatusError)
        );
        // 980 ms after the first DOD? (within tolerance) it is served.
        let t3 = t0 + Duration::from_millis(980);
        assert!(matches!(
            answer(&mut m, &mut link, "DOD?", t3),
            Reply::Dod { .. }
        ));
    }

    #[test]
    fn consecutive_dod_answers_differ() {
        let (mut m, mut link, t0) = meter();
        let mut previous = String::new();
        for i in 0..50u64 {
            let at = t0 + Duration::from_secs(i);
            let Reply::Dod { line, .. } = answer(&mut m, &mut link, "DOD?", at) else {
                panic!("not a DOD answer at {i}");
            };
            assert_ne!(line, previous);
            assert!(DodReading::parse(line.as_bytes()).is_ok(), "{line}");
            previous = line;
        }
    }

    #[test]
    fn replay_serves_old_records_then_live() {
        let config = SimConfig {
            faults: crate::Faults {
                replay: 2,
                ..Default::default()
            },
            ..SimConfig::default()
        };
        let t0 = Instant::now();
        let mut m = Meter::new(&config, t0);
        let mut link = LinkState::new(2);
        let now = utc_now_secs();
        let clock_of = |m: &mut Meter, link: &mut LinkState, at| match answer(m, link, "Clock?", at)
        {
            Reply::Data(text) => {
                MeterClock::parse(text.as_bytes()).map(|c| c.local_epoch_seconds())
            }
            other => panic!("{other:?}"),
        };
        let before = clock_of(&mut m, &mut link, t0).expect("clock");
        assert!((now - 3600 - before).abs() <= 2, "{before} vs {now}");
        let replayed = |r: Reply| matches!(r, Reply::Dod { replayed: true, .. });
        assert!(replayed(answer(
            &mut m,
            &mut link,
            "DOD?",
            t0 + Duration::from_secs(1)
        )));
        assert!(replayed(answer(
            &mut m,
            &mut link,
            "DOD?",
            t0 + Duration::from_secs(2)
        )));
        let second = clock_of(&mut m, &mut link, t0 + Duration::from_millis(2500)).expect("clock");
        assert_eq!(second, before + 1);
        let live = answer(&mut m, &mut link, "DOD?", t0 + Duration::from_secs(3));
        assert!(matches!(
            live,
            Reply::Dod {
                replayed: false,
                ..
            }
        ));
        let after = clock_of(&mut m, &mut link, t0 + Duration::from_millis(3500)).expect("clock");
        assert!((after - utc_now_secs()).abs() <= 2);
    }

    #[test]
    fn the_clock_drifts_and_a_setting_restarts_it() {
        let mut clock = Rtc::starting(1_000.0, 1_060.0, 200_000.0);
        assert!((clock.local_at(1_010.0) - 1_072.0).abs() < 1e-9);
        let (before, after) = clock.set_at_utc(1_010.0, 5_000);
        assert!((before - 62.0).abs() < 1e-9, "{before}");
        assert!((after - 3_990.0).abs() < 1e-9, "{after}");
        assert!((clock.local_at(1_020.0) - 5_012.0).abs() < 1e-9);
        let slow = Rtc::starting(0.0, 0.0, -50.0);
        assert!((slow.local_at(86_400.0) - (86_400.0 - 4.32)).abs() < 1e-6);
        let stopped = Rtc::starting(0.0, 7.0, -2e6);
        assert_eq!(stopped.local_at(100.0), 7.0);
    }

    #[test]
    fn the_clock_is_set_only_while_stopped_unless_configured() {
        let (mut m, mut link, t0) = meter();
        let mut t = t0;
        let mut next = |m: &mut Meter, line: &str| {
            t += Duration::from_millis(300);
            answer(m, &mut link, line, t).code()
        };
        let set = "Clock,2030/01/02 03:04:05";
        assert_eq!(next(&mut m, set), ResultCode::StatusError);
        assert_eq!(m.take_clock_set(), None);
        assert_eq!(next(&mut m, "Measure,Stop"), ResultCode::Ok);
        assert_eq!(next(&mut m, set), ResultCode::Ok);
        let target = MeterClock::parse(b"2030/01/02 03:04:05")
            .expect("valid")
            .local_epoch_seconds();
        let (before, after) = m.take_clock_set().expect("a setting");
        assert!(before.abs() < 2.0, "{before}");
        let expected = (target - utc_now_secs()) as f64;
        assert!((after - expected).abs() < 2.0, "{after} vs {expected}");
        assert_eq!(m.take_clock_set(), None);

        let config = SimConfig {
            clock_set_while_measuring: true,
            ..SimConfig::default()
        };
        let mut m = Meter::new(&config, t0);
        let mut link = LinkState::new(0);
        assert_eq!(answer(&mut m, &mut link, set, t0).code(), ResultCode::Ok);
        assert!(m.running());
    }

    fn sleepy(start_measuring: bool) -> (Meter, LinkState, Instant) {
        let config = SimConfig {
            start_measuring,
            sleep_mode: true,
            sleep_after: Duration::from_secs(1),
            ..SimConfig::default()
        };
        let now = Instant::now();
        (Meter::new(&config, now), LinkState::new(0), now)
    }

    #[test]
    fn sleep_falls_due_and_a_wake_restarts_the_timer() {
        let (mut m, _, t0) = sleepy(true);
        let second = Duration::from_secs(1);
        assert_eq!(m.sleep_due(), Some(t0 + second));
        assert!(!m.fall_asleep_if_due(t0 + second / 2));
        assert!(m.fall_asleep_if_due(t0 + second));
        assert!(m.is_asleep() && m.sleep_due().is_none());
        assert!(!m.fall_asleep_if_due(t0 + 2 * second), "once");
        assert!(m.wake(t0 + 2 * second));
        assert!(!m.is_asleep());
        assert_eq!(m.sleep_due(), Some(t0 + 3 * second));
        assert!(!m.wake(t0 + 2 * second), "not asleep any more");
        assert!(m.running(), "sleep does not stop a measurement");
    }

    #[test]
    fn sleep_mode_off_cancels_and_on_restarts_the_timer() {
        let (mut m, mut link, t0) = sleepy(false);
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(
            answer(&mut m, &mut link, "Sleep Mode,Off", t1).code(),
            ResultCode::Ok
        );
        assert_eq!(m.sleep_due(), None);
        assert!(!m.fall_asleep_if_due(t0 + Duration::from_secs(5)));
        let t2 = t0 + Duration::from_secs(6);
        assert_eq!(
            answer(&mut m, &mut link, "Sleep Mode,On", t2).code(),
            ResultCode::Ok
        );
        assert_eq!(m.sleep_due(), Some(t2 + Duration::from_secs(1)));
        let t3 = t2 + Duration::from_millis(300);
        assert_eq!(
            answer(&mut m, &mut link, "Sleep Mode?", t3),
            Reply::Data("On".into())
        );

        // While measuring, the setting is refused either way.
        let (mut m, mut link, t0) = sleepy(true);
        assert_eq!(
            answer(&mut m, &mut link, "Sleep Mode,Off", t0).code(),
            ResultCode::StatusError
        );
        assert!(m.sleep_due().is_some());
    }

    #[test]
    fn a_power_cycle_stops_forgets_and_keeps_settings() {
        let (mut m, mut link, t0) = meter();
        let t1 = t0 + Duration::from_secs(3);
        let Reply::Dod { line, .. } = answer(&mut m, &mut link, "DOD?", t1) else {
            panic!("a DOD answer");
        };
        let integrated = |line: &str| DodReading::parse(line.as_bytes()).expect("DOD").main().leq;
        assert!(integrated(&line).is_some(), "{line}");
        assert!(!m.power_cycle(t1, true));
        let mut link = LinkState::new(0);
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(
            answer(&mut m, &mut link, "Measure?", t2),
            Reply::Data("Stop".into())
        );
        // The 1 s between polls starts again with the power.
        let t3 = t2 + Duration::from_millis(300);
        let Reply::Dod { line, .. } = answer(&mut m, &mut link, "DOD?", t3) else {
            panic!("a DOD answer right after power-up");
        };
        assert_eq!(integrated(&line), None, "{line}");
        let t4 = t3 + Duration::from_millis(300);
        assert_eq!(
            answer(&mut m, &mut link, "Sleep Mode?", t4),
            Reply::Data("On".into())
        );
        assert_eq!(m.sleep_due(), Some(t1 + DEFAULT_SLEEP_AFTER));
        let t5 = t4 + Duration::from_millis(300);
        let Reply::Data(clock) = answer(&mut m, &mut link, "Clock?", t5) else {
            panic!("a clock");
        };
        let shown = MeterClock::parse(clock.as_bytes())
            .expect("clock")
            .local_epoch_seconds();
        assert!((shown - utc_now_secs()).abs() <= 2, "{clock}");
    }

    #[test]
    fn sd_card_percentage_is_a_plain_integer() {
        let (mut m, mut link, t0) = meter();
        assert_eq!(
            answer(&mut m, &mut link, "SD Card Percentage?", t0),
            Reply::Data("87".into())
        );
    }

    #[test]
    fn drd_lines_parse() {
        let (mut m, _, t0) = meter();
        for (i, status) in [(1u16, false), (600, true)] {
            let line = m.drd_line(t0 + Duration::from_secs(2), i, status);
            let parsed = DrdLine::parse(line.trim_end().as_bytes()).expect("parses");
            assert_eq!(parsed.counter, i);
            assert!(parsed.leq.is_some() && parsed.lpeak > parsed.lmax);
        }
    }
}
