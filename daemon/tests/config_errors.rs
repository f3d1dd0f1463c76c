//! Invalid configuration files are rejected with an error that names the
//! file, line, column and key, and says what was expected (SPEC §5, §10).
//!
//! Every test writes a real file into a temp dir and loads it, as
//! `slmd check` does.

use std::path::{Path, PathBuf};

use slmd::config::{ConfigError, load};

/// The located error for `text`, written to `slmd.toml` in a temp dir.
fn rejected(text: &str) -> (PathBuf, ConfigError) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("slmd.toml");
    std::fs::write(&path, text).expect("write config");
    match load(&path) {
        Ok(config) => panic!("accepted an invalid config: {config:?}\n{text}"),
        Err(e) => (path, e),
    }
}

/// Asserts the error for `text` is at `line:column`, about `key`, with a
/// message containing each of `words`, and that this is what the user sees.
#[track_caller]
fn assert_located(text: &str, line: usize, column: usize, key: &str, words: &[&str]) -> String {
    let (path, e) = rejected(text);
    let shown = e.to_string();
    assert_eq!(
        (e.line, e.column, e.key.as_deref()),
        (Some(line), Some(column), Some(key)),
        "wrong place: {shown}"
    );
    assert_eq!(e.file, path);
    let prefix = format!("{}:{line}:{column}: {key}: ", path.display());
    assert!(
        shown.starts_with(&prefix),
        "{shown:?} should start with {prefix:?}"
    );
    for word in words {
        assert!(e.message.contains(word), "{shown:?} should say {word:?}");
    }
    shown
}

/// A valid tcp device taking lines 1 to 5, then a blank line 6.
const NORTH: &str = r#"[[device]]
id = "nl43-north"
protocol = "nl43"
transport = "tcp"
address = "192.0.2.10:2255"

"#;

// ---- keys that are not there, or should not be ----

#[test]
fn unknown_key_in_a_table_lists_the_expected_keys() {
    assert_located(
        r#"[gateway]
id = "gw-0042"
sate_dir = "/var/lib/slmd"
"#,
        3,
        1,
        "gateway.sate_dir",
        &[
            r#"unknown key "sate_dir"; expected one of: id, state_dir"#,
            r#"did you mean "state_dir"?"#,
        ],
    );
}

#[test]
fn unknown_top_level_table() {
    assert_located(
        r#"[gateway]
id = "gw-0042"

[fleeet]
enabled = true
"#,
        4,
        2,
        "fleeet",
        &[
            r#"unknown key "fleeet"; expected one of: gateway, buffer, device, api, mqtt, fleet"#,
            r#"did you mean "fleet"?"#,
        ],
    );
}

#[test]
fn unknown_key_in_the_second_device() {
    let text = format!(
        r#"{NORTH}[[device]]
id = "nl43-south"
protocol = "nl43"
transport = "tcp"
adress = "192.0.2.11:2255"
"#
    );
    assert_located(
        &text,
        11,
        1,
        "device[1].adress",
        &[
            r#"unknown key "adress"; expected one of: id, protocol, transport, address, path, baud, data_bits, stop_bits, parity, mode, live_mode, poll_interval"#,
            "reconnect_max",
        ],
    );
}

#[test]
fn a_single_bracket_device_table_is_explained() {
    assert_located(
        "[device]\nid = \"nl43-north\"\n",
        1,
        1,
        "device",
        &["expected an array", "found a table", "[[device]]"],
    );
}

#[test]
fn a_double_bracket_table_that_is_not_an_array() {
    assert_located(
        "[[fleet]]\nenabled = true\n",
        1,
        1,
        "fleet",
        &["expected a table, found an array", "[fleet]"],
    );
}

// ---- values of the wrong type or form ----

#[test]
fn wrong_type_says_what_was_expected_and_found() {
    let shown = assert_located(
        &format!("{NORTH}poll_interval = 5\n").replace("\n\npoll", "\npoll"),
        6,
        17,
        "device[0].poll_interval",
        &[],
    );
    assert!(
        shown.ends_with(r#"device[0].poll_interval: expected a string like "5s", found integer 5"#),
        "{shown}"
    );
}

#[test]
fn wrong_type_for_a_boolean() {
    assert_located(
        "[fleet]\nenabled = \"yes\"\n",
        2,
        11,
        "fleet.enabled",
        &[r#"expected a boolean, found string "yes""#],
    );
}

#[test]
fn wrong_type_inside_an_array() {
    assert_located(
        "[api]\ntokens = [\"ok\", 42]\n",
        2,
        17,
        "api.tokens[1]",
        // A token's value is never shown, whatever its type.
        &["expected a string, found an integer (value not shown: it is a secret)"],
    );
}

#[test]
fn bad_duration_names_the_value_and_the_form() {
    let text = format!(
        "{NORTH}[[device]]\nid = \"b\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"h:1\"\npoll_interval = \"5 parsecs\"\n"
    );
    let (path, e) = rejected(&text);
    assert_eq!(
        e.to_string(),
        format!(
            r#"{}:12:17: device[1].poll_interval: invalid duration "5 parsecs": expected a number followed by ms, s, m, h or d (e.g. "500ms", "5s", "24h")"#,
            path.display()
        )
    );
}

#[test]
fn duration_without_a_unit() {
    assert_located(
        "[fleet]\ninterval = \"5\"\n",
        2,
        12,
        "fleet.interval",
        &[r#"invalid duration "5""#, "followed by ms, s, m, h or d"],
    );
}

#[test]
fn negative_duration() {
    assert_located(
        "[api]\nstream_max = \"-15m\"\n",
        2,
        14,
        "api.stream_max",
        &["negative"],
    );
}

#[test]
fn bad_size_names_the_value_and_the_units() {
    assert_located(
        "[buffer]\nmax_records = 1000\nmax_bytes = \"2 gigs\"\n",
        3,
        13,
        "buffer.max_bytes",
        &[r#"invalid size "2 gigs""#, "KiB, MiB, GiB or TiB"],
    );
}

#[test]
fn unknown_transport_lists_the_supported_ones() {
    assert_located(
        &NORTH.replace("\"tcp\"", "\"udp\""),
        4,
        13,
        "device[0].transport",
        &[r#"unknown transport "udp""#, r#""tcp", "serial""#],
    );
}

#[test]
fn unsupported_protocol_lists_the_supported_ones() {
    assert_located(
        &NORTH.replace("\"nl43\"", "\"nl52x\""),
        3,
        12,
        "device[0].protocol",
        &[r#"unknown protocol "nl52x""#, r#""nl43""#],
    );
}

#[test]
fn unquoted_date_is_named() {
    assert_located(
        "[gateway]\nid = 2024-01-01\n",
        2,
        6,
        "gateway.id",
        &["expected a string", "date-time 2024-01-01"],
    );
}

// ---- missing keys: pointed at the header of the table lacking them ----

#[test]
fn tcp_device_without_address() {
    let shown = assert_located(
        r#"[gateway]
id = "gw-0042"

[[device]]
id = "nl43-north"
protocol = "nl43"
transport = "tcp"
poll_interval = "1s"
"#,
        4,
        1,
        "device[0].address",
        &[],
    );
    assert!(
        shown.ends_with(r#"device[0].address: missing: a tcp device needs address = "host:port""#),
        "{shown}"
    );
}

#[test]
fn serial_device_without_path() {
    let text = format!(
        "{NORTH}[[device]]\nid = \"nl43-south\"\nprotocol = \"nl43\"\ntransport = \"serial\"\nbaud = 9600\n"
    );
    assert_located(
        &text,
        7,
        1,
        "device[1].path",
        &["missing", "a serial device needs path =", "/dev/"],
    );
}

#[test]
fn device_without_protocol() {
    assert_located(
        &format!("{NORTH}[[device]]\nid = \"b\"\ntransport = \"tcp\"\naddress = \"h:1\"\n"),
        7,
        1,
        "device[1].protocol",
        &["missing", r#"protocol = "nl43""#],
    );
}

#[test]
fn mqtt_without_url() {
    assert_located(
        "[gateway]\nid = \"gw\"\n\n[mqtt]\nqos = 0\n",
        4,
        1,
        "mqtt.url",
        &["missing", "mqtt://"],
    );
}

// ---- semantic rules ----

#[test]
fn duplicate_device_id() {
    let text = format!("{NORTH}{NORTH}");
    assert_located(
        &text,
        8,
        6,
        "device[1].id",
        &[r#"duplicate device id "nl43-north""#, "device[0]"],
    );
}

#[test]
fn non_loopback_api_without_tokens() {
    assert_located(
        "[api]\nlisten = \"0.0.0.0:8470\"\n",
        2,
        10,
        "api.listen",
        &["a non-loopback listen address requires [api].tokens"],
    );
    // An explicitly empty list is no better.
    assert_located(
        "[api]\ntokens = []\nlisten = \"192.168.1.20:8470\"\n",
        3,
        10,
        "api.listen",
        &["requires [api].tokens"],
    );
}

#[test]
fn fleet_enabled_without_url() {
    assert_located(
        "[fleet]\nenabled = true\ntokens = [\"t1\"]\n",
        1,
        1,
        "fleet.url",
        &["missing", "url = \"https://"],
    );
}

#[test]
fn fleet_enabled_without_any_token() {
    assert_located(
        "[fleet]\nenabled = true\nurl = \"https://fleet.example.com\"\n",
        1,
        1,
        "fleet.tokens",
        &["missing", "tokens =", "token_file ="],
    );
}

#[test]
fn fleet_tokens_and_token_file_together() {
    assert_located(
        r#"[fleet]
enabled = true
url = "https://fleet.example.com"
tokens = ["t1"]
token_file = "/etc/slmd/fleet.token"
"#,
        5,
        1,
        "fleet.token_file",
        &["either tokens or token_file, not both"],
    );
}

#[test]
fn three_fleet_tokens() {
    assert_located(
        r#"[fleet]
enabled = true
url = "https://fleet.example.com"
tokens = ["t1", "t2", "t3"]
"#,
        4,
        10,
        "fleet.tokens",
        &["at most 2 tokens", "found 3"],
    );
}

#[test]
fn the_first_problem_in_the_file_is_reported() {
    // A public API without tokens on line 2, a bad baud rate on line 9: the
    // one a reader meets first is reported, whatever order checks run in.
    let text = format!(
        "[api]\nlisten = \"0.0.0.0:8470\"\n\n{}\nbaud = 12345\n",
        NORTH.trim_end()
    );
    assert_located(&text, 2, 10, "api.listen", &["requires [api].tokens"]);
    let text = "[[device]]\nid = \"s\"\nprotocol = \"nl43\"\ntransport = \"serial\"\npath = \"/dev/ttyUSB0\"\nbaud = 12345\n\n[api]\nlisten = \"0.0.0.0:8470\"\n";
    assert_located(
        text,
        6,
        8,
        "device[0].baud",
        &["unsupported baud rate 12345"],
    );
}

/// Each remaining rule: (file, line, column, key, a word of the message).
#[test]
fn every_other_rule_is_located() {
    let tcp = |extra: &str| format!("{}\n{extra}\n", NORTH.trim_end());
    let serial = |extra: &str| {
        format!(
            "[[device]]\nid = \"s\"\nprotocol = \"nl43\"\ntransport = \"serial\"\npath = \"/dev/ttyUSB0\"\n{extra}\n"
        )
    };
    #[rustfmt::skip]
    let cases: Vec<(String, usize, usize, &str, &str)> = vec![
        (tcp("poll_interval = \"500ms\""), 6, 17, "device[0].poll_interval", "at least 1s, found 500ms"),
        (tcp("live_poll_interval = \"200ms\""), 6, 22, "device[0].live_poll_interval", "at least 1s"),
        (tcp("answer_timeout = \"50ms\""), 6, 18, "device[0].answer_timeout", "at least 100ms"),
        (tcp("answer_timeout = \"2m\""), 6, 18, "device[0].answer_timeout", "at most 60s"),
        (tcp("command_gap = \"100ms\""), 6, 15, "device[0].command_gap", "at least 200ms"),
        (tcp("status_interval = \"0s\""), 6, 19, "device[0].status_interval", "at least 1s"),
        (tcp("reconnect_min = \"0s\""), 6, 17, "device[0].reconnect_min", "greater than 0s"),
        (tcp("reconnect_min = \"10s\"\nreconnect_max = \"5s\""), 7, 17, "device[0].reconnect_max", "at least reconnect_min (10s)"),
        (tcp("reconnect_min = \"2m\""), 6, 17, "device[0].reconnect_min", "at most reconnect_max (1m"),
        (tcp("utc_offset = \"+15:00\""), 6, 14, "device[0].utc_offset", "+HH:MM"),
        (tcp("path = \"/dev/ttyUSB0\""), 6, 1, "device[0].path", "only for serial devices"),
        (tcp("baud = 38400"), 6, 1, "device[0].baud", "only for serial devices"),
        (tcp("parity = \"even\""), 6, 1, "device[0].parity", "only for serial devices"),
        (serial("baud = 4800"), 6, 8, "device[0].baud", "9600, 19200, 38400, 57600, 115200"),
        (serial("data_bits = 6"), 6, 13, "device[0].data_bits", "expected 7 or 8, found 6"),
        (serial("stop_bits = 3"), 6, 13, "device[0].stop_bits", "expected 1 or 2, found 3"),
        (serial("parity = \"mark\""), 6, 10, "device[0].parity", "\"none\", \"even\", \"odd\""),
        (serial("mode = \"fast\""), 6, 8, "device[0].mode", "\"poll\", \"stream\""),
        (NORTH.replace("nl43\"", "xl3\""), 3, 12, "device[0].protocol", "\"nl43\", \"xl2\", \"svantek\", \"casella\""),
        (tcp("mode = \"stream\"").replace("\"nl43\"", "\"xl2\""), 6, 8, "device[0].mode", "xl2 has no continuous output"),
        (tcp("live_mode = \"stream\"").replace("\"nl43\"", "\"svantek\""), 6, 13, "device[0].live_mode", "svantek has no continuous output"),
        (tcp("answer_timeout = \"2s\"").replace("\"nl43\"", "\"casella\""), 6, 1, "device[0].answer_timeout", "casella meters push their readings"),
        (tcp("status_interval = \"5s\"").replace("\"nl43\"", "\"casella\""), 6, 1, "device[0].status_interval", "does not apply"),
        (tcp("poll_interval = \"500ms\"").replace("\"nl43\"", "\"svantek\""), 6, 17, "device[0].poll_interval", "at least 1s"),
        (serial("baud = 1200").replace("\"nl43\"", "\"xl2\""), 6, 8, "device[0].baud", "unsupported baud rate 1200"),
        (tcp("keep_measuring = true").replace("\"nl43\"", "\"casella\""), 6, 18, "device[0].keep_measuring", "casella cannot do keep_measuring: it pushes lines and takes no commands"),
        (tcp("keep_measuring = true").replace("\"nl43\"", "\"svantek\""), 6, 18, "device[0].keep_measuring", "svantek cannot do keep_measuring: the notes give no start command"),
        (tcp("no_sleep = true").replace("\"nl43\"", "\"xl2\""), 6, 12, "device[0].no_sleep", "xl2 cannot do no_sleep"),
        (tcp("sync_clock = \"daily\"").replace("\"nl43\"", "\"xl2\""), 6, 14, "device[0].sync_clock", "xl2 cannot do sync_clock: the XL2's remote protocol has no command that sets its clock"),
        (tcp("sync_clock = \"hourly\""), 6, 14, "device[0].sync_clock", "\"off\", \"daily\""),
        (tcp("keep_measuring = \"yes\""), 6, 18, "device[0].keep_measuring", "boolean"),
        ("[fleet]\nheartbeat_interval = \"500ms\"\n".into(), 2, 22, "fleet.heartbeat_interval", "at least 1s"),
        ("[fleet]\nheartbeat_interval = \"2h\"\n".into(), 2, 22, "fleet.heartbeat_interval", "at most 1h"),
        (NORTH.replace("nl43-north", "north pole"), 2, 6, "device[0].id", "A-Z a-z 0-9 . _ -"),
        (NORTH.replace("nl43-north", &"x".repeat(65)), 2, 6, "device[0].id", "1 to 64"),
        (NORTH.replace("192.0.2.10:2255", "192.0.2.10"), 5, 11, "device[0].address", "port is missing"),
        (NORTH.replace("192.0.2.10:2255", "192.0.2.10:0"), 5, 11, "device[0].address", "1 to 65535"),
        (NORTH.replace("192.0.2.10:2255", "2001:db8::1:2255"), 5, 11, "device[0].address", "brackets"),
        (serial("address = \"h:1\""), 6, 1, "device[0].address", "only for tcp devices"),
        (serial("").replace("/dev/ttyUSB0", "ttyUSB0"), 5, 8, "device[0].path", "absolute path"),
        ("[gateway]\nid = \"\"\n".into(), 2, 6, "gateway.id", "gw-0042"),
        ("[buffer]\nmax_records = 0\n".into(), 2, 15, "buffer.max_records", "at least 1"),
        ("[buffer]\nmax_records = -5\n".into(), 2, 15, "buffer.max_records", "found integer -5"),
        ("[buffer]\nmax_bytes = 0\n".into(), 2, 13, "buffer.max_bytes", "at least 1 byte"),
        ("[buffer]\ndurability = \"fast\"\n".into(), 2, 14, "buffer.durability", "\"normal\", \"full\""),
        ("[api]\nlisten = \"localhost:8470\"\n".into(), 2, 10, "api.listen", "127.0.0.1:8470"),
        ("[api]\ntokens = [\"\"]\n".into(), 2, 11, "api.tokens[0]", "must not be empty"),
        ("[api]\nstream_max = \"0s\"\n".into(), 2, 14, "api.stream_max", "greater than 0s"),
        ("[mqtt]\nurl = \"tcp://broker:1883\"\n".into(), 2, 7, "mqtt.url", "mqtt://host[:port]"),
        ("[mqtt]\nurl = \"mqtt://broker/x\"\n".into(), 2, 7, "mqtt.url", "unexpected path"),
        ("[mqtt]\nurl = \"mqtt://\"\n".into(), 2, 7, "mqtt.url", "host is missing"),
        ("[mqtt]\nurl = \"mqtt://b\"\ntopic_prefix = \"a/#\"\n".into(), 3, 16, "mqtt.topic_prefix", "wildcards"),
        ("[mqtt]\nurl = \"mqtt://b\"\ntopic_prefix = \"/slmd\"\n".into(), 3, 16, "mqtt.topic_prefix", "start or end with /"),
        ("[mqtt]\nurl = \"mqtt://b\"\nqos = 3\n".into(), 3, 7, "mqtt.qos", "0, 1 or 2"),
        ("[mqtt]\nurl = \"mqtt://b\"\nqos = 300\n".into(), 3, 7, "mqtt.qos", "found integer 300"),
        ("[fleet]\nurl = \"ftp://fleet\"\n".into(), 2, 7, "fleet.url", "http:// or https://"),
        ("[fleet]\ntokens = [\"a\", \" \"]\n".into(), 2, 16, "fleet.tokens[1]", "must not be empty"),
        ("[fleet]\nbatch_max = 0\n".into(), 2, 13, "fleet.batch_max", "1 to 10000"),
        ("[fleet]\nbatch_max = 10001\n".into(), 2, 13, "fleet.batch_max", "1 to 10000"),
        ("[fleet]\ninterval = \"0ms\"\n".into(), 2, 12, "fleet.interval", "greater than 0s"),
        ("[fleet]\ntoken_retry = 300\n".into(), 2, 15, "fleet.token_retry", "expected a string like \"5s\""),
        ("[api]\nlisten = \"0.0.0.0:8470\"\n[api.extra]\nx = 1\n".into(), 3, 6, "api.extra", "unknown key \"extra\""),
        ("[mqtt]\nurl = \"mqtt://b\"\nqos = 1\nretain = true\n".into(), 4, 1, "mqtt.retain", "topic_prefix, qos"),
    ];
    for (text, line, column, key, word) in cases {
        let (_, e) = rejected(&text);
        assert_eq!(
            (e.line, e.column, e.key.as_deref()),
            (Some(line), Some(column), Some(key)),
            "wrong place for\n{text}\n=> {e}"
        );
        assert!(e.message.contains(word), "{e} should say {word:?}");
    }
}

// ---- TOML syntax ----

#[test]
fn unterminated_string_is_located() {
    assert_located(
        r#"[gateway]
id = "gw-0042
state_dir = "/var/lib/slmd"
"#,
        2,
        14,
        "gateway.id",
        &["invalid TOML", "unterminated string"],
    );
}

#[test]
fn unterminated_string_in_a_later_device() {
    let text = format!("{NORTH}[[device]]\nid = \"nl43-south\nprotocol = \"nl43\"\n");
    assert_located(&text, 8, 17, "device[1].id", &["unterminated string"]);
}

#[test]
fn duplicate_key_is_located() {
    assert_located(
        "[gateway]\nid = \"a\"\nstate_dir = \"/x\"\nid = \"b\"\n",
        4,
        1,
        "gateway.id",
        &["duplicate key"],
    );
}

#[test]
fn table_written_twice_is_located() {
    assert_located(
        "[gateway]\nid = \"a\"\n\n[gateway]\nstate_dir = \"/x\"\n",
        4,
        2,
        "gateway",
        &["duplicate key", "only once"],
    );
}

#[test]
fn missing_value_is_located() {
    let (_, e) = rejected("[buffer]\nmax_records =\n");
    assert_eq!((e.line, e.column), (Some(2), Some(14)), "{e}");
    assert!(e.message.starts_with("invalid TOML"), "{e}");
}

#[test]
fn unclosed_table_header_is_located() {
    let (_, e) = rejected("[gateway]\nid = \"gw\"\n[buffer\nmax_records = 1\n");
    assert_eq!((e.line, e.column), (Some(3), Some(8)), "{e}");
    assert!(e.message.contains("`]`"), "{e}");
}

#[test]
fn crlf_line_endings_count_the_same() {
    assert_located(
        "[gateway]\r\nid = \"gw-0042\r\n",
        2,
        14,
        "gateway.id",
        &["unterminated string"],
    );
    assert_located(
        "[gateway]\r\nid = \"gw\"\r\nsate_dir = \"/x\"\r\n",
        3,
        1,
        "gateway.sate_dir",
        &["unknown key"],
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    // "ü" is two bytes but one column: the value is at column 38, not 39.
    assert_located(
        "gateway = { id = \"gw-ü\", state_dir = 5 }\n",
        1,
        38,
        "gateway.state_dir",
        &["expected a string"],
    );
    assert_located(
        "[[device]]\nid = \"mëter\"\nprotocol = \"nl43\"\ntransport = \"tcp\"\naddress = \"h:1\"\n",
        2,
        6,
        "device[0].id",
        &["invalid device id \"mëter\""],
    );
}

// ---- the file itself ----

#[test]
fn unreadable_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing.toml");
    let e = load(&path).expect_err("no such file");
    assert_eq!((e.line, e.column, e.key.as_deref()), (None, None, None));
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("{}: cannot read: ", path.display())),
        "{shown}"
    );
    // A directory is not a config file either.
    let e = load(dir.path()).expect_err("a directory");
    assert!(e.to_string().contains(": cannot read: "), "{e}");
}

#[test]
fn file_that_is_not_utf8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("slmd.toml");
    std::fs::write(&path, b"[gateway]\nid = \"gw\xff\"\n").expect("write");
    let e = load(&path).expect_err("latin-1 byte");
    assert_eq!((e.line, e.column), (Some(2), Some(9)), "{e}");
    assert!(e.message.contains("UTF-8"), "{e}");
}

#[test]
fn parse_uses_the_given_path_in_messages() {
    let e = slmd::config::parse("[gateway]\nidd = 1\n", Path::new("/etc/slmd/slmd.toml"))
        .expect_err("unknown key");
    assert_eq!(
        e.to_string(),
        r#"/etc/slmd/slmd.toml:2:1: gateway.idd: unknown key "idd"; expected one of: id, state_dir, clock_trusted (did you mean "id"?)"#
    );
}

// ---- the fleet over MQTT ----

#[test]
fn the_mqtt_uplink_needs_its_brokers_and_each_is_checked() {
    assert_located(
        "[fleet]\nenabled = true\ntransport = \"mqtt\"\ntokens = [\"t\"]\n",
        1,
        1,
        "fleet.urls",
        &["missing", "mqtts://"],
    );
    assert_located(
        "[fleet]\nenabled = true\ntransport = \"mqtt\"\ntokens = [\"t\"]\nurls = [\"mqtts://a:8883\", \"https://b\"]\n",
        5,
        27,
        "fleet.urls[1]",
        &["https://b", "mqtt://host[:port]"],
    );
    assert_located(
        "[fleet]\ntransport = \"kafka\"\n",
        2,
        13,
        "fleet.transport",
        &["kafka", "http", "mqtt", "both"],
    );
    let nine: Vec<String> = (0..9).map(|i| format!("\"mqtt://b{i}\"")).collect();
    assert_located(
        &format!("[fleet]\nurls = [{}]\n", nine.join(", ")),
        2,
        8,
        "fleet.urls",
        &["at most 8", "found 9"],
    );
    assert_located(
        "[fleet]\ntopic_prefix = \"fleet/#\"\n",
        2,
        16,
        "fleet.topic_prefix",
        &["fleet/#", "no + #"],
    );
    assert_located(
        "[fleet]\nclient_cert = \"/etc/slmd/gw.pem\"\n",
        1,
        1,
        "fleet.client_key",
        &["client_cert and client_key go together"],
    );
}

#[test]
fn an_mqtt_fleet_needs_no_http_url_and_both_transports_need_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("slmd.toml");
    let mqtt = "[fleet]\nenabled = true\ntransport = \"mqtt\"\ntokens = [\"t\"]\nurls = [\"mqtts://a.example.com\", \"mqtt://10.0.0.2:1884\"]\nusername = \"gw-7\"\n";
    std::fs::write(&path, mqtt).expect("write config");
    let config = load(&path).expect("valid");
    assert!(config.fleet.transport.mqtt() && !config.fleet.transport.http());
    assert_eq!(config.fleet.urls.len(), 2);
    assert_eq!(config.fleet.topic_prefix, "slmd");
    assert_located(
        &mqtt.replace("\"mqtt\"", "\"both\""),
        1,
        1,
        "fleet.url",
        &["missing"],
    );
}
