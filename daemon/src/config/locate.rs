//! Turning errors into [`ConfigError`]s that name line, column and key.
//!
//! The document is parsed once into `toml`'s spanned tree ([`DeTable`]), which
//! both feeds serde and answers "where is `device[1].address`?". Serde errors
//! come with a span from `toml` and a key path from `serde_path_to_error`;
//! their generic wording ("invalid type: integer `5`, expected u8") is
//! rewritten here into what a user can act on. Semantic problems found after
//! deserializing carry a key path and are placed by looking the path up in
//! the tree.
//!
//! Secrets never appear in a message. A value under a secret key
//! ([`is_secret_key`]: `api.tokens`, `fleet.tokens`, and any key named like
//! a token, password or secret) is described by its type only ("found a
//! string (value not shown: it is a secret)"). A syntax error names only
//! keys of the schema ([`KEYS`]), because the text the parser stopped in may
//! be a token pasted on a line of its own; an unknown key is named only when
//! it looks like a key ([`key_like`]). And as a last guard, every message is
//! scrubbed of the secret values the file holds ([`Secrets`]).

use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// Builds a key path: `path!["device", 1, "address"]`-like, from parts.
pub(crate) fn key(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|p| Seg::Key((*p).to_owned())).collect()
}

/// `device[1].address`; `None` for the document root.
pub(crate) fn render(path: &[Seg]) -> Option<String> {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Which part of a `key = value` entry an error points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum At {
    /// The value (bad values, and missing keys: then the enclosing table).
    Value,
    /// The key (keys that must not be there).
    Key,
}

/// A semantic problem, before it is placed in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// The key the problem is about (possibly absent from the file).
    pub path: Vec<Seg>,
    /// What to point at.
    pub at: At,
    /// What is wrong and what was expected.
    pub message: String,
    /// The problem to report instead when `path` is not in the file (its
    /// value is a default), e.g. `reconnect_min` set above the default
    /// `reconnect_max` is reported at `reconnect_min`.
    pub if_absent: Option<Box<Problem>>,
}

impl Problem {
    /// A problem with the value at `path` (or with its absence).
    pub fn value(path: Vec<Seg>, message: impl Into<String>) -> Self {
        Self {
            path,
            at: At::Value,
            message: message.into(),
            if_absent: None,
        }
    }

    /// A problem with the key at `path` being there at all.
    pub fn key(path: Vec<Seg>, message: impl Into<String>) -> Self {
        Self {
            path,
            at: At::Key,
            message: message.into(),
            if_absent: None,
        }
    }

    /// Reports `other` instead when this problem's key is not in the file.
    pub fn or_if_absent(mut self, other: Problem) -> Self {
        self.if_absent = Some(Box::new(other));
        self
    }
}

/// Longest value repeated in a message, in characters: enough to recognise
/// it, short enough that a pasted megabyte does not become the message.
const SHOWN_CHARS: usize = 64;

/// A value as quoted in a message: `"nl43-north"`, cut after
/// [`SHOWN_CHARS`] characters with `…` and the length.
pub(crate) fn shown(value: &str) -> String {
    let count = value.chars().count();
    if count <= SHOWN_CHARS {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(SHOWN_CHARS).collect();
    format!("{head:?}… ({count} characters)")
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
/// Offsets past the end point just after the last character.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The parsed document, for placing errors.
pub(crate) struct Doc<'a> {
    /// The file's text, for line/column.
    text: &'a str,
    /// The spanned tree of the file.
    root: &'a Spanned<DeTable<'a>>,
}

/// Where an entry is: its key's span (none for array elements and the root)
/// and its value's span.
struct Found {
    key: Option<Range<usize>>,
    value: Range<usize>,
    /// The value is a TOML date-time (serde sees those as maps).
    datetime: bool,
    /// What kind of value it is ("a string", "an integer", …), for messages
    /// that must not show the value itself.
    kind: &'static str,
}

/// "a string", "an integer", … for a value, without its content.
fn kind_of(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'a> Doc<'a> {
    pub fn new(text: &'a str, root: &'a Spanned<DeTable<'a>>) -> Self {
        Self { text, root }
    }

    /// The entry at `path`, if it is in the file.
    fn find(&self, path: &[Seg]) -> Option<Found> {
        let mut table: Option<&DeTable<'_>> = Some(self.root.get_ref());
        let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
        let mut found = Found {
            key: None,
            value: self.root.span(),
            datetime: false,
            kind: "a table",
        };
        for seg in path {
            let (key_span, value) = match seg {
                Seg::Key(k) => {
                    let (key, value) = table?.get_key_value(k.as_str())?;
                    (Some(key.span()), value)
                }
                Seg::Index(i) => (None, array?.get(*i)?),
            };
            found = Found {
                key: key_span,
                value: value.span(),
                datetime: matches!(value.get_ref(), DeValue::Datetime(_)),
                kind: kind_of(value.get_ref()),
            };
            table = None;
            array = None;
            match value.get_ref() {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
        Some(found)
    }

    /// Where to point for `path`: its key or value, or, when it is not in
    /// the file, the nearest enclosing table that is (its header).
    fn span(&self, path: &[Seg], at: At) -> Range<usize> {
        if let Some(found) = self.find(path) {
            return match (at, found.key) {
                (At::Key, Some(key)) => key,
                _ => found.value,
            };
        }
        (0..path.len())
            .rev()
            .find_map(|len| self.find(&path[..len]))
            .map_or(0..0, |found| found.value)
    }

    /// A located error for a semantic problem.
    pub fn error(&self, file: &Path, problem: Problem) -> ConfigError {
        if let Some(other) = problem.if_absent {
            if self.find(&problem.path).is_none() {
                return self.error(file, *other);
            }
        }
        let span = self.span(&problem.path, problem.at);
        self.at(file, span.start, render(&problem.path), problem.message)
    }

    /// A `ConfigError` at byte `offset`.
    fn at(&self, file: &Path, offset: usize, key: Option<String>, message: String) -> ConfigError {
        let (line, column) = line_col(self.text, offset);
        ConfigError {
            file: file.to_path_buf(),
            line: Some(line),
            column: Some(column),
            key,
            message,
        }
    }

    /// A located error for a serde error, reworded for users.
    pub fn deserialize_error(
        &self,
        file: &Path,
        err: serde_path_to_error::Error<toml::de::Error>,
    ) -> ConfigError {
        use serde_path_to_error::Segment;
        let mut path: Vec<Seg> = err
            .path()
            .iter()
            .map(|seg| match seg {
                Segment::Seq { index } => Seg::Index(*index),
                Segment::Map { key } | Segment::Enum { variant: key } => Seg::Key(key.clone()),
                Segment::Unknown => Seg::Key("?".to_owned()),
            })
            .collect();
        let inner = err.into_inner();
        let raw = inner.message();
        // An array where a table belongs (`[[fleet]]`): serde reads the
        // struct from the array and complains about its first element.
        if let Some(i) = misplaced_array(&path) {
            path.truncate(i);
            let name = render(&path).unwrap_or_default();
            let span = self.span(&path, At::Value);
            let message =
                format!("expected a table, found an array; write [{name}] with single brackets");
            return self.at(file, span.start, Some(name), message);
        }
        // The key as shown: an unknown key that may be a pasted secret is
        // left out (the error still points at it).
        let mut shown = path.clone();
        let message = if let Some(rest) = raw.strip_prefix("unknown field `") {
            // The unknown key is the last step of the path; what follows it
            // lists the expected keys.
            let name = match path.last() {
                Some(Seg::Key(k)) => k.as_str(),
                _ => "",
            };
            let tail = rest
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix('`'))
                .unwrap_or(rest);
            if !key_like(name) {
                shown.pop();
            }
            unknown_key(name, tail)
        } else if let Some(rest) = raw.strip_prefix("missing field `") {
            let name = rest.trim_end_matches('`');
            path.push(Seg::Key(name.to_owned()));
            shown.clone_from(&path);
            missing_key(&path)
        } else if is_secret_path(&path) {
            // Whatever serde says quotes the value; say what kind it is.
            let found = self.find(&path).map_or("another kind of value", |f| f.kind);
            secret_wrong_type(raw, &path, found)
        } else if let Some(rest) = raw
            .strip_prefix("invalid type: ")
            .or_else(|| raw.strip_prefix("invalid value: "))
        {
            // toml hands a date-time to serde as a map; say what it is.
            let datetime = self
                .find(&path)
                .filter(|f| f.datetime)
                .and_then(|f| self.text.get(f.value));
            wrong_type(rest, &path, datetime)
        } else {
            raw.to_owned()
        };
        // toml gives the span of the value (or of the unknown key, or of the
        // table missing a key); fall back to looking the path up.
        let span = inner.span().unwrap_or_else(|| self.span(&path, At::Value));
        self.at(file, span.start, render(&shown), message)
    }
}

/// The position of an array index in `path` that is not under one of the
/// schema's arrays (`device`, `tokens`).
fn misplaced_array(path: &[Seg]) -> Option<usize> {
    (1..path.len()).find(|&i| {
        matches!(
            (&path[i - 1], &path[i]),
            (Seg::Key(k), Seg::Index(_)) if !ARRAY_KEYS.contains(&k.as_str())
        )
    })
}

/// `unknown key "adress"; expected one of: id, protocol, …` for the key
/// `name`, from the end of serde's message:
/// ``, expected one of `id`, `protocol`, …`` (or ``, there are no fields``).
/// A name that does not look like a key ([`key_like`]) is not repeated.
fn unknown_key(name: &str, tail: &str) -> String {
    let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    let what = if key_like(name) {
        format!("unknown key {name:?}")
    } else {
        "unknown key (its name is not shown: it looks like a pasted secret, not a key)".to_owned()
    };
    if expected.is_empty() {
        return format!("{what}; this table takes no keys");
    }
    let mut message = format!("{what}; expected one of: {}", expected.join(", "));
    if let Some(near) = closest(name, &expected) {
        message.push_str(&format!(" (did you mean {near:?}?)"));
    }
    message
}

/// Every table and key name of the schema. A syntax error names only these
/// (the text the parser stopped in may be a secret pasted on its own line);
/// a test keeps the list in step with the serde tree.
pub(crate) const KEYS: &[&str] = &[
    // tables
    "gateway",
    "buffer",
    "device",
    "api",
    "mqtt",
    "fleet",
    // [gateway]
    "id",
    "state_dir",
    "clock_trusted",
    // [buffer]
    "max_records",
    "max_bytes",
    "durability",
    "commit_interval",
    "exclusive",
    // [[device]]
    "protocol",
    "transport",
    "address",
    "path",
    "baud",
    "data_bits",
    "stop_bits",
    "parity",
    "mode",
    "live_mode",
    "poll_interval",
    "live_poll_interval",
    "answer_timeout",
    "command_gap",
    "status_interval",
    "utc_offset",
    "reconnect_min",
    "reconnect_max",
    "keep_measuring",
    "no_sleep",
    "sync_clock",
    // [api]
    "listen",
    "tokens",
    "stream_max",
    // [mqtt]
    "url",
    "topic_prefix",
    "qos",
    // [fleet]
    "enabled",
    "token_file",
    "batch_max",
    "interval",
    "token_retry",
    "gzip",
    "timeout",
    "retry_min",
    "retry_max",
    "auth_retry",
    "heartbeat_interval",
    "urls",
    "username",
    "ca_file",
    "client_cert",
    "client_key",
    // [levels]
    "levels",
    "intervals",
    "timezone",
    "min_coverage",
    // [[channel]]
    "channel",
    "kind",
    "token",
    // [[alert]]
    "alert",
    "devices",
    "metric",
    "above",
    "for",
    "clear_below",
    "schedule",
    "days",
    "from",
    "to",
    "cooldown",
    "peak_every",
    "channels",
];

/// Keys whose value is an array: an index after any other key means an
/// array was written where a table belongs (`[[fleet]]`).
const ARRAY_KEYS: &[&str] = &[
    "device",
    "tokens",
    "urls",
    "channel",
    "alert",
    "intervals",
    "devices",
    "channels",
    "days",
];

/// The longest start of `path` whose keys are all schema keys ([`KEYS`]).
fn known_prefix(mut path: Vec<Seg>) -> Vec<Seg> {
    if let Some(bad) = path
        .iter()
        .position(|seg| matches!(seg, Seg::Key(k) if !KEYS.contains(&k.as_str())))
    {
        path.truncate(bad);
    }
    path
}

/// Whether an unknown key's name may be repeated in a message: it looks
/// like a key someone meant to write (`adress`, `poll-rate`, `Id`), not like
/// a token pasted in the wrong place. Keys are short words; tokens are long
/// runs of letters and digits. Shown: at most 32 characters, a letter
/// first, then letters, `_` and `-`, and at most 2 digits.
pub(crate) fn key_like(name: &str) -> bool {
    let digits = name.chars().filter(char::is_ascii_digit).count();
    (1..=32).contains(&name.chars().count())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && digits <= 2
}

/// Whether a key holds a secret: `tokens` (`api.tokens`, `fleet.tokens`),
/// and, so a key added later is covered too, any key named like a token,
/// password or secret (`token`, `password`, `mqtt_secret`, …). `token_file`
/// (a path) and `token_retry` (a duration) are not secrets.
pub(crate) fn is_secret_key(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    if matches!(name.as_str(), "token_file" | "token_retry") {
        return false;
    }
    ["token", "password", "passwd", "secret", "credential"]
        .iter()
        .any(|word| name.contains(word))
}

/// Whether `path` is a secret key or inside one (`fleet.tokens[1]`).
pub(crate) fn is_secret_path(path: &[Seg]) -> bool {
    path.iter()
        .any(|seg| matches!(seg, Seg::Key(k) if is_secret_key(k)))
}

/// What is wrong with a secret's value, from serde's message, without the
/// value: `expected an array of strings like ["token-a"], found a string
/// (value not shown: it is a secret)`. `found` is the kind of value in the
/// file.
fn secret_wrong_type(raw: &str, path: &[Seg], found: &str) -> String {
    const HIDDEN: &str = "(value not shown: it is a secret)";
    let expected = raw
        .rfind(", expected ")
        .map(|i| &raw[i + ", expected ".len()..]);
    let expected = match (expected, path.last()) {
        (Some("a sequence"), _) => r#"an array of strings like ["token-a"]"#,
        (Some("a string"), _) => "a string",
        // Other wording (a custom check) may quote the value: say no more.
        (_, Some(Seg::Index(_))) => "a string",
        _ => r#"an array of strings like ["token-a"]"#,
    };
    format!("expected {expected}, found {found} {HIDDEN}")
}

/// The secret values in a document (see [`is_secret_key`]), to scrub from
/// any message as a last guard: strings as written inside the quotes, other
/// values as their text.
#[derive(Debug, Default)]
pub(crate) struct Secrets(Vec<String>);

/// Secrets shorter than this are not scrubbed: replacing every "ab" in a
/// message would garble it, and no real token is that short.
const SHORTEST_SCRUBBED: usize = 4;

/// What a scrubbed secret reads as.
const SCRUBBED: &str = "<secret>";

impl Secrets {
    /// Every secret value in `root`, a tree parsed from `text`.
    pub fn collect(text: &str, root: &DeTable<'_>) -> Secrets {
        let mut found = Secrets::default();
        found.table(text, root, false);
        found.0.retain(|s| s.chars().count() >= SHORTEST_SCRUBBED);
        // Longest first, so a secret that contains another is replaced whole.
        found.0.sort_by_key(|s| std::cmp::Reverse(s.len()));
        found.0.dedup();
        found
    }

    fn table(&mut self, text: &str, table: &DeTable<'_>, secret: bool) {
        for (key, value) in table.iter() {
            let secret = secret || is_secret_key(key.get_ref());
            self.value(text, value, secret);
        }
    }

    fn value(&mut self, text: &str, value: &Spanned<DeValue<'_>>, secret: bool) {
        match value.get_ref() {
            DeValue::Table(t) => self.table(text, t, secret),
            DeValue::Array(items) => {
                for item in items.iter() {
                    self.value(text, item, secret);
                }
            }
            DeValue::String(s) if secret => self.0.push(s.to_string()),
            _ if secret => {
                if let Some(raw) = text.get(value.span()) {
                    self.0.push(raw.trim().to_owned());
                }
            }
            _ => {}
        }
    }

    /// `error` with every secret in its key and message replaced.
    pub fn scrub(&self, mut error: ConfigError) -> ConfigError {
        for secret in &self.0 {
            if error.message.contains(secret.as_str()) {
                error.message = error.message.replace(secret.as_str(), SCRUBBED);
            }
            if let Some(key) = &mut error.key
                && key.contains(secret.as_str())
            {
                *key = key.replace(secret.as_str(), SCRUBBED);
            }
        }
        error
    }
}

/// The expected key closest to a misspelt one, if it is close.
fn closest<'e>(name: &str, expected: &[&'e str]) -> Option<&'e str> {
    expected
        .iter()
        .map(|e| (edit_distance(name, e), *e))
        .filter(|(d, e)| *d < name.chars().count() && *d <= if e.len() <= 4 { 1 } else { 2 })
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e)
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The message for a required key that is not there.
fn missing_key(path: &[Seg]) -> String {
    let name = match path.last() {
        Some(Seg::Key(k)) => k.as_str(),
        _ => "?",
    };
    let in_device = matches!(path.first(), Some(Seg::Key(k)) if k == "device");
    match (in_device, name) {
        (true, "id") => {
            "missing: each [[device]] needs id = \"<name>\" (unique, e.g. \"nl43-north\")"
                .to_owned()
        }
        (true, "protocol") => "missing: each [[device]] needs protocol = \"nl43\"".to_owned(),
        (true, "transport") => {
            "missing: each [[device]] needs transport = \"tcp\" or \"serial\"".to_owned()
        }
        (false, "url") if render(path).as_deref() == Some("mqtt.url") => {
            "missing: [mqtt] needs url = \"mqtt://host:1883\"".to_owned()
        }
        _ => format!("missing: required key {name:?}"),
    }
}

/// `expected a string like "5s", found integer 5` from serde's
/// ``integer `5`, expected a string like "5s"`` (the text after
/// "invalid type: " or "invalid value: ").
fn wrong_type(rest: &str, path: &[Seg], datetime: Option<&str>) -> String {
    let (found, expected) = match rest.rfind(", expected ") {
        Some(i) => (&rest[..i], &rest[i + ", expected ".len()..]),
        None => (rest, "?"),
    };
    let found = found.replace('`', "");
    // A long string is cut (toml quotes it whole).
    let found = match found.strip_prefix("string ") {
        Some(quoted) if quoted.chars().count() > SHOWN_CHARS + 2 => {
            let head: String = quoted.chars().take(SHOWN_CHARS + 1).collect();
            format!("string {head}…\"")
        }
        _ => found,
    };
    let found = match (found.as_str(), datetime) {
        (_, Some(text)) if expected.contains("string") => {
            format!("date-time {text} (quote it to make it a string)")
        }
        (_, Some(text)) => format!("date-time {text}"),
        ("map", None) => "a table".to_owned(),
        ("sequence", None) => "an array".to_owned(),
        (other, None) => other
            .replacen("floating point", "float", 1)
            .trim_end_matches(" as i128")
            .trim_end_matches(" as u128")
            .to_owned(),
    };
    let expected = match expected {
        "u8" => "an integer from 0 to 255",
        "u16" => "an integer from 0 to 65535",
        "u32" => "an integer from 0 to 4294967295",
        "u64" => "a whole number (0 or more)",
        "a sequence" => "an array",
        "a map" => "a table",
        "path string" => "a string (a path)",
        e if e.starts_with("struct ") => "a table",
        e => e,
    };
    let mut message = format!("expected {expected}, found {found}");
    if render(path).as_deref() == Some("device") && found == "a table" {
        message.push_str("; write each meter as its own [[device]] table (double brackets)");
    }
    message
}

/// A located error for a TOML syntax error, with the key being written
/// there when the parser's best-effort tree tells it.
pub(crate) fn syntax_error(text: &str, file: &Path, err: &toml::de::Error) -> ConfigError {
    let mut offset = err.span().map_or(0, |s| s.start);
    // At the end of a CRLF line, point at the line end as for LF.
    if offset > 0 && text.get(offset - 1..=offset) == Some("\r\n") {
        offset -= 1;
    }
    let (recovered, _) = DeTable::parse_recoverable(text);
    let mut best = Best::default();
    walk(recovered.get_ref(), &mut Vec::new(), offset, &mut best);
    let mut path = best.leaf.or(best.table.map(|(_, p)| p)).unwrap_or_default();
    let raw = err.message();
    if raw == "duplicate key" {
        let line_start = text
            .get(..offset)
            .and_then(|t| t.rfind('\n'))
            .map_or(0, |i| i + 1);
        let line = text.get(line_start..).unwrap_or_default().trim_start();
        if let Some(header) = line.strip_prefix('[') {
            // `[gateway]` written twice: the key is the table itself.
            let name = header.split(']').next().unwrap_or_default();
            path = vec![Seg::Key(name.trim_matches(['[', ' ']).to_owned())];
        } else if let Some(dup) = err.span().and_then(|s| text.get(s)) {
            path.push(Seg::Key(dup.trim_matches(['"', '\'']).to_owned()));
        }
    }
    // Only schema keys: the key the parser stopped in may be a secret.
    let path = known_prefix(path);
    let message = if is_unterminated_string(raw, text, offset) {
        "invalid TOML: unterminated string; add the closing quote".to_owned()
    } else if raw == "duplicate key" {
        "invalid TOML: duplicate key; each key and [table] may appear only once".to_owned()
    } else {
        format!("invalid TOML: {raw}")
    };
    let (line, column) = line_col(text, offset);
    Secrets::collect(text, recovered.get_ref()).scrub(ConfigError {
        file: file.to_path_buf(),
        line: Some(line),
        column: Some(column),
        key: render(&path),
        message,
    })
}

/// A string the parser ran off the end of the line (or file) in.
fn is_unterminated_string(raw: &str, text: &str, offset: usize) -> bool {
    let string_error = ["invalid basic string", "invalid literal string"]
        .iter()
        .any(|p| raw.starts_with(p));
    let at_line_end = matches!(
        text.get(offset..).and_then(|rest| rest.chars().next()),
        None | Some('\n' | '\r')
    );
    string_error && at_line_end
}

/// The best guess so far of the key at a syntax error.
#[derive(Default)]
struct Best {
    /// A `key = value` entry containing the error offset.
    leaf: Option<Vec<Seg>>,
    /// The last table starting before the error offset (its start, path).
    table: Option<(usize, Vec<Seg>)>,
}

/// Finds the entry or table the byte `offset` is in.
fn walk(table: &DeTable<'_>, prefix: &mut Vec<Seg>, offset: usize, best: &mut Best) {
    for (key, value) in table.iter() {
        prefix.push(Seg::Key(key.get_ref().to_string()));
        visit(Some(key.span()), value, prefix, offset, best);
        prefix.pop();
    }
}

/// [`walk`] for one value written under the key at `key` (`None` for an
/// element of an array of tables).
fn visit(
    key: Option<Range<usize>>,
    value: &Spanned<DeValue<'_>>,
    prefix: &mut Vec<Seg>,
    offset: usize,
    best: &mut Best,
) {
    match value.get_ref() {
        DeValue::Table(t) => {
            // A `[header]` table: its key lies inside its span. (Recovery
            // from a broken header can leave other shapes; skip those.)
            let span = value.span();
            let header = key
                .as_ref()
                .is_none_or(|k| span.start <= k.start && k.end <= span.end);
            if header
                && span.start <= offset
                && best.table.as_ref().is_none_or(|(s, _)| *s <= span.start)
            {
                best.table = Some((span.start, prefix.clone()));
            }
            walk(t, prefix, offset, best);
        }
        DeValue::Array(items)
            if items
                .iter()
                .all(|i| matches!(i.get_ref(), DeValue::Table(_)))
                && !items.is_empty() =>
        {
            for (i, item) in items.iter().enumerate() {
                prefix.push(Seg::Index(i));
                visit(None, item, prefix, offset, best);
                prefix.pop();
            }
        }
        _ => {
            let start = key.map_or(value.span().start, |k| k.start);
            if start <= offset && offset <= value.span().end {
                best.leaf = Some(prefix.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (1, 5));
        assert_eq!(line_col(text, 6), (2, 1));
        // "bé = " is 6 bytes, 5 characters.
        assert_eq!(line_col(text, 12), (2, 6));
        // Inside a multi-byte character: its start.
        assert_eq!(line_col(text, 8), (2, 2));
        assert_eq!(line_col(text, 999), (3, 1));
        assert_eq!(line_col("", 0), (1, 1));
    }

    #[test]
    fn paths_render_with_indexes() {
        let path = vec![
            Seg::Key("device".into()),
            Seg::Index(1),
            Seg::Key("address".into()),
        ];
        assert_eq!(render(&path).as_deref(), Some("device[1].address"));
        assert_eq!(
            render(&key(&["fleet", "tokens"])).as_deref(),
            Some("fleet.tokens")
        );
        assert_eq!(render(&[]), None);
    }

    #[test]
    fn misspelt_keys_get_a_suggestion() {
        let m = unknown_key("adress", ", expected one of `id`, `address`, `path`");
        assert_eq!(
            m,
            "unknown key \"adress\"; expected one of: id, address, path (did you mean \"address\"?)"
        );
        let m = unknown_key("zzz", ", expected `gateway` or `device`");
        assert_eq!(m, "unknown key \"zzz\"; expected one of: gateway, device");
    }
}
