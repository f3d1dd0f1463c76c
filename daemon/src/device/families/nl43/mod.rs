//! Rion NL-43 / NL-53 / NL-63 (NL-42 / NL-52 close kin): the command
//! protocol over RS-232C, USB-CDC serial or the LAN option's TCP port 2255.
//!
//! - `session`: one command/answer exchange (result line `R+dddd`, data
//!   line, resync on junk and echo).
//! - `poll`: identity at link open, `DOD?` polling, the status queries.
//! - `stream`: `DRD?` continuous output (`mode = "stream"`).
//!
//! Facts and how sure we are of each: `protocols/nl43.md`.

mod care;
mod poll;
pub mod session;
mod stream;

use crate::config::{
    CareRules, DeviceConfig, FamilyRules, LevelInput, Parity, SerialFraming, Support,
};
use crate::device::driver::{BoxFuture, Family, LinkError, Meter, until_link_fails};
use crate::device::health::HealthRules;
use crate::device::link::Link;
use firmware_bridge::nl43::{Command, Item, MeasureState};
use session::{Answer, Session};
use std::time::Duration;

/// The NL-43 family.
pub struct Nl43;

/// Baud rates the meter can be set to.
const BAUDS: &[u32] = &[9600, 19_200, 38_400, 57_600, 115_200];

static RULES: FamilyRules = FamilyRules {
    name: "nl43",
    title: "Rion NL-43/NL-53/NL-63",
    polled: true,
    streams: true,
    min_poll: (
        Duration::from_secs(1),
        " (the meter rejects DOD? faster than once a second)",
    ),
    default_poll: Duration::from_secs(1),
    min_command_gap: (
        Duration::from_millis(200),
        " (the meter drops commands sent sooner after an answer)",
    ),
    default_command_gap: Duration::from_millis(200),
    default_answer_timeout: Duration::from_secs(3),
    // 8 data bits, no parity, 1 stop bit is a guess in the notes; the
    // factory baud rate is 38400.
    serial: SerialFraming {
        baud: 38_400,
        data_bits: 8,
        stop_bits: 1,
        parity: Parity::None,
    },
    bauds: BAUDS,
    care: CareRules {
        keep_measuring: Support::Yes,
        no_sleep: Support::Yes,
        sync_clock: Support::Yes,
    },
    health: HealthRules {
        battery: true,
        sd_free: true,
        clock: true,
    },
    // DOD's Leq runs since the measurement started, not per poll: Lp is the finest level.
    level_input: LevelInput {
        metric: firmware_bridge::metric::LP,
        per_cycle: false,
    },
};

impl Family for Nl43 {
    fn rules(&self) -> &'static FamilyRules {
        &RULES
    }

    fn run<'a>(&'a self, link: Link, meter: &'a Meter<'a>) -> BoxFuture<'a, LinkError> {
        until_link_fails(poll::run(meter, link))
    }

    fn probe<'a>(
        &'a self,
        link: Link,
        config: &'a DeviceConfig,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(probe(link, config))
    }
}

/// `Type?`, `Serial Number?`, `System Version?` and `Measure?`.
async fn probe(link: Link, device: &DeviceConfig) -> Result<String, String> {
    let mut session = Session::new(link, device.answer_timeout, device.command_gap);
    let mut ask = async |item: Item, first: bool| -> Result<Option<String>, String> {
        match session.exchange(Command::Request(item), true).await {
            Ok(Answer::Ok(line)) => Ok(line
                .map(|l| String::from_utf8_lossy(&l).trim().to_owned())
                .filter(|t| !t.is_empty())),
            Ok(Answer::Refused(code)) => {
                Err(format!("the meter refused {}? ({code})", item.name()))
            }
            Err(e) if first => Err(format!("link open, but {e}")),
            Err(e) => Err(format!("answered once, then {e}")),
        }
    };
    let model = ask(Item::Type, true).await?;
    let serial = ask(Item::SerialNumber, false).await?;
    let firmware = ask(Item::SystemVersion, false).await?;
    let state = match ask(Item::Measure, false).await? {
        Some(text) => match MeasureState::parse(text.as_bytes()) {
            Ok(MeasureState::Measuring) => "measuring",
            Ok(MeasureState::Stopped) => "stopped",
            Err(_) => "state unreadable",
        },
        None => "state unknown",
    };
    let identity = crate::device::driver::Identity {
        model,
        serial,
        firmware,
    };
    let who = identity.summary();
    Ok(if who.is_empty() {
        format!("answers, {state}")
    } else {
        format!("answers, {who}, {state}")
    })
}
