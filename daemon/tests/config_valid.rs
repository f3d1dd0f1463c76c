//! Valid configuration files, read from real files, give the values a user
//! wrote (or the documented defaults).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use slmd::config::{
    ByteSize, Config, Durability, LinkConfig, MeterCare, Mode, MqttConfig, Parity, Protocol,
    SerialFraming, SyncClock, UtcOffset, load,
};

/// Writes `text` to `slmd.toml` in a fresh temp dir and loads it.
fn load_text(text: &str) -> Config {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("slmd.toml");
    std::fs::write(&path, text).expect("write config");
    match load(&path) {
        Ok(config) => config,
        Err(e) => panic!("rejected a valid config: {e}"),
    }
}

/// The hostname as the daemon is documented to read it.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| "gateway".to_owned())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Every key of SPEC §5 and every key this module adds, set to a
/// non-default value.
const FULL: &str = r#"
# slmd.toml with every key set
[gateway]
id = "gw-0042"                 # default: hostname
state_dir = "/srv/slmd"
clock_trusted = true

[buffer]
max_records = 5_000_000
max_bytes = "2GiB"
durability = "full"
commit_interval = "2500ms"
exclusive = false

[[device]]
id = "nl43-north"
protocol = "nl43"
transport = "tcp"
address = "192.0.2.10:2255"
poll_interval = "2s"
live_poll_interval = "1s"
answer_timeout = "1500ms"
command_gap = "250ms"
status_interval = "30s"
utc_offset = "+09:00"
reconnect_min = "500ms"
reconnect_max = "5m"
keep_measuring = true
no_sleep = true
sync_clock = "daily"

[[device]]
id = "nl52_south.2"
protocol = "nl43"
transport = "serial"
path = "/dev/serial/by-id/usb-RION_NL-52-if00"
baud = 115200
utc_offset = "-05:30"

[api]
listen = "0.0.0.0:9000"
tokens = ["local-secret"]
stream_max = "1h"

[mqtt]
url = "mqtts://broker.example.com:8883"
topic_prefix = "site-7/slmd"
qos = 2

[fleet]
enabled = true
url = "https://fleet.example.com"
tokens = ["current-token", "previous-token"]
batch_max = 1000
interval = "10s"
token_retry = "2m"
heartbeat_interval = "30s"
"#;

#[test]
fn a_full_config_gives_every_value_written() {
    let c = load_text(FULL);

    assert_eq!(c.gateway.id, "gw-0042");
    assert_eq!(c.gateway.state_dir, PathBuf::from("/srv/slmd"));
    assert!(c.gateway.clock_trusted);

    assert_eq!(c.buffer.max_records, 5_000_000);
    assert_eq!(c.buffer.max_bytes, Some(ByteSize(2 * 1024 * 1024 * 1024)));
    assert_eq!(c.buffer.durability, Durability::Full);
    assert_eq!(c.buffer.commit_interval, Duration::from_millis(2500));
    assert!(!c.buffer.exclusive);

    assert_eq!(c.devices.len(), 2);
    let north = &c.devices[0];
    assert_eq!(north.id, "nl43-north");
    assert_eq!(Some(north.protocol), Protocol::named("nl43"));
    assert_eq!(
        north.link,
        LinkConfig::Tcp {
            address: "192.0.2.10:2255".into()
        }
    );
    assert_eq!(north.mode, Mode::Poll);
    assert_eq!(north.poll_interval, secs(2));
    assert_eq!(north.live_poll_interval, Some(secs(1)));
    assert_eq!(north.answer_timeout, ms(1500));
    assert_eq!(north.command_gap, ms(250));
    assert_eq!(north.status_interval, secs(30));
    assert_eq!(north.utc_offset.seconds(), 9 * 3600);
    assert_eq!(north.reconnect_min, ms(500));
    assert_eq!(north.reconnect_max, secs(300));
    assert_eq!(
        north.care,
        MeterCare {
            keep_measuring: true,
            no_sleep: true,
            sync_clock: SyncClock::Daily,
        }
    );

    let south = &c.devices[1];
    assert_eq!(south.id, "nl52_south.2");
    assert_eq!(
        south.link,
        LinkConfig::Serial {
            path: PathBuf::from("/dev/serial/by-id/usb-RION_NL-52-if00"),
            framing: SerialFraming {
                baud: 115_200,
                data_bits: 8,
                stop_bits: 1,
                parity: Parity::None
            }
        }
    );
    assert_eq!(south.utc_offset.seconds(), -(5 * 3600 + 30 * 60));
    // Keys left out of a device take their defaults.
    assert_eq!(south.poll_interval, secs(1));
    assert_eq!(south.care, MeterCare::default(), "meter care is opt-in");
    assert_eq!(south.live_poll_interval, None);

    assert_eq!(
        c.api.listen,
        "0.0.0.0:9000".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(c.api.tokens, ["local-secret"]);
    assert_eq!(c.api.stream_max, secs(3600));

    assert_eq!(
        c.mqtt,
        Some(MqttConfig {
            url: "mqtts://broker.example.com:8883".into(),
            topic_prefix: "site-7/slmd".into(),
            qos: 2,
        })
    );

    assert!(c.fleet.enabled);
    assert_eq!(c.fleet.url.as_deref(), Some("https://fleet.example.com"));
    assert_eq!(c.fleet.tokens, ["current-token", "previous-token"]);
    assert_eq!(c.fleet.token_file, None);
    assert_eq!(c.fleet.batch_max, 1000);
    assert_eq!(c.fleet.interval, secs(10));
    assert_eq!(c.fleet.token_retry, secs(120));
    assert_eq!(c.fleet.heartbeat_interval, secs(30));
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let c = load_text("");

    assert_eq!(c.gateway.id, hostname());
    assert_eq!(c.gateway.state_dir, PathBuf::from("/var/lib/slmd"));
    assert_eq!(c.buffer.max_records, 10_000_000);
    assert_eq!(c.buffer.max_bytes, None);
    assert_eq!(c.buffer.durability, Durability::Normal);
    assert_eq!(c.buffer.commit_interval, Duration::from_secs(15));
    assert!(c.buffer.exclusive);
    assert!(c.devices.is_empty());
    assert_eq!(
        c.api.listen,
        "127.0.0.1:8470".parse::<SocketAddr>().expect("addr")
    );
    assert!(c.api.tokens.is_empty());
    assert_eq!(c.api.stream_max, secs(15 * 60));
    assert_eq!(c.mqtt, None);
    assert!(!c.fleet.enabled, "no data leaves the gateway by default");
    assert_eq!(c.fleet.url, None);
    assert!(c.fleet.tokens.is_empty());
    assert_eq!(c.fleet.token_file, None);
    assert_eq!(c.fleet.batch_max, 500);
    assert_eq!(c.fleet.interval, secs(5));
    assert_eq!(c.fleet.token_retry, secs(5 * 60));
    assert_eq!(c.fleet.heartbeat_interval, secs(60));
    assert!(!c.gateway.clock_trusted);

    // Comments and blank lines only: still the defaults.
    assert_eq!(load_text("# nothing configured yet\n\n"), c);
}

#[test]
fn a_minimal_device_gets_the_documented_defaults() {
    let c = load_text(
        r#"
[[device]]
id = "nl43-north"
protocol = "nl43"
transport = "tcp"
address = "meter-1.local:2255"
"#,
    );
    let d = &c.devices[0];
    assert_eq!(d.poll_interval, secs(1));
    assert_eq!(d.live_poll_interval, None);
    assert_eq!(d.answer_timeout, secs(3));
    assert_eq!(d.command_gap, ms(200));
    assert_eq!(d.status_interval, secs(10));
    assert_eq!(d.utc_offset, UtcOffset::UTC);
    assert_eq!(d.reconnect_min, secs(1));
    assert_eq!(d.reconnect_max, secs(60));
}

#[test]
fn the_spec_example_is_accepted() {
    // SPEC §5 verbatim (with one token pair), comments included.
    let c = load_text(
        r#"
[gateway]
id = "gw-0042"                 # default: hostname
state_dir = "/var/lib/slmd"    # buffer lives here

[buffer]
max_records = 10_000_000       # hard cap; oldest evicted first
# max_bytes = "2GiB"           # optional second cap
# durability = "normal"        # or "full"

[[device]]
id = "nl43-north"
protocol = "nl43"
transport = "tcp"              # or "serial"
address = "192.0.2.10:2255"    # tcp
# path = "/dev/serial/by-id/usb-RION_..."   # serial
# baud = 38400                              # serial
poll_interval = "1s"

[api]
listen = "127.0.0.1:8470"      # non-loopback requires tokens (§6)

# [mqtt]                       # local broker fan-out, optional
# url = "mqtt://127.0.0.1:1883"
# topic_prefix = "slmd"

[fleet]
enabled = false                # opt-in: when false no data leaves the gateway
url = "https://fleet.example.com"
tokens = ["<current>", "<previous>"]   # or token_file = "/etc/slmd/fleet.token"
batch_max = 500                # records per push request
interval = "5s"                # push tick when caught up
"#,
    );
    assert_eq!(c.devices[0].id, "nl43-north");
    assert!(!c.fleet.enabled);
}

#[test]
fn alternative_spellings_users_write() {
    let c = load_text(
        r#"
[buffer]
max_bytes = 1000000            # a plain integer is bytes

[[device]]
id = "a"
protocol = "nl43"
transport = "tcp"
address = "[2001:db8::10]:2255"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[fleet]
enabled = true
url = "http://10.0.0.5:8080/ingest"
token_file = "/etc/slmd/fleet.token"
"#,
    );
    assert_eq!(c.buffer.max_bytes, Some(ByteSize(1_000_000)));
    let mqtt = c.mqtt.expect("mqtt table");
    assert_eq!((mqtt.topic_prefix.as_str(), mqtt.qos), ("slmd", 1));
    assert_eq!(
        c.fleet.token_file.as_deref(),
        Some(Path::new("/etc/slmd/fleet.token"))
    );
    // Loopback IPv6 needs no tokens either.
    let c = load_text("[api]\nlisten = \"[::1]:8470\"\n");
    assert!(c.api.listen.ip().is_loopback());
}

#[test]
fn each_family_brings_its_own_defaults() {
    let c = load_text(
        r#"
[[device]]
id = "cel"
protocol = "casella"
transport = "serial"
path = "/dev/ttyUSB1"

[[device]]
id = "cel-fast"
protocol = "casella"
transport = "serial"
path = "/dev/ttyUSB2"
baud = 115200
stop_bits = 1
poll_interval = "10s"

[[device]]
id = "xl2"
protocol = "xl2"
transport = "serial"
path = "/dev/ttyACM0"

[[device]]
id = "svan"
protocol = "svantek"
transport = "tcp"
address = "192.0.2.20:8000"

[[device]]
id = "rion"
protocol = "nl43"
transport = "tcp"
address = "192.0.2.10:2255"
mode = "stream"

[[device]]
id = "rion-watched"
protocol = "nl43"
transport = "tcp"
address = "192.0.2.11:2255"
live_mode = "stream"
"#,
    );
    let framing = |i: usize| match &c.devices[i].link {
        LinkConfig::Serial { framing, .. } => *framing,
        other => panic!("not serial: {other:?}"),
    };
    // Casella: 8 data bits, 2 stop bits, no parity [doc]; the override wins.
    assert_eq!(framing(0).to_string(), "9600 8N2");
    assert_eq!(framing(1).to_string(), "115200 8N1");
    assert!(!c.devices[0].poll_interval_set);
    assert!(c.devices[1].poll_interval_set);
    assert_eq!(c.devices[1].poll_interval, secs(10));
    assert_eq!(c.devices[0].protocol.as_str(), "casella");
    // XL2: 115200 8N1 (nominal on USB CDC), 1.5 s answer timeout.
    assert_eq!(framing(2).to_string(), "115200 8N1");
    assert_eq!(c.devices[2].answer_timeout, ms(1500));
    assert_eq!(c.devices[3].answer_timeout, secs(2));
    assert_eq!(c.devices[3].protocol.as_str(), "svantek");
    // NL-43 streaming: always, or only while watched.
    assert_eq!(
        (c.devices[4].mode, c.devices[4].live_mode),
        (Mode::Stream, Mode::Stream)
    );
    assert_eq!(
        (c.devices[5].mode, c.devices[5].live_mode),
        (Mode::Poll, Mode::Stream)
    );
}

#[test]
fn the_bundled_example_is_valid_as_shipped_and_with_its_device_uncommented() {
    let text = include_str!("../../packaging/slmd.toml");
    assert!(load_text(text).devices.is_empty());
    let start = text.find("# [[device]]").expect("device example");
    let end = text.find("[api]").expect("api table");
    let uncommented: String = text[start..end]
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if !rest.starts_with('#') => format!("{rest}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    let c = load_text(&format!("{}{uncommented}{}", &text[..start], &text[end..]));
    assert_eq!(c.devices.len(), 1);
    assert_eq!(c.devices[0].id, "nl43-north");
    assert_eq!(
        c.devices[0].target(),
        "serial /dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A1B2C3D4-if00-port0"
    );
}

#[test]
fn the_bundled_example_fleet_over_mqtt_is_valid_when_uncommented() {
    let text = include_str!("../../packaging/slmd.toml");
    let start = text
        .find("# transport = \"mqtt\"")
        .expect("mqtt fleet example");
    let end = text[start..]
        .find("\n\n")
        .map(|n| start + n)
        .expect("end of the fleet table");
    let uncommented: String = text[start..end]
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l)))
        .collect();
    let config = text[..start].replace("enabled = false", "enabled = true")
        + "tokens = [\"tok-current\"]\n"
        + &uncommented
        + &text[end..];
    let c = load_text(&config);
    assert!(c.fleet.enabled);
    assert!(c.fleet.transport.mqtt() && !c.fleet.transport.http());
    assert_eq!(c.fleet.urls.len(), 2);
    assert_eq!(c.fleet.topic_prefix, "slmd");
    assert!(c.fleet.client_cert.is_some() && c.fleet.client_key.is_some());
}
